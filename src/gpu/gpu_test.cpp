// Tests that launch CUDA kernels on Blocks, Tapes and Grids. Built where nvcc
// is found; every test skips with "skipped: no CUDA device" where there is no
// GPU, and runs for real on a GPU machine.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gpu/loader_probe.hpp"
#include "gpu/test_kernels.hpp"
#include "testing.hpp"
#include "unimem/unimem.hpp"

namespace unimem {
namespace {

using gpu_test::pattern;

constexpr std::size_t MiB = std::size_t{1} << 20;

#define UNIMEM_REQUIRE_GPUS(n)                                                                           \
  do {                                                                                                   \
    if (gpu_test::device_count() < (n) || !gpu::available())                                             \
      GTEST_SKIP() << ((n) > 1 ? "skipped: fewer than " #n " CUDA devices" : "skipped: no CUDA device"); \
  } while (0)

BlockOptions visible() {
  BlockOptions o;
  o.visibility = Visibility::gpus;
  return o;
}

// The pointer a kernel on `device` should use for `host`.
template <class T>
T* on_device(const Block& b, int device, T* host) {
  return static_cast<T*>(b.device_pointer(device, host));
}

TEST(Gpu, DevicesAreReported) {
  UNIMEM_REQUIRE_GPUS(1);
  std::vector<gpu::Device> devices = gpu::devices();
  ASSERT_EQ(static_cast<int>(devices.size()), gpu_test::device_count());
  for (const gpu::Device& d : devices) {
    EXPECT_FALSE(d.name.empty());
    std::printf("device %d: %s, host pointer is device pointer: %s\n", d.ordinal, d.name.c_str(),
                d.host_pointer_is_device_pointer ? "yes" : "no");
  }
  EXPECT_GE(gpu::driver_version(), 1000);
}

TEST(Gpu, KernelReadsWhatTheCpuWroteThroughTheSamePointer) {
  UNIMEM_REQUIRE_GPUS(1);
  Block b = Block::open(64 * MiB, visible());
  ASSERT_TRUE(b.gpu_visible());
  auto* words = reinterpret_cast<std::uint32_t*>(b.data());
  const std::size_t n = b.size() / sizeof *words;
  for (std::size_t i = 0; i < n; ++i) words[i] = pattern(i, 7);

  for (const gpu::Device& d : gpu::devices()) {
    EXPECT_EQ(b.gpu_count(), gpu_test::device_count());
    if (d.host_pointer_is_device_pointer) {
      EXPECT_EQ(b.device_pointer(d.ordinal), b.data()) << "device " << d.ordinal;
    }
    unsigned long long bad = ~0ull;
    ASSERT_EQ(gpu_test::count_mismatches(d.ordinal, on_device(b, d.ordinal, words), n, 7, &bad), "");
    EXPECT_EQ(bad, 0u) << "device " << d.ordinal;
    // A wrong expectation must be caught: the check is real.
    ASSERT_EQ(gpu_test::count_mismatches(d.ordinal, on_device(b, d.ordinal, words), n, 8, &bad), "");
    EXPECT_EQ(bad, n);
  }
}

TEST(Gpu, CpuReadsWhatAKernelWrote) {
  UNIMEM_REQUIRE_GPUS(1);
  Block b = Block::open(32 * MiB + 4096, visible());
  auto* words = reinterpret_cast<std::uint32_t*>(b.data());
  const std::size_t n = b.size() / sizeof *words;
  std::memset(words, 0xff, b.size());  // poison: every word must be written
  for (int device = 0; device < gpu_test::device_count(); ++device) {
    ASSERT_EQ(gpu_test::fill(device, on_device(b, device, words), n, 100 + device), "");
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) bad += words[i] != pattern(i, 100 + device);
    EXPECT_EQ(bad, 0u) << "device " << device;
  }
}

TEST(Gpu, ExistingBlockMadeVisibleKeepsItsContents) {
  UNIMEM_REQUIRE_GPUS(1);
  Block b = Block::open(8 * MiB);  // lazy, host-only
  auto* words = reinterpret_cast<std::uint32_t*>(b.data());
  const std::size_t n = b.size() / sizeof *words;
  for (std::size_t i = 0; i < n; i += 3) words[i] = pattern(i, 1);  // some pages touched, some not
  for (std::size_t i = 0; i < n; ++i) words[i] = pattern(i, 1);
  EXPECT_FALSE(b.gpu_visible());
  b.make_gpu_visible();
  ASSERT_TRUE(b.gpu_visible());
  void* first = b.device_pointer(0);
  b.make_gpu_visible();  // again: nothing changes
  EXPECT_EQ(b.device_pointer(0), first);
  unsigned long long bad = ~0ull;
  ASSERT_EQ(gpu_test::count_mismatches(0, on_device(b, 0, words), n, 1, &bad), "");
  EXPECT_EQ(bad, 0u);
}

TEST(Gpu, TapeAndGridAllocationsAreUsedByKernelsDirectly) {
  UNIMEM_REQUIRE_GPUS(1);
  Tape tape = Tape::start(16 * MiB, visible());
  ASSERT_TRUE(tape.block().gpu_visible());
  ASSERT_TRUE(tape.take(12, 4));  // so the next piece starts mid-page
  std::span<std::uint32_t> piece = tape.take<std::uint32_t>(1'000'003);
  ASSERT_EQ(piece.size(), 1'000'003u);
  ASSERT_EQ(gpu_test::fill(0, on_device(tape.block(), 0, piece.data()), piece.size(), 42), "");
  for (std::size_t i = 0; i < piece.size(); ++i) ASSERT_EQ(piece[i], pattern(i, 42)) << i;

  Grid<> grid(64 * 1024, 32, visible());
  ASSERT_TRUE(grid.block().gpu_visible());
  std::vector<Cell> cells;
  for (int i = 0; i < 5; ++i) cells.push_back(grid.take());
  for (Cell& c : cells) {
    auto words = c.as<std::uint32_t>();
    ASSERT_EQ(gpu_test::fill(0, on_device(grid.block(), 0, words.data()), words.size(), c.index()), "");
  }
  for (Cell& c : cells) {
    auto words = c.as<std::uint32_t>();
    for (std::size_t i = 0; i < words.size(); ++i) ASSERT_EQ(words[i], pattern(i, c.index()));
  }
}

TEST(Gpu, RegisterUnregisterCyclesLeaveNothingRegistered) {
  UNIMEM_REQUIRE_GPUS(1);
  for (int cycle = 0; cycle < 20; ++cycle) {
    std::byte* data;
    {
      Block b = Block::open(8 * MiB, visible());
      data = b.data();
      ASSERT_TRUE(gpu_test::is_registered_host_memory(data)) << "cycle " << cycle;
      ASSERT_TRUE(gpu_test::is_registered_host_memory(data + b.size() - 1));
    }
    ASSERT_FALSE(gpu_test::is_registered_host_memory(data)) << "still registered after destruction";
  }
  // Move-assignment unregisters the Block it overwrites.
  Block a = Block::open(4 * MiB, visible());
  std::byte* old = a.data();
  a = Block::open(4 * MiB);
  EXPECT_FALSE(gpu_test::is_registered_host_memory(old));
  EXPECT_FALSE(a.gpu_visible());
}

TEST(Gpu, DevicePointerIsNullOutsideTheBlock) {
  UNIMEM_REQUIRE_GPUS(1);
  Block b = Block::open(MiB, visible());
  EXPECT_NE(b.device_pointer(0, b.data() + b.size() - 1), nullptr);
  EXPECT_EQ(b.device_pointer(0, b.data() + b.size()), nullptr);
  EXPECT_EQ(b.device_pointer(gpu_test::device_count(), b.data()), nullptr);
  EXPECT_EQ(b.device_pointer(-1, b.data()), nullptr);
}

TEST(Gpu, TwoGpusReadAndWriteOneBlock) {
  UNIMEM_REQUIRE_GPUS(2);
  Block b = Block::open(64 * MiB, visible());
  ASSERT_EQ(b.gpu_count(), gpu_test::device_count());
  auto* words = reinterpret_cast<std::uint32_t*>(b.data());
  const std::size_t half = b.size() / sizeof *words / 2;
  std::memset(words, 0, b.size());
  // GPU 0 writes the first half, GPU 1 the second; then each checks the other's.
  ASSERT_EQ(gpu_test::fill(0, on_device(b, 0, words), half, 10), "");
  ASSERT_EQ(gpu_test::fill(1, on_device(b, 1, words + half), half, 11), "");
  unsigned long long bad0 = ~0ull, bad1 = ~0ull;
  ASSERT_EQ(gpu_test::count_mismatches(1, on_device(b, 1, words), half, 10, &bad1), "");
  ASSERT_EQ(gpu_test::count_mismatches(0, on_device(b, 0, words + half), half, 11, &bad0), "");
  EXPECT_EQ(bad1, 0u);
  EXPECT_EQ(bad0, 0u);
  for (std::size_t i = 0; i < half; ++i) {
    ASSERT_EQ(words[i], pattern(i, 10));
    ASSERT_EQ(words[half + i], pattern(i, 11));
  }
}

// The second process of GpuShare: attaches by id, registers its own mapping
// with its own GPU (the last one), checks pattern(60) there and writes
// pattern(61) back with a kernel.
}  // namespace

int share_child(const char* id_text) {
  BlockOptions o = visible();
  Block b = Block::attach(BlockId::parse(id_text), o);
  const int device = gpu_test::device_count() - 1;
  auto* words = reinterpret_cast<std::uint32_t*>(b.data());
  const std::size_t n = b.size() / sizeof *words;
  unsigned long long bad = ~0ull;
  if (!gpu_test::count_mismatches(device, on_device(b, device, words), n, 60, &bad).empty() || bad != 0) return 2;
  if (!gpu_test::fill(device, on_device(b, device, words), n, 61).empty()) return 3;
  std::printf("child process: GPU %d read and wrote %zu words of a Block it attached\n", device, n);
  return 0;
}

namespace {

TEST(GpuShare, AnotherProcessesKernelReadsAndWritesBack) {
  UNIMEM_REQUIRE_GPUS(1);
  Block a = Block::open(32 * MiB, visible());
  auto* words = reinterpret_cast<std::uint32_t*>(a.data());
  const std::size_t n = a.size() / sizeof *words;
  for (std::size_t i = 0; i < n; ++i) words[i] = pattern(i, 60);
  const std::string id = a.id().to_string();
  const pid_t pid = ::fork();
  if (pid == 0) {  // exec at once: a forked CUDA process may not use CUDA
    ::setenv("UNIMEM_GPU_SHARE_CHILD", id.c_str(), 1);
    ::execl("/proc/self/exe", "unimem_gpu_test", static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  std::size_t cpu_bad = 0;
  for (std::size_t i = 0; i < n; ++i) cpu_bad += words[i] != pattern(i, 61);
  EXPECT_EQ(cpu_bad, 0u) << "process A's CPU sees what process B's kernel wrote";
  unsigned long long gpu_bad = ~0ull;
  ASSERT_EQ(gpu_test::count_mismatches(0, on_device(a, 0, words), n, 61, &gpu_bad), "");
  EXPECT_EQ(gpu_bad, 0u) << "and so does process A's GPU 0";
}

// copy_file_to_device, for a file in the page cache and one that is not, with
// and without a caller's staging Block, whole and in scattered ranges.
TEST(GpuFile, CopiesFileRangesIntoDeviceMemory) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_file_" + std::to_string(::getpid());
  const std::size_t words = (40u << 20) / 4 + 123;  // 40 MiB and a bit: several pieces and a tail
  {
    std::vector<std::uint32_t> data(words);
    for (std::size_t i = 0; i < words; ++i) data[i] = pattern(i, 90);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(data.data(), 4, words, f), words);
    std::fclose(f);
  }
  const std::size_t bytes = words * 4;
  BlockOptions staging_options = visible();
  Block staging = Block::open(4 * (8u << 20), staging_options);
  for (int device = 0; device < gpu_test::device_count(); ++device) {
    for (bool cached : {true, false}) {
      if (!cached) {  // dirty pages cannot be dropped: write them back first
        const int fd = ::open(path.c_str(), O_RDONLY);
        ::fdatasync(fd);
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        ::close(fd);
        std::printf("device %d: %.0f%% of the file left in the page cache after eviction\n", device,
                    100 * page_cache_fraction(path, 0, bytes));
      }
      const std::uintptr_t dev = gpu_test::device_alloc(device, bytes);
      ASSERT_NE(dev, 0u);
      gpu::CopyOptions o;
      o.chunk_bytes = 8u << 20;
      if (cached) o.staging = &staging;  // and the other run makes its own
      // The two halves, given in reverse order.
      const std::size_t half = bytes / 2 / 4096 * 4096;
      const gpu::DeviceSegment segments[] = {{half, dev + half, bytes - half}, {0, dev, half}};
      const ReadReport r = gpu::copy_file_to_device(path, segments, device, o);
      EXPECT_EQ(r.bytes, bytes);
      unsigned long long bad = ~0ull;
      ASSERT_EQ(gpu_test::count_mismatches(device, reinterpret_cast<const std::uint32_t*>(dev), words, 90, &bad), "");
      EXPECT_EQ(bad, 0u) << "device " << device << (cached ? ", cached" : ", from disk");
      std::printf("device %d, %s: %s %s\n", device, cached ? "cached" : "from disk", to_string(r.path),
                  r.fallback_reason.c_str());
      gpu_test::device_free(device, dev);
    }
  }
  BlockOptions host_only;
  Block plain = Block::open(1 << 20, host_only);
  gpu::CopyOptions bad_staging;
  bad_staging.staging = &plain;
  const gpu::DeviceSegment one[] = {{0, 1, 16}};
  EXPECT_THROW(gpu::copy_file_to_device(path, one, 0, bad_staging), Error);
  std::remove(path.c_str());
}

// A file of `words` pattern words (seed), written through the page cache.
void write_pattern_file(const std::string& path, std::size_t words, std::uint32_t seed) {
  std::vector<std::uint32_t> data(words);
  for (std::size_t i = 0; i < words; ++i) data[i] = pattern(i, seed);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fwrite(data.data(), 4, words, f), words);
  std::fclose(f);
}

// Drops [offset, offset + bytes) of the file from the page cache (written back first).
void evict(const std::string& path, std::size_t offset, std::size_t bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  ::fdatasync(fd);
  ::posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(bytes), POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Random, shuffled segments covering [0, bytes), each to the same offset on the device.
std::vector<gpu::DeviceSegment> random_cover(std::size_t bytes, std::uintptr_t dev, unsigned seed) {
  std::vector<gpu::DeviceSegment> segments;
  std::srand(seed);
  for (std::size_t off = 0; off < bytes;) {
    const std::size_t n = std::min(bytes - off, std::size_t{4} * (1 + std::rand() % (1 << 20)));
    segments.push_back({off, dev + off, n});
    off += n;
  }
  for (std::size_t i = segments.size(); i > 1; --i) std::swap(segments[i - 1], segments[std::rand() % i]);
  return segments;
}

TEST(GpuLoader, LoadsThePageCacheInPlaceAndKeepsItsRegistrations) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_loader_" + std::to_string(::getpid());
  const std::size_t words = (40u << 20) / 4 + 123;  // several 8 MiB chunks and a tail
  const std::size_t bytes = words * 4;
  write_pattern_file(path, words, 91);
  gpu::CopyOptions o;
  o.chunk_bytes = 8u << 20;
  o.register_page_cache = gpu::PageCacheRegistration::always;
  o.both_routes = false;  // every chunk registered, none staged
  gpu::Loader loader(0, o);
  EXPECT_EQ(loader.registered_bytes(), 0u);
  unsigned long long bad = ~0ull;
  for (int round = 0; round < 2; ++round) {
    const std::uintptr_t dev = gpu_test::device_alloc(0, bytes);
    const std::vector<gpu::DeviceSegment> segments = random_cover(bytes, dev, 7 + round);
    const ReadReport r = loader.load(path, segments);
    EXPECT_EQ(r.bytes, bytes);
    EXPECT_EQ(r.path, ReadPath::page_cache_registered) << r.fallback_reason;
    ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 91, &bad), "");
    EXPECT_EQ(bad, 0u) << "round " << round << ", " << segments.size() << " segments";
    EXPECT_GE(loader.registered_bytes(), bytes) << "the registrations stay for the next load";
    if (round == 1) {
      EXPECT_NE(r.fallback_reason.find("(chunks of 0 B newly registered"), std::string::npos) << r.fallback_reason;
    }
    std::printf("GpuLoader round %d: %zu segments, %s: %s\n", round, segments.size(), to_string(r.path),
                r.fallback_reason.c_str());
    gpu_test::device_free(0, dev);
  }

  // Rewritten (truncated and written anew: other pages): the old registrations are stale.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  write_pattern_file(path, words, 92);
  const std::uintptr_t dev = gpu_test::device_alloc(0, bytes);
  const gpu::DeviceSegment all[] = {{0, dev, bytes}};
  (void)loader.load(path, all);
  ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 92, &bad), "");
  EXPECT_EQ(bad, 0u) << "the loader copied what the file held before it was rewritten";

  // Bad input: a clear error, and the loader still works afterwards.
  const gpu::DeviceSegment outside[] = {{bytes - 4, dev, 8}};
  EXPECT_EQ(testing::error_of([&] { (void)loader.load(path, outside); }), Errc::invalid_argument);
  const gpu::DeviceSegment wild[] = {{0, 4096, 4096}};  // no device memory there
  EXPECT_EQ(testing::error_of([&] { (void)loader.load(path, wild); }), Errc::cuda);
  EXPECT_EQ(testing::error_of([&] { (void)loader.load("/nonexistent/file", all); }), Errc::not_found);
  EXPECT_EQ(testing::error_of([] { gpu::Loader none(gpu_test::device_count()); }), Errc::invalid_argument);
  EXPECT_EQ(testing::error_of([] {
              gpu::CopyOptions huge;
              huge.chunk_bytes = std::size_t{2} << 30;
              gpu::Loader too_big(0, huge);
            }),
            Errc::invalid_argument);
  const gpu::DeviceSegment wraps[] = {{8, dev, ~std::size_t{0}}};
  EXPECT_EQ(testing::error_of([&] { (void)loader.load(path, wraps); }), Errc::invalid_argument);
  (void)loader.load(path, all);
  ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 92, &bad), "");
  EXPECT_EQ(bad, 0u);
  loader.release();
  EXPECT_EQ(loader.registered_bytes(), 0u);
  gpu_test::device_free(0, dev);
  std::remove(path.c_str());
}

// A Loader keeps registrations only of files that are still what they were:
// a deleted file's pinned pages go at the next load.
TEST(GpuLoader, DropsTheRegistrationsOfFilesThatWentAway) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string a = "/tmp/unimem_gpu_loader_a_" + std::to_string(::getpid());
  const std::string b = "/tmp/unimem_gpu_loader_b_" + std::to_string(::getpid());
  const std::size_t words = (8u << 20) / 4;
  write_pattern_file(a, words, 95);
  write_pattern_file(b, words, 96);
  gpu::Loader loader(0);
  const std::uintptr_t dev = gpu_test::device_alloc(0, words * 4);
  const gpu::DeviceSegment all[] = {{0, dev, words * 4}};
  (void)loader.load(a, all);
  (void)loader.load(b, all);
  const std::size_t both = loader.registered_bytes();
  EXPECT_GE(both, 2 * words * 4);
  std::remove(b.c_str());
  (void)loader.load(a, all);
  EXPECT_EQ(loader.registered_bytes(), both / 2) << "the deleted file's registration was kept";
  unsigned long long bad = ~0ull;
  ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 95, &bad), "");
  EXPECT_EQ(bad, 0u);
  gpu_test::device_free(0, dev);
  std::remove(a.c_str());
}

// on_reload: a file is staged on its first load, registered on its second,
// and moved straight from the registered page cache from the third on.
TEST(GpuLoader, RegistersAFileWhenItIsLoadedAgain) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_loader_again_" + std::to_string(::getpid());
  const std::size_t words = (80u << 20) / 4 + 5;  // above the 64 MiB a first load registers
  const std::size_t bytes = words * 4;
  write_pattern_file(path, words, 94);
  gpu::CopyOptions o;
  o.chunk_bytes = 8u << 20;
  o.register_page_cache = gpu::PageCacheRegistration::on_reload;
  o.both_routes = false;  // the second load registers every chunk
  gpu::Loader loader(0, o);
  const std::uintptr_t dev = gpu_test::device_alloc(0, bytes);
  const gpu::DeviceSegment all[] = {{0, dev, bytes}};
  const ReadPath expected[] = {ReadPath::buffered_threads, ReadPath::page_cache_registered,
                               ReadPath::page_cache_registered};
  for (int load = 0; load < 3; ++load) {
    const ReadReport r = loader.load(path, all);
    EXPECT_EQ(r.path, expected[load]) << "load " << load << ": " << r.fallback_reason;
    unsigned long long bad = ~0ull;
    ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 94, &bad), "");
    EXPECT_EQ(bad, 0u) << "load " << load;
    if (load == 0) EXPECT_EQ(loader.registered_bytes(), 0u);
    if (load == 2)
      EXPECT_NE(r.fallback_reason.find("(chunks of 0 B newly registered"), std::string::npos) << r.fallback_reason;
    std::printf("GpuLoader load %d: %s: %s\n", load, to_string(r.path), r.fallback_reason.c_str());
  }
  gpu_test::device_free(0, dev);
  std::remove(path.c_str());
}

// Sleeps in one timed part of the reload's registration probe: part 1 makes
// registering look slow, part 0 fast.
// With slow_chunk armed, the next chunk the loading thread registers (its
// before_chunk counts in the timing) takes 200 ms as well.
struct SkewRegistrationTiming : gpu::detail::LoaderProbe {
  int part = 1;
  std::atomic<int> calls{0};
  std::atomic<bool> slow_chunk{false};
  std::atomic<bool> slow_staging{false};
  void timing_registration(int p) noexcept override {
    ++calls;
    if (p == part) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  void before_chunk(std::size_t) override {
    if (slow_chunk.exchange(false)) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    // One worker held 300 ms: the load, and so the staging rate it sets, is
    // slower than any registration of these 320 MiB.
    if (slow_staging.exchange(false)) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
};

// Installs a LoaderProbe for a scope: removed also when an assertion returns early.
struct ProbeInstalled {
  explicit ProbeInstalled(gpu::detail::LoaderProbe* p) { gpu::detail::set_loader_probe(p); }
  ~ProbeInstalled() { gpu::detail::set_loader_probe(nullptr); }
  ProbeInstalled(const ProbeInstalled&) = delete;
  ProbeInstalled& operator=(const ProbeInstalled&) = delete;
};

// The GB/s a report gives for the timed registration ("timed at X GB/s"), or -1.
double timed_rate(const std::string& reason) {
  const std::size_t at = reason.find("timed at ");
  if (at == std::string::npos) return -1;
  return std::strtod(reason.c_str() + at + 9, nullptr);
}

// The default reload registers a file only where registering runs near the
// rate staging reached on it: the second load times registering 16 MiB of it
// twice (slowed here, or sped up, by a probe in the timed parts; where it
// should register, the first load's staging is slowed too), then stages
// every chunk of a file that registers slowly, on that load and later ones,
// and registers every chunk of one that registers fast, unless its whole
// chunks then register slowly (a probe slows the first): it stops after
// that chunk and the rest is staged, then and later. Bytes exact
// throughout, and the rate it reports is the rate it timed.
TEST(GpuLoader, AReloadRegistersOnlyAFileThatRegistersNearItsStagedRate) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_loader_timed_" + std::to_string(::getpid());
  const std::size_t words = (320u << 20) / 4 + 3;  // 5 chunks and a bit: above the 256 MiB that sets a rate
  const std::size_t bytes = words * 4;
  write_pattern_file(path, words, 61);
  const std::uintptr_t dev = gpu_test::device_alloc(0, bytes);
  const gpu::DeviceSegment all[] = {{0, dev, bytes}};
  enum Case { slow_trial, fast, slow_chunks };
  for (Case c : {slow_trial, fast, slow_chunks}) {
    const bool slow = c == slow_trial;
    gpu::Loader loader(0);  // defaults: on_reload, 64 MiB chunks
    SkewRegistrationTiming skew;
    skew.part = slow ? 1 : 0;
    const ProbeInstalled installed(&skew);
    for (int load = 0; load < 3; ++load) {
      ASSERT_EQ(gpu_test::fill(0, reinterpret_cast<std::uint32_t*>(dev), words, 7), "");  // not the file's bytes
      if (c == slow_chunks && load == 1) skew.slow_chunk = true;
      // Where registering should win, the first load's staging is slowed, so
      // the verdict does not hang on this machine's ratio of the two rates
      // (on the H200 machine, 2026-12-05, 64 MiB chunks of this file
      // registered at 25.9 GB/s against 33.3 staged: below the 0.8 bar).
      if (c != slow_trial && load == 0) skew.slow_staging = true;
      const ReadReport r = loader.load(path, all);
      unsigned long long bad = ~0ull;
      ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 61, &bad), "");
      EXPECT_EQ(bad, 0u) << "load " << load;
      std::printf("GpuLoader timed registration (%s), load %d: %s: %s\n",
                  c == slow_trial ? "slow"
                  : c == fast     ? "fast"
                                  : "fast trial, slow chunks",
                  load, to_string(r.path), r.fallback_reason.c_str());
      const bool timed_here = r.fallback_reason.find("registering this file timed at") != std::string::npos;
      EXPECT_EQ(timed_here, load == 1) << r.fallback_reason;
      EXPECT_EQ(skew.calls.load(), load == 0 ? 0 : 4) << "timed once per file (two samples), on its second load";
      if (load == 1 && slow) {
        // 8 MiB (the longer part less the shorter) over the 200 ms slept, plus the registrations' own time.
        const double gbps = timed_rate(r.fallback_reason);
        EXPECT_GT(gbps, 0.02) << r.fallback_reason;
        EXPECT_LT(gbps, 8.4e6 / 0.2 / 1e9 * 1.01) << r.fallback_reason;
      }
      if (load == 0 || slow) {
        EXPECT_EQ(r.path, ReadPath::buffered_threads) << "load " << load << ": " << r.fallback_reason;
        EXPECT_EQ(loader.registered_bytes(), 0u) << "load " << load << ": the probe's registrations let go";
      } else if (c == slow_chunks) {
        EXPECT_EQ(loader.registered_bytes(), 64 * MiB) << "load " << load << ": the slow chunk alone";
        EXPECT_NE(r.fallback_reason.find("staged"), std::string::npos) << r.fallback_reason;
        EXPECT_EQ(r.fallback_reason.find("its chunks registered at") != std::string::npos, load == 1)
            << r.fallback_reason;
        EXPECT_EQ(r.fallback_reason.find("registered, for DMA alone"), std::string::npos)
            << "the trial's verdict, overruled by the chunks: " << r.fallback_reason;
      } else {
        EXPECT_EQ(r.path, ReadPath::page_cache_registered) << "load " << load << ": " << r.fallback_reason;
        EXPECT_GE(loader.registered_bytes(), bytes) << "load " << load << ": every chunk (page-rounded)";
        EXPECT_LT(loader.registered_bytes(), bytes + Block::page_size()) << "load " << load;
      }
    }
  }
  gpu_test::device_free(0, dev);
  std::remove(path.c_str());
}

TEST(GpuLoader, StagesWhatIsNotCachedAndMixesRoutesInOneLoad) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_loader_mix_" + std::to_string(::getpid());
  const std::size_t words = (32u << 20) / 4 + 77;
  const std::size_t bytes = words * 4;
  write_pattern_file(path, words, 93);
  unsigned long long bad = ~0ull;
  for (int mode = 0; mode < 3; ++mode) {  // 0: half cached, 1: none cached, 2: cached but staging forced
    if (mode == 0) evict(path, 0, bytes / 2);
    if (mode == 1) evict(path, 0, 0);
    if (mode == 2) {  // read it back into the cache
      std::vector<char> sink(bytes);
      std::FILE* f = std::fopen(path.c_str(), "rb");
      ASSERT_EQ(std::fread(sink.data(), 1, bytes, f), bytes);
      std::fclose(f);
    }
    gpu::CopyOptions o;
    o.chunk_bytes = 4u << 20;
    o.register_page_cache = mode == 2 ? gpu::PageCacheRegistration::never : gpu::PageCacheRegistration::always;
    const std::uintptr_t dev = gpu_test::device_alloc(0, bytes);
    const std::vector<gpu::DeviceSegment> segments = random_cover(bytes, dev, 20 + mode);
    const ReadReport r = gpu::copy_file_to_device(path, segments, 0, o);
    ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 93, &bad), "");
    EXPECT_EQ(bad, 0u) << "mode " << mode;
    std::printf("GpuLoader mode %d (%.0f%% cached): %s: %s\n", mode, 100 * page_cache_fraction(path, 0, bytes),
                to_string(r.path), r.fallback_reason.c_str());
    if (mode == 2) EXPECT_EQ(r.path, ReadPath::buffered_threads);
    if (mode == 1 && page_cache_fraction(path, 0, bytes) < 0.5) EXPECT_NE(r.path, ReadPath::page_cache_registered);
    gpu_test::device_free(0, dev);
  }
  std::remove(path.c_str());
}

// A sharded model as Hugging Face ships it: two .safetensors files and the
// index that names the file of every tensor.
TEST(GpuLoader, LoadsASafetensorsModelFromOneFileOrAShardedIndex) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string dir = "/tmp/unimem_gpu_model_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  // Tensor i: words_of[i] pattern words of seed 200 + i, in shard i % 2.
  const std::size_t words_of[] = {1000, 1, 65536 + 3, 777, (3u << 20) / 4, 64};
  std::vector<std::vector<std::uint32_t>> data;
  std::vector<TensorData> shard[2];
  for (std::size_t i = 0; i < std::size(words_of); ++i) {
    data.emplace_back(words_of[i]);
    for (std::size_t w = 0; w < words_of[i]; ++w) data[i][w] = pattern(w, 200 + static_cast<std::uint32_t>(i));
  }
  for (std::size_t i = 0; i < std::size(words_of); ++i) {
    shard[i % 2].push_back({"layer." + std::to_string(i),
                            DType::U32,
                            {words_of[i]},
                            std::as_bytes(std::span<const std::uint32_t>(data[i]))});
  }
  save_safetensors(dir + "/model-00001-of-00002.safetensors", shard[0]);
  save_safetensors(dir + "/model-00002-of-00002.safetensors", shard[1]);
  {
    std::ofstream index(dir + "/model.safetensors.index.json");
    index << "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {";
    for (std::size_t i = 0; i < std::size(words_of); ++i) {
      index << (i ? ", " : "") << "\"layer." << i << "\": \"model-0000" << (i % 2 + 1) << "-of-00002.safetensors\"";
    }
    index << "}}";
  }
  gpu::Loader loader(0);
  for (const std::string& path : {dir + "/model.safetensors.index.json", dir + "/model-00001-of-00002.safetensors"}) {
    const gpu::DeviceTensors model = gpu::load_safetensors(path, loader);
    const bool sharded = path.ends_with(".json");
    EXPECT_EQ(model.tensors().size(), sharded ? std::size(words_of) : 3u) << path;
    for (const gpu::DeviceTensor& t : model.tensors()) {
      const std::size_t i = std::stoul(t.name.substr(6));
      EXPECT_EQ(t.address % 256, 0u) << t.name;
      EXPECT_EQ(t.dtype, DType::U32);
      ASSERT_EQ(t.shape, std::vector<std::uint64_t>{words_of[i]});
      EXPECT_GE(t.address, model.memory().address());
      EXPECT_LE(t.address + t.bytes, model.memory().address() + model.memory().size());
      unsigned long long bad = ~0ull;
      ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(t.address), words_of[i],
                                           200 + static_cast<std::uint32_t>(i), &bad),
                "");
      EXPECT_EQ(bad, 0u) << t.name << " from " << t.file;
    }
    EXPECT_NE(model.find("layer.0"), nullptr);
    EXPECT_EQ(model.find("layer.99"), nullptr);
    EXPECT_EQ(testing::error_of([&] { (void)model.at("nope"); }), Errc::not_found);
    std::printf("GpuLoader model %s: %zu tensors, %zu files, first file: %s\n", sharded ? "(index)" : "(one file)",
                model.tensors().size(), model.reports().size(), to_string(model.reports()[0].path));
  }
  // Bad models: a clear error before any device memory is taken.
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir + "/" + name) << text;
    return dir + "/" + name;
  };
  EXPECT_EQ(testing::error_of([&] { (void)gpu::load_safetensors(write("a.json", "{nope"), loader); }),
            Errc::bad_format);
  EXPECT_EQ(testing::error_of([&] { (void)gpu::load_safetensors(write("b.json", "{\"weight_map\": 3}"), loader); }),
            Errc::bad_format);
  EXPECT_EQ(testing::error_of([&] {
              (void)gpu::load_safetensors(
                  write("c.json", "{\"weight_map\": {\"layer.0\": \"model-00002-of-00002.safetensors\"}}"), loader);
            }),
            Errc::not_found)
      << "the index puts a tensor in a file that lacks it";
  EXPECT_EQ(testing::error_of([&] {
              (void)gpu::load_safetensors(write("d.json", "{\"weight_map\": {\"x\": \"missing.safetensors\"}}"),
                                          loader);
            }),
            Errc::not_found);
  EXPECT_EQ(testing::error_of([&] {
              (void)gpu::load_safetensors(write("e.json", "{\"weight_map\": {\"x\": \"../etc/passwd\"}}"), loader);
            }),
            Errc::bad_format);
  EXPECT_EQ(testing::error_of([] { gpu::DeviceMemory too_big(0, std::size_t{1} << 50); }), Errc::out_of_memory);
  std::filesystem::remove_all(dir);
}

// Column slices of a row-major matrix (tensor parallelism): strided copies
// straight from the registered page cache and from staging slots, with rows
// that straddle the 1 MiB chunks, a rectangle whose rows touch (one range),
// and bad rectangles refused.
TEST(GpuLoader, CopiesStridedRectanglesByEitherRoute) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_loader_rect_" + std::to_string(::getpid());
  const std::size_t cols = 3001, rows = 1500;  // 4 B words: a 12004-byte row, 18 MB in all
  write_pattern_file(path, cols * rows, 97);
  const std::size_t c0 = 1000, width = 1234;  // the slice: columns [1000, 2234)
  for (auto policy : {gpu::PageCacheRegistration::always, gpu::PageCacheRegistration::never}) {
    gpu::CopyOptions o;
    o.chunk_bytes = 1u << 20;
    o.register_page_cache = policy;
    gpu::Loader loader(0, o);
    const std::size_t pitch = width * 4 + 256;  // padded rows on the device
    const std::uintptr_t dev = gpu_test::device_alloc(0, pitch * rows);
    gpu::DeviceSegment rect;
    rect.file_offset = c0 * 4;
    rect.device_address = dev;
    rect.bytes = width * 4;
    rect.rows = rows;
    rect.file_pitch = cols * 4;
    rect.device_pitch = pitch;
    const ReadReport r = loader.load(path, {&rect, 1});
    EXPECT_EQ(r.bytes, width * 4 * rows);
    std::vector<std::uint32_t> got(pitch * rows / 4);
    ASSERT_EQ(gpu_test::copy_to_host(0, got.data(), dev, pitch * rows), "");
    std::size_t bad = 0;
    for (std::size_t y = 0; y < rows; ++y) {
      for (std::size_t x = 0; x < width; ++x) bad += got[y * pitch / 4 + x] != pattern(y * cols + c0 + x, 97);
      for (std::size_t x = width; x < pitch / 4; ++x) bad += got[y * pitch / 4 + x] != 0xffffffffu;  // untouched
    }
    EXPECT_EQ(bad, 0u) << to_string(r.path) << ": " << r.fallback_reason;
    std::printf("GpuLoader rectangle %zu x %zu B (%s): %s\n", rows, width * 4, to_string(r.path),
                r.fallback_reason.c_str());
    // Touching rows are one range.
    gpu::DeviceSegment whole{0, dev, cols * 4, 7, cols * 4, cols * 4};
    (void)loader.load(path, {&whole, 1});
    unsigned long long wrong = ~0ull;
    ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), cols * 7, 97, &wrong), "");
    EXPECT_EQ(wrong, 0u);
    gpu::DeviceSegment overlapping = rect;
    overlapping.file_pitch = rect.bytes - 4;
    EXPECT_EQ(testing::error_of([&] { (void)loader.load(path, {&overlapping, 1}); }), Errc::invalid_argument);
    gpu::DeviceSegment past_end = rect;
    past_end.rows = rows + 1;
    EXPECT_EQ(testing::error_of([&] { (void)loader.load(path, {&past_end, 1}); }), Errc::invalid_argument);
    gpu::DeviceSegment huge = rect;
    huge.rows = std::size_t{1} << 62;
    EXPECT_EQ(testing::error_of([&] { (void)loader.load(path, {&huge, 1}); }), Errc::invalid_argument);
    gpu::DeviceSegment elsewhere = rect;
    elsewhere.device = 1000;
    EXPECT_EQ(testing::error_of([&] { (void)loader.load(path, {&elsewhere, 1}); }), Errc::invalid_argument);
    gpu_test::device_free(0, dev);
  }
  std::remove(path.c_str());
}

// bf16 / f16 / f32 to each other on the GPU while loading, against the CPU's
// conversion: round to nearest even (ties included), NaN, infinities,
// subnormals and overflow.
std::uint16_t bf16_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
float f32_of_bf16(std::uint16_t h) {
  const std::uint32_t u = std::uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(GpuLoader, ConvertsDtypesOnTheGpuWhileLoading) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_convert_" + std::to_string(::getpid()) + ".safetensors";
  std::vector<float> f32 = {0.0f,
                            -0.0f,
                            1.0f,
                            -2.5f,
                            3.14159265f,
                            65504.0f,
                            70000.0f,
                            1e-8f,
                            1e-40f,
                            1.0f + 1.0f / 256,
                            1.0f + 3.0f / 256,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            3.3895314e38f};
  for (int i = 0; i < 100000; ++i)
    f32.push_back(std::ldexp(static_cast<float>(std::rand()) / RAND_MAX - 0.5f, i % 40 - 20));
  std::vector<std::uint16_t> bf16(f32.size());
  for (std::size_t i = 0; i < f32.size(); ++i) bf16[i] = bf16_of(f32[i]);
  const std::vector<std::uint32_t> ints = {1, 2, 3, 4};
  const std::vector<TensorData> tensors = {
      {"f32", DType::F32, {f32.size()}, std::as_bytes(std::span<const float>(f32))},
      {"bf16", DType::BF16, {bf16.size()}, std::as_bytes(std::span<const std::uint16_t>(bf16))},
      {"ints", DType::U32, {4}, std::as_bytes(std::span<const std::uint32_t>(ints))}};
  save_safetensors(path, tensors);
  gpu::Loader loader(0);
  // To F32: bf16 widens exactly; f32 stays.
  {
    gpu::TensorLoadOptions o;
    o.dtype = DType::F32;
    const std::vector<gpu::DeviceTensors> out = gpu::load_safetensors(path, loader, o);
    ASSERT_EQ(out.size(), 1u);
    const gpu::DeviceTensor& t = out[0].at("bf16");
    EXPECT_EQ(t.dtype, DType::F32);
    EXPECT_EQ(t.bytes, bf16.size() * 4);
    std::vector<float> got(bf16.size());
    ASSERT_EQ(gpu_test::copy_to_host(0, got.data(), t.address, t.bytes), "");
    std::size_t bad = 0;
    for (std::size_t i = 0; i < bf16.size(); ++i) {
      const float want = f32_of_bf16(bf16[i]);
      bad += std::isnan(want) ? !std::isnan(got[i]) : std::memcmp(&got[i], &want, 4) != 0;
    }
    EXPECT_EQ(bad, 0u) << "bf16 -> f32";
    EXPECT_EQ(out[0].at("ints").dtype, DType::U32) << "integers are not converted";
    std::uint32_t back[4];
    ASSERT_EQ(gpu_test::copy_to_host(0, back, out[0].at("ints").address, 16), "");
    EXPECT_EQ(std::memcmp(back, ints.data(), 16), 0);
  }
  // To BF16: f32 narrows with round to nearest even (the CPU reference above).
  {
    gpu::TensorLoadOptions o;
    o.dtype = DType::BF16;
    const std::vector<gpu::DeviceTensors> out = gpu::load_safetensors(path, loader, o);
    const gpu::DeviceTensor& t = out[0].at("f32");
    EXPECT_EQ(t.dtype, DType::BF16);
    std::vector<std::uint16_t> got(f32.size());
    ASSERT_EQ(gpu_test::copy_to_host(0, got.data(), t.address, t.bytes), "");
    std::size_t bad = 0;
    for (std::size_t i = 0; i < f32.size(); ++i) bad += got[i] != bf16[i];
    EXPECT_EQ(bad, 0u) << "f32 -> bf16";
  }
  // To F16 and back through F16: what f16 holds survives; 70000 overflows to inf.
  {
    gpu::TensorLoadOptions o;
    o.dtype = DType::F16;
    const std::vector<gpu::DeviceTensors> out = gpu::load_safetensors(path, loader, o);
    const gpu::DeviceTensor& t = out[0].at("f32");
    EXPECT_EQ(t.dtype, DType::F16);
    std::vector<std::uint16_t> got(f32.size());
    ASSERT_EQ(gpu_test::copy_to_host(0, got.data(), t.address, t.bytes), "");
    EXPECT_EQ(got[2], 0x3c00u);  // 1.0
    EXPECT_EQ(got[3], 0xc100u);  // -2.5
    EXPECT_EQ(got[5], 0x7bffu);  // 65504, the largest f16
    EXPECT_EQ(got[6], 0x7c00u);  // 70000: infinity
    EXPECT_EQ(got[11], 0x7c00u);
    EXPECT_EQ(got[12], 0xfc00u);
    EXPECT_EQ(got[13] & 0x7c00u, 0x7c00u);
    EXPECT_NE(got[13] & 0x03ffu, 0u) << "NaN stays NaN";
  }
  EXPECT_EQ(testing::error_of([&] {
              gpu::TensorLoadOptions o;
              o.dtype = DType::I32;
              (void)gpu::load_safetensors(path, loader, o);
            }),
            Errc::invalid_argument);
  std::remove(path.c_str());
}

// Both routes at once: this thread registers chunks from the front while the
// staging workers copy slices from the back. Byte-exact at several chunk
// sizes, for random segment lists, and the next load with the same Loader
// too; every byte comes by one route or the other.
TEST(GpuLoader, BothRoutesAtOnceLoadEveryByteOnce) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_both_" + std::to_string(::getpid());
  const std::size_t words = (96u << 20) / 4 + 77;  // above the 64 MiB a first load registers alone
  const std::size_t bytes = words * 4;
  write_pattern_file(path, words, 57);
  for (std::size_t piece : {std::size_t{1} << 20, std::size_t{4} << 20}) {
    gpu::CopyOptions o;
    o.chunk_bytes = piece;
    o.register_page_cache = gpu::PageCacheRegistration::always;
    o.both_routes = true;
    gpu::Loader loader(0, o);
    for (int round = 0; round < 2; ++round) {
      const std::uintptr_t dev = gpu_test::device_alloc(0, bytes);
      const std::vector<gpu::DeviceSegment> segments = random_cover(bytes, dev, 31 + round);
      const ReadReport r = loader.load(path, segments);
      EXPECT_EQ(r.bytes, bytes);
      unsigned long long bad = ~0ull;
      ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 57, &bad), "");
      EXPECT_EQ(bad, 0u) << "piece " << piece << ", round " << round << ", " << segments.size() << " segments";
      std::printf("GpuLoader both routes, %zu KiB chunks, round %d: %s: %s\n", piece >> 10, round, to_string(r.path),
                  r.fallback_reason.c_str());
      gpu_test::device_free(0, dev);
    }
  }
  std::remove(path.c_str());
}

// LoadOptions: progress from the loading thread and the workers (one total,
// never going back, the last equal to it), a progress callback that throws
// (the load throws it, drained; the Loader works on), and drop_page_cache
// (registrations released, the pages dropped where the file system drops
// clean pages).
TEST(GpuLoader, ReportsProgressAndDropsThePageCacheWhenAsked) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_progress_" + std::to_string(::getpid());
  const std::size_t words = (200u << 20) / 4 + 13;  // staged by the workers on a first load
  const std::size_t bytes = words * 4;
  write_pattern_file(path, words, 71);
  evict(path, 0, bytes);  // written back, then dropped: does this file system drop clean pages?
  const bool droppable = page_cache_fraction(path, 0, bytes) < 0.5;
  std::vector<std::byte> sink(bytes);
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    ASSERT_EQ(std::fread(sink.data(), 1, bytes, f), bytes);  // back into the page cache
    std::fclose(f);
  }
  ASSERT_GT(page_cache_fraction(path, 0, bytes), 0.9);
  const std::uintptr_t dev = gpu_test::device_alloc(0, bytes);
  const std::vector<gpu::DeviceSegment> segments = random_cover(bytes, dev, 5);
  auto exact = [&] {
    unsigned long long bad = ~0ull;
    EXPECT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words, 71, &bad), "");
    return bad == 0;
  };
  gpu::Loader loader(0);

  std::vector<std::pair<std::uint64_t, std::uint64_t>> seen;  // the contract: never two calls at once
  gpu::LoadOptions reporting;
  reporting.progress = [&](std::uint64_t done, std::uint64_t total) { seen.emplace_back(done, total); };
  EXPECT_EQ(loader.load(path, segments, reporting).bytes, bytes);
  EXPECT_TRUE(exact());
  ASSERT_GE(seen.size(), 2u) << "reports as the load goes, then the last";
  for (std::size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].second, bytes);
    if (i > 0) EXPECT_GT(seen[i].first, seen[i - 1].first);
    if (i + 1 < seen.size()) EXPECT_LT(seen[i].first, bytes) << "done == total only in the last call";
  }
  EXPECT_EQ(seen.back().first, bytes);

  gpu::LoadOptions throwing;
  throwing.progress = [](std::uint64_t, std::uint64_t) { throw std::runtime_error("the caller's own error"); };
  EXPECT_THROW((void)loader.load(path, segments, throwing), std::runtime_error);

  (void)loader.load(path, segments);  // a second load registers the page cache in place
  EXPECT_TRUE(exact());
  EXPECT_GT(loader.registered_bytes(), 0u);
  gpu::LoadOptions dropping;
  dropping.drop_page_cache = true;
  ASSERT_EQ(gpu_test::fill(0, reinterpret_cast<std::uint32_t*>(dev), words, 1), "");  // poisoned first
  // Dropped under another path naming the same file: its registrations go too.
  const std::string link = path + ".link";
  ASSERT_EQ(::symlink(path.c_str(), link.c_str()), 0);
  const ReadReport r = loader.load(link, segments, dropping);
  std::remove(link.c_str());
  EXPECT_EQ(r.bytes, bytes);
  EXPECT_TRUE(exact()) << r.fallback_reason;
  EXPECT_EQ(loader.registered_bytes(), 0u) << "pinned pages cannot be dropped: the registrations go first";
  if (droppable) {
    EXPECT_LT(page_cache_fraction(path, 0, bytes), 0.5);
  } else {
    std::printf("GpuLoader drop_page_cache: this file system keeps clean pages; the drop itself not checked\n");
  }
  gpu_test::device_free(0, dev);
  std::remove(path.c_str());
}

// A file that shrinks while it loads: an error, not SIGBUS (a copy out of
// its mapping past the new end faults), and the Loader works afterwards.
// The probe truncates the file just before the loader reaches chunk 2 (or,
// with both routes, the first chunk either thread reaches; the two threads
// call it at once).
struct Truncate : gpu::detail::LoaderProbe {
  std::string path;
  std::size_t at_chunk, to_bytes;
  bool any_chunk = false;
  std::atomic<bool> done{false};
  void before_chunk(std::size_t chunk) override {
    if ((any_chunk || chunk == at_chunk) && !done.exchange(true)) {
      ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(to_bytes)), 0);
    }
  }
};

TEST(GpuLoader, AFileThatShrinksWhileItLoadsIsAnErrorNotACrash) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_shrink_" + std::to_string(::getpid());
  const std::size_t words = (8u << 20) / 4, bytes = words * 4;  // 8 chunks of 1 MiB
  for (int route = 0; route < 3; ++route) {                     // staged; registered; both at once
    const auto policy = route == 0 ? gpu::PageCacheRegistration::never : gpu::PageCacheRegistration::always;
    write_pattern_file(path, words, 98);
    gpu::CopyOptions o;
    o.chunk_bytes = 1u << 20;
    o.register_page_cache = policy;
    o.both_routes = route == 2;
    gpu::Loader loader(0, o);
    const std::uintptr_t dev = gpu_test::device_alloc(0, bytes);
    const gpu::DeviceSegment all[] = {{0, dev, bytes}};
    Truncate probe;
    probe.path = path;
    probe.at_chunk = 2;
    probe.any_chunk = route == 2;
    probe.to_bytes = bytes / 4;  // 2 MiB: chunk 2 on is gone
    gpu::detail::set_loader_probe(&probe);
    std::string message;
    const Errc e = testing::error_of([&] {
      try {
        (void)loader.load(path, all);
      } catch (const Error& err) {
        message = err.what();
        throw;
      }
    });
    gpu::detail::set_loader_probe(nullptr);
    EXPECT_TRUE(probe.done);
    EXPECT_EQ(e, Errc::system) << message;
    EXPECT_NE(message.find("ended early"), std::string::npos) << message;
    std::printf("GpuLoader shrink (%s): %s\n",
                route == 0   ? "never"
                : route == 1 ? "always"
                             : "both routes",
                message.c_str());
    // The shrunk file loads (as what it is now) with the same Loader.
    const gpu::DeviceSegment rest[] = {{0, dev, bytes / 4}};
    (void)loader.load(path, rest);
    unsigned long long bad = ~0ull;
    ASSERT_EQ(gpu_test::count_mismatches(0, reinterpret_cast<const std::uint32_t*>(dev), words / 4, 98, &bad), "");
    EXPECT_EQ(bad, 0u);
    gpu_test::device_free(0, dev);
  }
  std::remove(path.c_str());
}

// A model that does not fit: out_of_memory, and no device memory stays
// taken, also when the first device's allocation succeeded and a later one
// (the second device, or the conversion scratch) failed.
TEST(GpuLoader, AModelThatDoesNotFitLeavesNoDeviceMemoryTaken) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_oom_" + std::to_string(::getpid()) + ".safetensors";
  std::vector<std::uint16_t> data((64u << 20) / 2, 0x3f80);  // 64 MiB of bf16 ones
  const std::vector<TensorData> tensors = {
      {"w", DType::BF16, {data.size()}, std::as_bytes(std::span<const std::uint16_t>(data))}};
  save_safetensors(path, tensors);
  gpu::Loader loader(0);
  // Leave room for the model as stored (64 MiB) but not for it converted to F32
  // (128 MiB) plus scratch (64 MiB).
  const std::size_t before = gpu_test::free_device_memory(0);
  ASSERT_GT(before, 256u << 20);
  std::optional<gpu::DeviceMemory> hog;
  for (std::size_t leave = 160u << 20; leave >= (96u << 20) && !hog; leave -= 16u << 20) {
    try {
      hog.emplace(0, before - leave);
    } catch (const Error&) {  // fragmentation or reserve: leave more
    }
  }
  ASSERT_TRUE(hog) << "could not take most of the device's memory";
  const std::size_t with_hog = gpu_test::free_device_memory(0);
  gpu::TensorLoadOptions to_f32;
  to_f32.dtype = DType::F32;
  const Errc e = testing::error_of([&] { (void)gpu::load_safetensors(path, loader, to_f32); });
  EXPECT_EQ(e, Errc::out_of_memory);
  // At least as much free as before: memory that earlier tests' streams
  // and Loaders gave back may reach the driver's count only now.
  EXPECT_GE(gpu_test::free_device_memory(0), with_hog) << "device memory stayed taken after the failed load";
  std::printf("GpuLoader OOM: %zu MiB free, load as F32 refused: %s\n", with_hog >> 20, to_string(e));
  hog.reset();
  EXPECT_GE(gpu_test::free_device_memory(0), before);
  std::remove(path.c_str());
}

// One Loader, two GPUs: each chunk registered once, rows and columns split,
// small tensors replicated.
TEST(GpuLoader, SplitsAModelAcrossTwoGpusFromOneRegistration) {
  UNIMEM_REQUIRE_GPUS(2);
  const std::string path = "/tmp/unimem_gpu_split_" + std::to_string(::getpid()) + ".safetensors";
  const std::size_t r = 1000, c = 4098;  // even: a split must divide
  std::vector<std::uint32_t> m(r * c), bias(c);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = pattern(i, 300);
  for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = pattern(i, 301);
  const std::vector<TensorData> tensors = {
      {"cols", DType::U32, {r, c}, std::as_bytes(std::span<const std::uint32_t>(m))},
      {"rows", DType::U32, {r, c}, std::as_bytes(std::span<const std::uint32_t>(m))},
      {"bias", DType::U32, {c}, std::as_bytes(std::span<const std::uint32_t>(bias))}};
  save_safetensors(path, tensors);
  const int devices[] = {0, 1};
  gpu::Loader loader(devices);
  gpu::TensorLoadOptions o;
  o.split = [](const TensorInfo& t) {
    return t.name == "cols" ? gpu::Split::columns : t.name == "rows" ? gpu::Split::rows : gpu::Split::replicate;
  };
  EXPECT_EQ(testing::error_of([&] { (void)gpu::load_safetensors(path, loader); }), Errc::invalid_argument);
  {
    // A cut that does not divide is refused before any device memory is
    // taken: the tensor (a sparse file) is larger than any GPU, so a refusal
    // that came after the allocation would read out_of_memory.
    const std::string odd = path + ".odd";
    const std::uint64_t cols = (std::uint64_t{1} << 36) + 1, bytes = 3 * cols * 4;
    std::string header = R"({"cols":{"dtype":"U32","shape":[3,)" + std::to_string(cols) + R"(],"data_offsets":[0,)" +
                         std::to_string(bytes) + "]}}";
    while (header.size() % 8 != 0) header += ' ';
    const std::uint64_t n = header.size();
    std::FILE* f = std::fopen(odd.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fwrite(&n, 8, 1, f);
    std::fwrite(header.data(), 1, header.size(), f);
    std::fclose(f);
    if (::truncate(odd.c_str(), static_cast<off_t>(8 + n + bytes)) == 0) {
      const testing::Thrown e = testing::thrown_by([&] { (void)gpu::load_safetensors(odd, loader, o); });
      EXPECT_EQ(e.code, Errc::invalid_argument) << e.message;
      EXPECT_NE(e.message.find("not a multiple of 2"), std::string::npos) << e.message;
    } else {
      std::printf("GpuLoader split: no sparse file here (%s); the refusal is checked by SplitPart tests\n",
                  std::strerror(errno));
    }
    std::remove(odd.c_str());
  }
  for (int round = 0; round < 2; ++round) {
    const std::vector<gpu::DeviceTensors> out = gpu::load_safetensors(path, loader, o);
    ASSERT_EQ(out.size(), 2u);
    for (int d = 0; d < 2; ++d) {
      const gpu::DeviceTensor& cols = out[d].at("cols");
      const std::size_t c0 = d * c / 2, cw = (d + 1) * c / 2 - c0;
      EXPECT_EQ(cols.shape, (std::vector<std::uint64_t>{r, cw}));
      EXPECT_EQ(cols.part_begin, c0);
      std::vector<std::uint32_t> got(r * cw);
      ASSERT_EQ(gpu_test::copy_to_host(d, got.data(), cols.address, got.size() * 4), "");
      std::size_t bad = 0;
      for (std::size_t y = 0; y < r; ++y) {
        for (std::size_t x = 0; x < cw; ++x) bad += got[y * cw + x] != m[y * c + c0 + x];
      }
      EXPECT_EQ(bad, 0u) << "columns on device " << d;
      const gpu::DeviceTensor& rows = out[d].at("rows");
      const std::size_t r0 = d * r / 2, rh = (d + 1) * r / 2 - r0;
      EXPECT_EQ(rows.shape, (std::vector<std::uint64_t>{rh, c}));
      got.resize(rh * c);
      ASSERT_EQ(gpu_test::copy_to_host(d, got.data(), rows.address, got.size() * 4), "");
      EXPECT_EQ(std::memcmp(got.data(), m.data() + r0 * c, got.size() * 4), 0) << "rows on device " << d;
      got.resize(c);
      ASSERT_EQ(gpu_test::copy_to_host(d, got.data(), out[d].at("bias").address, c * 4), "");
      EXPECT_EQ(std::memcmp(got.data(), bias.data(), c * 4), 0) << "bias on device " << d;
      EXPECT_EQ(out[d].memory().device(), d);
    }
    std::printf("GpuLoader split round %d: %s: %s\n", round, to_string(out[0].reports()[0].path),
                out[0].reports()[0].fallback_reason.c_str());
  }
  EXPECT_LE(loader.registered_bytes(), (2 * r * c + c) * 4 + (64u << 20)) << "one registration for both devices";
  std::remove(path.c_str());
}

// CopyOptions::peer_exchange: a range several devices want crosses the
// host's links once (each device takes its 4 MiB granules from the host and
// passes them on over peer access). Every byte must land on every device that
// asked for it: ranges that overlap only in part, bytes one device wants
// twice, a size that is no multiple of the granule; staged (one worker, so
// its two slots are reused), registered, and from the disk (evicted); first
// loads and reloads. On one GPU the option must change nothing.
TEST(GpuLoader, PeerExchangePutsEveryReplicatedByteOnEveryDevice) {
  UNIMEM_REQUIRE_GPUS(1);
  const std::string path = "/tmp/unimem_gpu_exchange_" + std::to_string(::getpid());
  const std::size_t words = (40u << 20) / 4 + 333;
  const std::size_t bytes = words * 4;
  write_pattern_file(path, words, 310);
  const bool two = gpu_test::device_count() >= 2;
  const bool exchanging = two && gpu_test::peers(0, 1);
  std::vector<int> devices = {0};
  if (two) devices.push_back(1);
  // Device 0 wants [0, 30 MiB), [38 MiB, end) and [0, 1 MiB) again; device 1
  // [5 MiB + 12, 37 MiB + 4) and [0, 1 MiB): shared only in part.
  struct Want {
    int device;
    std::uint64_t file_offset, bytes, at;  // at: offset in that device's buffer
  };
  const std::uint64_t tail = bytes - 38 * MiB;
  std::vector<Want> wants = {{0, 0, 30 * MiB, 0}, {0, 38 * MiB, tail, 30 * MiB}, {0, 0, MiB, 30 * MiB + tail}};
  if (two) wants.insert(wants.end(), {{1, 5 * MiB + 12, 32 * MiB - 8, 0}, {1, 0, MiB, 32 * MiB - 8}});
  const std::size_t buffer[2] = {31 * MiB + tail, 33 * MiB};
  auto file_byte = [](std::uint64_t at) {
    return static_cast<std::uint8_t>((pattern(static_cast<std::size_t>(at / 4), 310) >> (8 * (at % 4))) & 0xffu);
  };
  for (const auto policy :
       {gpu::PageCacheRegistration::never, gpu::PageCacheRegistration::always, gpu::PageCacheRegistration::on_reload}) {
    gpu::CopyOptions o;
    o.peer_exchange = true;
    o.register_page_cache = policy;
    o.chunk_bytes = 8 * MiB;
    if (policy == gpu::PageCacheRegistration::never) o.copy_threads = 1;
    gpu::Loader loader(devices, o);
    for (int round = 0; round < 3; ++round) {  // 2: from the disk
      if (round == 2) evict(path, 0, 0);
      std::uintptr_t on[2] = {0, 0};
      for (int d : devices) on[d] = gpu_test::device_alloc(d, buffer[d]);
      std::vector<gpu::DeviceSegment> segments;
      for (const Want& w : wants) {
        segments.push_back({w.file_offset, on[w.device] + w.at, static_cast<std::size_t>(w.bytes), 1, 0, 0, w.device});
      }
      const ReadReport r = loader.load(path, segments);
      for (int d : devices) {
        std::vector<std::uint8_t> got(buffer[d]);
        ASSERT_EQ(gpu_test::copy_to_host(d, got.data(), on[d], got.size()), "");
        std::size_t wrong = 0;
        for (const Want& w : wants) {
          if (w.device != d) continue;
          for (std::uint64_t i = 0; i < w.bytes; ++i) wrong += got[w.at + i] != file_byte(w.file_offset + i);
        }
        EXPECT_EQ(wrong, 0u) << "device " << d << ", policy " << static_cast<int>(policy) << ", round " << round;
        gpu_test::device_free(d, on[d]);
      }
      if (exchanging) {
        EXPECT_NE(r.fallback_reason.find("copied GPU to GPU"), std::string::npos) << r.fallback_reason;
        EXPECT_EQ(r.fallback_reason.find("no peer exchange"), std::string::npos) << r.fallback_reason;
      } else {
        EXPECT_EQ(r.fallback_reason.find("copied GPU to GPU"), std::string::npos) << r.fallback_reason;
      }
      std::printf("GpuLoader exchange, %zu device(s), policy %d, round %d: %s: %s\n", devices.size(),
                  static_cast<int>(policy), round, to_string(r.path), r.fallback_reason.c_str());
    }
  }
  std::remove(path.c_str());
  if (!two) GTEST_SKIP() << "skipped: fewer than 2 CUDA devices (the one-device loads with the option ran and matched)";
}

TEST(GpuShare, ReadOnlyAttachIsRegisteredReadOnlyAndReadByKernels) {
  UNIMEM_REQUIRE_GPUS(1);
  Block a = Block::open(8 * MiB);
  auto* words = reinterpret_cast<std::uint32_t*>(a.data());
  const std::size_t n = a.size() / sizeof *words;
  for (std::size_t i = 0; i < n; ++i) words[i] = pattern(i, 80);
  BlockOptions o = visible();
  o.read_only = true;
  Block ro = Block::attach(a.id(), o);
  ASSERT_TRUE(ro.gpu_visible());
  ASSERT_TRUE(ro.read_only());
  for (int device = 0; device < gpu_test::device_count(); ++device) {
    unsigned long long bad = ~0ull;
    ASSERT_EQ(gpu_test::count_mismatches(
                  device, on_device(ro, device, reinterpret_cast<const std::uint32_t*>(ro.data())), n, 80, &bad),
              "");
    EXPECT_EQ(bad, 0u) << "device " << device;
  }
}

}  // namespace
}  // namespace unimem

int main(int argc, char** argv) {
  if (const char* id = std::getenv("UNIMEM_GPU_SHARE_CHILD")) {
    try {
      return unimem::share_child(id);
    } catch (const unimem::Error& e) {
      std::fprintf(stderr, "child process: %s\n", e.what());
      return 4;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
