// examples/pipeline/standard_path.cpp — the standard paths (see paths.hpp):
// what inference code does with memory without unimem, for comparison. Two
// styles share the class: the competent one (what a careful engineer writes:
// stream-ordered pool, pinned buffers, async copies, a KV cache allocated
// once) and the naive one (what first versions do; kept as a labelled extra
// column so the two can be told apart).
#include <algorithm>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <vector>

#include <unimem/file.hpp>
#include <unimem/safetensors.hpp>

#include "gpu_stages.hpp"
#include "paths.hpp"

namespace pipeline {
namespace {
class StandardPath final : public Path {
 public:
  StandardPath(const std::string& file, const Config& c, Placement pl, bool x16, StandardStyle style)
      : Path(c, pl, x16), competent_(style == StandardStyle::competent) {
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
      if (buf == nullptr) throw std::bad_alloc();
      loaded_.emplace_back(buf, &std::free);
      sizes_.push_back(it->bytes);
      unimem::read_file(file, it->file_offset, {static_cast<std::byte*>(buf), it->bytes}, plain);
      weights_.on_cpu[i] = buf;
    }
    rope_ = rope_table(c);
    weights_.rope_cpu = rope_.data();
    if (pl.uses(Where::gpu)) {
      for (int i = 0; i < kWeightCount; ++i) {
        weights_.on_gpu[i] = upload(loaded_[i].get(), sizes_[i]);
      }
      weights_.rope_gpu = static_cast<const float*>(upload(rope_.data(), rope_.size() * sizeof(float)));
    }
    if (competent_ && pl.uses(Where::gpu)) {
      const auto pinning = Clock::now();
      // Host tensors that cross to the GPU live in pinned memory, taken
      // once and handed out per step (the KV cache's host rows too, when the
      // CPU runs attention): the copy engines read and write them directly.
      pinned_bytes_ = 2 * step_floats(c.prompt) * sizeof(float) + 64 * 16;
      pinned_ = static_cast<std::byte*>(gpu::malloc_pinned(pinned_bytes_));
      if (pl.vec == Where::cpu) {
        for (float*& kv : kv_pinned_)
          kv = static_cast<float*>(gpu::malloc_pinned(c.positions() * c.dim * sizeof(float)));
      }
      gpu_setup_seconds = since(pinning);
    }
    load_seconds = since(t);
  }
  ~StandardPath() override {  // what a step or conversation cut short by an error left
    for (void* p : host_temps_) ::operator delete[](p);
    for (void* p : device_temps_) gpu::free_device_quietly(p);
    for (float* p : kv_dev_) gpu::free_device_quietly(p);
    for (float* p : kv_pinned_) gpu::free_pinned(p);
    gpu::free_pinned(pinned_);
  }

  void begin_conversation() override {
    AllocTimer timer{*this};
    if (pl_.vec == Where::gpu) {  // a device cache of the conversation's full length
      kv_dev_[0] = alloc_device(c_.positions() * c_.dim);
      kv_dev_[1] = alloc_device(c_.positions() * c_.dim);
    } else if (competent_ && kv_pinned_[0] == nullptr) {  // the whole conversation's rows, at once
      for (auto& kv : kv_host_) kv.resize(c_.positions() * c_.dim);
      counters.alloc_calls += 2;
    }
  }
  void end_conversation() override {
    AllocTimer timer{*this};
    for (float*& p : kv_dev_) {
      if (p) free_device(p);
      p = nullptr;
    }
    if (pl_.vec == Where::cpu && kv_pinned_[0] == nullptr) {
      kv_host_[0] = {};  // the vectors' memory goes back
      kv_host_[1] = {};
      counters.alloc_calls += 2;
    }
  }

  Step& begin_step(std::size_t m, std::size_t p0) override {
    AllocTimer timer{*this};
    Step& s = fresh_step(m, p0);
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
      if (pl_.vec == Where::cpu) {
        if (!competent_) {  // the cache grows a row at a time
          kv_host_[i].resize((p0 + m) * c_.dim);
          ++counters.alloc_calls;
        }
        b.host = (kv_pinned_[i] ? kv_pinned_[i] : kv_host_[i].data()) + p0 * c_.dim;
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
    if (competent_ && pl_.uses(Where::gpu)) gpu::sync();  // the step's copies have read their pinned buffers
    for (void* p : host_temps_) ::operator delete[](p);
    for (void* p : device_temps_) free_device(p);
    counters.alloc_calls += host_temps_.size() + (pinned_used_ > 0 ? 1 : 0);
    host_temps_.clear();
    device_temps_.clear();
    pinned_used_ = 0;
    pending_.clear();
  }

  // Naive: a blocking cudaMemcpy per hand-off. Competent: copies queued on
  // the stream; the CPU waits once for the GPU's results it needs. In split
  // mode every matrix product's output goes to the CPU, so when the CPU
  // needs one, all of them made so far are queued before the one wait.
  const float* need(Buf& b, Where side) override {
    if (b.valid & int(side)) return b.at(side);
    if (!competent_) {
      if (side == Where::gpu)
        gpu::copy_to_device(b.dev, b.host, bytes(b));
      else
        gpu::copy_to_host(b.host, b.dev, bytes(b));
      counted(b, side);
      return b.at(side);
    }
    if (side == Where::gpu) {
      gpu::copy_to_device_async(b.dev, b.host, bytes(b));
      counted(b, side);
      return b.dev;
    }
    flush_pending();
    if (!(b.valid & int(Where::cpu))) gpu::copy_to_host_async(b.host, b.dev, bytes(b)), counted(b, side);
    gpu::sync();
    return b.host;
  }
  float* produce(Buf& b, Where side) override {
    if (competent_ && side == Where::gpu && pl_.vec == Where::cpu) pending_.push_back(&b);
    b.valid = int(side);
    return b.at(side);
  }
  const float* keys() const override { return pl_.vec == Where::cpu ? kv_host(0) : kv_dev_[0]; }
  const float* values() const override { return pl_.vec == Where::cpu ? kv_host(1) : kv_dev_[1]; }

 private:
  static std::size_t bytes(const Buf& b) { return b.n * sizeof(float); }
  void counted(Buf& b, Where side) {
    ++counters.copies;
    counters.copy_bytes += bytes(b);
    b.valid |= int(side);
  }
  // Queues the device-to-host copies of what kernels produced for the CPU.
  void flush_pending() {
    for (Buf* p : pending_) {
      if (p->valid == int(Where::gpu)) {
        gpu::copy_to_host_async(p->host, p->dev, bytes(*p));
        counted(*p, Where::cpu);
      }
    }
    pending_.clear();
  }
  const float* kv_host(int i) const { return kv_pinned_[i] ? kv_pinned_[i] : kv_host_[i].data(); }
  void free_device(void* p) {
    ++counters.alloc_calls;
    competent_ ? gpu::free_device_async(p) : gpu::free_device(p);
  }
  std::size_t step_floats(std::size_t m) const { return m * (6 * c_.dim + 2 * c_.mlp); }
  const void* upload(const void* host, std::size_t bytes) {
    std::byte* d = device_weights_.emplace_back(bytes).get();
    gpu::copy_to_device(d, host, bytes);
    return d;
  }
  float* alloc_device(std::size_t floats) {
    ++counters.alloc_calls;
    const std::size_t n = floats * sizeof(float);
    return static_cast<float*>(competent_ ? gpu::malloc_device_async(n) : gpu::malloc_device(n));
  }
  float* temp_device(std::size_t floats) {
    float* p = alloc_device(floats);
    device_temps_.push_back(p);
    return p;
  }
  template <class T>
  T* temp_host(std::size_t count) {
    ++counters.alloc_calls;
    T* p = static_cast<T*>(::operator new[](count * sizeof(T)));  // new[], raw: freed by operator delete[]
    host_temps_.push_back(p);
    return p;
  }
  // Pinned memory for a host tensor that crosses to the GPU, from the
  // buffer taken at load (64-byte aligned pieces, reset per step).
  float* temp_pinned(std::size_t floats) {
    const std::size_t n = (floats * sizeof(float) + 63) / 64 * 64;
    if (pinned_used_ + n > pinned_bytes_) throw std::runtime_error("the standard path's pinned buffer is too small");
    float* p = reinterpret_cast<float*>(pinned_ + pinned_used_);
    pinned_used_ += n;
    ++counters.alloc_calls;
    return p;
  }
  void make(Buf& b, std::size_t n, int sides) {
    b.n = n;
    const bool crosses = (sides & int(Where::gpu)) != 0;
    if (sides & int(Where::cpu)) b.host = competent_ && crosses ? temp_pinned(n) : temp_host<float>(n);
    if (sides & int(Where::gpu)) b.dev = temp_device(n);
  }

  std::vector<std::unique_ptr<void, decltype(&std::free)>> loaded_;  // the weights, malloc'ed
  std::vector<std::size_t> sizes_;
  std::vector<float> rope_;
  std::vector<gpu::DeviceBuffer> device_weights_;
  bool competent_;
  std::vector<float> kv_host_[2];  // the KV cache's rows where the CPU runs attention
  float* kv_pinned_[2] = {};       // the same, pinned, when a GPU writes them (competent)
  float* kv_dev_[2] = {};
  std::byte* pinned_ = nullptr;  // the competent path's pinned buffer for host tensors
  std::size_t pinned_bytes_ = 0, pinned_used_ = 0;
  std::vector<Buf*> pending_;  // produced by kernels for the CPU, not yet copied back
  std::vector<void*> host_temps_, device_temps_;
};

}  // namespace

std::unique_ptr<Path> make_standard_path(const std::string& file, const Config& c, Placement pl, bool x16,
                                         StandardStyle style) {
  return std::make_unique<StandardPath>(file, c, pl, x16, style);
}

}  // namespace pipeline
