// Public headers must compile in a CUDA translation unit: kernels take
// pointers straight out of Blocks, Tapes and Cells.
#include <unimem/unimem.hpp>

__global__ void scale(float* data, unsigned n, float factor) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] *= factor;
}

void launch_on_a_tape(unimem::Tape& tape) {
  auto values = tape.take<float>(256);
  scale<<<1, 256>>>(values.data(), static_cast<unsigned>(values.size()), 2.0f);
}
