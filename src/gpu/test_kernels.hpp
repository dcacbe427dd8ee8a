// src/gpu/test_kernels.hpp — kernels for the GPU tests, callable from plain C++.
//
// Each function runs on `device`, waits for the kernel, and returns "" on
// success or the CUDA error as text. Pointers are whatever the kernel should
// dereference: a Block's host pointer where the device allows it, or
// Block::device_pointer().
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define UNIMEM_HD __host__ __device__
#else
#define UNIMEM_HD
#endif

namespace unimem::gpu_test {

// The value expected at index i: exact in integer arithmetic on both sides.
UNIMEM_HD inline std::uint32_t pattern(std::size_t i, std::uint32_t seed) {
  return static_cast<std::uint32_t>(i) * 2654435761u + seed;
}

// Devices the CUDA runtime sees; 0 when there is no driver or device.
int device_count();

std::string fill(int device, std::uint32_t* p, std::size_t n, std::uint32_t seed);
// Counts the indices whose value is not pattern(i, seed) into *mismatches.
std::string count_mismatches(int device, const std::uint32_t* p, std::size_t n, std::uint32_t seed,
                             unsigned long long* mismatches);
// Device memory for tests: 0 on failure.
std::uintptr_t device_alloc(int device, std::size_t bytes);
void device_free(int device, std::uintptr_t p);
// cudaMemGetInfo's free bytes (0 on error).
std::size_t free_device_memory(int device);
// cudaMemcpy device to host; "" on success, else the error.
std::string copy_to_host(int device, void* dst, std::uintptr_t src, std::size_t bytes);

// cudaDeviceCanAccessPeer both ways (false on error).
bool peers(int a, int b);

// True when the runtime reports `p` as registered (page-locked) host memory.
bool is_registered_host_memory(const void* p);

}  // namespace unimem::gpu_test
