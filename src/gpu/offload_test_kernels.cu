// src/gpu/offload_test_kernels.cu — what offload_test_kernels.hpp declares.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <thread>

#include "gpu/offload_test_kernels.hpp"

namespace unimem::offload_test {
namespace {

__global__ void trap_kernel() { __trap(); }

void CUDART_CB sleep_for(void* ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(reinterpret_cast<std::uintptr_t>(ms)));
}

}  // namespace

std::string fail_stream_later(void* stream, unsigned ms) {
  auto s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaLaunchHostFunc(s, sleep_for, reinterpret_cast<void*>(std::uintptr_t{ms}));
  if (e == cudaSuccess) {
    trap_kernel<<<1, 1, 0, s>>>();
    e = cudaGetLastError();
  }
  return e == cudaSuccess ? "" : cudaGetErrorString(e);
}

std::string delay_stream(void* stream, unsigned ms) {
  const cudaError_t e =
      cudaLaunchHostFunc(static_cast<cudaStream_t>(stream), sleep_for, reinterpret_cast<void*>(std::uintptr_t{ms}));
  return e == cudaSuccess ? "" : cudaGetErrorString(e);
}

}  // namespace unimem::offload_test
