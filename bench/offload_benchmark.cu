// bench/offload_benchmark.cu — KV-cache offload: gpu::OffloadPool against the ceiling and what servers do now.
//
//   unimem_offload_benchmark [--device N] [--gib G] [--reps R] [--sizes K,K,...] [--no-two-process]
//
// Per block size (KiB; default 16,64,256,512,1024,2048), G GiB (default 1)
// moved per measurement in random block order (device blocks and cells both
// shuffled), one table of GB/s and the ratio to this run's ceiling of the
// same direction:
//   ceiling   one cudaMemcpyAsync of G GiB between cudaHostAlloc memory and
//             the device: host to device, device to host, and both at once
//             on two streams (measured once, first)
//   baseline  one cudaMemcpyAsync per block from/to cudaHostAlloc memory
//             (what vLLM-style offloading code does)
//   unimem    OffloadPool::store / fetch, one call per measurement, on each
//             route (kernel: one gather/scatter launch; copies: one
//             cuMemcpyBatchAsync, or a cuMemcpyAsync per block before 12.8;
//             automatic, the default: the pool's choice for its block size,
//             measured as a pool of its own)
//   both      store and fetch at the same time on two streams (baseline and
//             both routes), against the both-ways ceiling
//   processes two processes sharing one pool (fork + exec, attach by id, each
//             moving half of the blocks at once; host clock, aggregate GB/s)
//             against one process moving all of them in one call (host clock),
//             both on the default (automatic) route; the rows say which route
//             that took
// At the end, a summary: one line per block size and direction (store,
// fetch, both at once) with kernel, copies, automatic and baseline as GB/s
// and as a fraction of the ceiling, then the two-process lines.
// Timing: CUDA events around the enqueueing and the work (so CPU time spent
// enqueueing counts where it starves the GPU), one warm-up, the median of R
// repetitions (default 5). The blocks moved are checked against their source
// (a sample of 64 per size and direction). Without a GPU it prints
// "skipped: no CUDA device" and exits 0.
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <new>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu/cuda_check.hpp"
#include "unimem/unimem.hpp"

namespace {

using unimem::gpu::OffloadPool;
using unimem::gpu::OffloadRoute;

constexpr std::size_t KiB = 1024;
constexpr int kMaxReps = 64;

struct Row {
  std::string size, what;
  double gbps, ceiling;
};
std::vector<Row> rows;

// The summary: per block size and direction, GB/s per column.
enum Column { kKernel, kCopies, kAutomatic, kBaseline, kColumns };
struct Line {
  std::string size, direction, automatic_route;
  double ceiling = 0;
  double gbps[kColumns] = {};
};
std::deque<Line> summary;  // a deque: references stay valid as lines are added
std::vector<std::string> process_ratios;
Line& line(const std::string& size, const std::string& direction, double ceiling) {
  for (Line& l : summary) {
    if (l.size == size && l.direction == direction) return l;
  }
  summary.push_back({size, direction, "", ceiling, {}});
  return summary.back();
}

void add(const std::string& size, const std::string& what, double gbps, double ceiling) {
  rows.push_back({size, what, gbps, ceiling});
  std::printf("  %-8s %-62s %7.2f GB/s  %5.2fx ceiling\n", size.c_str(), what.c_str(), gbps, gbps / ceiling);
  std::fflush(stdout);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double now() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

__global__ void fill_kernel(std::uint64_t* p, std::size_t n, std::uint64_t seed) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n;
       i += std::size_t{gridDim.x} * blockDim.x) {
    std::uint64_t z = (i + seed) * 0x9e3779b97f4a7c15ull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    p[i] = (z ^ (z >> 31)) | 1;
  }
}
void fill(void* p, std::size_t bytes, std::uint64_t seed) {
  fill_kernel<<<1024, 256>>>(static_cast<std::uint64_t*>(p), bytes / 8, seed);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
}

// Events around work enqueued on one stream, or on two at once.
struct Timer {
  cudaEvent_t start{}, mid{}, stop{};
  Timer() {
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&mid));
    CHECK(cudaEventCreate(&stop));
  }
  // Median seconds of `reps` runs of enqueue() on s, after one warm-up.
  double one(int reps, cudaStream_t s, const std::function<void()>& enqueue) { return timed(reps, s, enqueue); }
  // The same, with work on two streams starting together; until both end.
  double two(int reps, cudaStream_t a, cudaStream_t b, const std::function<void()>& on_a,
             const std::function<void()>& on_b) {
    return timed(reps, a, [&] {
      CHECK(cudaStreamWaitEvent(b, start, 0));
      on_a();
      on_b();
      CHECK(cudaEventRecord(mid, b));
      CHECK(cudaStreamWaitEvent(a, mid, 0));
    });
  }

 private:
  // Median seconds between events recorded on s around body(), after one warm-up.
  double timed(int reps, cudaStream_t s, const std::function<void()>& body) {
    std::vector<double> t;
    for (int r = 0; r <= reps; ++r) {
      CHECK(cudaEventRecord(start, s));
      body();
      CHECK(cudaEventRecord(stop, s));
      CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (r > 0) t.push_back(ms * 1e-3);
    }
    return median(t);
  }
};

// What two processes share besides the pool: the cells to move, a barrier
// per repetition, and when each process started and ended each repetition.
struct Sync {
  std::atomic<int> arrived[2 * kMaxReps + 2];
  std::atomic<int> failed;
  double start[2][2 * kMaxReps + 2];
  double end[2][2 * kMaxReps + 2];
  std::uint32_t cells[1];  // n of them (the Block is sized for them)
};

struct Ceiling {
  double h2d, d2h, both;
};

// A child process: attaches the pool, moves its half of the cells to and from
// its own device memory, store repetitions first (rounds 0..reps, 0 the
// warm-up), then fetch (reps+1..2reps+1), each round starting together with
// the other child.
int child(int argc, char** argv) {
  if (argc != 9) return 2;
  const unimem::BlockId pool_id = unimem::BlockId::parse(argv[2]), sync_id = unimem::BlockId::parse(argv[3]);
  const int who = std::atoi(argv[4]), reps = std::atoi(argv[6]), device = std::atoi(argv[7]);
  const std::size_t n = std::strtoull(argv[5], nullptr, 10);
  const auto route = std::strcmp(argv[8], "copies") == 0   ? OffloadRoute::copies
                     : std::strcmp(argv[8], "kernel") == 0 ? OffloadRoute::kernel
                                                           : OffloadRoute::automatic;
  CHECK(cudaSetDevice(device));
  unimem::BlockOptions unpinned;
  unpinned.pinning = unimem::Pinning::unpinned;
  unimem::Block sync_block = unimem::Block::attach(sync_id, unpinned);
  auto* sync = reinterpret_cast<Sync*>(sync_block.data());
  unimem::gpu::OffloadOptions o;
  o.route = route;
  OffloadPool pool = OffloadPool::attach(pool_id, device, o);
  const std::size_t bytes = pool.block_bytes(), half = n / 2;
  void* area = nullptr;
  CHECK(cudaMalloc(&area, half * bytes));
  fill(area, half * bytes, 77 + who);
  std::vector<std::uint32_t> cells(sync->cells + who * half, sync->cells + (who + 1) * half);
  std::vector<std::size_t> order(half);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(who + 1));
  std::vector<std::uintptr_t> blocks(half);
  for (std::size_t i = 0; i < half; ++i) blocks[i] = reinterpret_cast<std::uintptr_t>(area) + order[i] * bytes;
  for (int round = 0; round < 2 * (reps + 1); ++round) {
    sync->arrived[round].fetch_add(1);
    const double deadline = now() + 120;
    while (sync->arrived[round].load() < 2) {
      if (sync->failed.load() != 0 || now() > deadline) return 3;
    }
    const double t0 = now();
    if (round <= reps) {
      pool.store(blocks, bytes, cells).wait();
    } else {
      pool.fetch(cells, blocks, bytes).wait();
    }
    sync->start[who][round] = t0;
    sync->end[who][round] = now();
  }
  CHECK(cudaFree(area));
  return 0;
}

// Starts a child (fork, then exec of this binary: a forked process may not use CUDA).
pid_t start_child(const std::vector<std::string>& args) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv;
    std::string self = "unimem_offload_benchmark";
    argv.push_back(self.data());
    std::vector<std::string> copy = args;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv("/proc/self/exe", argv.data());
    std::_Exit(127);
  }
  return pid;
}

// The two-process rows for one pool (the default route).
void two_processes(const std::string& size, OffloadPool& pool, const std::vector<std::uint32_t>& cells,
                   const std::vector<std::uintptr_t>& from, const std::vector<std::uintptr_t>& to, int reps, int device,
                   const Ceiling& ceiling) {
  const std::size_t n = cells.size(), bytes = pool.block_bytes(), moved = n / 2 * 2 * bytes;
  unimem::BlockOptions unpinned;
  unpinned.pinning = unimem::Pinning::unpinned;
  unimem::Block sync_block = unimem::Block::open(sizeof(Sync) + n * sizeof(std::uint32_t), unpinned);
  auto* sync = new (sync_block.data()) Sync{};
  std::memcpy(sync->cells, cells.data(), n * sizeof(std::uint32_t));
  const char* route = unimem::gpu::to_string(pool.route());
  const std::string took = std::string(route) + " -> " + unimem::gpu::to_string(pool.route_taken());
  std::vector<pid_t> pids;
  for (int who = 0; who < 2; ++who) {
    pids.push_back(
        start_child({"--child", pool.host_block().id().to_string(), sync_block.id().to_string(), std::to_string(who),
                     std::to_string(n), std::to_string(reps), std::to_string(device), route}));
  }
  bool ok = true;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ok = false;
      sync->failed.store(1);
      std::printf("  two processes: a child failed (status %d)\n", status);
    }
  }
  double two[2] = {}, one[2] = {};
  if (ok) {
    for (int dir = 0; dir < 2; ++dir) {
      std::vector<double> t;
      for (int r = 1; r <= reps; ++r) {
        const int round = dir * (reps + 1) + r;
        t.push_back(std::max(sync->end[0][round], sync->end[1][round]) -
                    std::min(sync->start[0][round], sync->start[1][round]));
      }
      add(size,
          std::string("two processes, one pool, half each: ") + (dir == 0 ? "store" : "fetch") + " (" + took +
              ", host clock)",
          moved / median(t) / 1e9, dir == 0 ? ceiling.d2h : ceiling.h2d);
      two[dir] = rows.back().gbps;
    }
  }
  // One process, the same blocks in one call, timed the same way.
  for (int dir = 0; dir < 2; ++dir) {
    std::vector<double> t;
    for (int r = 0; r <= reps; ++r) {
      const double t0 = now();
      if (dir == 0) {
        pool.store(from, bytes, cells).wait();
      } else {
        pool.fetch(cells, to, bytes).wait();
      }
      if (r > 0) t.push_back(now() - t0);
    }
    add(size,
        std::string("one process, all in one call: ") + (dir == 0 ? "store" : "fetch") + " (" + took + ", host clock)",
        n * bytes / median(t) / 1e9, dir == 0 ? ceiling.d2h : ceiling.h2d);
    one[dir] = rows.back().gbps;
  }
  if (ok) {
    std::printf("  %-8s two processes / one process: store %.2fx, fetch %.2fx (%s)\n", size.c_str(), two[0] / one[0],
                two[1] / one[1], took.c_str());
    char text[160];
    std::snprintf(text, sizeof text, "two processes / one process (%s): store %.2fx, fetch %.2fx", took.c_str(),
                  two[0] / one[0], two[1] / one[1]);
    process_ratios.push_back(size + ": " + text);
  }
}

// Blocks `device_blocks[i]` and host `host_blocks[i]` (for a sample of i) hold the same bytes.
std::size_t differing(const std::vector<std::uintptr_t>& device_blocks,
                      const std::vector<const std::byte*>& host_blocks, std::size_t bytes, std::mt19937_64& rng) {
  std::vector<std::byte> got(bytes);
  std::size_t bad = 0;
  for (int k = 0; k < 64; ++k) {
    const std::size_t i = rng() % device_blocks.size();
    CHECK(cudaMemcpy(got.data(), reinterpret_cast<const void*>(device_blocks[i]), bytes, cudaMemcpyDeviceToHost));
    bad += std::memcmp(got.data(), host_blocks[i], bytes) != 0;
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--child") == 0) {
    try {
      return child(argc, argv);
    } catch (const unimem::Error& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      return 4;
    }
  }
  int device = 0, reps = 5;
  double gib = 1;
  bool processes = true;
  std::vector<std::size_t> sizes = {16, 64, 256, 512, 1024, 2048};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) {
      device = std::atoi(argv[++i]);
    } else if (a == "--gib" && i + 1 < argc) {
      gib = std::atof(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::clamp(std::atoi(argv[++i]), 1, kMaxReps);
    } else if (a == "--sizes" && i + 1 < argc) {
      sizes.clear();
      for (char* p = argv[++i]; *p != '\0';) {
        sizes.push_back(std::strtoull(p, &p, 10));
        if (*p == ',') ++p;
      }
    } else if (a == "--no-two-process") {
      processes = false;
    } else {
      std::fprintf(stderr, "usage: %s [--device N] [--gib G] [--reps R] [--sizes K,K,...] [--no-two-process]\n",
                   argv[0]);
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0 || !unimem::gpu::available()) {
    std::printf("skipped: no CUDA device\n");
    return 0;
  }
  CHECK(cudaSetDevice(device));
  CHECK(cudaFree(nullptr));
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, device));
  const std::size_t moved = static_cast<std::size_t>(gib * (1u << 30)) / (2048 * KiB) * (2048 * KiB);
  std::printf("unimem %s offload benchmark: %s (%d SMs), driver CUDA %d, %.2f GiB per measurement, median of %d\n",
              UNIMEM_VERSION_STRING, prop.name, prop.multiProcessorCount, unimem::gpu::driver_version(),
              moved / 1073741824.0, reps);

  cudaStream_t s1{}, s2{};
  CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  Timer timer;
  // Host staging for the ceiling and the baseline: 2 x moved of cudaHostAlloc memory.
  std::byte* host = nullptr;
  CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), 2 * moved, cudaHostAllocPortable));
  std::memset(host, 0x5a, 2 * moved);
  void *kv_a = nullptr, *kv_b = nullptr;
  CHECK(cudaMalloc(&kv_a, moved));
  CHECK(cudaMalloc(&kv_b, moved));
  fill(kv_a, moved, 1);
  fill(kv_b, moved, 2);

  Ceiling ceiling{};
  ceiling.h2d =
      moved / timer.one(reps, s1, [&] { CHECK(cudaMemcpyAsync(kv_b, host, moved, cudaMemcpyHostToDevice, s1)); }) / 1e9;
  ceiling.d2h = moved / timer.one(reps, s1, [&] {
    CHECK(cudaMemcpyAsync(host + moved, kv_a, moved, cudaMemcpyDeviceToHost, s1));
  }) / 1e9;
  ceiling.both =
      2 * moved /
      timer.two(
          reps, s1, s2, [&] { CHECK(cudaMemcpyAsync(host + moved, kv_a, moved, cudaMemcpyDeviceToHost, s1)); },
          [&] { CHECK(cudaMemcpyAsync(kv_b, host, moved, cudaMemcpyHostToDevice, s2)); }) /
      1e9;
  add("-", "ceiling: one cudaMemcpyAsync, host (cudaHostAlloc) to device", ceiling.h2d, ceiling.h2d);
  add("-", "ceiling: one cudaMemcpyAsync, device to host (cudaHostAlloc)", ceiling.d2h, ceiling.d2h);
  add("-", "ceiling: both at once on two streams (aggregate)", ceiling.both, ceiling.both);

  std::mt19937_64 rng(2026);
  for (std::size_t kib : sizes) {
    const std::size_t bytes = kib * KiB, n = moved / bytes;
    const std::string size = kib >= 1024 ? std::to_string(kib / 1024) + " MiB" : std::to_string(kib) + " KiB";
    if (n == 0 || bytes % 64 != 0) continue;
    std::printf("%s blocks: %zu per measurement\n", size.c_str(), n);
    // Device blocks in random order: a = source of stores, b = destination of fetches.
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::vector<std::uintptr_t> dev_a(n), dev_b(n);
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t i = 0; i < n; ++i) dev_a[i] = reinterpret_cast<std::uintptr_t>(kv_a) + order[i] * bytes;
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t i = 0; i < n; ++i) dev_b[i] = reinterpret_cast<std::uintptr_t>(kv_b) + order[i] * bytes;
    // Baseline host blocks in random order: A (stores land, fetches read), B (stores while fetching).
    std::vector<std::byte*> host_a(n), host_b(n);
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t i = 0; i < n; ++i) {
      host_a[i] = host + order[i] * bytes;
      host_b[i] = host + moved + order[i] * bytes;
    }
    auto baseline_store = [&](const std::vector<std::byte*>& to, cudaStream_t s) {
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(cudaMemcpyAsync(to[i], reinterpret_cast<const void*>(dev_a[i]), bytes, cudaMemcpyDeviceToHost, s));
      }
    };
    auto baseline_fetch = [&](cudaStream_t s) {
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(dev_b[i]), host_a[i], bytes, cudaMemcpyHostToDevice, s));
      }
    };
    Line& store_line = line(size, "store", ceiling.d2h);
    Line& fetch_line = line(size, "fetch", ceiling.h2d);
    Line& both_line = line(size, "both", ceiling.both);
    store_line.gbps[kBaseline] = moved / timer.one(reps, s1, [&] { baseline_store(host_a, s1); }) / 1e9;
    add(size, "baseline store: cudaMemcpyAsync per block to cudaHostAlloc", store_line.gbps[kBaseline], ceiling.d2h);
    fetch_line.gbps[kBaseline] = moved / timer.one(reps, s1, [&] { baseline_fetch(s1); }) / 1e9;
    add(size, "baseline fetch: cudaMemcpyAsync per block from cudaHostAlloc", fetch_line.gbps[kBaseline], ceiling.h2d);
    both_line.gbps[kBaseline] = 2 * moved /
                                timer.two(
                                    reps, s1, s2, [&] { baseline_store(host_b, s1); }, [&] { baseline_fetch(s2); }) /
                                1e9;
    add(size, "baseline store + fetch at once, two streams (aggregate)", both_line.gbps[kBaseline], ceiling.both);

    for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies, OffloadRoute::automatic}) {
      const Column column = route == OffloadRoute::kernel   ? kKernel
                            : route == OffloadRoute::copies ? kCopies
                                                            : kAutomatic;
      unimem::gpu::OffloadOptions o;
      o.route = route;
      OffloadPool pool = OffloadPool::create(bytes, 2 * n, device, o);
      std::vector<unimem::SharedCell> taken(2 * n);
      if (pool.take(taken) != unimem::TakeStatus::ok) {
        std::printf("could not take the pool's cells\n");
        return 1;
      }
      std::shuffle(taken.begin(), taken.end(), rng);
      std::vector<std::uint32_t> cells_a(n), cells_b(n);
      std::vector<const std::byte*> cell_a(n);
      for (std::size_t i = 0; i < n; ++i) {
        cells_a[i] = taken[i].index();
        cells_b[i] = taken[n + i].index();
        cell_a[i] = taken[i].data();
      }
      const std::string took = unimem::gpu::to_string(pool.route_taken());
      const std::string r = route == OffloadRoute::automatic ? "automatic -> " + took : took;
      const std::string copies = pool.route_taken() == OffloadRoute::copies
                                     ? (pool.batched_copies() ? ", cuMemcpyBatchAsync" : ", cuMemcpyAsync per block")
                                     : "";
      if (route == OffloadRoute::automatic) {
        for (Line* l : {&store_line, &fetch_line, &both_line}) l->automatic_route = took;
      }
      store_line.gbps[column] = moved / timer.one(reps, s1, [&] { (void)pool.store(dev_a, bytes, cells_a, s1); }) / 1e9;
      add(size, "unimem store (" + r + copies + ")", store_line.gbps[column], ceiling.d2h);
      const std::size_t bad_store = differing(dev_a, cell_a, bytes, rng);
      fetch_line.gbps[column] = moved / timer.one(reps, s1, [&] { (void)pool.fetch(cells_a, dev_b, bytes, s1); }) / 1e9;
      add(size, "unimem fetch (" + r + copies + ")", fetch_line.gbps[column], ceiling.h2d);
      const std::size_t bad_fetch = differing(dev_b, cell_a, bytes, rng);
      both_line.gbps[column] = 2 * moved /
                               timer.two(
                                   reps, s1, s2, [&] { (void)pool.store(dev_a, bytes, cells_b, s1); },
                                   [&] { (void)pool.fetch(cells_a, dev_b, bytes, s2); }) /
                               1e9;
      add(size, "unimem store + fetch at once, two streams (" + r + copies + ")", both_line.gbps[column], ceiling.both);
      if (bad_store + bad_fetch != 0) {
        std::printf("CHECK FAILED: %zu stored and %zu fetched blocks of 64 sampled differ from their source\n",
                    bad_store, bad_fetch);
        return 1;
      }
      if (processes && route == unimem::gpu::OffloadOptions{}.route) {
        two_processes(size, pool, cells_a, dev_a, dev_b, reps, device, ceiling);
      }
    }
  }

  std::printf(
      "\nSummary: GB/s (fraction of this run's pinned ceiling of the same direction; both: the both-ways ceiling)\n"
      "| block | direction | ceiling | kernel | copies | automatic (route) | baseline per-block |\n"
      "|---|---|---|---|---|---|---|\n");
  for (const Line& l : summary) {
    auto cell = [&](Column c) {
      char text[48];
      std::snprintf(text, sizeof text, "%.1f (%.2fx)", l.gbps[c], l.gbps[c] / l.ceiling);
      return std::string(text);
    };
    std::printf("| %s | %s | %.1f | %s | %s | %s (%s) | %s |\n", l.size.c_str(), l.direction.c_str(), l.ceiling,
                cell(kKernel).c_str(), cell(kCopies).c_str(), cell(kAutomatic).c_str(), l.automatic_route.c_str(),
                cell(kBaseline).c_str());
  }
  std::printf("\nTwo processes sharing one pool vs one process (host clock)\n");
  for (const Row& r : rows) {
    if (r.what.find("process") != std::string::npos) {
      std::printf("| %s | %s | %.1f GB/s | %.2fx ceiling |\n", r.size.c_str(), r.what.c_str(), r.gbps,
                  r.gbps / r.ceiling);
    }
  }
  for (const std::string& r : process_ratios) std::printf("%s\n", r.c_str());
  CHECK(cudaFreeHost(host));
  CHECK(cudaFree(kv_a));
  CHECK(cudaFree(kv_b));
  return 0;
}
