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
//
// This file runs a layer step on either path, times it and reports. The
// layer is in model.hpp, its stages in cpu_stages.hpp, cpu_matmul.* and
// gpu_stages.*, the two paths in paths.hpp, standard_path.cpp and
// unimem_path.cpp, the float64 reference in reference.*.
#include <algorithm>
#include <chrono>
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
    "                       [--no-gpu-mirror] [--repeat N]\n"
    "  --mode         auto (default): cpu without a GPU, all three with one\n"
    "  --preset large dim 4096, 32 heads, MLP 11008, bf16, 128 prompt + 32 generated tokens\n"
    "  --gpu-weights  device (default): GPU matrix products read a device copy of the weights,\n"
    "                 made once at load; host: they read Layout.weights in place over the bus\n"
    "  --no-gpu-mirror\n"
    "                 unimem's kernels read host pages over the bus every time, instead of a\n"
    "                 device mirror they write through to and gather CPU-written data into\n"
    "  --repeat       conversations per path (default 5), alternating; medians reported\n"
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
    // Where a stage on `side` writes b (after reading its inputs): a kernel
    // also writes `also` where the path keeps a device copy.
    auto write = [&](Buf& b, Where side) { return gpu::Out{P.produce(b, side), P.also(b, side)}; };
    auto matmul = [&](Buf& in, std::size_t k, Weight w, std::size_t n, Buf& out) {
      const float* x = P.need(in, mm);
      const gpu::Out y = write(out, mm);
      if (mm == Where::gpu) {
        gpu::matmul(x, m, k, W.at(w, mm), c_.bf16, n, y);
      } else {
        mm_.run(x, m, k, W.at(w, mm), c_.bf16, n, y.p, s.x16);
      }
    };
    auto norm = [&](Buf& in, Weight w, Buf& out) {
      const float* x = P.need(in, vec);
      const gpu::Out y = write(out, vec);
      if (vec == Where::gpu)
        gpu::rmsnorm(x, W.vec(w, vec), y, m, d);
      else
        cpu::rmsnorm(x, W.vec(w, vec), y.p, m, d);
    };
    auto rope = [&](Buf& b) {
      const float* in = P.need(b, vec);
      const gpu::Out out = write(b, vec);
      if (vec == Where::gpu) {
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
        gpu::attend(q, P.keys(), P.values(), out, m, s.p0, d, c_.heads);
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

// ---- one mode: both paths, the table, the checks ------------------------------
struct Options {
  Config c;
  std::vector<Mode> modes;
  UnimemGpuOptions unimem_gpu;
  bool gpu_or_skip = false;
  int repeat = 5;
};

bool run_mode(Mode mode, const Options& opt, const std::string& file, const std::vector<double>& reference,
              CpuMatmul& mm, const std::string& gpu_name) {
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
  {  // Untimed: oneDNN's primitives and CUDA's kernels are created on first use.
    const std::unique_ptr<Path> warm_up = make_standard_path(file, c, pl, x16);
    converse(*warm_up, c, run);
  }
  // Conversations of the two paths alternate, --repeat times; each path's
  // median (by generation time) is reported.
  const std::unique_ptr<Path> standard_path = make_standard_path(file, c, pl, x16);
  const std::unique_ptr<Path> unimem_path_ptr = make_unimem_path(file, c, pl, x16, opt.unimem_gpu);
  Path& standard = *standard_path;
  Path& unimem_path = *unimem_path_ptr;
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
  std::printf("%-30s %12zu %12zu\n", "host<->device copies", rs.decode.copies / c.tokens, ru.decode.copies / c.tokens);
  std::printf("%-30s %12zu %12zu\n", "host<->device bytes staged", rs.decode.copy_bytes / c.tokens,
              ru.decode.copy_bytes / c.tokens);
  std::printf("%-30s %12zu %12zu\n", "bytes GPU gathered from host", rs.decode.gather_bytes / c.tokens,
              ru.decode.gather_bytes / c.tokens);
  std::printf("%-30s %12.2f %12.2f %7.2fx\n", "tokens/s (generated)", gen / rs.decode_seconds, gen / ru.decode_seconds,
              rs.decode_seconds / ru.decode_seconds);
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
  std::printf("\nerror vs float64 over all %zu outputs: standard %.2e, unimem %.2e (tolerance %.0e%s)\n", c.positions(),
              e_standard, e_unimem, tolerance, x16 ? ", bf16 activations" : "");
  std::printf("standard vs unimem: %s\n",
              identical ? "identical, bit for bit" : ("differ by " + std::to_string(between)).c_str());
  std::printf("\nLayout after the conversation (unimem path):\n%s\n", unimem_path.layout_stat().c_str());
  bool ok = true;
  if (!(e_standard < tolerance) || !(e_unimem < tolerance)) {
    std::fprintf(stderr, "FAILED (%s mode): outputs differ from the float64 reference beyond %.0e\n", mode_name(mode),
                 tolerance);
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
  const std::string file =
      (std::filesystem::temp_directory_path() / ("unimem_pipeline_" + std::to_string(::getpid()) + ".safetensors"))
          .string();
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
