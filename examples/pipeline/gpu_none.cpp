// examples/pipeline/gpu_none.cpp — the pipeline built without nvcc: no GPU
// modes; probe() says so, and nothing else is ever called.
#include <stdexcept>

#include "gpu_stages.hpp"

namespace pipeline::gpu {
namespace {
[[noreturn]] void none() { throw std::runtime_error("built without CUDA"); }
}  // namespace
Probe probe() { return {false, "built without nvcc"}; }
void* malloc_device(std::size_t) { none(); }
void free_device(void*) { none(); }
void free_device_quietly(void*) noexcept {}
void copy_to_device(void*, const void*, std::size_t) { none(); }
void copy_to_host(void*, const void*, std::size_t) { none(); }
void sync() { none(); }
void* malloc_device_async(std::size_t) { none(); }
void free_device_async(void*) { none(); }
void* malloc_pinned(std::size_t) { none(); }
void free_pinned(void*) noexcept {}
void copy_to_device_async(void*, const void*, std::size_t) { none(); }
void copy_to_host_async(void*, const void*, std::size_t) { none(); }
void matmul(const float*, std::size_t, std::size_t, const void*, bool, std::size_t, Out) { none(); }
void rmsnorm(const float*, const float*, Out, std::size_t, std::size_t) { none(); }
void rope(const float*, Out, std::size_t, std::size_t, std::size_t, std::size_t, const float*) { none(); }
void attend(const float*, const float*, const float*, Out, std::size_t, std::size_t, std::size_t, std::size_t) {
  none();
}
void swiglu(const float*, const float*, Out, std::size_t) { none(); }
void add(const float*, const float*, Out, std::size_t) { none(); }
void gather(const float*, float*, std::size_t) { none(); }
}  // namespace pipeline::gpu
