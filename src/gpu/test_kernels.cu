// src/gpu/test_kernels.cu — the kernels behind gpu_test.cpp.
#include <cuda_runtime.h>

#include "gpu/test_kernels.hpp"

namespace unimem::gpu_test {
namespace {

__global__ void fill_kernel(std::uint32_t* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n;
       i += std::size_t{gridDim.x} * blockDim.x) {
    p[i] = pattern(i, seed);
  }
}

__global__ void check_kernel(const std::uint32_t* p, std::size_t n, std::uint32_t seed, unsigned long long* bad) {
  unsigned long long local = 0;
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n;
       i += std::size_t{gridDim.x} * blockDim.x) {
    local += p[i] != pattern(i, seed);
  }
  if (local) atomicAdd(bad, local);
}

std::string text(cudaError_t e) {
  return e == cudaSuccess ? "" : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

#define UNIMEM_TRY(call)                    \
  do {                                      \
    cudaError_t e_ = (call);                \
    if (e_ != cudaSuccess) return text(e_); \
  } while (0)

}  // namespace

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

bool peers(int a, int b) {
  int ab = 0, ba = 0;
  return cudaDeviceCanAccessPeer(&ab, a, b) == cudaSuccess && cudaDeviceCanAccessPeer(&ba, b, a) == cudaSuccess && ab &&
         ba;
}

std::string fill(int device, std::uint32_t* p, std::size_t n, std::uint32_t seed) {
  UNIMEM_TRY(cudaSetDevice(device));
  fill_kernel<<<264, 256>>>(p, n, seed);
  UNIMEM_TRY(cudaGetLastError());
  UNIMEM_TRY(cudaDeviceSynchronize());
  return "";
}

std::string count_mismatches(int device, const std::uint32_t* p, std::size_t n, std::uint32_t seed,
                             unsigned long long* mismatches) {
  UNIMEM_TRY(cudaSetDevice(device));
  unsigned long long* bad = nullptr;
  UNIMEM_TRY(cudaMalloc(&bad, sizeof *bad));
  cudaError_t e = cudaMemset(bad, 0, sizeof *bad);
  if (e == cudaSuccess) {
    check_kernel<<<264, 256>>>(p, n, seed, bad);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaMemcpy(mismatches, bad, sizeof *bad, cudaMemcpyDeviceToHost);
  cudaFree(bad);
  return text(e);
}

std::uintptr_t device_alloc(int device, std::size_t bytes) {
  void* p = nullptr;
  if (cudaSetDevice(device) != cudaSuccess || cudaMalloc(&p, bytes) != cudaSuccess) return 0;
  cudaMemset(p, 0xff, bytes);  // poison: every byte must be written
  cudaDeviceSynchronize();
  return reinterpret_cast<std::uintptr_t>(p);
}

std::string copy_to_host(int device, void* dst, std::uintptr_t src, std::size_t bytes) {
  if (cudaSetDevice(device) != cudaSuccess) return "cudaSetDevice failed";
  const cudaError_t e = cudaMemcpy(dst, reinterpret_cast<const void*>(src), bytes, cudaMemcpyDeviceToHost);
  return e == cudaSuccess ? "" : cudaGetErrorString(e);
}

std::size_t free_device_memory(int device) {
  std::size_t free = 0, total = 0;
  if (cudaSetDevice(device) != cudaSuccess || cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
  return free;
}

void device_free(int device, std::uintptr_t p) {
  cudaSetDevice(device);
  cudaFree(reinterpret_cast<void*>(p));
}

bool is_registered_host_memory(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

}  // namespace unimem::gpu_test
