// examples/pipeline/unimem_path.cpp — the unimem path (see paths.hpp): one
// Layout whose host pages the CPU and the GPU both use.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include <unimem/unimem.hpp>

#include "gpu_stages.hpp"
#include "paths.hpp"

namespace pipeline {
namespace {
class UnimemPath final : public Path {
 public:
  UnimemPath(const std::string& file, const Config& c, Placement pl, bool x16, const UnimemGpuOptions& gpu_options)
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
      weights_in_place_ = gpu_options.weights_in_place;
      if (weights_in_place_) {  // the GPU reads Layout.weights over the bus
        std::copy(std::begin(weights_.on_cpu), std::end(weights_.on_cpu), weights_.on_gpu);
        weights_.rope_gpu = rope;
      } else {  // one DMA from the pinned pages into device memory
        const std::byte* base = layout_.weights().block().data();
        const std::size_t used = layout_.weights().used();
        device_weights_ = gpu::DeviceBuffer(used);
        std::byte* device = device_weights_.get();
        gpu::copy_to_device(device, base, used);
        auto moved = [&](const void* p) { return device + (static_cast<const std::byte*>(p) - base); };
        for (int i = 0; i < kWeightCount; ++i) weights_.on_gpu[i] = moved(weights_.on_cpu[i]);
        weights_.rope_gpu = reinterpret_cast<const float*>(moved(rope));
      }
    }
    if (pl.uses(Where::gpu) && gpu_options.mirror) {  // once, like the weights: where the GPU keeps what it gathered
      mirror_[0] = gpu::DeviceBuffer(layout_.scratch().total());
      mirror_[1] = gpu::DeviceBuffer(layout_.history().total());
    }
    load_seconds = since(t) + open_seconds_;
    if (pl.uses(Where::gpu)) gpu_setup_seconds = open_seconds_;
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
    Step& s = fresh_step(m, p0);
    const std::size_t d = m * c_.dim, f = m * c_.mlp;
    unimem::Tape::Lane& scratch = lane_;
    for (auto [b, n] :
         {std::pair{&s.x, d}, {&s.h, d}, {&s.q, d}, {&s.attn, d}, {&s.o, d}, {&s.gate, f}, {&s.up, f}, {&s.down, d}}) {
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

  // Both sides use the host pages: the CPU reads and writes them, kernels
  // write them, and a CPU read of what a kernel wrote only waits for the
  // kernel. The GPU keeps a mirror of the tapes in device memory: kernels
  // write their results to it as well (write-through), and what the CPU
  // wrote it gathers into the mirror with its own loads before kernels read
  // it (a matmul's input is read by every block, the KV cache by every later
  // token: over the bus each time would cost 3-4x). Nothing is staged or
  // copied by the CPU.
  const float* need(Buf& b, Where side) override {
    if (side == Where::cpu) {
      if (!(b.valid & int(Where::cpu))) {
        gpu::sync();
        b.valid |= int(Where::cpu);
      }
      return b.host;
    }
    if (b.dev == nullptr) {  // no mirror: over the bus
      counters.host_reads += b.n * sizeof(float);
      return b.host;
    }
    if (!(b.valid & int(Where::gpu))) {
      gpu::gather(b.host, b.dev, b.n);
      ++counters.gathers;
      counters.gather_bytes += b.n * sizeof(float);
      b.valid |= int(Where::gpu);
    }
    return b.dev;
  }
  float* produce(Buf& b, Where side) override {
    // A kernel's results are in the mirror at once, in host pages after a wait.
    b.valid = side == Where::cpu ? int(Where::cpu) : b.dev ? int(Where::gpu) : 0;
    if (side == Where::gpu) counters.host_writes += b.n * sizeof(float);
    return b.host;
  }
  void reading_cache(std::size_t rows) override {
    if (mirror_[1].get() == nullptr) counters.host_reads += 2 * rows * c_.dim * sizeof(float);
  }
  void reading_weight(Weight w) override {
    if (!weights_in_place_) return;
    const WeightSpec s = weight_specs(c_)[w];
    counters.host_reads += s.rows * s.cols * (c_.bf16 && s.matrix() ? 2 : 4);
  }
  void reading_rope(std::size_t rows) override {
    if (weights_in_place_) counters.host_reads += rows * c_.head_dim() * sizeof(float);
  }
  float* also(const Buf& b, Where side) const override { return side == Where::gpu ? b.dev : nullptr; }
  const float* keys() const override { return pl_.vec == Where::gpu && mirror_[1].get() ? mirror_of(keys_) : keys_; }
  const float* values() const override {
    return pl_.vec == Where::gpu && mirror_[1].get() ? mirror_of(values_) : values_;
  }
  std::string layout_stat() const override { return layout_.stat(); }

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
    const std::size_t weights =
        unimem::file_size(file) + kWeightCount * pad + c.positions() * c.head_dim() * sizeof(float) + pad;
    // The prompt's step (its large takes bypass the lane) and a lane's chunk.
    const std::size_t scratch = step_bytes(c, c.prompt, x16) + 2 * step_bytes(c, 1, x16);
    const std::size_t history = 2 * (c.positions() * c.dim * sizeof(float) + pad);
    unimem::BlockOptions o;
    // One process uses it: private pages, which get transparent huge pages
    // (weights and KV cache are walked in long strides; 4 KiB pages would
    // cost a TLB miss per row, and a page fault per 4 KiB as they are first
    // written).
    o.shareable = false;
    o.huge_pages = true;
    if (pl.uses(Where::gpu)) {
      o.visibility = unimem::Visibility::gpus;  // pinned and registered with every GPU
      // Registration backs every page of all three tapes first: for a small
      // model, whole 2 MiB pages cost more to zero than they save (the
      // loading row on the H200 machine, 2026-12-04: 3.0 ms with, 2.4 without).
      o.huge_pages = weights >= kHugePagesFrom;
    } else {
      // Backed as the load writes the weights (several threads) and as the
      // steps first touch scratch and history, as malloc'd memory is: backing
      // all of it at open cost more than the load (on the H200 machine, 61
      // ms against 36 for the standard path at --preset large).
      o.pinning = unimem::Pinning::unpinned;  // any memlock limit will do for the CPU demo
    }
    unimem::Layout layout = unimem::Layout::open(weights, scratch, history, o);
    open_seconds_ = since(t);
    return layout;
  }

  // The place in the GPU's mirror of p's tape; nullptr without a GPU.
  float* mirror_of(const float* p) const {
    for (int i = 0; i < 2; ++i) {
      const unimem::Tape& tape = i == 0 ? layout_.scratch() : layout_.history();
      if (mirror_[i].get() && tape.owns(p)) {
        return reinterpret_cast<float*>(mirror_[i].get() +
                                        (reinterpret_cast<const std::byte*>(p) - tape.block().data()));
      }
    }
    return nullptr;
  }

  // Bytes of a step's activations for `rows` token rows, alignment included
  // (begin_step's takes, each 64-byte aligned).
  static std::size_t step_bytes(const Config& c, std::size_t rows, bool x16) {
    return (rows * (6 * c.dim + 2 * c.mlp) + c.heads * c.positions()) * sizeof(float) +
           (x16 ? rows * std::max(c.dim, c.mlp) * sizeof(std::uint16_t) : 0) + 12 * 64;
  }

  static constexpr std::size_t kHugePagesFrom = std::size_t{64} << 20;  // bytes of weights
  double open_seconds_ = 0;
  unimem::Layout layout_;
  // The step's takes bump a private pointer; a token's activations come out
  // of one chunk, so a token costs one atomic refill (clear_pass starts a
  // new chunk).
  unimem::Tape::Lane lane_{layout_.scratch(), 2 * step_bytes(c_, 1, x16_)};
  unimem::Safetensors model_;
  gpu::DeviceBuffer device_weights_;
  gpu::DeviceBuffer mirror_[2];  // device memory shadowing scratch and history
  float* keys_ = nullptr;
  float* values_ = nullptr;
  bool weights_in_place_ = false;
};

}  // namespace

std::unique_ptr<Path> make_unimem_path(const std::string& file, const Config& c, Placement pl, bool x16,
                                       const UnimemGpuOptions& gpu_options) {
  return std::make_unique<UnimemPath>(file, c, pl, x16, gpu_options);
}

}  // namespace pipeline
