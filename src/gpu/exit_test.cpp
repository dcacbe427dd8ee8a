// src/gpu/exit_test.cpp — a program whose Loader, OffloadPool and loaded
// tensors have static storage, as a serving process keeps them, run to a
// normal exit. Their destructors run during exit, after the CUDA runtime's
// own exit handlers (cudart registers them when it starts; here it starts
// first, as PyTorch's does in a Python program) and after the library's
// function-local statics would have been destroyed: the process must still
// exit with status 0 (it died with SIGSEGV when those statics were destroyed
// first). CTest runs it in both orders and checks the exit status; without a
// GPU it exits 77, which CTest reports as skipped.
//
//   unimem_exit_test runtime-first   cudart initialised before unimem's objects
//   unimem_exit_test unimem-first    unimem's objects first, then cudart
#include <cuda_runtime.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "unimem/gpu.hpp"
#include "unimem/offload.hpp"
#include "unimem/safetensors.hpp"

namespace {

constexpr int kSkip = 77;

std::string write_model() {
  std::vector<float> w(1 << 16);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i);
  const std::string path = "/tmp/unimem_exit_test_" + std::to_string(::getpid()) + ".safetensors";
  const unimem::TensorData t{"w", unimem::DType::F32, {w.size()}, std::as_bytes(std::span<const float>(w))};
  unimem::save_safetensors(path, std::span<const unimem::TensorData>(&t, 1));
  return path;
}

// Kept until exit, as a server keeps them.
unimem::gpu::Loader& loader() {
  static unimem::gpu::Loader l(0);
  return l;
}
unimem::gpu::OffloadPool& pool() {
  static unimem::gpu::OffloadPool p = unimem::gpu::OffloadPool::create(64 << 10, 8, 0);
  return p;
}
unimem::gpu::DeviceTensors& tensors(const std::string& path) {
  static unimem::gpu::DeviceTensors t = unimem::gpu::load_safetensors(path, loader());
  return t;
}

int use_unimem() {
  const std::string path = write_model();
  const unimem::gpu::DeviceTensors& t = tensors(path);
  ::unlink(path.c_str());
  const unimem::gpu::DeviceTensor* w = t.find("w");
  if (w == nullptr) return 2;
  // A store and a fetch left to finish by themselves: nothing waits for them before exit.
  const std::vector<std::uintptr_t> block{w->address};
  const std::vector<std::uint32_t> cell{3};
  (void)pool().store(block, 64 << 10, std::span<const std::uint32_t>(cell));
  (void)pool().fetch(std::span<const std::uint32_t>(cell), block, 64 << 10);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const bool runtime_first = argc > 1 && std::strcmp(argv[1], "runtime-first") == 0;
  int devices = 0;
  if (!unimem::gpu::available() || cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) {
    std::printf("skipped: no CUDA device\n");
    return kSkip;
  }
  if (runtime_first && cudaFree(nullptr) != cudaSuccess) return 3;
  if (const int code = use_unimem(); code != 0) return code;
  if (!runtime_first && cudaFree(nullptr) != cudaSuccess) return 4;
  std::printf("%s: loaded, stored, fetched; exiting with static objects alive\n", argv[argc > 1 ? 1 : 0]);
  return 0;
}
