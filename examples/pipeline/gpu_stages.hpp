// examples/pipeline/gpu_stages.hpp — what the pipeline needs of a GPU, behind
// plain C++ so that pipeline.cpp needs no CUDA header: the runtime calls the
// standard paths make (cudaMalloc/cudaFree and blocking cudaMemcpy for the
// naive one; the stream-ordered pool, pinned host memory and async copies for
// the competent one) and the layer's kernels. Built from gpu_stages.cu with nvcc, else from gpu_none.cpp, where
// probe() says why there is no GPU.
//
// Kernels are launched asynchronously, in order, on one stream; every pointer
// they get must be device-accessible: device memory, or host pages registered
// with CUDA (a GPU-visible unimem Block) whose host address is the device
// address. Errors throw std::runtime_error naming the call.
#pragma once
#include <cstddef>
#include <string>
#include <utility>

namespace pipeline::gpu {

struct Probe {
  bool present = false;
  std::string name;  // device 0's name, or why there is none
};
Probe probe();

void* malloc_device(std::size_t bytes);
void free_device(void* p);
// For destructors and unwinding: frees p (nullptr: nothing), ignoring errors.
void free_device_quietly(void* p) noexcept;

// Device memory from malloc_device that goes back when the owner goes.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) : p_(malloc_device(bytes)) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~DeviceBuffer() { free_device_quietly(p_); }
  std::byte* get() const { return static_cast<std::byte*>(p_); }

 private:
  void* p_ = nullptr;
};
// Blocking copies; a pageable host side is staged by the driver.
void copy_to_device(void* device, const void* host, std::size_t bytes);
void copy_to_host(void* host, const void* device, std::size_t bytes);
void sync();  // waits for every kernel and copy queued so far

// What a competent engineer uses instead. Device memory from the stream-
// ordered pool (cudaMallocAsync; the pool keeps what is freed for the next
// step instead of returning it to the driver), freed in stream order.
void* malloc_device_async(std::size_t bytes);
void free_device_async(void* p);
// Page-locked host memory (cudaHostAlloc), which the copy engines reach directly.
void* malloc_pinned(std::size_t bytes);
void free_pinned(void* p) noexcept;
// Copies queued on the kernels' stream; the host side must be pinned and
// stay untouched until a sync() (to host) or the next kernel (to device).
void copy_to_device_async(void* device, const void* host, std::size_t bytes);
void copy_to_host_async(void* host, const void* device, std::size_t bytes);

// Where a kernel writes its results: p, and the same values at `also` when
// it is not null (host pages the CPU reads, and the GPU's own device copy of
// them that later kernels read instead of going over the bus).
struct Out {
  float* p;
  float* also = nullptr;
};

// The layer's kernels: the same contracts as pipeline::cpu's stages (the
// elementwise ones may write in place).
void matmul(const float* x, std::size_t m, std::size_t k, const void* w, bool bf16, std::size_t n, Out out);
void rmsnorm(const float* x, const float* w, Out out, std::size_t m, std::size_t n);
void rope(const float* in, Out out, std::size_t m, std::size_t p0, std::size_t dim, std::size_t head_dim,
          const float* table);
void attend(const float* q, const float* keys, const float* values, Out out, std::size_t m, std::size_t p0,
            std::size_t dim, std::size_t heads);
void swiglu(const float* gate, const float* up, Out out, std::size_t n);
void add(const float* x, const float* y, Out out, std::size_t n);
// Reads n floats of (registered) host pages with the GPU's own loads, each
// byte over the bus once, into device memory: for data many blocks or many
// tokens will read again.
void gather(const float* host, float* device, std::size_t n);

}  // namespace pipeline::gpu
