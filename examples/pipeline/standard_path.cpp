// examples/pipeline/standard_path.cpp — the standard path (see paths.hpp):
// what inference code usually does with memory, for comparison.
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
    load_seconds = since(t);
  }
  ~StandardPath() override {  // what a step or conversation cut short by an error left
    for (void* p : host_temps_) ::operator delete[](p);
    for (void* p : device_temps_) gpu::free_device_quietly(p);
    for (float* p : kv_dev_) gpu::free_device_quietly(p);
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
    if (pl_.vec == Where::cpu) {
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
    std::byte* d = device_weights_.emplace_back(bytes).get();
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
    T* p = static_cast<T*>(::operator new[](count * sizeof(T)));  // new[], raw: freed by operator delete[]
    host_temps_.push_back(p);
    return p;
  }
  void make(Buf& b, std::size_t n, int sides) {
    b.n = n;
    if (sides & int(Where::cpu)) b.host = temp_host<float>(n);
    if (sides & int(Where::gpu)) b.dev = temp_device(n);
  }

  std::vector<std::unique_ptr<void, decltype(&std::free)>> loaded_;  // the weights, malloc'ed
  std::vector<std::size_t> sizes_;
  std::vector<float> rope_;
  std::vector<gpu::DeviceBuffer> device_weights_;
  std::vector<float> kv_host_[2];
  float* kv_dev_[2] = {};
  std::vector<void*> host_temps_, device_temps_;
};

}  // namespace

std::unique_ptr<Path> make_standard_path(const std::string& file, const Config& c, Placement pl, bool x16) {
  return std::make_unique<StandardPath>(file, c, pl, x16);
}

}  // namespace pipeline
