// examples/pipeline/model.hpp — the decoder layer the pipeline runs: its
// sizes, its weights (generated from a fixed seed and written as a
// safetensors file, as a model download would be), its inputs and the bf16
// conversions. Shared by both paths and the float64 reference, so that they
// differ only in how memory is obtained and moved.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <unimem/safetensors.hpp>

namespace pipeline {

struct Config {
  std::size_t dim = 256, heads = 8, mlp = 688, prompt = 16, tokens = 32;
  bool bf16 = false;  // matrices stored as bf16 (the norm weights stay f32)
  std::size_t head_dim() const { return dim / heads; }
  std::size_t positions() const { return prompt + tokens; }
};

enum Weight { kAttnNorm, kWq, kWk, kWv, kWo, kMlpNorm, kWgate, kWup, kWdown, kWeightCount };

struct WeightSpec {
  const char* name;
  std::size_t rows, cols;  // cols == 1 for the norm vectors
  bool matrix() const { return cols != 1; }
};

inline std::array<WeightSpec, kWeightCount> weight_specs(const Config& c) {
  return {{{"attn_norm", c.dim, 1},
           {"wq", c.dim, c.dim},
           {"wk", c.dim, c.dim},
           {"wv", c.dim, c.dim},
           {"wo", c.dim, c.dim},
           {"mlp_norm", c.dim, 1},
           {"w_gate", c.mlp, c.dim},
           {"w_up", c.mlp, c.dim},
           {"w_down", c.dim, c.mlp}}};
}

inline float bf16_to_float(std::uint16_t v) {
  const std::uint32_t bits = std::uint32_t{v} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline std::uint16_t float_to_bf16(float f) {  // round to nearest even
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<std::uint16_t>(bits >> 16);
}

// The hidden state fed in for prompt token `token` (there is no embedding
// table: a layer is what is being measured).
inline void input_for(std::size_t token, const Config& c, float* out) {
  for (std::size_t i = 0; i < c.dim; ++i) out[i] = std::sin(0.1f * float(token + 1) * float(i + 1));
}

// Writes the layer's weights, N(0, 1/cols) matrices and norm weights near 1,
// from a fixed seed, as a safetensors file.
inline void write_weights(const std::string& path, const Config& c) {
  std::mt19937 rng(2026);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> data;
  std::vector<std::vector<std::uint16_t>> halves;
  std::vector<unimem::TensorData> tensors;
  data.reserve(kWeightCount);
  halves.reserve(kWeightCount);
  for (const WeightSpec& s : weight_specs(c)) {
    auto& d = data.emplace_back(s.rows * s.cols);
    const float scale = s.matrix() ? 1.0f / std::sqrt(float(s.cols)) : 0.1f;
    for (auto& v : d) v = (s.matrix() ? 0.0f : 1.0f) + normal(rng) * scale;
    const auto shape = s.matrix() ? std::vector<std::uint64_t>{s.rows, s.cols} : std::vector<std::uint64_t>{s.rows};
    if (c.bf16 && s.matrix()) {
      auto& h = halves.emplace_back(d.size());
      for (std::size_t i = 0; i < d.size(); ++i) h[i] = float_to_bf16(d[i]);
      tensors.push_back({s.name, unimem::DType::BF16, shape, std::as_bytes(std::span<const std::uint16_t>(h))});
    } else {
      tensors.push_back({s.name, unimem::DType::F32, shape, std::as_bytes(std::span<const float>(d))});
    }
  }
  unimem::save_safetensors(path, tensors);
}

// RoPE's cos/sin per position and pair of a head, computed once in double
// (engines keep the same table): [positions][head_dim / 2][2].
inline std::vector<float> rope_table(const Config& c) {
  const std::size_t half = c.head_dim() / 2;
  std::vector<float> t(c.positions() * half * 2);
  for (std::size_t p = 0; p < c.positions(); ++p) {
    for (std::size_t j = 0; j < half; ++j) {
      const double angle = double(p) / std::pow(10000.0, double(2 * j) / double(c.head_dim()));
      t[(p * half + j) * 2] = float(std::cos(angle));
      t[(p * half + j) * 2 + 1] = float(std::sin(angle));
    }
  }
  return t;
}

}  // namespace pipeline
