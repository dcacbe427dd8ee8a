// bench/gpu_benchmark.cu — GPU visibility against what users pick instead,
// side by side in one run, printed as a table of medians and ratios.
//
//   pin        time until memory is pinned and GPU-visible: Block::open(gpus)
//              vs cudaHostAlloc(portable|mapped) vs cudaMallocHost
//   kernel     a kernel reading / writing host memory in place: Block vs cudaHostAlloc
//   copy       cudaMemcpyAsync H2D / D2H from a Block vs cudaMallocHost vs malloc
//   cpu        CPU read / write bandwidth: Block vs malloc, 1 thread and all threads
//
// Usage: unimem_gpu_benchmark [--pin-gib N] [--bw-mib N]   (defaults 8 and 1024)
// Data is never zeros: buffers are filled with a pattern before being read.
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gpu/cuda_check.hpp"
#include "unimem/unimem.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Row {
  std::string group, name;
  double value;  // seconds, or GB/s when rate
  bool rate;
  std::string baseline;  // name of the row this one is compared with ("" = none)
};
std::vector<Row> rows;

void add(const std::string& group, const std::string& name, double value, bool rate, const std::string& baseline = "") {
  rows.push_back({group, name, value, rate, baseline});
  std::printf("  %-8s %-52s %10.3f %s\n", group.c_str(), name.c_str(), rate ? value : value * 1e3,
              rate ? "GB/s" : "ms");
  std::fflush(stdout);
}

// ---- pin ---------------------------------------------------------------------

void bench_pin(std::size_t bytes, int reps, const char* label) {
  std::vector<double> block_t, huge_t, shared_huge_t, thp_t, host_alloc_t, malloc_host_t;
  std::size_t huge_bytes = 0, shared_huge_bytes = 0;
  for (int r = 0; r < reps; ++r) {
    {
      unimem::BlockOptions o;
      o.visibility = unimem::Visibility::gpus;
      auto t = Clock::now();
      unimem::Block b = unimem::Block::open(bytes, o);
      block_t.push_back(seconds_since(t));
    }
    {
      unimem::BlockOptions o;
      o.visibility = unimem::Visibility::gpus;
      o.shareable = false;
      o.huge_pages = true;
      auto t = Clock::now();
      unimem::Block b = unimem::Block::open(bytes, o);
      huge_t.push_back(seconds_since(t));
      huge_bytes = b.huge_page_bytes();
    }
    {  // shareable (memfd) pages asking for huge pages: they get them where shmem_enabled allows
      unimem::BlockOptions o;
      o.visibility = unimem::Visibility::gpus;
      o.huge_pages = true;
      auto t = Clock::now();
      unimem::Block b = unimem::Block::open(bytes, o);
      shared_huge_t.push_back(seconds_since(t));
      shared_huge_bytes = b.huge_page_bytes();
    }
    {  // the huge-page baseline: what an engineer writes for huge pinned pages without unimem
      auto t = Clock::now();
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) std::perror("mmap"), std::exit(1);
      madvise(p, bytes, MADV_HUGEPAGE);
      CHECK(cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped));
      thp_t.push_back(seconds_since(t));
      CHECK(cudaHostUnregister(p));
      munmap(p, bytes);
    }
    {
      void* p = nullptr;
      auto t = Clock::now();
      CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocPortable | cudaHostAllocMapped));
      host_alloc_t.push_back(seconds_since(t));
      CHECK(cudaFreeHost(p));
    }
    {
      void* p = nullptr;
      auto t = Clock::now();
      CHECK(cudaMallocHost(&p, bytes));
      malloc_host_t.push_back(seconds_since(t));
      CHECK(cudaFreeHost(p));
    }
  }
  const std::string g = std::string("pin ") + label;
  add(g, "cudaHostAlloc(portable|mapped)", median(host_alloc_t), false);
  add(g, "cudaMallocHost", median(malloc_host_t), false);
  add(g, "Block::open(gpus)", median(block_t), false, "cudaHostAlloc(portable|mapped)");
  add(g, "Block::open(gpus) vs cudaMallocHost", median(block_t), false, "cudaMallocHost");
  const std::string huge = "Block::open(gpus, private, huge_pages) [" + std::to_string(huge_bytes >> 20) + " MiB huge]";
  add(g, huge, median(huge_t), false, "cudaHostAlloc(portable|mapped)");
  add(g, huge + " vs cudaMallocHost", median(huge_t), false, "cudaMallocHost");
  const std::string thp = "mmap(THP) + cudaHostRegister";
  add(g, thp, median(thp_t), false);
  add(g, huge + " vs THP", median(huge_t), false, thp);
  const std::string shared =
      "Block::open(gpus, shareable, huge_pages) [" + std::to_string(shared_huge_bytes >> 20) + " MiB huge]";
  add(g, shared, median(shared_huge_t), false, "cudaHostAlloc(portable|mapped)");
  add(g, shared + " vs THP", median(shared_huge_t), false, thp);
}

// Where the time of a pinned, GPU-visible allocation goes, for three kinds of
// pages: shareable memfd pages (what a Block uses), private anonymous pages
// with transparent huge pages, and private anonymous 4 KiB pages. Each is
// populated by all threads, then registered in one call.
void bench_pin_breakdown(std::size_t bytes, const char* label) {
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  struct Kind {
    const char* name;
    int advice;  // madvise for anonymous memory; -1 for memfd
  };
  for (Kind kind : {Kind{"memfd 4K", -1}, Kind{"anon THP", MADV_HUGEPAGE}, Kind{"anon 4K", MADV_NOHUGEPAGE}}) {
    void* p = MAP_FAILED;
    int fd = -1;
    if (kind.advice < 0) {
      fd = memfd_create("breakdown", MFD_CLOEXEC);
      if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) continue;
      p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } else {
      p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p != MAP_FAILED) madvise(p, bytes, kind.advice);
    }
    if (p == MAP_FAILED) continue;
    auto t = Clock::now();
    std::vector<std::thread> pool;
    const std::size_t slice = (bytes / threads + (2u << 20) - 1) / (2u << 20) * (2u << 20);
    for (unsigned k = 0; k < threads; ++k) {
      pool.emplace_back([=] {
        const std::size_t b = std::min(bytes, k * slice), e = std::min(bytes, b + slice);
        if (b < e) madvise(static_cast<char*>(p) + b, e - b, 23 /* MADV_POPULATE_WRITE */);
      });
    }
    for (auto& th : pool) th.join();
    const double populate = seconds_since(t);
    t = Clock::now();
    CHECK(cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped));
    const double reg = seconds_since(t);
    t = Clock::now();
    CHECK(cudaHostUnregister(p));
    const double unreg = seconds_since(t);
    munmap(p, bytes);
    if (fd >= 0) close(fd);
    const std::string g = std::string("split ") + label;
    add(g, std::string(kind.name) + ": populate, " + std::to_string(threads) + " threads", populate, false);
    add(g, std::string(kind.name) + ": cudaHostRegister, one call", reg, false);
    add(g, std::string(kind.name) + ": cudaHostUnregister", unreg, false);
  }
}

// ---- kernel bandwidth --------------------------------------------------------

__global__ void read_kernel(const uint4* p, std::size_t n, unsigned long long* sink) {
  unsigned long long acc = 0;
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n;
       i += std::size_t{gridDim.x} * blockDim.x) {
    uint4 v = p[i];
    acc += v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x1234567) atomicAdd(sink, acc);  // keeps the loads; practically never taken
}

__global__ void write_kernel(uint4* p, std::size_t n, unsigned seed) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n;
       i += std::size_t{gridDim.x} * blockDim.x) {
    unsigned x = static_cast<unsigned>(i) * 2654435761u + seed;
    p[i] = make_uint4(x, x + 1, x + 2, x + 3);
  }
}

double time_kernel(const std::function<void()>& launch, int reps) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  launch();  // warm-up
  CHECK(cudaDeviceSynchronize());
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    CHECK(cudaEventRecord(a));
    launch();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms / 1e3);
  }
  CHECK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return median(t);
}

void fill_pattern(void* p, std::size_t bytes) {
  auto* w = static_cast<std::uint64_t*>(p);
  for (std::size_t i = 0; i < bytes / 8; ++i) w[i] = i * 0x9E3779B97F4A7C15ull + 1;
}

void bench_kernel(std::size_t bytes, int sms) {
  unimem::BlockOptions o;
  o.visibility = unimem::Visibility::gpus;
  unimem::Block block = unimem::Block::open(bytes, o);
  void* host = nullptr;
  CHECK(cudaHostAlloc(&host, bytes, cudaHostAllocPortable | cudaHostAllocMapped));
  fill_pattern(block.data(), bytes);
  fill_pattern(host, bytes);
  void* host_dev = nullptr;
  CHECK(cudaHostGetDevicePointer(&host_dev, host, 0));
  unsigned long long* sink = nullptr;
  CHECK(cudaMalloc(&sink, sizeof *sink));
  const std::size_t n = bytes / sizeof(uint4);
  const int grid = sms * 8;
  auto* bp = static_cast<uint4*>(block.device_pointer(0));
  auto* hp = static_cast<uint4*>(host_dev);
  const double gb = bytes / 1e9;
  add("kernel", "read cudaHostAlloc", gb / time_kernel([&] { read_kernel<<<grid, 512>>>(hp, n, sink); }, 10), true);
  add("kernel", "read Block", gb / time_kernel([&] { read_kernel<<<grid, 512>>>(bp, n, sink); }, 10), true,
      "read cudaHostAlloc");
  add("kernel", "write cudaHostAlloc", gb / time_kernel([&] { write_kernel<<<grid, 512>>>(hp, n, 3); }, 10), true);
  add("kernel", "write Block", gb / time_kernel([&] { write_kernel<<<grid, 512>>>(bp, n, 3); }, 10), true,
      "write cudaHostAlloc");
  // The written data is real: check a few words on the CPU.
  auto* w = reinterpret_cast<unsigned*>(block.data());
  if (w[4 * 1000] != 1000u * 2654435761u + 3) std::printf("  !! kernel write into Block not seen by the CPU\n");
  CHECK(cudaFree(sink));
  CHECK(cudaFreeHost(host));
}

// ---- cudaMemcpyAsync ---------------------------------------------------------

void bench_copy(std::size_t bytes) {
  unimem::BlockOptions o;
  o.visibility = unimem::Visibility::gpus;
  unimem::Block block = unimem::Block::open(bytes, o);
  void* pinned = nullptr;
  CHECK(cudaMallocHost(&pinned, bytes));
  void* pageable = std::malloc(bytes);
  void* dev = nullptr;
  CHECK(cudaMalloc(&dev, bytes));
  fill_pattern(block.data(), bytes);
  fill_pattern(pinned, bytes);
  fill_pattern(pageable, bytes);
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const double gb = bytes / 1e9;
  auto h2d = [&](void* src) {
    return gb / time_kernel(
                    [&] {
                      CHECK(cudaMemcpyAsync(dev, src, bytes, cudaMemcpyHostToDevice, s));
                      CHECK(cudaStreamSynchronize(s));
                    },
                    10);
  };
  auto d2h = [&](void* dst) {
    return gb / time_kernel(
                    [&] {
                      CHECK(cudaMemcpyAsync(dst, dev, bytes, cudaMemcpyDeviceToHost, s));
                      CHECK(cudaStreamSynchronize(s));
                    },
                    10);
  };
  add("copy", "H2D cudaMallocHost", h2d(pinned), true);
  add("copy", "H2D malloc (pageable)", h2d(pageable), true, "H2D cudaMallocHost");
  add("copy", "H2D Block", h2d(block.data()), true, "H2D cudaMallocHost");
  add("copy", "D2H cudaMallocHost", d2h(pinned), true);
  add("copy", "D2H malloc (pageable)", d2h(pageable), true, "D2H cudaMallocHost");
  add("copy", "D2H Block", d2h(block.data()), true, "D2H cudaMallocHost");
  cudaStreamDestroy(s);
  CHECK(cudaFree(dev));
  CHECK(cudaFreeHost(pinned));
  std::free(pageable);
}

// ---- CPU bandwidth -----------------------------------------------------------

// One pass over [p, p + bytes) by `threads` threads; returns seconds.
double cpu_pass(void* p, std::size_t bytes, unsigned threads, bool write, std::uint64_t salt) {
  std::vector<std::uint64_t> sums(threads * 8);
  auto start = Clock::now();
  std::vector<std::thread> pool;
  for (unsigned k = 0; k < threads; ++k) {
    pool.emplace_back([=, &sums] {
      const std::size_t per = bytes / 8 / threads;
      auto* w = static_cast<std::uint64_t*>(p) + k * per;
      if (write) {
        const std::uint64_t v = 0x0101010101010101ull * (salt % 255 + 1);
        for (std::size_t i = 0; i < per; ++i) w[i] = v;
      } else {
        std::uint64_t a = 0, b = 0, c = 0, d = 0;
        for (std::size_t i = 0; i + 4 <= per; i += 4) {
          a += w[i];
          b ^= w[i + 1];
          c += w[i + 2];
          d ^= w[i + 3];
        }
        sums[k * 8] = a + b + c + d;
      }
    });
  }
  for (auto& th : pool) th.join();
  return seconds_since(start);
}

// Block and malloc passes alternate, so drift in the machine hits both alike.
void bench_cpu(std::size_t bytes) {
  unimem::BlockOptions o;
  o.visibility = unimem::Visibility::gpus;
  unimem::Block block = unimem::Block::open(bytes, o);
  void* heap = std::malloc(bytes);
  fill_pattern(block.data(), bytes);
  fill_pattern(heap, bytes);
  const unsigned all = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned threads : {1u, all}) {
    for (bool write : {false, true}) {
      std::vector<double> heap_t, block_t;
      for (int r = 0; r < 12; ++r) {
        const double h = cpu_pass(heap, bytes, threads, write, r);
        const double b = cpu_pass(block.data(), bytes, threads, write, r);
        if (r > 0) {  // the first round warms caches and TLBs
          heap_t.push_back(h);
          block_t.push_back(b);
        }
      }
      const std::string what = std::string(write ? "write " : "read ");
      const std::string t = " " + std::to_string(threads) + "T";
      add("cpu", what + "malloc" + t, bytes / 1e9 / median(heap_t), true);
      add("cpu", what + "Block" + t, bytes / 1e9 / median(block_t), true, what + "malloc" + t);
    }
  }
  std::free(heap);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t pin_gib = 8, bw_mib = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--pin-gib")) pin_gib = std::strtoull(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--bw-mib")) bw_mib = std::strtoull(argv[i + 1], nullptr, 10);
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  int driver = 0;
  CHECK(cudaDriverGetVersion(&driver));
  std::printf("unimem %s GPU benchmark: %d x %s, driver CUDA %d.%d, %u CPU threads\n", UNIMEM_VERSION_STRING, devices,
              prop.name, driver / 1000, driver % 1000 / 10, std::thread::hardware_concurrency());
  CHECK(cudaFree(nullptr));  // create the context outside every timing
  // Whether shareable (shmem) pages may get huge pages here; see `unimem info`.
  if (std::FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r")) {
    char line[128] = {};
    if (std::fgets(line, sizeof line, f)) std::printf("shmem_enabled: %s", line);
    std::fclose(f);
  }

  bench_pin(16u << 20, 9, "16MiB");
  if (pin_gib) {
    bench_pin_breakdown(pin_gib << 30, (std::to_string(pin_gib) + "GiB").c_str());
    bench_pin(pin_gib << 30, 3, (std::to_string(pin_gib) + "GiB").c_str());
  }
  bench_kernel(bw_mib << 20, prop.multiProcessorCount);
  bench_copy(bw_mib << 20);
  bench_cpu(bw_mib << 20);

  std::printf("\n%-10s %-52s %10s %12s\n", "group", "what", "value", "vs baseline");
  for (const Row& r : rows) {
    std::string ratio;
    for (const Row& b : rows) {
      if (!r.baseline.empty() && b.group == r.group && b.name == r.baseline) {
        // >1 means unimem is better: faster time or higher rate.
        char text[64];
        std::snprintf(text, sizeof text, "%.2fx", r.rate ? r.value / b.value : b.value / r.value);
        ratio = text;
      }
    }
    char value[32];
    std::snprintf(value, sizeof value, r.rate ? "%.1f GB/s" : "%.2f ms", r.rate ? r.value : r.value * 1e3);
    std::printf("%-10s %-52s %12s %12s\n", r.group.c_str(), r.name.c_str(), value, ratio.c_str());
  }
  std::printf("(ratios: how many times better than the baseline row; >1 is better)\n");
  return 0;
}
