// examples/pipeline/gpu_stages.cu — the layer's kernels and the runtime calls
// of pipeline/gpu_stages.hpp.
//
// Decoding is a matrix-vector product per weight matrix, bound by reading the
// weights, so matmul gives each output row one warp that streams its weight
// row with 16-byte loads and reuses it for up to four activation rows at a
// time. The activations are read where they are: with unimem they are host
// pages the CPU wrote, fetched over the bus by the loads themselves (L2 keeps
// them for the other warps). Every kernel is deterministic (fixed reduction
// order), so the two paths agree bit for bit.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "gpu_stages.hpp"

namespace pipeline::gpu {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
void launched(const char* what) { check(cudaGetLastError(), what); }
unsigned blocks_for(std::size_t n, unsigned threads) { return unsigned((n + threads - 1) / threads); }

__device__ inline float widen(float v) { return v; }
__device__ inline float widen(std::uint16_t v) { return __uint_as_float(unsigned(v) << 16); }

__device__ inline void load8(const std::uint16_t* p, float f[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(words[i] << 16);
    f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}
__device__ inline void load8(const float* p, float f[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

__device__ inline void put(Out o, std::size_t i, float v) {
  o.p[i] = v;
  if (o.also) o.also[i] = v;
}

constexpr int kRowsAtOnce = 4;
constexpr int kWarps = 8;  // output rows per block
constexpr int kUnroll = 4;

// One warp per output row; the block's kWarps results for an activation row
// leave together, as one 32-byte store: over the bus to host pages, 4-byte
// stores from each warp would each be a transaction of their own.
template <class W, bool kVector>
__global__ void matmul_kernel(const float* __restrict__ x, int m, int k, const W* __restrict__ w, int n, Out out) {
  __shared__ float results[kRowsAtOnce][kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarps + warp;
  const bool active = row < n;
  const W* wr = w + std::size_t(active ? row : 0) * k;
  for (int r0 = 0; r0 < m; r0 += kRowsAtOnce) {
    const int rows = min(kRowsAtOnce, m - r0);
    float acc[kRowsAtOnce] = {};
    if (active) {
      int i = lane;
      if (kVector) {
        const int kv = k / 256 * 256;
        i = lane * 8;
        // kUnroll weight loads in flight per lane before any is used: one
        // 16-byte load per lane at a time leaves HBM at half its rate.
        for (; i + (kUnroll - 1) * 256 < kv; i += kUnroll * 256) {
          float wf[kUnroll][8];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) load8(wr + i + u * 256, wf[u]);
#pragma unroll
          for (int r = 0; r < kRowsAtOnce; ++r) {
            if (r < rows) {
#pragma unroll
              for (int u = 0; u < kUnroll; ++u) {
                float xf[8];
                load8(x + std::size_t(r0 + r) * k + i + u * 256, xf);
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[r] += wf[u][j] * xf[j];
              }
            }
          }
        }
        for (; i < kv; i += 256) {
          float wf[8];
          load8(wr + i, wf);
#pragma unroll
          for (int r = 0; r < kRowsAtOnce; ++r) {
            if (r < rows) {
              float xf[8];
              load8(x + std::size_t(r0 + r) * k + i, xf);
#pragma unroll
              for (int j = 0; j < 8; ++j) acc[r] += wf[j] * xf[j];
            }
          }
        }
        i = kv + lane;
      }
      for (; i < k; i += 32) {
        const float wv = widen(wr[i]);
        for (int r = 0; r < rows; ++r) acc[r] += wv * x[std::size_t(r0 + r) * k + i];
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsAtOnce; ++r) {
      for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_down_sync(0xffffffffu, acc[r], off);
    }
    if (lane == 0) {
      for (int r = 0; r < kRowsAtOnce; ++r) results[r][warp] = acc[r];
    }
    __syncthreads();
    const int r = threadIdx.x / kWarps, col = blockIdx.x * kWarps + threadIdx.x % kWarps;
    if (r < rows && col < n) put(out, std::size_t(r0 + r) * n + col, results[r][threadIdx.x % kWarps]);
    __syncthreads();
  }
}

// Sum or max over the block; every thread gets the result. `red` holds 32 floats.
__device__ float block_reduce(float v, float* red, bool max) {
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = max ? fmaxf(v, o) : v + o;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = (blockDim.x + 31) / 32;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? red[lane] : (max ? -1e30f : 0.0f);
    for (int off = 16; off > 0; off /= 2) {
      const float o = __shfl_xor_sync(0xffffffffu, v, off);
      v = max ? fmaxf(v, o) : v + o;
    }
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  const float result = red[0];
  __syncthreads();
  return result;
}

__global__ void rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ w, Out out, int n) {
  __shared__ float red[32];
  const float* xr = x + std::size_t(blockIdx.x) * n;
  float ss = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_reduce(ss, red, false);
  const float scale = 1.0f / sqrtf(ss / float(n) + 1e-5f);
  for (int i = threadIdx.x; i < n; i += blockDim.x) put(out, std::size_t(blockIdx.x) * n + i, xr[i] * scale * w[i]);
}

__global__ void rope_kernel(const float* in, Out out, int m, int p0, int dim, int head_dim,
                            const float* __restrict__ table) {
  const int pairs = dim / 2;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= m * pairs) return;
  const int r = idx / pairs, i = 2 * (idx % pairs);
  const int j = (i % head_dim) / 2;
  const float* cs = table + (std::size_t(p0 + r) * (head_dim / 2) + j) * 2;
  const std::size_t at = std::size_t(r) * dim + i;
  const float a = in[at], b = in[at + 1];
  put(out, at, a * cs[0] - b * cs[1]);
  put(out, at + 1, a * cs[1] + b * cs[0]);
}

// One block per (head, row); scores for positions 0 .. p0 + row in shared
// memory. Decoding has one row, so a head's block must use its threads
// well: each warp scores whole cache rows (its lanes read a key row
// together, 16 bytes each, and reduce by shuffles), and the weighted sum of
// values is split over kAttendParts groups of threads by position, then
// added in a fixed order; each thread keeps kAttendRows rows' loads in
// flight. One thread per position reading its key row, then one load at a
// time per value, took 60 us per token at the large preset (5 MiB of cache):
// a memory latency per cache row.
constexpr int kAttendThreads = 512;
constexpr int kAttendRows = 8;  // cache rows whose loads a thread has in flight at once
__global__ void attend_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                              const float* __restrict__ values, Out out, int p0, int dim, int heads) {
  extern __shared__ float shared[];
  float* red = shared;                // 32 floats for block_reduce
  float* qs = shared + 32;            // the head's query (head_dim floats)
  float* partial = qs + dim / heads;  // kAttendThreads partial sums
  float* scores = partial + kAttendThreads;
  const int h = blockIdx.x, r = blockIdx.y, hd = dim / heads, last = p0 + r;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = kAttendThreads / 32;
  for (int i = threadIdx.x; i < hd; i += kAttendThreads) qs[i] = q[std::size_t(r) * dim + h * hd + i];
  __syncthreads();
  const float inv_sqrt = 1.0f / sqrtf(float(hd));
  const float* kh = keys + h * hd;
  int t = warp;
  for (; t + (kAttendRows - 1) * warps <= last; t += kAttendRows * warps) {  // rows' loads in flight together
    float s[kAttendRows] = {};
    for (int i = lane; i < hd; i += 32) {
#pragma unroll
      for (int u = 0; u < kAttendRows; ++u) s[u] += qs[i] * kh[std::size_t(t + u * warps) * dim + i];
    }
#pragma unroll
    for (int u = 0; u < kAttendRows; ++u) {
      for (int off = 16; off > 0; off /= 2) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);
      if (lane == 0) scores[t + u * warps] = s[u] * inv_sqrt;
    }
  }
  for (; t <= last; t += warps) {
    float s = 0;
    for (int i = lane; i < hd; i += 32) s += qs[i] * kh[std::size_t(t) * dim + i];
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) scores[t] = s * inv_sqrt;
  }
  __syncthreads();
  float local_max = -1e30f;
  for (int t = threadIdx.x; t <= last; t += kAttendThreads) local_max = fmaxf(local_max, scores[t]);
  const float top = block_reduce(local_max, red, true);
  float local_sum = 0;
  for (int t = threadIdx.x; t <= last; t += kAttendThreads) local_sum += scores[t] = expf(scores[t] - top);
  const float sum = block_reduce(local_sum, red, false);
  if (hd > kAttendThreads) {  // more elements than threads: each thread sums its own over every position
    for (int e = threadIdx.x; e < hd; e += kAttendThreads) {
      float acc = 0;
      for (int t = 0; t <= last; ++t) acc += scores[t] * values[std::size_t(t) * dim + h * hd + e];
      put(out, std::size_t(r) * dim + h * hd + e, acc / sum);
    }
    return;
  }
  // Threads e, e + hd, e + 2 hd, ... sum element e over every parts-th position.
  const int parts = kAttendThreads / hd;
  const int e = threadIdx.x % hd, part = threadIdx.x / hd;
  float acc = 0;
  if (part < parts) {
    const float* ve = values + h * hd + e;
    int t = part;
    for (; t + (kAttendRows - 1) * parts <= last; t += kAttendRows * parts) {
      float v[kAttendRows];
#pragma unroll
      for (int u = 0; u < kAttendRows; ++u) v[u] = ve[std::size_t(t + u * parts) * dim];
#pragma unroll
      for (int u = 0; u < kAttendRows; ++u) acc += scores[t + u * parts] * v[u];
    }
    for (; t <= last; t += parts) acc += scores[t] * ve[std::size_t(t) * dim];
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x < hd) {
    float total = 0;
    for (int p = 0; p < parts; ++p) total += partial[p * hd + threadIdx.x];
    put(out, std::size_t(r) * dim + h * hd + threadIdx.x, total / sum);
  }
}

__global__ void swiglu_kernel(const float* gate, const float* __restrict__ up, Out out, std::size_t n) {
  const std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) put(out, i, gate[i] / (1.0f + expf(-gate[i])) * up[i]);
}

__global__ void add_kernel(const float* x, const float* __restrict__ y, Out out, std::size_t n) {
  const std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) put(out, i, x[i] + y[i]);
}

__global__ void gather_kernel(const float* __restrict__ host, float* __restrict__ device, std::size_t n) {
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    device[i] = host[i];
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

Probe probe() {
  int count = 0;
  if (const cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) return {false, cudaGetErrorString(e)};
  if (count == 0) return {false, "no CUDA device"};
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  return {true, prop.name};
}

void* malloc_device(std::size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}
void free_device(void* p) { check(cudaFree(p), "cudaFree"); }
void free_device_quietly(void* p) noexcept {
  if (p) cudaFree(p);
}
void copy_to_device(void* device, const void* host, std::size_t bytes) {
  check(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}
void copy_to_host(void* host, const void* device, std::size_t bytes) {
  check(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}
void sync() { check(cudaStreamSynchronize(0), "cudaStreamSynchronize"); }

void* malloc_device_async(std::size_t bytes) {
  static const bool pool_keeps_memory = [] {
    // By default the pool returns freed memory to the driver at every
    // synchronization; serving code keeps it (as PyTorch's caching allocator does).
    int device = 0;
    cudaMemPool_t pool;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
    std::uint64_t keep = ~std::uint64_t{0};
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
    return true;
  }();
  (void)pool_keeps_memory;
  void* p = nullptr;
  check(cudaMallocAsync(&p, bytes, 0), "cudaMallocAsync");
  return p;
}
void free_device_async(void* p) { check(cudaFreeAsync(p, 0), "cudaFreeAsync"); }
void* malloc_pinned(std::size_t bytes) {
  void* p = nullptr;
  check(cudaHostAlloc(&p, bytes, cudaHostAllocDefault), "cudaHostAlloc");
  return p;
}
void free_pinned(void* p) noexcept {
  if (p) cudaFreeHost(p);
}
void copy_to_device_async(void* device, const void* host, std::size_t bytes) {
  check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, 0), "cudaMemcpyAsync to device");
}
void copy_to_host_async(void* host, const void* device, std::size_t bytes) {
  check(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, 0), "cudaMemcpyAsync to host");
}

void matmul(const float* x, std::size_t m, std::size_t k, const void* w, bool bf16, std::size_t n, Out out) {
  constexpr unsigned kThreads = kWarps * 32;
  const unsigned blocks = blocks_for(n, kWarps);
  const bool vector = k % 8 == 0 && aligned16(x) && aligned16(w);
  const int M = int(m), K = int(k), N = int(n);
  if (bf16) {
    const auto* wb = static_cast<const std::uint16_t*>(w);
    if (vector)
      matmul_kernel<std::uint16_t, true><<<blocks, kThreads>>>(x, M, K, wb, N, out);
    else
      matmul_kernel<std::uint16_t, false><<<blocks, kThreads>>>(x, M, K, wb, N, out);
  } else {
    const auto* wf = static_cast<const float*>(w);
    if (vector)
      matmul_kernel<float, true><<<blocks, kThreads>>>(x, M, K, wf, N, out);
    else
      matmul_kernel<float, false><<<blocks, kThreads>>>(x, M, K, wf, N, out);
  }
  launched("matmul kernel");
}

void rmsnorm(const float* x, const float* w, Out out, std::size_t m, std::size_t n) {
  rmsnorm_kernel<<<unsigned(m), 256>>>(x, w, out, int(n));
  launched("rmsnorm kernel");
}

void rope(const float* in, Out out, std::size_t m, std::size_t p0, std::size_t dim, std::size_t head_dim,
          const float* table) {
  rope_kernel<<<blocks_for(m * dim / 2, 256), 256>>>(in, out, int(m), int(p0), int(dim), int(head_dim), table);
  launched("rope kernel");
}

void attend(const float* q, const float* keys, const float* values, Out out, std::size_t m, std::size_t p0,
            std::size_t dim, std::size_t heads) {
  const std::size_t shared = (32 + dim / heads + kAttendThreads + p0 + m) * sizeof(float);
  attend_kernel<<<dim3(unsigned(heads), unsigned(m)), kAttendThreads, shared>>>(q, keys, values, out, int(p0), int(dim),
                                                                                int(heads));
  launched("attention kernel");
}

void swiglu(const float* gate, const float* up, Out out, std::size_t n) {
  swiglu_kernel<<<blocks_for(n, 256), 256>>>(gate, up, out, n);
  launched("swiglu kernel");
}

void add(const float* x, const float* y, Out out, std::size_t n) {
  add_kernel<<<blocks_for(n, 256), 256>>>(x, y, out, n);
  launched("add kernel");
}

void gather(const float* host, float* device, std::size_t n) {
  // Enough loads in flight to cover the bus's latency; a token's vector is 16-44 KiB.
  gather_kernel<<<std::min(blocks_for(n, 256), 64u), 256>>>(host, device, n);
  launched("gather kernel");
}

}  // namespace pipeline::gpu
