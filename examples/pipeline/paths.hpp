// examples/pipeline/paths.hpp — what separates the two paths: how each
// obtains the layer's memory and moves data between the CPU and the GPU.
// Stages ask a Path for their inputs (need) and outputs (produce) on the side
// they run; the standard paths answer with copies and allocations of their
// own, the unimem path with the same host pages for both sides.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "model.hpp"

namespace pipeline {

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

enum class Where { cpu = 1, gpu = 2 };  // also bits of Buf::valid

// Where each kind of operation runs.
struct Placement {
  Where mm;   // matrix products
  Where vec;  // everything else (norms, RoPE, attention, SwiGLU, residual adds)
  bool uses(Where w) const { return mm == w || vec == w; }
};

enum Stage { kNorm, kQkv, kRope, kAttention, kOut, kMlp, kStages };

// One activation tensor as a path holds it. Standard: a host copy and a
// device copy. unimem: host pages both sides use, plus (dev) the place in
// device memory where the GPU keeps what it gathered of them for reuse.
struct Buf {
  float* host = nullptr;
  float* dev = nullptr;
  std::size_t n = 0;
  int valid = 0;  // Where bits: which of host / dev hold the latest contents
  float* at(Where w) const { return w == Where::cpu ? host : dev; }
};

// One step's activations: m token rows at positions p0 .. p0 + m - 1.
struct Step {
  std::size_t m = 0, p0 = 0;
  Buf x, h, q, k, v, attn, o, gate, up, down;  // k, v: the new rows of the KV cache
  std::uint16_t* x16 = nullptr;                // a CPU matmul's input rounded to bf16
  float* scores = nullptr;                     // CPU attention's scores, heads x positions
};

struct Weights {
  const void* on_cpu[kWeightCount] = {};
  const void* on_gpu[kWeightCount] = {};
  const float* rope_cpu = nullptr;
  const float* rope_gpu = nullptr;
  const void* at(Weight w, Where s) const { return s == Where::cpu ? on_cpu[w] : on_gpu[w]; }
  const float* vec(Weight w, Where s) const { return static_cast<const float*>(at(w, s)); }
  const float* rope(Where s) const { return s == Where::cpu ? rope_cpu : rope_gpu; }
};

struct Counters {
  double stage[kStages] = {};
  double alloc = 0;  // seconds obtaining and releasing memory
  std::size_t alloc_calls = 0;
  std::size_t copies = 0, copy_bytes = 0;     // cudaMemcpy between host and device
  std::size_t gathers = 0, gather_bytes = 0;  // host pages a kernel read into device memory
  // Every other byte crossing PCIe: kernels' loads from and stores to host
  // pages, counted from the kernels' access patterns (each element once; a
  // kernel without a device mirror may load some again, so reads are a floor).
  std::size_t host_reads = 0, host_writes = 0;
  std::size_t pcie_bytes() const { return copy_bytes + gather_bytes + host_reads + host_writes; }
  Counters operator-(const Counters& o) const {
    Counters r = *this;
    r.gathers -= o.gathers;
    r.gather_bytes -= o.gather_bytes;
    r.host_reads -= o.host_reads;
    r.host_writes -= o.host_writes;
    for (int s = 0; s < kStages; ++s) r.stage[s] -= o.stage[s];
    r.alloc -= o.alloc;
    r.alloc_calls -= o.alloc_calls;
    r.copies -= o.copies;
    r.copy_bytes -= o.copy_bytes;
    return r;
  }
};

// How one path obtains memory and moves data between the CPU and the GPU.
class Path {
 public:
  Path(const Config& c, Placement pl, bool x16) : c_(c), pl_(pl), x16_(x16) {}
  virtual ~Path() = default;
  // The KV cache, for one conversation.
  virtual void begin_conversation() = 0;
  virtual void end_conversation() = 0;
  // A step's activations, on the sides the placement uses.
  virtual Step& begin_step(std::size_t m, std::size_t p0) = 0;
  virtual void end_step() = 0;
  // Makes b's latest contents readable on `side` and returns where they are.
  virtual const float* need(Buf& b, Where side) = 0;
  // b is about to be written on `side` (after its inputs were needed); returns where.
  virtual float* produce(Buf& b, Where side) {
    b.valid = int(side);
    return b.at(side);
  }
  // Where a kernel producing b should write the same values too, or nullptr.
  virtual float* also(const Buf&, Where) const { return nullptr; }
  // The whole KV cache, on the side attention runs.
  virtual const float* keys() const = 0;
  virtual const float* values() const = 0;
  // A kernel is about to read the first `rows` rows of the KV cache, weight
  // w, or `rows` rows of the RoPE table: counts what of it crosses PCIe
  // (nothing when it is in device memory).
  virtual void reading_cache(std::size_t /*rows*/) {}
  virtual void reading_weight(Weight /*w*/) {}
  virtual void reading_rope(std::size_t /*rows*/) {}

  // unimem's Layout.stat(); empty for the standard path.
  virtual std::string layout_stat() const { return {}; }

  const Weights& weights() const { return weights_; }
  Counters counters;
  double load_seconds = 0;
  // Of load_seconds, the part spent making host memory the GPU can copy
  // from or read (pinned buffers; unimem: the Layout opened and registered).
  double gpu_setup_seconds = 0;
  bool timed = true;  // off while allocations are replayed on their own

 protected:
  // Times the allocations made while it lives.
  struct AllocTimer {
    Path& p;
    Clock::time_point t = p.timed ? Clock::now() : Clock::time_point{};
    ~AllocTimer() {
      if (p.timed) p.counters.alloc += since(t);
    }
  };
  std::size_t widest() const { return std::max(c_.dim, c_.mlp); }
  // The step's record, emptied, for rows p0 .. p0 + m - 1.
  Step& fresh_step(std::size_t m, std::size_t p0) {
    step_ = Step{};
    step_.m = m;
    step_.p0 = p0;
    return step_;
  }
  Config c_;
  Placement pl_;
  bool x16_;  // CPU matmuls need a bf16 copy of their input
  Weights weights_;
  Step step_;
};

// The standard paths: weights read() into malloc'ed buffers (and cudaMalloc +
// cudaMemcpy'd once when a GPU is used).
//   competent  device tensors from the stream-ordered pool (cudaMallocAsync /
//              cudaFreeAsync, memory kept by the pool), host tensors that
//              cross to the GPU in pinned memory taken once, cudaMemcpyAsync
//              on the kernels' stream with one wait where the CPU needs the
//              GPU's results, a KV cache allocated once for the conversation;
//              new/delete for what stays on the CPU
//   naive      new/delete and cudaMalloc/cudaFree per tensor per step, a
//              blocking cudaMemcpy from pageable memory at every hand-off,
//              a KV cache that grows a row at a time on the CPU
enum class StandardStyle { competent, naive };
std::unique_ptr<Path> make_standard_path(const std::string& file, const Config& c, Placement pl, bool x16,
                                         StandardStyle style);

// How the unimem path's GPU stages reach its pages.
struct UnimemGpuOptions {
  // GPU matrix products read Layout.weights over the bus every token instead
  // of a device copy made once at load.
  bool weights_in_place = false;
  // A device mirror of scratch and history: kernels write through to it and
  // gather what the CPU wrote into it once. Off: every kernel reads the host
  // pages over the bus (zero copies of any kind, and much slower).
  bool mirror = true;
};

// The unimem path: one Layout (GPU-visible when a GPU is used); weights
// loaded from safetensors into Layout.weights, activations from scratch
// through a Lane and clear_pass, the KV cache in history and clear_talk.
std::unique_ptr<Path> make_unimem_path(const std::string& file, const Config& c, Placement pl, bool x16,
                                       const UnimemGpuOptions& gpu);

}  // namespace pipeline
