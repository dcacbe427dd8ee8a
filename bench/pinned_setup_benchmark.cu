// bench/pinned_setup_benchmark.cu — what a process's first host memory for the
// GPU costs, by route, and what an earlier pinned allocation in the same
// process does to the next one's cost.
//
//   unimem_pinned_setup_benchmark [--reps N]
//
// Each measurement is one fresh process (this binary's --child mode) that makes
// its CUDA context first, then times one route:
//   hostalloc  cudaHostAlloc of the demo's standard path's buffers (its pinned
//              activations, 212 KiB, and two 48 KiB KV rows, split mode)
//   layout     Layout::open of the demo's unimem path (weights 4 MiB, scratch
//              212 KiB, history 100 KiB; private, Visibility::gpus)
//   block      one Block of the same 4.3 MiB, Visibility::gpus, and its two
//              parts: pin (backed and locked, host only) and register
//              (make_gpu_visible() of such a Block, timed alone)
// and each of them again after one untimed cudaHostAlloc of 212 KiB kept
// alive ("after a warm-up"), as the demo's untimed warm-up path did before its
// contenders were made until it took the naive style. The driver serves small
// pinned allocations from chunks it pinned before, so such a warm-up hands
// cudaHostAlloc a head start that a process loading its model once does not
// get.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <unimem/unimem.hpp>

#include "gpu/cuda_check.hpp"

namespace {
using Clock = std::chrono::steady_clock;

constexpr std::size_t kKiB = 1024;

int child(const std::string& route, bool warm) {
  CHECK(cudaFree(nullptr));
  void* warm_up = nullptr;
  if (warm) CHECK(cudaHostAlloc(&warm_up, 212 * kKiB, cudaHostAllocDefault));
  std::vector<void*> pinned;
  std::optional<unimem::Layout> layout;
  std::optional<unimem::Block> block;
  unimem::BlockOptions o;
  o.shareable = false;
  o.visibility = unimem::Visibility::gpus;
  unimem::BlockOptions host = o;  // the same pages backed and locked, for the CPU only
  host.visibility = unimem::Visibility::host;
  host.backing = unimem::Backing::warm;
  constexpr std::size_t kBlockBytes = (4096 + 212 + 100) * kKiB;
  const auto t = Clock::now();
  if (route == "hostalloc") {
    for (std::size_t bytes : {212 * kKiB, 48 * kKiB, 48 * kKiB}) {
      void* p = nullptr;
      CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
      pinned.push_back(p);
    }
  } else if (route == "layout") {
    layout.emplace(unimem::Layout::open(4096 * kKiB, 212 * kKiB, 100 * kKiB, o));
  } else if (route == "block") {
    block.emplace(unimem::Block::open(kBlockBytes, o));
  } else if (route == "pin") {
    block.emplace(unimem::Block::open(kBlockBytes, host));
  } else if (route == "register") {  // the registration alone, the pages already backed and locked
    block.emplace(unimem::Block::open(kBlockBytes, host));
    const auto r = Clock::now();
    block->make_gpu_visible();
    std::printf("%.4f\n", std::chrono::duration<double, std::milli>(Clock::now() - r).count());
    return 0;
  } else {
    std::fprintf(stderr, "unknown route %s\n", route.c_str());
    return 2;
  }
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  std::printf("%.4f\n", ms);
  for (void* p : pinned) cudaFreeHost(p);
  if (warm_up) cudaFreeHost(warm_up);
  return 0;
}

double run_child(const char* self, const std::string& route, bool warm) {
  const std::string command = std::string(self) + " --child " + route + (warm ? " 1" : " 0");
  FILE* f = popen(command.c_str(), "r");
  double ms = -1;
  if (f == nullptr || std::fscanf(f, "%lf", &ms) != 1) ms = -1;
  if (f != nullptr && pclose(f) != 0) ms = -1;
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 4 && std::string(argv[1]) == "--child") return child(argv[2], std::string(argv[3]) == "1");
  int reps = 7;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
  }
  struct Row {
    const char* label;
    std::string route;
    bool warm;
    std::vector<double> ms;
  };
  std::vector<Row> rows = {
      {"cudaHostAlloc 212 KiB + 2 x 48 KiB (standard path)", "hostalloc", false, {}},
      {"  the same after a warm-up's cudaHostAlloc", "hostalloc", true, {}},
      {"Layout::open 4 MiB + 212 KiB + 100 KiB, gpus (unimem path)", "layout", false, {}},
      {"  the same after a warm-up's cudaHostAlloc", "layout", true, {}},
      {"one Block of 4.3 MiB, gpus", "block", false, {}},
      {"  the same after a warm-up's cudaHostAlloc", "block", true, {}},
      {"  of which: its pages backed and locked (host only)", "pin", false, {}},
      {"  of which: make_gpu_visible() of those pages", "register", false, {}},
  };
  for (int r = 0; r < reps; ++r) {  // rows alternate: drift on the host hits each alike
    for (Row& row : rows) {
      const double ms = run_child(argv[0], row.route, row.warm);
      if (ms < 0) {
        std::fprintf(stderr, "child %s failed\n", row.route.c_str());
        return 1;
      }
      row.ms.push_back(ms);
    }
  }
  for (Row& row : rows) std::sort(row.ms.begin(), row.ms.end());
  auto median = [](const Row& row) { return row.ms[row.ms.size() / 2]; };
  // Against the standard path's first cudaHostAlloc, the route a process
  // without unimem takes.
  const double standard = median(rows.front());
  std::printf("first host memory for the GPU in a fresh process (ms, %d processes per row)\n", reps);
  std::printf("%-64s %9s %9s %9s %12s\n", "route", "median", "min", "max", "x hostalloc");
  for (const Row& row : rows) {
    std::printf("%-64s %9.3f %9.3f %9.3f %11.2fx\n", row.label, median(row), row.ms.front(), row.ms.back(),
                median(row) / standard);
  }
  return 0;
}
