// examples/pipeline/pipeline.cpp — one transformer decoder layer (RMSNorm, QKV,
// RoPE, causal attention over a KV cache, output projection, SwiGLU MLP)
// generating tokens after a prompt, three ways:
//   standard  what a competent engineer writes without unimem: weights read()
//             into malloc'ed buffers (and copied once to the GPU), device
//             tensors from CUDA's stream-ordered pool, host tensors that cross
//             to the GPU in pinned buffers, cudaMemcpyAsync with one wait per
//             hand-off, a KV cache allocated once per conversation
//   naive     what first versions do (an extra column): new/delete and
//             cudaMalloc/cudaFree per tensor per step, a blocking cudaMemcpy
//             from pageable memory at every hand-off, a KV cache that grows
//   unimem    weights loaded from safetensors into Layout.weights,
//             activations taken from scratch (clear_pass per step), the KV
//             cache in history (clear_talk per conversation); the Layout's
//             pages are GPU-visible, so CPU and GPU stages read and write the
//             same pages and nothing is staged
// in three modes: cpu (everything on the CPU; matrix products through oneDNN,
// on AMX where the CPU has it), gpu (everything on the GPU) and split (matrix
// products on the GPU, everything else on the CPU: the hand-offs are where
// copies cost). Every path runs the same kernels; their outputs are compared
// with each other and with a float64 reference, and the program fails when
// they differ. Every byte that crosses PCIe per token is counted: copies,
// and kernels' loads from and stores to host pages.
//
// This file runs a layer step on any path, times it and reports. The
// layer is in model.hpp, its stages in cpu_stages.hpp, cpu_matmul.* and
// gpu_stages.*, the paths in paths.hpp, standard_path.cpp and
// unimem_path.cpp, the float64 reference in reference.*.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
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
#include "paths.hpp"
#include "reference.hpp"

namespace {

using namespace pipeline;

constexpr const char* kUsage =
    "usage: unimem_pipeline [--mode auto|cpu|gpu|split|all] [--preset large] [--dim N] [--heads N]\n"
    "                       [--mlp N] [--prompt N] [--tokens N] [--bf16] [--gpu-weights device|host]\n"
    "                       [--no-gpu-mirror] [--repeat N] [--save-weights FILE] [--json FILE]\n"
    "  --mode         auto (default): cpu without a GPU, all three with one\n"
    "  --preset large dim 4096, 32 heads, MLP 11008, bf16, 128 prompt + 32 generated tokens\n"
    "  --gpu-weights  device (default): GPU matrix products read a device copy of the weights,\n"
    "                 made once at load; host: they read Layout.weights in place over the bus\n"
    "  --no-gpu-mirror\n"
    "                 unimem's kernels read host pages over the bus every time, instead of a\n"
    "                 device mirror they write through to and gather CPU-written data into\n"
    "  --repeat       conversations per path (default 5), alternating; medians reported\n"
    "  --save-weights write the layer's weights to FILE (safetensors) and keep it\n"
    "  --json         write each mode's tokens/s, prefill, error and PCIe bytes per path to FILE\n"
    "  --gpu-or-skip  (tests) without a GPU, print why and exit 77 instead of failing\n";

enum class Mode { cpu, gpu, split };
const char* mode_name(Mode m) { return m == Mode::cpu ? "cpu" : m == Mode::gpu ? "gpu" : "split"; }

Placement placement(Mode m) {
  if (m == Mode::cpu) return {Where::cpu, Where::cpu};
  if (m == Mode::gpu) return {Where::gpu, Where::gpu};
  return {Where::gpu, Where::cpu};
}

const char* kStageNames[] = {"rmsnorm", "qkv projection", "rope", "attention", "out projection", "swiglu mlp"};

// ---- one layer step, either path, any placement ---------------------------------
class Runner {
 public:
  Runner(const Config& c, Placement pl, CpuMatmul& mm) : c_(c), pl_(pl), mm_(mm) {}
  bool stage_times = false;  // time each stage (waiting for the GPU after each)

  void layer(Path& P, Step& s) {
    const std::size_t m = s.m, d = c_.dim, f = c_.mlp;
    const Weights& W = P.weights();
    const Where mm = pl_.mm, vec = pl_.vec;
    // With stage times on, each stage waits for its GPU work, so that its
    // time is its own; off (the timed runs), GPU work queues freely.
    auto timed = [&](Stage st, auto&& fn) {
      if (!stage_times) return fn();
      const auto t = Clock::now();
      fn();
      if (pl_.uses(Where::gpu)) gpu::sync();
      P.counters.stage[st] += since(t);
    };
    // Where a stage on `side` writes b (after reading its inputs): a kernel
    // also writes `also` where the path keeps a device copy.
    auto write = [&](Buf& b, Where side) { return gpu::Out{P.produce(b, side), P.also(b, side)}; };
    auto matmul = [&](Buf& in, std::size_t k, Weight w, std::size_t n, Buf& out) {
      const float* x = P.need(in, mm);
      const gpu::Out y = write(out, mm);
      if (mm == Where::gpu) {
        P.reading_weight(w);
        gpu::matmul(x, m, k, W.at(w, mm), c_.bf16, n, y);
      } else {
        mm_.run(x, m, k, W.at(w, mm), c_.bf16, n, y.p, s.x16);
      }
    };
    auto norm = [&](Buf& in, Weight w, Buf& out) {
      const float* x = P.need(in, vec);
      const gpu::Out y = write(out, vec);
      if (vec == Where::gpu)
        P.reading_weight(w), gpu::rmsnorm(x, W.vec(w, vec), y, m, d);
      else
        cpu::rmsnorm(x, W.vec(w, vec), y.p, m, d);
    };
    auto rope = [&](Buf& b) {
      const float* in = P.need(b, vec);
      const gpu::Out out = write(b, vec);
      if (vec == Where::gpu) {
        P.reading_rope(m);
        gpu::rope(in, out, m, s.p0, d, c_.head_dim(), W.rope(vec));
      } else {
        const float* table = W.rope(vec);
        const std::size_t half = c_.head_dim() / 2;
        cpu::rope(in, out.p, m, s.p0, c_, [&](std::size_t p, std::size_t j) {
          return std::pair{table[(p * half + j) * 2], table[(p * half + j) * 2 + 1]};
        });
      }
    };
    auto add = [&](Buf& x, Buf& y, std::size_t n) {  // x += y
      const float* a = P.need(x, vec);
      const float* b = P.need(y, vec);
      const gpu::Out out = write(x, vec);
      if (vec == Where::gpu)
        gpu::add(a, b, out, n);
      else
        cpu::add(a, b, out.p, n);
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
      P.need(s.k, vec);  // the new rows join the cache where attention reads it
      P.need(s.v, vec);
      const gpu::Out out = write(s.attn, vec);
      if (vec == Where::gpu)
        P.reading_cache(s.p0 + m), gpu::attend(q, P.keys(), P.values(), out, m, s.p0, d, c_.heads);
      else
        cpu::attend(q, P.keys(), P.values(), out.p, s.scores, m, s.p0, c_);
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
      const gpu::Out out = write(s.gate, vec);
      if (vec == Where::gpu)
        gpu::swiglu(gate, up, out, m * f);
      else
        cpu::swiglu(gate, up, out.p, m * f);
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
      if (pos < c_.prompt)
        input_for(pos, c_, x + r * c_.dim);
      else
        std::copy_n(out.data() + (pos - 1) * c_.dim, c_.dim, x + r * c_.dim);
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
  r.out.assign(c.positions() * c.dim, std::numeric_limits<float>::quiet_NaN());  // unwritten rows fail the checks
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

// ---- one mode: every path, the table, the checks ------------------------------
struct Options {
  Config c;
  std::vector<Mode> modes;
  UnimemGpuOptions unimem_gpu;
  bool gpu_or_skip = false;
  int repeat = 5;
  std::string save_weights, json;
};

// What one mode measured of one path (for --json).
struct Row {
  std::string path;
  double tokens_per_s, prefill_ms, error;
  std::size_t pcie_bytes_per_token;
};
struct ModeReport {
  Mode mode;
  std::vector<Row> rows;
};

// The paths a mode compares, in the table's order; unimem is last, and every
// ratio is another path's time over unimem's.
struct Contender {
  const char* name;
  const char* label;  // of its ratio column
  std::unique_ptr<Path> path;
  std::vector<Result> runs;
  Result median;
  Counters stages;  // one more conversation, with stage times
};

bool run_mode(Mode mode, const Options& opt, const std::string& file, const std::vector<double>& reference,
              CpuMatmul& mm, const std::string& gpu_name, std::vector<ModeReport>& reports) {
  const Config& c = opt.c;
  const Placement pl = placement(mode);
  const bool x16 = pl.mm == Where::cpu && mm.rounds_to_bf16(c.bf16);
  std::printf("== %s mode: ", mode_name(mode));
  if (mode == Mode::cpu)
    std::printf("everything on the CPU; matrix products: %s\n", mm.describe(1, c.dim, c.bf16, c.dim).c_str());
  if (mode == Mode::gpu) std::printf("everything on %s\n", gpu_name.c_str());
  if (mode == Mode::split) std::printf("matrix products on %s, everything else on the CPU\n", gpu_name.c_str());
  if (mode == Mode::cpu)
    std::printf("   prompt matrix products: %s\n", mm.describe(c.prompt, c.dim, c.bf16, c.dim).c_str());
  if (mode != Mode::cpu) {
    std::printf("   GPU weights (unimem): %s\n", opt.unimem_gpu.weights_in_place
                                                     ? "read in place from Layout.weights over the bus"
                                                     : "one copy in device memory, DMA'd from Layout.weights at load");
    std::printf("   GPU reads of activations and KV cache (unimem): %s\n",
                opt.unimem_gpu.mirror ? "from a device mirror the kernels write through to"
                                      : "host pages, over the bus (--no-gpu-mirror)");
  }

  Runner run(c, pl, mm);
  // Untimed: oneDNN's primitives and CUDA's kernels are made on first use.
  // Kept until every contender has loaded: its freed heap would otherwise
  // hand the next path's weights pages already faulted in, a head start no
  // process loading its model once gets. The naive style, which pins
  // nothing: the driver serves small pinned allocations from chunks it
  // pinned before, so a warm-up's cudaHostAlloc made the standard path's
  // 0.03 ms where a process's first costs 0.9-3.7 ms, median 1.3
  // (unimem_pinned_setup_benchmark on the H200 machine, 2026-12-05).
  std::unique_ptr<Path> warm_up = make_standard_path(file, c, pl, x16, StandardStyle::naive);
  converse(*warm_up, c, run);
  std::vector<Contender> paths;
  paths.push_back({"naive", "naive/u", make_standard_path(file, c, pl, x16, StandardStyle::naive), {}, {}, {}});
  paths.push_back({"standard", "std/u", make_standard_path(file, c, pl, x16, StandardStyle::competent), {}, {}, {}});
  paths.push_back({"unimem", "", make_unimem_path(file, c, pl, x16, opt.unimem_gpu), {}, {}, {}});
  warm_up.reset();
  // Conversations of the paths alternate, --repeat times; each path's median
  // (by generation time) is reported. Stage times come from one more
  // conversation each, which waits for the GPU after every stage.
  bool repeatable = true;
  for (int rep = 0; rep < opt.repeat; ++rep) {
    for (Contender& p : paths) {
      p.runs.push_back(converse(*p.path, c, run));
      repeatable = repeatable && p.runs.back().out == p.runs.front().out;
    }
  }
  run.stage_times = true;
  for (Contender& p : paths) {
    p.stages = converse(*p.path, c, run).decode;
    std::sort(p.runs.begin(), p.runs.end(),
              [](const Result& a, const Result& b) { return a.decode_seconds < b.decode_seconds; });
    p.median = p.runs[p.runs.size() / 2];
    p.median.alloc_replayed = replay_allocations(*p.path, c);
  }
  run.stage_times = false;
  const Contender& u = paths.back();
  std::printf(
      "   %d conversations per path, alternating; the median's figures (by generation time);\n"
      "   stage times from one more conversation per path that waits for the GPU after each stage\n",
      opt.repeat);
  std::printf(
      "   naive: cudaMalloc/cudaFree per tensor, blocking cudaMemcpy from pageable memory, a growing KV\n"
      "   standard: stream-ordered pool, pinned buffers, cudaMemcpyAsync with one wait per hand-off,\n"
      "             KV cache allocated once (what a competent engineer writes without unimem)\n");

  const double gen = double(c.tokens);
  auto header = [&](const char* title) {
    std::printf("\n%-34s", title);
    for (const Contender& p : paths) std::printf(" %12s", p.name);
    // Ratios: each other path's time over unimem's (above 1: unimem is faster).
    for (std::size_t i = 0; i + 1 < paths.size(); ++i) std::printf(" %8s", paths[i].label);
    std::printf("\n");
  };
  // A row of per-token figures with the others' ratio to unimem (x > 1: unimem faster).
  auto row = [&](const std::string& name, auto&& value, const char* unit, double scale, const char* format) {
    std::printf("%-34s", name.c_str());
    for (const Contender& p : paths) std::printf(format, value(p) * scale, unit);
    for (std::size_t i = 0; i + 1 < paths.size(); ++i) std::printf(" %7.2fx", value(paths[i]) / value(u));
    std::printf("\n");
  };
  auto count = [&](const char* name, auto&& value) {
    std::printf("%-34s", name);
    for (const Contender& p : paths) std::printf(" %12zu", std::size_t(value(p)) / c.tokens);
    std::printf("\n");
  };
  header("per generated token");
  for (int st = 0; st < kStages; ++st) {
    row(
        kStageNames[st], [&](const Contender& p) { return p.stages.stage[st] / gen; }, "us", 1e6, " %9.2f %s");
  }
  if (mode != Mode::cpu) {
    count("host<->device copies", [](const Contender& p) { return p.median.decode.copies; });
    count("PCIe bytes: copies", [](const Contender& p) { return p.median.decode.copy_bytes; });
    count("PCIe bytes: kernels read host",
          [](const Contender& p) { return p.median.decode.gather_bytes + p.median.decode.host_reads; });
    count("PCIe bytes: kernels wrote host", [](const Contender& p) { return p.median.decode.host_writes; });
    count("PCIe bytes in all", [](const Contender& p) { return p.median.decode.pcie_bytes(); });
  }
  std::printf("%-34s", "tokens/s (generated)");
  for (const Contender& p : paths) std::printf(" %12.2f", gen / p.median.decode_seconds);
  for (std::size_t i = 0; i + 1 < paths.size(); ++i)
    std::printf(" %7.2fx", paths[i].median.decode_seconds / u.median.decode_seconds);
  std::printf("\n");
  row(
      "prefill (" + std::to_string(c.prompt) + " tokens)", [](const Contender& p) { return p.median.prefill_seconds; },
      "ms", 1e3, " %9.2f %s");
  row(
      "loading the weights", [](const Contender& p) { return p.path->load_seconds; }, "ms", 1e3, " %9.2f %s");
  if (mode != Mode::cpu) {  // what each path pays up front so that its per-token copies are cheap (no ratio)
    std::printf("%-34s", "  of which: memory set up for GPU");
    for (const Contender& p : paths) std::printf(" %9.2f ms", p.path->gpu_setup_seconds * 1e3);
    std::printf("\n");
  }
  // Two timed sections per token (obtain, release); their clock reads are
  // not the allocator's cost. Allocation figures come from the stage-timed
  // conversation's counters as much as the others': the same calls.
  const double overhead = 2 * clock_overhead();
  header("allocation, per gen. token");
  row(
      "in the run", [&](const Contender& p) { return std::max(1e-12, p.median.decode.alloc / gen - overhead); }, "us",
      1e6, " %9.3f %s");
  row(
      "replayed alone (warm caches)", [](const Contender& p) { return p.median.alloc_replayed; }, "us", 1e6,
      " %9.3f %s");
  std::printf("%-34s", "calls");
  for (const Contender& p : paths) std::printf(" %12.1f", double(p.median.decode.alloc_calls) / gen);
  std::printf("\n(in the run: the clock's own %.0f ns per token subtracted)\n", overhead * 1e9);

  // float32 arithmetic: 1e-4 over a layer; activations rounded to bf16 for
  // AMX/AVX-512 bf16 products carry 8 significant bits: 3e-2.
  const double tolerance = x16 ? 3e-2 : 1e-4;
  std::printf("\nerror vs float64 over all %zu outputs:", c.positions());
  ModeReport report{mode, {}};
  bool within = true, identical = true;
  double between = 0;
  for (const Contender& p : paths) {
    const double e = rel_error(p.median.out, reference);
    within = within && e < tolerance;
    std::printf(" %s %.2e,", p.name, e);
    report.rows.push_back({p.name, gen / p.median.decode_seconds, p.median.prefill_seconds * 1e3, e,
                           p.median.decode.pcie_bytes() / c.tokens});
    identical = identical && std::memcmp(p.median.out.data(), u.median.out.data(), u.median.out.size() * 4) == 0;
    between = std::max(between, rel_error(p.median.out, u.median.out));
  }
  std::printf(" (tolerance %.0e%s)\n", tolerance, x16 ? ", bf16 activations" : "");
  std::printf("paths vs unimem: %s\n",
              identical ? "identical, bit for bit" : ("differ by up to " + std::to_string(between)).c_str());
  std::printf("\nLayout after the conversation (unimem path):\n%s\n", u.path->layout_stat().c_str());
  reports.push_back(std::move(report));
  bool ok = true;
  if (!within) {
    std::fprintf(stderr, "FAILED (%s mode): outputs differ from the float64 reference beyond %.0e\n", mode_name(mode),
                 tolerance);
    ok = false;
  }
  if (!repeatable) {
    std::fprintf(stderr, "FAILED (%s mode): a path's output changed between conversations\n", mode_name(mode));
    ok = false;
  }
  if (!(between < 1e-6)) {
    std::fprintf(stderr, "FAILED (%s mode): the paths differ by %.2e\n", mode_name(mode), between);
    ok = false;
  }
  return ok;
}

// --json: the figures a peer (examples/pipeline/torch_layer.py) prints beside its own.
void write_json(const std::string& path, const Config& c, const std::string& gpu_name,
                const std::vector<ModeReport>& reports, const std::vector<double>& reference) {
  // What Python's json reads back, NaN included (a path gone wrong must still show).
  auto number = [](double v) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", v);
    return std::isnan(v) ? std::string("NaN") : std::isinf(v) ? std::string(v > 0 ? "Infinity" : "-Infinity") : text;
  };
  double norm = 0;
  for (double v : reference) norm += v * v;
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) throw std::runtime_error("cannot write " + path);
  std::string name;
  for (char ch : gpu_name) {
    if (ch != '"' && ch != '\\') name += ch;
  }
  std::fprintf(f, "{\"config\": {\"dim\": %zu, \"heads\": %zu, \"mlp\": %zu, \"prompt\": %zu, \"tokens\": %zu, ", c.dim,
               c.heads, c.mlp, c.prompt, c.tokens);
  std::fprintf(f, "\"bf16\": %s},\n \"gpu\": \"%s\",\n \"reference_norm\": %s,\n \"modes\": [",
               c.bf16 ? "true" : "false", name.c_str(), number(std::sqrt(norm)).c_str());
  for (std::size_t m = 0; m < reports.size(); ++m) {
    std::fprintf(f, "%s\n  {\"mode\": \"%s\", \"rows\": [", m ? "," : "", mode_name(reports[m].mode));
    for (std::size_t r = 0; r < reports[m].rows.size(); ++r) {
      const Row& row = reports[m].rows[r];
      std::fprintf(f,
                   "%s\n    {\"path\": \"%s\", \"tokens_per_s\": %s, \"prefill_ms\": %s, \"error\": %s, "
                   "\"pcie_bytes_per_token\": %zu}",
                   r ? "," : "", row.path.c_str(), number(row.tokens_per_s).c_str(), number(row.prefill_ms).c_str(),
                   number(row.error).c_str(), row.pcie_bytes_per_token);
    }
    std::fprintf(f, "]}");
  }
  std::fprintf(f, "\n ]}\n");
  if (std::fclose(f) != 0) throw std::runtime_error("cannot write " + path);
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
    if (a == "--preset")
      ++i;
    else if (a == "--dim")
      o.c.dim = number(i);
    else if (a == "--heads")
      o.c.heads = number(i);
    else if (a == "--mlp")
      o.c.mlp = number(i);
    else if (a == "--prompt")
      o.c.prompt = number(i);
    else if (a == "--tokens")
      o.c.tokens = number(i);
    else if (a == "--repeat")
      o.repeat = int(std::min<std::size_t>(number(i), 100));
    else if (a == "--bf16")
      o.c.bf16 = true;
    else if (a == "--gpu-weights" && i + 1 < argc) {
      const std::string v = argv[++i];
      if (v != "device" && v != "host") throw std::invalid_argument("--gpu-weights takes device or host");
      o.unimem_gpu.weights_in_place = v == "host";
    } else if (a == "--mode" && i + 1 < argc) {
      mode_given = true;
      mode_arg = argv[++i];
    } else if (a == "--no-gpu-mirror") {
      o.unimem_gpu.mirror = false;
    } else if (a == "--save-weights" && i + 1 < argc) {
      o.save_weights = argv[++i];
    } else if (a == "--json" && i + 1 < argc) {
      o.json = argv[++i];
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

  std::printf(
      "unimem pipeline: one decoder layer, dim %zu, %zu heads, MLP %zu, %s weights, %zu prompt + %zu "
      "generated tokens\n",
      c.dim, c.heads, c.mlp, c.bf16 ? "bf16" : "f32", c.prompt, c.tokens);
  std::printf("GPU: %s\n\n", have_gpu ? probe.name.c_str() : ("none (" + why_not + "): CPU mode only").c_str());

  // The weights, from a fixed seed, as the safetensors file a model comes in.
  const std::string file = !opt.save_weights.empty()
                               ? opt.save_weights
                               : (std::filesystem::temp_directory_path() /
                                  ("unimem_pipeline_" + std::to_string(::getpid()) + ".safetensors"))
                                     .string();
  write_weights(file, c);
  struct Remove {
    std::string f;
    ~Remove() {
      if (!f.empty()) std::filesystem::remove(f);
    }
  } remove{opt.save_weights.empty() ? file : std::string()};

  const std::vector<double> reference = run_reference(file, c);
  CpuMatmul mm;
  bool ok = true;
  std::vector<ModeReport> reports;
  for (Mode m : opt.modes) ok = run_mode(m, opt, file, reference, mm, probe.name, reports) && ok;
  if (!opt.json.empty()) write_json(opt.json, c, have_gpu ? probe.name : std::string(), reports, reference);
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "unimem_pipeline: %s\n", e.what());
  return 1;
}
