// examples/pipeline/reference.cpp — the float64 reference (reference.hpp).
#include "reference.hpp"

#include <algorithm>
#include <cmath>
#include <thread>

#include <unimem/unimem.hpp>

#include "cpu_stages.hpp"

namespace pipeline {
namespace {

// The matrix products are split over the cores (the large preset is 65 G
// multiply-adds).
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

}  // namespace

std::vector<double> run_reference(const std::string& file, const Config& c) {
  unimem::BlockOptions o;
  o.pinning = unimem::Pinning::unpinned;
  unimem::Tape tape = unimem::Tape::start(unimem::file_size(file) + (1u << 20), o);
  const unimem::Safetensors model = unimem::Safetensors::load(file, tape, 64);
  const auto specs = weight_specs(c);
  auto vec = [&](Weight w) { return reinterpret_cast<const float*>(model.at(specs[w].name).data); };
  auto matmul = [&](const double* x, std::size_t k, Weight w, std::size_t n, double* out) {
    const void* p = model.at(specs[w].name).data;
    if (c.bf16)
      parallel_matmul(x, k, static_cast<const std::uint16_t*>(p), n, out);
    else
      parallel_matmul(x, k, static_cast<const float*>(p), n, out);
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

}  // namespace pipeline
