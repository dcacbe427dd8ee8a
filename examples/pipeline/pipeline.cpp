// examples/pipeline/pipeline.cpp — one transformer decoder layer generating
// tokens, two ways, on the CPU:
//   standard  what code usually does: weights read() into malloc'ed buffers,
//             a new/delete per tensor per step, a KV cache that grows
//   unimem    weights loaded from safetensors into Layout.weights, activations
//             from the scratch Tape (clear_pass per token), the KV cache in
//             the history Tape (clear_talk per conversation)
// Both run the same kernels; their outputs are compared with each other and
// with a float64 reference, and the program fails when they differ.
//
//   unimem_pipeline [--dim N] [--heads N] [--mlp N] [--prompt N] [--tokens N] [--bf16]
//   unimem_pipeline --preset large      (dim 4096, 32 heads, MLP 11008, bf16)
//
// Work in progress (issue #7): CPU mode only so far; GPU and split CPU/GPU
// modes and AMX matrix products come next.
#include <cmath>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <unimem/unimem.hpp>

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  std::size_t dim = 256, heads = 8, mlp = 688, prompt = 16, tokens = 32;
  bool bf16 = false;  // matrices stored as bf16 (norm weights stay f32)
  std::size_t head_dim() const { return dim / heads; }
  std::size_t positions() const { return prompt + tokens; }
};

// The layer's weights, by name, as the safetensors file holds them.
struct WeightSpec {
  const char* name;
  std::size_t rows, cols;  // cols = 1 for vectors
};
std::vector<WeightSpec> weight_specs(const Config& c) {
  return {{"attn_norm", c.dim, 1},   {"wq", c.dim, c.dim},  {"wk", c.dim, c.dim},  {"wv", c.dim, c.dim},
          {"wo", c.dim, c.dim},      {"mlp_norm", c.dim, 1}, {"w_gate", c.mlp, c.dim}, {"w_up", c.mlp, c.dim},
          {"w_down", c.dim, c.mlp}};
}

enum Stage { kNorm, kQkv, kRope, kAttention, kOut, kMlp, kStages };
const char* kStageNames[] = {"rmsnorm", "qkv projection", "rope", "attention", "out projection", "swiglu mlp"};

// Kernels, generic over float and double (the reference).
template <class T>
void rmsnorm(const T* x, const float* w, T* out, std::size_t n) {
  T ss = 0;
  for (std::size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const T scale = T(1) / std::sqrt(ss / T(n) + T(1e-5));
  for (std::size_t i = 0; i < n; ++i) out[i] = x[i] * scale * T(w[i]);
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
inline float widen(float v) { return v; }
inline float widen(std::uint16_t v) { return bf16_to_float(v); }

template <class T, class W>
void matvec_typed(const W* w, const T* x, T* out, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    const W* row = w + r * cols;
    T acc = 0;
    for (std::size_t k = 0; k < cols; ++k) acc += T(widen(row[k])) * x[k];
    out[r] = acc;
  }
}
template <class T>
void rope(T* v, std::size_t dim, std::size_t head_dim, std::size_t pos) {
  for (std::size_t i = 0; i < dim; i += 2) {
    const std::size_t j = i % head_dim;
    const double angle = double(pos) / std::pow(10000.0, double(j) / double(head_dim));
    const T c = T(std::cos(angle)), s = T(std::sin(angle));
    const T a = v[i], b = v[i + 1];
    v[i] = a * c - b * s;
    v[i + 1] = a * s + b * c;
  }
}
// Causal attention of one query over positions [0, pos].
template <class T>
void attend(const T* q, const T* keys, const T* values, T* out, T* scores, std::size_t pos, const Config& c) {
  const std::size_t hd = c.head_dim();
  for (std::size_t h = 0; h < c.heads; ++h) {
    T max = -1e30;
    for (std::size_t t = 0; t <= pos; ++t) {
      T s = 0;
      for (std::size_t i = 0; i < hd; ++i) s += q[h * hd + i] * keys[t * c.dim + h * hd + i];
      scores[t] = s / std::sqrt(T(hd));
      max = std::max(max, scores[t]);
    }
    T sum = 0;
    for (std::size_t t = 0; t <= pos; ++t) sum += scores[t] = std::exp(scores[t] - max);
    for (std::size_t i = 0; i < hd; ++i) {
      T acc = 0;
      for (std::size_t t = 0; t <= pos; ++t) acc += scores[t] * values[t * c.dim + h * hd + i];
      out[h * hd + i] = acc / sum;
    }
  }
}

struct Timings {
  double stage[kStages] = {};
  double alloc = 0;        // seconds spent obtaining and releasing memory
  std::size_t alloc_calls = 0;
};

// Memory for one path: how activations, the KV cache and weights are obtained.
struct Weights {
  const void* w[9];
  bool bf16 = false;  // the matrices (w[1..4], w[6..8]) are bf16
  const float* vec(int i) const { return static_cast<const float*>(w[i]); }
};

template <class T>
void matvec(const Weights& W, int i, const T* x, T* out, std::size_t rows, std::size_t cols) {
  if (W.bf16) {
    matvec_typed(static_cast<const std::uint16_t*>(W.w[i]), x, out, rows, cols);
  } else {
    matvec_typed(static_cast<const float*>(W.w[i]), x, out, rows, cols);
  }
}

// One token's activations.
template <class T>
struct Scratch {
  T *h, *q, *attn, *o, *scores, *gate, *up, *down;
};
// Obtains all of a token's activations with `take(n)`, in one timed block.
template <class T, class Take>
Scratch<T> take_scratch(const Config& c, Take&& take) {
  return {take(c.dim), take(c.dim), take(c.dim), take(c.dim), take(c.positions()), take(c.mlp), take(c.mlp), take(c.dim)};
}
constexpr std::size_t kScratchTakes = 8;

// One decoder-layer step for token `pos`.
template <class T>
void layer_step(T* x, std::size_t pos, const Weights& W, T* keys, T* values, const Config& c, const Scratch<T>& m,
                Timings* timing) {
  auto timed = [&](Stage s, auto&& f) {
    const auto t = Clock::now();
    f();
    if (timing) timing->stage[s] += std::chrono::duration<double>(Clock::now() - t).count();
  };
  T *h = m.h, *q = m.q, *attn = m.attn, *o = m.o, *scores = m.scores, *gate = m.gate, *up = m.up, *down = m.down;
  timed(kNorm, [&] { rmsnorm(x, W.vec(0), h, c.dim); });
  timed(kQkv, [&] {
    matvec(W, 1, h, q, c.dim, c.dim);
    matvec(W, 2, h, keys + pos * c.dim, c.dim, c.dim);
    matvec(W, 3, h, values + pos * c.dim, c.dim, c.dim);
  });
  timed(kRope, [&] {
    rope(q, c.dim, c.head_dim(), pos);
    rope(keys + pos * c.dim, c.dim, c.head_dim(), pos);
  });
  timed(kAttention, [&] { attend(q, keys, values, attn, scores, pos, c); });
  timed(kOut, [&] {
    matvec(W, 4, attn, o, c.dim, c.dim);
    for (std::size_t i = 0; i < c.dim; ++i) x[i] += o[i];
  });
  timed(kMlp, [&] {
    rmsnorm(x, W.vec(5), h, c.dim);
    matvec(W, 6, h, gate, c.mlp, c.dim);
    matvec(W, 7, h, up, c.mlp, c.dim);
    for (std::size_t i = 0; i < c.mlp; ++i) gate[i] = gate[i] / (T(1) + std::exp(-gate[i])) * up[i];
    matvec(W, 8, gate, down, c.dim, c.mlp);
    for (std::size_t i = 0; i < c.dim; ++i) x[i] += down[i];
  });
}

std::vector<float> input_for(std::size_t token, const Config& c) {
  std::vector<float> x(c.dim);
  for (std::size_t i = 0; i < c.dim; ++i) x[i] = std::sin(0.1f * float(token + 1) * float(i + 1));
  return x;
}

// ---- the standard path -------------------------------------------------------
std::vector<float> run_standard(const std::string& path, const Config& c, Timings& t, double& seconds) {
  // Weights: read() each tensor into its own malloc'ed buffer.
  const unimem::SafetensorsHeader header = unimem::read_safetensors_header(path);
  std::vector<float*> owned;
  Weights W{};
  W.bf16 = c.bf16;
  const auto specs = weight_specs(c);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    for (const auto& info : header.tensors) {
      if (info.name != specs[i].name) continue;
      auto* buf = static_cast<float*>(std::malloc(info.bytes));
      unimem::ReadOptions plain;
      plain.direct = false;
      plain.io_uring = false;
      unimem::read_file(path, info.file_offset, {reinterpret_cast<std::byte*>(buf), info.bytes}, plain);
      W.w[i] = buf;
      owned.push_back(buf);
    }
  }
  const auto start = Clock::now();
  std::vector<float> keys, values, out;
  for (std::size_t pos = 0; pos < c.positions(); ++pos) {
    auto a = Clock::now();
    keys.resize((pos + 1) * c.dim);  // the cache grows a row at a time
    values.resize((pos + 1) * c.dim);
    t.alloc += std::chrono::duration<double>(Clock::now() - a).count();
    t.alloc_calls += 2;
    std::vector<float> x = pos < c.prompt ? input_for(pos, c) : out;
    a = Clock::now();
    const Scratch<float> m = take_scratch<float>(c, [](std::size_t n) { return new float[n]; });
    t.alloc += std::chrono::duration<double>(Clock::now() - a).count();
    layer_step(x.data(), pos, W, keys.data(), values.data(), c, m, &t);
    a = Clock::now();
    for (float* p : {m.h, m.q, m.attn, m.o, m.scores, m.gate, m.up, m.down}) delete[] p;
    t.alloc += std::chrono::duration<double>(Clock::now() - a).count();
    t.alloc_calls += 2 * kScratchTakes;
    out = x;
  }
  seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (float* p : owned) std::free(p);
  return out;
}

// ---- the unimem path ---------------------------------------------------------
std::vector<float> run_unimem(const std::string& path, const Config& c, Timings& t, double& seconds, std::string& stat) {
  unimem::BlockOptions o;
  o.pinning = unimem::Pinning::unpinned;  // any memlock limit
  const std::size_t weight_bytes = unimem::file_size(path) + (1u << 20);
  const std::size_t scratch_bytes = (6 * c.dim + 2 * c.mlp + c.positions()) * sizeof(float) + 64 * 16;
  const std::size_t history_bytes = 2 * c.positions() * c.dim * sizeof(float) + 4096;
  unimem::Layout layout = unimem::Layout::open(weight_bytes, scratch_bytes, history_bytes, o);
  unimem::Safetensors model = unimem::Safetensors::load(path, layout.weights(), 64);
  Weights W{};
  const auto specs = weight_specs(c);
  W.bf16 = c.bf16;
  for (std::size_t i = 0; i < specs.size(); ++i) W.w[i] = model.at(specs[i].name).data;

  const auto start = Clock::now();
  auto a = Clock::now();
  float* keys = layout.history().take<float>(c.positions() * c.dim).data();  // once per conversation
  float* values = layout.history().take<float>(c.positions() * c.dim).data();
  t.alloc += std::chrono::duration<double>(Clock::now() - a).count();
  t.alloc_calls += 2;
  std::vector<float> out;
  for (std::size_t pos = 0; pos < c.positions(); ++pos) {
    std::vector<float> x = pos < c.prompt ? input_for(pos, c) : out;
    a = Clock::now();
    const Scratch<float> m = take_scratch<float>(c, [&](std::size_t n) { return layout.scratch().take<float>(n).data(); });
    t.alloc += std::chrono::duration<double>(Clock::now() - a).count();
    t.alloc_calls += kScratchTakes;
    if (m.down == nullptr) {
      std::fprintf(stderr, "scratch Tape full\n");
      std::exit(1);
    }
    layer_step(x.data(), pos, W, keys, values, c, m, &t);
    a = Clock::now();
    layout.clear_pass();  // all of this token's activations at once
    t.alloc += std::chrono::duration<double>(Clock::now() - a).count();
    ++t.alloc_calls;
    out = x;
  }
  seconds = std::chrono::duration<double>(Clock::now() - start).count();
  stat = layout.stat();
  layout.clear_talk();
  return out;
}

// ---- float64 reference -------------------------------------------------------
std::vector<double> run_reference(const std::string& path, const Config& c) {
  unimem::Tape tape = unimem::Tape::start(unimem::file_size(path) + (1u << 20), [] {
    unimem::BlockOptions o;
    o.pinning = unimem::Pinning::unpinned;
    return o;
  }());
  unimem::Safetensors model = unimem::Safetensors::load(path, tape, 64);
  Weights W{};
  const auto specs = weight_specs(c);
  W.bf16 = c.bf16;
  for (std::size_t i = 0; i < specs.size(); ++i) W.w[i] = model.at(specs[i].name).data;
  std::vector<double> keys(c.positions() * c.dim), values(c.positions() * c.dim), out;
  std::vector<std::vector<double>> scratch;
  for (std::size_t pos = 0; pos < c.positions(); ++pos) {
    std::vector<double> x;
    if (pos < c.prompt) {
      for (float v : input_for(pos, c)) x.push_back(v);
    } else {
      x = out;
    }
    scratch.clear();
    scratch.reserve(kScratchTakes);
    const Scratch<double> m = take_scratch<double>(c, [&](std::size_t n) { return scratch.emplace_back(n).data(); });
    layer_step(x.data(), pos, W, keys.data(), values.data(), c, m, nullptr);
    out = x;
  }
  return out;
}

double rel_error(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

int main(int argc, char** argv) try {
  Config c;
  for (int i = 1; i + 1 < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--bf16" || a == "--preset") continue;
    const std::size_t v = std::strtoull(argv[i + 1], nullptr, 10);
    if (a == "--dim") c.dim = v;
    else if (a == "--heads") c.heads = v;
    else if (a == "--mlp") c.mlp = v;
    else if (a == "--prompt") c.prompt = v;
    else if (a == "--tokens") c.tokens = v;
  }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--bf16") c.bf16 = true;
    if (a == "--preset" && i + 1 < argc && std::string(argv[i + 1]) == "large") {
      c = Config{4096, 32, 11008, 16, 16, true};  // the GPU machine's size, 16-bit weights
    }
  }
  if (c.heads == 0 || c.dim % c.heads != 0 || c.head_dim() % 2 != 0) {
    std::fprintf(stderr, "dim must be a multiple of 2 x heads\n");
    return 2;
  }
  // Weights from a fixed seed, written as a safetensors file.
  const std::string path = (std::filesystem::temp_directory_path() / ("unimem_pipeline_" + std::to_string(::getpid()) + ".safetensors")).string();
  {
    std::mt19937 rng(2026);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<std::vector<float>> data;
    std::vector<std::vector<std::uint16_t>> halves;
    std::vector<unimem::TensorData> tensors;
    data.reserve(16);
    halves.reserve(16);
    for (const WeightSpec& s : weight_specs(c)) {
      auto& d = data.emplace_back(s.rows * s.cols);
      const float scale = s.cols == 1 ? 0.1f : 1.0f / std::sqrt(float(s.cols));
      for (auto& v : d) v = (s.cols == 1 ? 1.0f : 0.0f) + normal(rng) * scale;
      const auto shape = s.cols == 1 ? std::vector<std::uint64_t>{s.rows} : std::vector<std::uint64_t>{s.rows, s.cols};
      if (c.bf16 && s.cols != 1) {
        auto& h = halves.emplace_back(d.size());
        for (std::size_t i = 0; i < d.size(); ++i) h[i] = float_to_bf16(d[i]);
        tensors.push_back({s.name, unimem::DType::BF16, shape, std::as_bytes(std::span<const std::uint16_t>(h))});
      } else {
        tensors.push_back({s.name, unimem::DType::F32, shape, std::as_bytes(std::span<const float>(d))});
      }
    }
    unimem::save_safetensors(path, tensors);
  }
  std::printf("unimem pipeline (CPU): dim %zu, %zu heads, mlp %zu, %s weights, %zu prompt + %zu generated tokens\n\n",
              c.dim, c.heads, c.mlp, c.bf16 ? "bf16" : "f32", c.prompt, c.tokens);
  Timings ts, tu;
  double seconds_standard = 0, seconds_unimem = 0;
  std::string stat;
  const std::vector<float> standard = run_standard(path, c, ts, seconds_standard);
  const std::vector<float> with_unimem = run_unimem(path, c, tu, seconds_unimem, stat);
  const std::vector<double> reference = run_reference(path, c);
  std::filesystem::remove(path);

  const double e_standard = rel_error(standard, reference), e_unimem = rel_error(with_unimem, reference);
  const bool identical = std::memcmp(standard.data(), with_unimem.data(), standard.size() * sizeof(float)) == 0;
  const double tolerance = 1e-4;  // float32 arithmetic over one layer

  const double tokens = double(c.positions());
  std::printf("%-18s %14s %14s %8s\n", "stage (per token)", "standard", "unimem", "ratio");
  for (int s = 0; s < kStages; ++s) {
    std::printf("%-18s %11.2f us %11.2f us %7.2fx\n", kStageNames[s], ts.stage[s] / tokens * 1e6, tu.stage[s] / tokens * 1e6,
                ts.stage[s] / tu.stage[s]);
  }
  std::printf("%-18s %11.2f us %11.2f us %7.2fx\n", "allocation", ts.alloc / tokens * 1e6, tu.alloc / tokens * 1e6, ts.alloc / tu.alloc);
  std::printf("%-18s %14.1f %14.1f\n", "alloc calls/token", double(ts.alloc_calls) / tokens, double(tu.alloc_calls) / tokens);
  std::printf("%-18s %14s %14s\n", "host<->GPU bytes", "0 (CPU mode)", "0 (CPU mode)");
  std::printf("%-18s %14.1f %14.1f %7.2fx\n", "tokens/s", tokens / seconds_standard, tokens / seconds_unimem,
              seconds_standard / seconds_unimem);
  std::printf("\nerror vs float64: standard %.2e, unimem %.2e (tolerance %.0e); the two paths agree %s\n", e_standard,
              e_unimem, tolerance, identical ? "bit for bit" : "within tolerance");
  std::printf("\nLayout after the conversation:\n%s", stat.c_str());
  if (!(e_standard < tolerance) || !(e_unimem < tolerance)) {
    std::fprintf(stderr, "FAILED: outputs differ from the float64 reference beyond %.0e\n", tolerance);
    return 1;
  }
  return 0;
} catch (const unimem::Error& e) {
  std::fprintf(stderr, "pipeline: %s\n", e.what());
  return 1;
}
