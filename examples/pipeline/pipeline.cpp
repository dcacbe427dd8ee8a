// examples/pipeline/pipeline.cpp — one transformer decoder layer (RMSNorm, QKV,
// RoPE, causal attention over a KV cache, output projection, SwiGLU MLP)
// generating tokens after a prompt, two ways:
//   standard  what code usually does: weights read() into malloc'ed buffers
//             (and cudaMalloc + cudaMemcpy'd for a GPU), a new/delete and a
//             cudaMalloc/cudaFree per tensor per step, a cudaMemcpy from
//             pageable memory at every host/device hand-off, a KV cache that
//             grows
//   unimem    weights loaded from safetensors into Layout.weights,
//             activations taken from scratch (clear_pass per step), the KV
//             cache in history (clear_talk per conversation); the Layout's
//             pages are GPU-visible, so CPU and GPU stages read and write the
//             same pages and nothing is staged
// in three modes: cpu (everything on the CPU; matrix products through oneDNN,
// on AMX where the CPU has it), gpu (everything on the GPU) and split (matrix
// products on the GPU, everything else on the CPU: the hand-offs are where
// copies cost). Both paths run the same kernels; their outputs are compared
// with each other and with a float64 reference, and the program fails when
// they differ.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <unimem/unimem.hpp>

#include "cpu_matmul.hpp"
#include "cpu_stages.hpp"
#include "gpu_stages.hpp"
#include "model.hpp"

namespace {

using namespace pipeline;
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr const char* kUsage =
    "usage: unimem_pipeline [--mode auto|cpu|gpu|split|all] [--preset large] [--dim N] [--heads N]\n"
    "                       [--mlp N] [--prompt N] [--tokens N] [--bf16] [--gpu-weights device|host]\n"
    "                       [--repeat N]\n"
    "  --mode         auto (default): cpu without a GPU, all three with one\n"
    "  --preset large dim 4096, 32 heads, MLP 11008, bf16, 128 prompt + 32 generated tokens\n"
    "  --gpu-weights  device (default): GPU matrix products read a device copy of the weights,\n"
    "                 made once at load; host: they read Layout.weights in place over the bus\n"
    "  --repeat       conversations per path (default 5), alternating; medians reported\n"
    "  --gpu-or-skip  (tests) without a GPU, print why and exit 77 instead of failing\n";

enum class Where { cpu = 1, gpu = 2 };  // also bits of Buf::valid
enum class Mode { cpu, gpu, split };
const char* mode_name(Mode m) { return m == Mode::cpu ? "cpu" : m == Mode::gpu ? "gpu" : "split"; }

// Where each kind of operation runs.
struct Placement {
  Where mm;   // matrix products
  Where vec;  // everything else (norms, RoPE, attention, SwiGLU, residual adds)
  bool uses(Where w) const { return mm == w || vec == w; }
};
Placement placement(Mode m) {
  if (m == Mode::cpu) return {Where::cpu, Where::cpu};
  if (m == Mode::gpu) return {Where::gpu, Where::gpu};
  return {Where::gpu, Where::cpu};
}

enum Stage { kNorm, kQkv, kRope, kAttention, kOut, kMlp, kStages };
const char* kStageNames[] = {"rmsnorm", "qkv projection", "rope", "attention", "out projection", "swiglu mlp"};

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
  std::size_t copies = 0, copy_bytes = 0;   // cudaMemcpy between host and device
  std::size_t gathers = 0, gather_bytes = 0;  // host pages a kernel read into device memory
  Counters operator-(const Counters& o) const {
    Counters r = *this;
    r.gathers -= o.gathers;
    r.gather_bytes -= o.gather_bytes;
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
  // need_reused: for inputs read many times there (a GPU matmul's input by
  // every block, the KV cache by every later token).
  virtual const float* need(Buf& b, Where side) = 0;
  virtual const float* need_reused(Buf& b, Where side) { return need(b, side); }
  // b is about to be written on `side` (after its inputs were needed); returns where.
  virtual float* produce(Buf& b, Where side) {
    b.valid = int(side);
    return b.at(side);
  }
  // The whole KV cache, on the side attention runs.
  virtual const float* keys() const = 0;
  virtual const float* values() const = 0;

  const Weights& weights() const { return weights_; }
  Counters counters;
  double load_seconds = 0;
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
  Config c_;
  Placement pl_;
  bool x16_;  // CPU matmuls need a bf16 copy of their input
  Weights weights_;
  Step step_;
};

// ---- the standard path ---------------------------------------------------------
class StandardPath final : public Path {
 public:
  StandardPath(const std::string& file, const Config& c, Placement pl, bool x16) : Path(c, pl, x16) {
    const auto t = Clock::now();
    const unimem::SafetensorsHeader header = unimem::read_safetensors_header(file);
    const auto specs = weight_specs(c);
    unimem::ReadOptions plain;  // read() into the buffer, like everyone's first loader
    plain.direct = false;
    plain.io_uring = false;
    for (int i = 0; i < kWeightCount; ++i) {
      const auto it = std::find_if(header.tensors.begin(), header.tensors.end(),
                                   [&](const auto& info) { return info.name == specs[i].name; });
      if (it == header.tensors.end()) throw std::runtime_error(std::string("no tensor ") + specs[i].name);
      void* buf = std::malloc(it->bytes);
      loaded_.push_back({buf, it->bytes});
      unimem::read_file(file, it->file_offset, {static_cast<std::byte*>(buf), it->bytes}, plain);
      weights_.on_cpu[i] = buf;
    }
    rope_ = rope_table(c);
    weights_.rope_cpu = rope_.data();
    if (pl.uses(Where::gpu)) {
      for (int i = 0; i < kWeightCount; ++i) {
        weights_.on_gpu[i] = upload(loaded_[i].first, loaded_[i].second);
      }
      weights_.rope_gpu = static_cast<const float*>(upload(rope_.data(), rope_.size() * sizeof(float)));
    }
    load_seconds = since(t);
  }
  ~StandardPath() override {
    for (auto [p, bytes] : loaded_) std::free(p);
    for (void* p : device_weights_) gpu::free_device(p);
  }

  void begin_conversation() override {
    AllocTimer timer{*this};
    if (pl_.vec == Where::gpu) {  // a device cache of the conversation's full length
      kv_dev_[0] = alloc_device(c_.positions() * c_.dim);
      kv_dev_[1] = alloc_device(c_.positions() * c_.dim);
    }
  }
  void end_conversation() override {
    AllocTimer timer{*this};
    for (float*& p : kv_dev_) {
      if (p) gpu::free_device(p), ++counters.alloc_calls;
      p = nullptr;
    }
    kv_host_[0] = {};  // the vectors' memory goes back
    kv_host_[1] = {};
    counters.alloc_calls += 2;
  }

  Step& begin_step(std::size_t m, std::size_t p0) override {
    AllocTimer timer{*this};
    Step& s = step_;
    s = Step{m, p0};
    const std::size_t d = m * c_.dim, f = m * c_.mlp;
    const int both = int(pl_.mm) | int(pl_.vec);
    make(s.x, d, int(Where::cpu) | int(pl_.vec));
    make(s.h, d, both);
    make(s.q, d, both);
    make(s.attn, d, both);
    make(s.o, d, both);
    make(s.gate, f, both);
    make(s.up, f, both);
    make(s.down, d, both);
    for (int i = 0; i < 2; ++i) {
      Buf& b = i == 0 ? s.k : s.v;
      b.n = d;
      if (pl_.vec == Where::cpu) {  // the cache grows a row at a time
        kv_host_[i].resize((p0 + m) * c_.dim);
        ++counters.alloc_calls;
        b.host = kv_host_[i].data() + p0 * c_.dim;
        if (pl_.mm == Where::gpu) b.dev = temp_device(d);
      } else {
        b.dev = kv_dev_[i] + p0 * c_.dim;
      }
    }
    if (x16_) s.x16 = temp_host<std::uint16_t>(m * widest());
    if (pl_.vec == Where::cpu) s.scores = temp_host<float>(c_.heads * c_.positions());
    return s;
  }
  void end_step() override {
    AllocTimer timer{*this};
    for (void* p : host_temps_) ::operator delete[](p);
    for (void* p : device_temps_) gpu::free_device(p);
    counters.alloc_calls += host_temps_.size() + device_temps_.size();
    host_temps_.clear();
    device_temps_.clear();
  }

  const float* need(Buf& b, Where side) override {
    if (!(b.valid & int(side))) {
      const std::size_t bytes = b.n * sizeof(float);
      if (side == Where::gpu) {
        gpu::copy_to_device(b.dev, b.host, bytes);
      } else {
        gpu::copy_to_host(b.host, b.dev, bytes);
      }
      ++counters.copies;
      counters.copy_bytes += bytes;
      b.valid |= int(side);
    }
    return b.at(side);
  }
  const float* keys() const override { return pl_.vec == Where::cpu ? kv_host_[0].data() : kv_dev_[0]; }
  const float* values() const override { return pl_.vec == Where::cpu ? kv_host_[1].data() : kv_dev_[1]; }

 private:
  const void* upload(const void* host, std::size_t bytes) {
    void* d = gpu::malloc_device(bytes);
    device_weights_.push_back(d);
    gpu::copy_to_device(d, host, bytes);
    return d;
  }
  float* alloc_device(std::size_t floats) {
    ++counters.alloc_calls;
    return static_cast<float*>(gpu::malloc_device(floats * sizeof(float)));
  }
  float* temp_device(std::size_t floats) {
    float* p = alloc_device(floats);
    device_temps_.push_back(p);
    return p;
  }
  template <class T>
  T* temp_host(std::size_t count) {
    ++counters.alloc_calls;
    T* p = new T[count];
    host_temps_.push_back(p);
    return p;
  }
  void make(Buf& b, std::size_t n, int sides) {
    b.n = n;
    if (sides & int(Where::cpu)) b.host = temp_host<float>(n);
    if (sides & int(Where::gpu)) b.dev = temp_device(n);
  }

  std::vector<std::pair<void*, std::size_t>> loaded_;
  std::vector<float> rope_;
  std::vector<void*> device_weights_;
  std::vector<float> kv_host_[2];
  float* kv_dev_[2] = {};
  std::vector<void*> host_temps_, device_temps_;
};

// ---- the unimem path ---------------------------------------------------------
class UnimemPath final : public Path {
 public:
  UnimemPath(const std::string& file, const Config& c, Placement pl, bool x16, bool gpu_weights_in_place)
      : Path(c, pl, x16), layout_(open_layout(file, c, pl, x16)) {
    const auto t = Clock::now();
    model_ = unimem::Safetensors::load(file, layout_.weights(), 64);
    const auto specs = weight_specs(c);
    for (int i = 0; i < kWeightCount; ++i) weights_.on_cpu[i] = model_.at(specs[i].name).data;
    const std::vector<float> table = rope_table(c);
    float* rope = take(layout_.weights(), table.size());
    std::copy(table.begin(), table.end(), rope);
    weights_.rope_cpu = rope;
    if (pl.uses(Where::gpu)) {
      for (const unimem::Tape* tape : {&layout_.weights(), &layout_.scratch(), &layout_.history()}) {
        if (tape->block().device_pointer(0) != tape->block().data()) {
          throw std::runtime_error("this GPU does not use host addresses for registered pages");
        }
      }
      if (gpu_weights_in_place) {  // the GPU reads Layout.weights over the bus
        std::copy(std::begin(weights_.on_cpu), std::end(weights_.on_cpu), weights_.on_gpu);
        weights_.rope_gpu = rope;
      } else {  // one DMA from the pinned pages into device memory
        const std::byte* base = layout_.weights().block().data();
        const std::size_t used = layout_.weights().used();
        auto* device = static_cast<std::byte*>(gpu::malloc_device(used));
        device_weights_ = device;
        gpu::copy_to_device(device, base, used);
        auto moved = [&](const void* p) { return device + (static_cast<const std::byte*>(p) - base); };
        for (int i = 0; i < kWeightCount; ++i) weights_.on_gpu[i] = moved(weights_.on_cpu[i]);
        weights_.rope_gpu = reinterpret_cast<const float*>(moved(rope));
      }
    }
    if (pl.uses(Where::gpu)) {  // once, like the weights: where the GPU keeps what it gathered
      mirror_[0] = static_cast<std::byte*>(gpu::malloc_device(layout_.scratch().total()));
      mirror_[1] = static_cast<std::byte*>(gpu::malloc_device(layout_.history().total()));
    }
    load_seconds = since(t) + open_seconds_;
  }
  ~UnimemPath() override {
    for (std::byte* p : {device_weights_, mirror_[0], mirror_[1]}) {
      if (p) gpu::free_device(p);
    }
  }

  void begin_conversation() override {
    AllocTimer timer{*this};
    keys_ = take(layout_.history(), c_.positions() * c_.dim);
    values_ = take(layout_.history(), c_.positions() * c_.dim);
    counters.alloc_calls += 2;
  }
  void end_conversation() override {
    AllocTimer timer{*this};
    layout_.clear_talk();
    ++counters.alloc_calls;
  }

  Step& begin_step(std::size_t m, std::size_t p0) override {
    AllocTimer timer{*this};
    Step& s = step_;
    s = Step{m, p0};
    const std::size_t d = m * c_.dim, f = m * c_.mlp;
    unimem::Tape::Lane& scratch = lane_;
    for (auto [b, n] : {std::pair{&s.x, d}, {&s.h, d}, {&s.q, d}, {&s.attn, d}, {&s.o, d}, {&s.gate, f},
                        {&s.up, f}, {&s.down, d}}) {
      b->n = n;
      b->host = take(scratch, n);
      b->dev = mirror_of(b->host);
    }
    counters.alloc_calls += 8;
    s.k = {keys_ + p0 * c_.dim, mirror_of(keys_ + p0 * c_.dim), d};
    s.v = {values_ + p0 * c_.dim, mirror_of(values_ + p0 * c_.dim), d};
    if (x16_) {
      s.x16 = reinterpret_cast<std::uint16_t*>(take(scratch, (m * widest() + 1) / 2));
      ++counters.alloc_calls;
    }
    if (pl_.vec == Where::cpu) {
      s.scores = take(scratch, c_.heads * c_.positions());
      ++counters.alloc_calls;
    }
    return s;
  }
  void end_step() override {
    AllocTimer timer{*this};
    layout_.clear_pass();  // the whole step's activations at once
    ++counters.alloc_calls;
  }

  // Both sides use the host pages: kernels write them, and read them over
  // the bus; a CPU read of what a kernel wrote only waits for the kernel.
  // What the GPU reads again (need_reused) it first gathers into its mirror
  // of the tape, with its own loads: nothing is staged or copied by the CPU.
  const float* need(Buf& b, Where side) override {
    if (side == Where::cpu && !(b.valid & int(Where::cpu))) {
      gpu::sync();
      b.valid |= int(Where::cpu);
    }
    return side == Where::gpu && (b.valid & int(Where::gpu)) ? b.dev : b.host;
  }
  const float* need_reused(Buf& b, Where side) override {
    if (side == Where::cpu) return need(b, side);
    if (!(b.valid & int(Where::gpu))) {
      gpu::gather(b.host, b.dev, b.n);
      ++counters.gathers;
      counters.gather_bytes += b.n * sizeof(float);
      b.valid |= int(Where::gpu);
    }
    return b.dev;
  }
  float* produce(Buf& b, Where side) override {
    b.valid = side == Where::cpu ? int(Where::cpu) : 0;  // a kernel's writes: wait before reading
    return b.host;
  }
  const float* keys() const override { return pl_.vec == Where::gpu ? mirror_of(keys_) : keys_; }
  const float* values() const override { return pl_.vec == Where::gpu ? mirror_of(values_) : values_; }
  std::string stat() const { return layout_.stat(); }

 private:
  // 64-byte aligned floats; a full Tape is a sizing bug here, so it throws.
  template <class TapeOrLane>
  static float* take(TapeOrLane& tape, std::size_t floats) {
    const unimem::Taken t = tape.take(floats * sizeof(float), 64);
    if (t.ptr == nullptr) throw std::runtime_error("a Layout tape is full");
    return reinterpret_cast<float*>(t.ptr);
  }
  unimem::Layout open_layout(const std::string& file, const Config& c, Placement pl, bool x16) {
    const auto t = Clock::now();
    const std::size_t pad = 64;
    const std::size_t rows = std::max<std::size_t>(c.prompt, 1);
    const std::size_t weights = unimem::file_size(file) + kWeightCount * pad +
                                c.positions() * c.head_dim() * sizeof(float) + pad;
    const std::size_t scratch = (6 * rows * c.dim + 2 * rows * c.mlp + c.heads * c.positions()) * sizeof(float) +
                                (x16 ? rows * std::max(c.dim, c.mlp) * 2 : 0) + 12 * pad +
                                2 * decode_step_bytes(c, x16);  // a lane's chunk
    const std::size_t history = 2 * (c.positions() * c.dim * sizeof(float) + pad);
    unimem::BlockOptions o;
    // One process uses it: private pages, which get transparent huge pages
    // (weights and KV cache are walked in long strides; 4 KiB pages would
    // cost a TLB miss per row).
    o.shareable = false;
    o.huge_pages = true;
    if (pl.uses(Where::gpu)) {
      o.visibility = unimem::Visibility::gpus;  // pinned and registered with every GPU
    } else {
      o.pinning = unimem::Pinning::unpinned;  // any memlock limit will do for the CPU demo
      o.backing = unimem::Backing::warm;      // pages backed at open, not on first use
    }
    unimem::Layout layout = unimem::Layout::open(weights, scratch, history, o);
    open_seconds_ = since(t);
    return layout;
  }

  // The place in the GPU's mirror of p's tape; nullptr without a GPU.
  float* mirror_of(const float* p) const {
    for (int i = 0; i < 2; ++i) {
      const unimem::Tape& tape = i == 0 ? layout_.scratch() : layout_.history();
      if (mirror_[i] && tape.owns(p)) {
        return reinterpret_cast<float*>(mirror_[i] + (reinterpret_cast<const std::byte*>(p) - tape.block().data()));
      }
    }
    return nullptr;
  }

  // Bytes of one generated token's activations, alignment included.
  static std::size_t decode_step_bytes(const Config& c, bool x16) {
    return (6 * c.dim + 2 * c.mlp + c.heads * c.positions()) * sizeof(float) + (x16 ? std::max(c.dim, c.mlp) * 2 : 0) +
           12 * 64;
  }

  double open_seconds_ = 0;
  unimem::Layout layout_;
  // The step's takes bump a private pointer; a token's activations come out
  // of one chunk, so a token costs one atomic refill (clear_pass starts a
  // new chunk).
  unimem::Tape::Lane lane_{layout_.scratch(), 2 * decode_step_bytes(c_, x16_)};
  unimem::Safetensors model_;
  std::byte* device_weights_ = nullptr;
  std::byte* mirror_[2] = {};  // device memory shadowing scratch and history
  float* keys_ = nullptr;
  float* values_ = nullptr;
};

// ---- one layer step, either path, any placement ---------------------------------
class Runner {
 public:
  Runner(const Config& c, Placement pl, CpuMatmul& mm) : c_(c), pl_(pl), mm_(mm) {}

  void layer(Path& P, Step& s) {
    const std::size_t m = s.m, d = c_.dim, f = c_.mlp;
    const Weights& W = P.weights();
    const Where mm = pl_.mm, vec = pl_.vec;
    // Each stage waits for its GPU work, so that its time is its own.
    auto timed = [&](Stage st, auto&& fn) {
      const auto t = Clock::now();
      fn();
      if (pl_.uses(Where::gpu)) gpu::sync();
      P.counters.stage[st] += since(t);
    };
    auto matmul = [&](Buf& in, std::size_t k, Weight w, std::size_t n, Buf& out) {
      const float* x = P.need_reused(in, mm);
      float* y = P.produce(out, mm);
      if (mm == Where::gpu) {
        gpu::matmul(x, m, k, W.at(w, mm), c_.bf16, n, y);
      } else {
        mm_.run(x, m, k, W.at(w, mm), c_.bf16, n, y, s.x16);
      }
    };
    auto norm = [&](Buf& in, Weight w, Buf& out) {
      const float* x = P.need(in, vec);
      float* y = P.produce(out, vec);
      if (vec == Where::gpu) gpu::rmsnorm(x, W.vec(w, vec), y, m, d);
      else cpu::rmsnorm(x, W.vec(w, vec), y, m, d);
    };
    auto rope = [&](Buf& b) {
      const float* in = P.need(b, vec);
      float* out = P.produce(b, vec);
      if (vec == Where::gpu) {
        gpu::rope(in, out, m, s.p0, d, c_.head_dim(), W.rope(vec));
      } else {
        const float* table = W.rope(vec);
        const std::size_t half = c_.head_dim() / 2;
        cpu::rope(in, out, m, s.p0, c_, [&](std::size_t p, std::size_t j) {
          return std::pair{table[(p * half + j) * 2], table[(p * half + j) * 2 + 1]};
        });
      }
    };
    auto add = [&](Buf& x, Buf& y, std::size_t n) {  // x += y
      const float* a = P.need(x, vec);
      const float* b = P.need(y, vec);
      float* out = P.produce(x, vec);
      if (vec == Where::gpu) gpu::add(a, b, out, n);
      else cpu::add(a, b, out, n);
    };

    timed(kNorm, [&] { norm(s.x, kAttnNorm, s.h); });
    timed(kQkv, [&] {
      matmul(s.h, d, kWq, d, s.q);
      matmul(s.h, d, kWk, d, s.k);
      matmul(s.h, d, kWv, d, s.v);
    });
    timed(kRope, [&] {
      rope(s.q);
      rope(s.k);
    });
    timed(kAttention, [&] {
      const float* q = P.need(s.q, vec);
      P.need_reused(s.k, vec);  // the new rows join the cache where attention reads it
      P.need_reused(s.v, vec);
      float* out = P.produce(s.attn, vec);
      if (vec == Where::gpu) gpu::attend(q, P.keys(), P.values(), out, m, s.p0, d, c_.heads);
      else cpu::attend(q, P.keys(), P.values(), out, s.scores, m, s.p0, c_);
    });
    timed(kOut, [&] {
      matmul(s.attn, d, kWo, d, s.o);
      add(s.x, s.o, m * d);
    });
    timed(kMlp, [&] {
      norm(s.x, kMlpNorm, s.h);
      matmul(s.h, d, kWgate, f, s.gate);
      matmul(s.h, d, kWup, f, s.up);
      const float* gate = P.need(s.gate, vec);
      const float* up = P.need(s.up, vec);
      float* out = P.produce(s.gate, vec);
      if (vec == Where::gpu) gpu::swiglu(gate, up, out, m * f);
      else cpu::swiglu(gate, up, out, m * f);
      matmul(s.gate, f, kWdown, d, s.down);
      add(s.x, s.down, m * d);
      P.need(s.x, Where::cpu);  // the host takes the output (to sample from)
    });
  }

  // Runs rows p0 .. p0 + m - 1; inputs are the prompt's, then each previous
  // output; outputs land in `out` (positions x dim).
  void step(Path& P, std::size_t p0, std::size_t m, std::vector<float>& out) {
    Step& s = P.begin_step(m, p0);
    float* x = P.produce(s.x, Where::cpu);
    for (std::size_t r = 0; r < m; ++r) {
      const std::size_t pos = p0 + r;
      if (pos < c_.prompt) input_for(pos, c_, x + r * c_.dim);
      else std::copy_n(out.data() + (pos - 1) * c_.dim, c_.dim, x + r * c_.dim);
    }
    layer(P, s);
    std::copy_n(s.x.host, m * c_.dim, out.data() + p0 * c_.dim);
    P.end_step();
  }

 private:
  const Config& c_;
  Placement pl_;
  CpuMatmul& mm_;
};

struct Result {
  std::vector<float> out;
  Counters prefill, decode;
  double prefill_seconds = 0, decode_seconds = 0;
  double alloc_replayed = 0;  // seconds per token, allocations alone
};

Result converse(Path& P, const Config& c, Runner& run) {
  Result r;
  r.out.assign(c.positions() * c.dim, 0.0f);
  const Counters start = P.counters;
  auto t = Clock::now();
  P.begin_conversation();
  run.step(P, 0, c.prompt, r.out);  // the prompt in one step (prefill)
  r.prefill_seconds = since(t);
  const Counters after_prefill = P.counters;
  t = Clock::now();
  for (std::size_t pos = c.prompt; pos < c.positions(); ++pos) run.step(P, pos, 1, r.out);
  r.decode_seconds = since(t);
  r.prefill = after_prefill - start;
  r.decode = P.counters - after_prefill;
  P.end_conversation();
  return r;
}

// The generated tokens' allocations alone, replayed until 0.3 s have passed:
// seconds per token, without a clock read per call and without the
// computation between calls (so with every cache warm: a lower bound).
double replay_allocations(Path& P, const Config& c) {
  const Counters saved = P.counters;
  P.timed = false;
  int reps = 0;
  double seconds = 0;
  const auto start = Clock::now();
  do {
    P.begin_conversation();
    P.begin_step(c.prompt, 0);
    P.end_step();
    const auto t = Clock::now();
    for (std::size_t pos = c.prompt; pos < c.positions(); ++pos) {
      P.begin_step(1, pos);
      P.end_step();
    }
    seconds += since(t);
    P.end_conversation();
    ++reps;
  } while (reps < 3 || since(start) < 0.3);
  P.timed = true;
  P.counters = saved;
  return seconds / reps / double(c.tokens);
}

// What one clock-timed section costs with nothing in it (median of many).
double clock_overhead() {
  std::vector<double> v(2001);
  for (double& x : v) {
    const auto t = Clock::now();
    x = since(t);
  }
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// ---- float64 reference -------------------------------------------------------
// One row at a time, in double, with RoPE's angles computed directly; the
// matrix products are split over the cores (the large preset is 7 GFLOP).
template <class W>
void parallel_matmul(const double* x, std::size_t k, const W* w, std::size_t n, double* out) {
  const unsigned threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([=] {
      const std::size_t lo = n * t / threads, hi = n * (t + 1) / threads;
      cpu::matmul_plain(x, 1, k, w + lo * k, hi - lo, out + lo);
    });
  }
  for (auto& th : pool) th.join();
}

std::vector<double> run_reference(const std::string& file, const Config& c) {
  unimem::BlockOptions o;
  o.pinning = unimem::Pinning::unpinned;
  unimem::Tape tape = unimem::Tape::start(unimem::file_size(file) + (1u << 20), o);
  const unimem::Safetensors model = unimem::Safetensors::load(file, tape, 64);
  const auto specs = weight_specs(c);
  auto vec = [&](Weight w) { return reinterpret_cast<const float*>(model.at(specs[w].name).data); };
  auto matmul = [&](const double* x, std::size_t k, Weight w, std::size_t n, double* out) {
    const void* p = model.at(specs[w].name).data;
    if (c.bf16) parallel_matmul(x, k, static_cast<const std::uint16_t*>(p), n, out);
    else parallel_matmul(x, k, static_cast<const float*>(p), n, out);
  };
  const std::size_t d = c.dim, f = c.mlp;
  std::vector<double> keys(c.positions() * d), values(c.positions() * d), out(c.positions() * d);
  std::vector<double> x(d), h(d), q(d), attn(d), o2(d), gate(f), up(f), down(d), scores(c.heads * c.positions());
  std::vector<float> in(d);
  auto angle = [&](std::size_t p, std::size_t j) {
    const double a = double(p) / std::pow(10000.0, double(2 * j) / double(c.head_dim()));
    return std::pair{std::cos(a), std::sin(a)};
  };
  for (std::size_t pos = 0; pos < c.positions(); ++pos) {
    if (pos < c.prompt) {
      input_for(pos, c, in.data());
      std::copy(in.begin(), in.end(), x.begin());
    } else {
      std::copy_n(out.data() + (pos - 1) * d, d, x.begin());
    }
    cpu::rmsnorm(x.data(), vec(kAttnNorm), h.data(), 1, d);
    matmul(h.data(), d, kWq, d, q.data());
    matmul(h.data(), d, kWk, d, keys.data() + pos * d);
    matmul(h.data(), d, kWv, d, values.data() + pos * d);
    cpu::rope(q.data(), q.data(), 1, pos, c, angle);
    cpu::rope(keys.data() + pos * d, keys.data() + pos * d, 1, pos, c, angle);
    cpu::attend(q.data(), keys.data(), values.data(), attn.data(), scores.data(), 1, pos, c);
    matmul(attn.data(), d, kWo, d, o2.data());
    cpu::add(x.data(), o2.data(), x.data(), d);
    cpu::rmsnorm(x.data(), vec(kMlpNorm), h.data(), 1, d);
    matmul(h.data(), d, kWgate, f, gate.data());
    matmul(h.data(), d, kWup, f, up.data());
    cpu::swiglu(gate.data(), up.data(), gate.data(), f);
    matmul(gate.data(), f, kWdown, d, down.data());
    cpu::add(x.data(), down.data(), x.data(), d);
    std::copy(x.begin(), x.end(), out.begin() + pos * d);
  }
  return out;
}

template <class A, class B>
double rel_error(const std::vector<A>& a, const std::vector<B>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double diff = double(a[i]) - double(ref[i]);
    num += diff * diff;
    den += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(num / den);
}

// ---- one mode: both paths, the table, the checks ------------------------------
struct Options {
  Config c;
  std::vector<Mode> modes;
  bool gpu_weights_in_place = false;
  bool gpu_or_skip = false;
  int repeat = 5;
};

bool run_mode(Mode mode, const Options& opt, const std::string& file, const std::vector<double>& reference,
              CpuMatmul& mm, const std::string& gpu_name) {
  const Config& c = opt.c;
  const Placement pl = placement(mode);
  const bool x16 = pl.mm == Where::cpu && mm.rounds_to_bf16(c.bf16);
  std::printf("== %s mode: ", mode_name(mode));
  if (mode == Mode::cpu) std::printf("everything on the CPU; matrix products: %s\n",
                                     mm.describe(1, c.dim, c.bf16, c.dim).c_str());
  if (mode == Mode::gpu) std::printf("everything on %s\n", gpu_name.c_str());
  if (mode == Mode::split) std::printf("matrix products on %s, everything else on the CPU\n", gpu_name.c_str());
  if (mode == Mode::cpu) std::printf("   prompt matrix products: %s\n", mm.describe(c.prompt, c.dim, c.bf16, c.dim).c_str());
  if (mode != Mode::cpu) {
    std::printf("   GPU weights (unimem): %s\n", opt.gpu_weights_in_place
                                                      ? "read in place from Layout.weights over the bus"
                                                      : "one copy in device memory, DMA'd from Layout.weights at load");
  }

  Runner run(c, pl, mm);
  {  // Untimed: oneDNN's primitives and CUDA's kernels are created on first use.
    StandardPath warm_up(file, c, pl, x16);
    converse(warm_up, c, run);
  }
  // Conversations of the two paths alternate, --repeat times; each path's
  // median (by generation time) is reported.
  StandardPath standard(file, c, pl, x16);
  UnimemPath unimem_path(file, c, pl, x16, opt.gpu_weights_in_place);
  std::vector<Result> all_s, all_u;
  bool repeatable = true;
  for (int rep = 0; rep < opt.repeat; ++rep) {
    all_s.push_back(converse(standard, c, run));
    all_u.push_back(converse(unimem_path, c, run));
    repeatable = repeatable && all_s.back().out == all_s.front().out && all_u.back().out == all_u.front().out;
  }
  auto median = [](std::vector<Result>& v) {
    std::sort(v.begin(), v.end(), [](const Result& a, const Result& b) { return a.decode_seconds < b.decode_seconds; });
    return v[v.size() / 2];
  };
  Result rs = median(all_s), ru = median(all_u);
  rs.alloc_replayed = replay_allocations(standard, c);
  ru.alloc_replayed = replay_allocations(unimem_path, c);
  std::printf("   %d conversations per path, alternating; the median's figures (by generation time)\n", opt.repeat);

  const double gen = double(c.tokens);
  std::printf("\n%-30s %12s %12s %8s\n", "per generated token", "standard", "unimem", "ratio");
  for (int s = 0; s < kStages; ++s) {
    std::printf("%-30s %9.2f us %9.2f us %7.2fx\n", kStageNames[s], rs.decode.stage[s] / gen * 1e6,
                ru.decode.stage[s] / gen * 1e6, rs.decode.stage[s] / ru.decode.stage[s]);
  }
  std::printf("%-30s %12zu %12zu\n", "host<->device copies", rs.decode.copies / c.tokens,
              ru.decode.copies / c.tokens);
  std::printf("%-30s %12zu %12zu\n", "host<->device bytes staged", rs.decode.copy_bytes / c.tokens,
              ru.decode.copy_bytes / c.tokens);
  std::printf("%-30s %12zu %12zu\n", "bytes GPU gathered from host", rs.decode.gather_bytes / c.tokens,
              ru.decode.gather_bytes / c.tokens);
  std::printf("%-30s %12.2f %12.2f %7.2fx\n", "tokens/s (generated)", gen / rs.decode_seconds,
              gen / ru.decode_seconds, rs.decode_seconds / ru.decode_seconds);
  std::printf("%-30s %9.2f ms %9.2f ms %7.2fx\n", ("prefill (" + std::to_string(c.prompt) + " tokens)").c_str(),
              rs.prefill_seconds * 1e3, ru.prefill_seconds * 1e3, rs.prefill_seconds / ru.prefill_seconds);
  std::printf("%-30s %9.2f ms %9.2f ms %7.2fx\n", "loading the weights", standard.load_seconds * 1e3,
              unimem_path.load_seconds * 1e3, standard.load_seconds / unimem_path.load_seconds);
  // Two timed sections per token (obtain, release); their clock reads are
  // not the allocator's cost.
  const double overhead = 2 * clock_overhead();
  const double in_run_s = std::max(0.0, rs.decode.alloc / gen - overhead);
  const double in_run_u = std::max(0.0, ru.decode.alloc / gen - overhead);
  std::printf("\n%-30s %12s %12s %8s\n", "allocation, per gen. token", "standard", "unimem", "ratio");
  std::printf("%-30s %9.3f us %9.3f us %7.1fx\n", "in the run", in_run_s * 1e6, in_run_u * 1e6, in_run_s / in_run_u);
  std::printf("%-30s %9.3f us %9.3f us %7.1fx\n", "replayed alone (warm caches)", rs.alloc_replayed * 1e6,
              ru.alloc_replayed * 1e6, rs.alloc_replayed / ru.alloc_replayed);
  std::printf("%-30s %12.1f %12.1f\n", "calls", double(rs.decode.alloc_calls) / gen,
              double(ru.decode.alloc_calls) / gen);
  std::printf("(in the run: the clock's own %.0f ns per token subtracted)\n", overhead * 1e9);

  const double e_standard = rel_error(rs.out, reference), e_unimem = rel_error(ru.out, reference);
  const double between = rel_error(rs.out, ru.out);
  const bool identical = std::memcmp(rs.out.data(), ru.out.data(), rs.out.size() * sizeof(float)) == 0;
  // float32 arithmetic: 1e-4 over a layer; activations rounded to bf16 for
  // AMX/AVX-512 bf16 products carry 8 significant bits: 3e-2.
  const double tolerance = x16 ? 3e-2 : 1e-4;
  std::printf("\nerror vs float64 over all %zu outputs: standard %.2e, unimem %.2e (tolerance %.0e%s)\n",
              c.positions(), e_standard, e_unimem, tolerance, x16 ? ", bf16 activations" : "");
  std::printf("standard vs unimem: %s\n", identical ? "identical, bit for bit"
                                                    : ("differ by " + std::to_string(between)).c_str());
  std::printf("\nLayout after the conversation (unimem path):\n%s\n", unimem_path.stat().c_str());
  bool ok = true;
  if (!(e_standard < tolerance) || !(e_unimem < tolerance)) {
    std::fprintf(stderr, "FAILED (%s mode): outputs differ from the float64 reference beyond %.0e\n",
                 mode_name(mode), tolerance);
    ok = false;
  }
  if (!repeatable) {
    std::fprintf(stderr, "FAILED (%s mode): a path's output changed between conversations\n", mode_name(mode));
    ok = false;
  }
  if (!(between < 1e-6)) {
    std::fprintf(stderr, "FAILED (%s mode): the two paths differ by %.2e\n", mode_name(mode), between);
    ok = false;
  }
  return ok;
}

Options parse(int argc, char** argv, bool& mode_given, std::string& mode_arg) {
  Options o;
  auto number = [&](int& i) {
    if (i + 1 >= argc) throw std::invalid_argument(std::string(argv[i]) + " needs a value");
    char* end = nullptr;
    const unsigned long long v = std::strtoull(argv[++i], &end, 10);
    if (*end != '\0' || v == 0 || v > (1u << 20)) {
      throw std::invalid_argument(std::string(argv[i - 1]) + ": not a size: " + argv[i]);
    }
    return std::size_t(v);
  };
  for (int i = 1; i < argc; ++i) {  // the preset first, so that options can change it
    if (std::string(argv[i]) == "--preset") {
      if (i + 1 >= argc || std::string(argv[i + 1]) != "large") throw std::invalid_argument("--preset takes large");
      o.c = Config{4096, 32, 11008, 128, 32, true};
    }
  }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--preset") ++i;
    else if (a == "--dim") o.c.dim = number(i);
    else if (a == "--heads") o.c.heads = number(i);
    else if (a == "--mlp") o.c.mlp = number(i);
    else if (a == "--prompt") o.c.prompt = number(i);
    else if (a == "--tokens") o.c.tokens = number(i);
    else if (a == "--repeat") o.repeat = int(std::min<std::size_t>(number(i), 100));
    else if (a == "--bf16") o.c.bf16 = true;
    else if (a == "--gpu-weights" && i + 1 < argc) {
      const std::string v = argv[++i];
      if (v != "device" && v != "host") throw std::invalid_argument("--gpu-weights takes device or host");
      o.gpu_weights_in_place = v == "host";
    } else if (a == "--mode" && i + 1 < argc) {
      mode_given = true;
      mode_arg = argv[++i];
    } else if (a == "--gpu-or-skip") {
      o.gpu_or_skip = true;
    } else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown option " + a);
    }
  }
  const Config& c = o.c;
  if (c.dim % (2 * c.heads) != 0) throw std::invalid_argument("--dim must be a multiple of 2 x --heads");
  if (c.positions() > 8192) throw std::invalid_argument("--prompt + --tokens must be at most 8192");
  return o;
}

}  // namespace

int main(int argc, char** argv) try {
  bool mode_given = false;
  std::string mode_arg = "auto";
  Options opt;
  try {
    opt = parse(argc, argv, mode_given, mode_arg);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "unimem_pipeline: %s\n%s", e.what(), kUsage);
    return 2;
  }
  const Config& c = opt.c;

  // A GPU mode needs the CUDA runtime's device and unimem's driver access.
  const bool driver = unimem::gpu::available();
  const gpu::Probe probe = driver ? gpu::probe() : gpu::Probe{};
  const bool have_gpu = driver && probe.present;
  const std::string why_not = !driver ? unimem::gpu::unavailable_reason() : probe.name;
  if (mode_arg == "auto") {
    opt.modes = have_gpu ? std::vector{Mode::cpu, Mode::gpu, Mode::split} : std::vector{Mode::cpu};
  } else if (mode_arg == "all") {
    opt.modes = {Mode::cpu, Mode::gpu, Mode::split};
  } else if (mode_arg == "cpu" || mode_arg == "gpu" || mode_arg == "split") {
    opt.modes = {mode_arg == "cpu" ? Mode::cpu : mode_arg == "gpu" ? Mode::gpu : Mode::split};
  } else {
    std::fprintf(stderr, "unimem_pipeline: unknown mode %s\n%s", mode_arg.c_str(), kUsage);
    return 2;
  }
  const bool wants_gpu = std::any_of(opt.modes.begin(), opt.modes.end(), [](Mode m) { return m != Mode::cpu; });
  if (wants_gpu && !have_gpu && opt.gpu_or_skip) {
    std::printf("skipped: no CUDA device (%s)\n", why_not.c_str());
    return 77;
  }
  if (wants_gpu && !have_gpu) {
    std::fprintf(stderr, "unimem_pipeline: --mode %s needs a GPU: %s\n", mode_arg.c_str(), why_not.c_str());
    return 2;
  }

  std::printf("unimem pipeline: one decoder layer, dim %zu, %zu heads, MLP %zu, %s weights, %zu prompt + %zu "
              "generated tokens\n",
              c.dim, c.heads, c.mlp, c.bf16 ? "bf16" : "f32", c.prompt, c.tokens);
  std::printf("GPU: %s\n\n", have_gpu ? probe.name.c_str() : ("none (" + why_not + "): CPU mode only").c_str());

  // The weights, from a fixed seed, as the safetensors file a model comes in.
  const std::string file = (std::filesystem::temp_directory_path() /
                            ("unimem_pipeline_" + std::to_string(::getpid()) + ".safetensors")).string();
  write_weights(file, c);
  struct Remove {
    std::string f;
    ~Remove() { std::filesystem::remove(f); }
  } remove{file};

  const std::vector<double> reference = run_reference(file, c);
  CpuMatmul mm;
  bool ok = true;
  for (Mode m : opt.modes) ok = run_mode(m, opt, file, reference, mm, probe.name) && ok;
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "unimem_pipeline: %s\n", e.what());
  return 1;
}
