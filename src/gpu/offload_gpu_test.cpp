// The offload pool's moves on a GPU (gpu::OffloadPool::store / fetch): byte
// for byte, both routes, block sizes from a partial kernel tile to 2 MiB,
// random block lists (random order, random 16-byte-aligned places in a larger
// device allocation, random non-zero data, poisoned destinations whose
// untouched bytes are checked too), the caller's stream order, moves on two
// streams at once, many calls in flight, device ranges refused before
// anything moves, a stream that fails (in a child process: CUDA's failure is
// sticky), and a second process that attaches, fetches what this one stored
// and stores what this one checks. Every test skips with "skipped: no CUDA
// device" where there is no GPU. The CPU-side contracts are in offload_test.cpp.
#include <cuda.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "gpu/offload_test_kernels.hpp"
#include "testing.hpp"
#include "unimem/gpu.hpp"
#include "unimem/offload.hpp"

namespace unimem {
namespace {

using gpu::OffloadPool;
using gpu::OffloadRoute;
using testing::error_of;
using testing::Thrown;
using testing::thrown_by;

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

int cuda_devices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

#define UNIMEM_REQUIRE_GPU()                                                                \
  do {                                                                                      \
    if (cuda_devices() < 1 || !gpu::available()) GTEST_SKIP() << "skipped: no CUDA device"; \
  } while (0)

// Device memory for a test, freed at the end of it.
struct DeviceArea {
  DeviceArea(std::size_t bytes, int device = 0) : size(bytes) {
    if (cudaSetDevice(device) != cudaSuccess || cudaMalloc(&p, bytes) != cudaSuccess) p = nullptr;
  }
  DeviceArea(const DeviceArea&) = delete;
  DeviceArea& operator=(const DeviceArea&) = delete;
  ~DeviceArea() {
    if (p != nullptr) cudaFree(p);
  }
  std::uintptr_t at(std::size_t offset) const { return reinterpret_cast<std::uintptr_t>(p) + offset; }
  void* p = nullptr;
  std::size_t size;
};

// The contents of test block `key`: random 64-bit words, never zero.
std::vector<std::byte> block_data(std::uint64_t key, std::size_t bytes) {
  std::vector<std::byte> out(bytes);
  std::mt19937_64 rng(key * 0x9e3779b97f4a7c15ull + 1);
  for (std::size_t i = 0; i + 8 <= bytes; i += 8) {
    const std::uint64_t w = rng() | 1;
    std::memcpy(out.data() + i, &w, 8);
  }
  return out;
}

// n places for blocks of `bytes` in an area of 2n slots of bytes + 4 KiB:
// random slots, each at a random 16-byte-aligned offset within its slot.
std::vector<std::size_t> placements(std::size_t n, std::size_t bytes, std::mt19937_64& rng) {
  const std::size_t slot = bytes + 4 * KiB;
  std::vector<std::size_t> slots(2 * n);
  std::iota(slots.begin(), slots.end(), std::size_t{0});
  std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<std::size_t> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = slots[i] * slot + 16 * (rng() % (4 * KiB / 16 + 1));
  return out;
}
std::size_t area_bytes(std::size_t n, std::size_t bytes) { return 2 * n * (bytes + 4 * KiB); }

std::size_t differing_bytes(const std::byte* a, const std::byte* b, std::size_t n) {
  std::size_t d = 0;
  for (std::size_t i = 0; i < n; ++i) d += a[i] != b[i];
  return d;
}

bool all_bytes(std::span<const std::byte> s, std::uint8_t value) {
  return std::all_of(s.begin(), s.end(), [&](std::byte b) { return b == std::byte{value}; });
}

// Stores n random blocks from random device places into n cells taken in
// random order, checks the cells on the CPU (and that no other cell changed),
// then fetches them, in another random order, to other random places of a
// poisoned area, and checks the whole area.
void round_trip(OffloadRoute route, std::size_t bytes, std::size_t n, std::uint64_t seed, bool by_index) {
  gpu::OffloadOptions o;
  o.route = route;
  OffloadPool pool = OffloadPool::create(bytes, n + 5, 0, o);
  ASSERT_TRUE(pool.host_block().gpu_visible());
  std::mt19937_64 rng(seed);
  const std::size_t area_size = area_bytes(n, bytes);
  DeviceArea area(area_size);
  ASSERT_NE(area.p, nullptr);
  ASSERT_EQ(cudaMemset(area.p, 0x5a, area_size), cudaSuccess);
  std::vector<std::vector<std::byte>> data(n);
  std::vector<std::uintptr_t> from(n);
  const std::vector<std::size_t> where = placements(n, bytes, rng);
  for (std::size_t i = 0; i < n; ++i) {
    data[i] = block_data(seed * 1000 + i, bytes);
    from[i] = area.at(where[i]);
    ASSERT_EQ(cudaMemcpy(reinterpret_cast<void*>(from[i]), data[i].data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  }
  for (std::uint32_t c = 0; c < pool.blocks(); ++c) std::memset(pool.cell(c).data(), 0xa5, bytes);
  std::vector<SharedCell> cells(n);
  ASSERT_EQ(pool.take(cells), TakeStatus::ok);
  std::shuffle(cells.begin(), cells.end(), rng);

  gpu::Transfer stored = pool.store(from, bytes, std::span<const SharedCell>(cells));
  stored.wait();
  EXPECT_TRUE(stored.ready());
  EXPECT_EQ(stored.blocks(), n);
  EXPECT_EQ(stored.bytes(), n * bytes);
  std::set<std::uint32_t> used;
  for (std::size_t i = 0; i < n; ++i) {
    used.insert(cells[i].index());
    EXPECT_EQ(differing_bytes(cells[i].data(), data[i].data(), bytes), 0u) << "store: block " << i;
  }
  for (std::uint32_t c = 0; c < pool.blocks(); ++c) {
    if (used.count(c) == 0) EXPECT_TRUE(all_bytes(pool.cell(c), 0xa5)) << "store wrote into cell " << c;
  }

  ASSERT_EQ(cudaMemset(area.p, 0x3c, area_size), cudaSuccess);
  const std::vector<std::size_t> to_places = placements(n, bytes, rng);
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::uintptr_t> to(n);
  std::vector<std::uint32_t> indices(n);
  std::vector<SharedCell> permuted(n);
  for (std::size_t k = 0; k < n; ++k) {
    to[k] = area.at(to_places[k]);
    indices[k] = cells[order[k]].index();
  }
  gpu::Transfer fetched;
  if (by_index) {
    fetched = pool.fetch(indices, to, bytes);
  } else {
    for (std::size_t k = 0; k < n; ++k) permuted[k] = std::move(cells[order[k]]);
    fetched = pool.fetch(std::span<const SharedCell>(permuted), to, bytes);
  }
  fetched.wait();
  std::vector<std::byte> back(area_size), expect(area_size, std::byte{0x3c});
  ASSERT_EQ(cudaMemcpy(back.data(), area.p, area_size, cudaMemcpyDeviceToHost), cudaSuccess);
  for (std::size_t k = 0; k < n; ++k) std::memcpy(expect.data() + to_places[k], data[order[k]].data(), bytes);
  EXPECT_EQ(differing_bytes(back.data(), expect.data(), area_size), 0u)
      << "fetch: blocks or the poisoned bytes around them differ";
  std::printf("OffloadGpu %s, %zu blocks of %zu B: store and fetch byte-exact (%s; batched copies: %s)\n",
              to_string(route), n, bytes, by_index ? "fetch by index" : "fetch by SharedCell",
              pool.batched_copies() ? "yes" : "no");
}

TEST(OffloadGpu, StoresAndFetchesRandomBlocksByteExactOnBothRoutes) {
  UNIMEM_REQUIRE_GPU();
  struct Size {
    std::size_t bytes, n;
  };
  // 4160 and 16 KiB + 64: tiles of the kernel that end mid-tile.
  const Size sizes[] = {{16 * KiB, 96}, {256 * KiB, 40}, {2 * MiB, 24}, {4160, 50}, {16 * KiB + 64, 33}};
  std::uint64_t seed = 1;
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    for (const Size& s : sizes) {
      SCOPED_TRACE(std::string(to_string(route)) + ", " + std::to_string(s.bytes) + " B");
      round_trip(route, s.bytes, s.n, seed, seed % 2 == 0);
      ++seed;
    }
  }
}

// A move runs after the work enqueued before it on the caller's stream, and
// only after it: a move on another stream runs to the end while the first
// stream is still held back (moves on two streams are not serialised).
TEST(OffloadGpu, MovesFollowTheirStreamAndAHeldStreamDoesNotHoldUpAnother) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 256 * KiB, n = 32;
  cudaStream_t a = nullptr, b = nullptr;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking), cudaSuccess);
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    gpu::OffloadOptions o;
    o.route = route;
    OffloadPool pool = OffloadPool::create(bytes, 2 * n, 0, o);
    DeviceArea area(2 * n * bytes);
    ASSERT_EQ(cudaMemset(area.p, 0, 2 * n * bytes), cudaSuccess);
    std::vector<SharedCell> in(n), out(n);
    ASSERT_EQ(pool.take(in), TakeStatus::ok);
    ASSERT_EQ(pool.take(out), TakeStatus::ok);
    for (SharedCell& c : out) std::memset(c.data(), 0x22, bytes);
    std::vector<std::uintptr_t> first(n), second(n);
    for (std::size_t i = 0; i < n; ++i) {
      first[i] = area.at(i * bytes);
      second[i] = area.at((n + i) * bytes);
    }
    // Stream a: held for 500 ms, then a memset of the first half, then the store.
    ASSERT_EQ(offload_test::delay_stream(a, 500), "");
    ASSERT_EQ(cudaMemsetAsync(area.p, 0x11, n * bytes, a), cudaSuccess);
    gpu::Transfer stored = pool.store(first, bytes, std::span<const SharedCell>(in), a);
    EXPECT_FALSE(stored.ready()) << "the store waits behind the held stream";
    gpu::Transfer fetched = pool.fetch(std::span<const SharedCell>(out), second, bytes, b);
    fetched.wait();
    EXPECT_FALSE(stored.ready()) << to_string(route)
                                 << ": the fetch on b waited for stream a (8 MiB take well under 500 ms)";
    stored.wait();
    EXPECT_TRUE(stored.ready());
    for (const SharedCell& c : in) EXPECT_TRUE(all_bytes(c.bytes(), 0x11)) << "the store ran before the memset";
    std::vector<std::byte> back(n * bytes);
    ASSERT_EQ(cudaMemcpy(back.data(), reinterpret_cast<void*>(second[0]), n * bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_TRUE(all_bytes(back, 0x22));
    // Store and fetch of the same data at once, on the legacy default stream and on b.
    gpu::Transfer s2 = pool.store(second, bytes, std::span<const SharedCell>(in));
    gpu::Transfer f2 = pool.fetch(std::span<const SharedCell>(out), first, bytes, b);
    s2.wait();
    f2.wait();
    for (const SharedCell& c : in) EXPECT_TRUE(all_bytes(c.bytes(), 0x22));
    ASSERT_EQ(cudaMemcpy(back.data(), area.p, n * bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_TRUE(all_bytes(back, 0x22));
  }
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
}

// Calls in flight keep their block lists: 64 calls without waiting between.
TEST(OffloadGpu, ManyCallsInFlightAtOnceEachMoveTheirOwnBlocks) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 16 * KiB, calls = 64, per_call = 8, n = calls * per_call;
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    gpu::OffloadOptions o;
    o.route = route;
    OffloadPool pool = OffloadPool::create(bytes, n, 0, o);
    DeviceArea area(n * bytes);
    std::vector<std::byte> all(n * bytes);
    for (std::size_t i = 0; i < n; ++i) {
      const std::vector<std::byte> d = block_data(7000 + i, bytes);
      std::memcpy(all.data() + i * bytes, d.data(), bytes);
    }
    ASSERT_EQ(cudaMemcpy(area.p, all.data(), n * bytes, cudaMemcpyHostToDevice), cudaSuccess);
    std::vector<std::uint32_t> cells(n);
    std::iota(cells.begin(), cells.end(), 0u);
    std::mt19937_64 rng(99);
    std::shuffle(cells.begin(), cells.end(), rng);  // block i -> cell cells[i]
    std::vector<std::uintptr_t> blocks(n);
    for (std::size_t i = 0; i < n; ++i) blocks[i] = area.at(i * bytes);
    std::vector<gpu::Transfer> transfers;
    for (std::size_t c = 0; c < calls; ++c) {
      transfers.push_back(pool.store({blocks.data() + c * per_call, per_call}, bytes,
                                     std::span<const std::uint32_t>(cells.data() + c * per_call, per_call)));
    }
    for (const gpu::Transfer& t : transfers) t.wait();
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i)
      bad += differing_bytes(pool.cell(cells[i]).data(), all.data() + i * bytes, bytes);
    EXPECT_EQ(bad, 0u) << to_string(route) << ": stores";
    ASSERT_EQ(cudaMemset(area.p, 0, n * bytes), cudaSuccess);
    transfers.clear();
    for (std::size_t c = 0; c < calls; ++c) {
      transfers.push_back(pool.fetch(std::span<const std::uint32_t>(cells.data() + c * per_call, per_call),
                                     {blocks.data() + c * per_call, per_call}, bytes));
    }
    for (const gpu::Transfer& t : transfers) t.wait();
    std::vector<std::byte> back(n * bytes);
    ASSERT_EQ(cudaMemcpy(back.data(), area.p, n * bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(differing_bytes(back.data(), all.data(), n * bytes), 0u) << to_string(route) << ": fetches";
  }
}

// Device ranges that are not inside one allocation of the pool's device are
// refused before anything moves, also when only one block of many is wrong.
TEST(OffloadGpu, RefusesDeviceRangesOutsideOneAllocationAndMovesNothing) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 64 * KiB;
  OffloadPool pool = OffloadPool::create(bytes, 8, 0);
  DeviceArea area(MiB);
  ASSERT_EQ(cudaMemset(area.p, 0x55, MiB), cudaSuccess);
  std::vector<SharedCell> cells(4);
  ASSERT_EQ(pool.take(cells), TakeStatus::ok);
  for (SharedCell& c : cells) std::memset(c.data(), 0x77, bytes);
  std::vector<std::byte> pageable(bytes + 64);
  std::unique_ptr<DeviceArea> elsewhere;  // before `freed`: its address cannot be freed's
  if (cuda_devices() > 1) elsewhere = std::make_unique<DeviceArea>(MiB, 1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  void* freed = nullptr;
  ASSERT_EQ(cudaMalloc(&freed, MiB), cudaSuccess);
  ASSERT_EQ(cudaFree(freed), cudaSuccess);
  struct Case {
    const char* what;
    std::uintptr_t bad;
    std::vector<const char*> says;  // one of these reasons
  };
  std::vector<Case> cases = {
      {"past the end", area.at(MiB - bytes / 2), {"runs past the end of its device allocation"}},
      {"host memory (a registered cell)",
       reinterpret_cast<std::uintptr_t>(pool.cell(7).data()),
       {"is host memory, not device memory"}},
      // Unknown to CUDA, or (with HMM) host memory: refused either way.
      {"pageable memory",
       (reinterpret_cast<std::uintptr_t>(pageable.data()) + 15) / 16 * 16,
       {"is not memory CUDA allocated", "is host memory, not device memory"}},
      {"freed device memory",
       reinterpret_cast<std::uintptr_t>(freed),
       {"is not memory CUDA allocated", "is not mapped"}},
  };
  if (elsewhere) cases.push_back({"another device's memory", elsewhere->at(0), {"is memory of device 1"}});
  for (const Case& c : cases) {
    // Blocks 0-2 are fine; block 3 is not.
    const std::uintptr_t blocks[] = {area.at(0), area.at(bytes), area.at(2 * bytes), c.bad};
    const Thrown thrown = thrown_by([&] { (void)pool.store(blocks, bytes, std::span<const SharedCell>(cells)); });
    const Errc e = thrown.code;
    const std::string& message = thrown.message;
    EXPECT_EQ(e, Errc::invalid_argument) << c.what << ": " << message;
    EXPECT_TRUE(std::any_of(c.says.begin(), c.says.end(),
                            [&](const char* why) { return message.find(why) != std::string::npos; }))
        << c.what << ": " << message;
    EXPECT_NE(message.find("device block 3"), std::string::npos) << message;
    EXPECT_EQ(error_of([&] { (void)pool.fetch(std::span<const SharedCell>(cells), blocks, bytes); }),
              Errc::invalid_argument)
        << c.what;
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (const SharedCell& c : cells) EXPECT_TRUE(all_bytes(c.bytes(), 0x77)) << "a refused store moved a block";
  std::vector<std::byte> back(MiB);
  ASSERT_EQ(cudaMemcpy(back.data(), area.p, MiB, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(all_bytes(back, 0x55)) << "a refused fetch moved a block";
  if (cuda_devices() > 1) {  // a stream of another device's context
    cudaStream_t other = nullptr;
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
    ASSERT_EQ(cudaStreamCreate(&other), cudaSuccess);
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    const std::uintptr_t one[] = {area.at(0)};
    EXPECT_EQ(error_of([&] { (void)pool.store(one, bytes, std::span<const SharedCell>(cells.data(), 1), other); }),
              Errc::invalid_argument);
    cudaStreamDestroy(other);
  }
}

// nullptr is the legacy default stream (PyTorch's stream 0), as in CUDA:
// a store with nullptr sees what work enqueued before it there wrote, and
// work enqueued there after a fetch sees what the fetch wrote, without
// waiting on the Transfer; on both routes (the copies route bridges through
// a stream of the pool's), and likewise for cudaStreamLegacy and
// cudaStreamPerThread.
TEST(OffloadGpu, TheDefaultStreamsOrderMovesAsCudaDoes) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 64 * KiB, n = 16;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    gpu::OffloadOptions o;
    o.route = route;
    OffloadPool pool = OffloadPool::create(bytes, n, 0, o);
    DeviceArea area(n * bytes);
    ASSERT_NE(area.p, nullptr);
    std::vector<SharedCell> cells(n);
    ASSERT_EQ(pool.take(cells), TakeStatus::ok);
    std::vector<std::uintptr_t> blocks(n);
    for (std::size_t i = 0; i < n; ++i) blocks[i] = area.at(i * bytes);
    std::uint8_t value = 0x40;
    for (cudaStream_t stream : {cudaStream_t{nullptr}, cudaStreamLegacy, cudaStreamPerThread}) {
      SCOPED_TRACE(std::string(to_string(route)) + ", stream handle " +
                   std::to_string(reinterpret_cast<std::uintptr_t>(stream)));
      ++value;
      for (SharedCell& c : cells) std::memset(c.data(), 0, bytes);
      // Held back 200 ms, then the device blocks are written, then the store.
      ASSERT_EQ(offload_test::delay_stream(stream, 200), "");
      ASSERT_EQ(cudaMemsetAsync(area.p, value, n * bytes, stream), cudaSuccess);
      gpu::Transfer stored = pool.store(blocks, bytes, std::span<const SharedCell>(cells), stream);
      EXPECT_FALSE(stored.ready()) << "the store waits for the default stream's work";
      stored.wait();
      for (const SharedCell& c : cells) EXPECT_TRUE(all_bytes(c.bytes(), value)) << "the store ran before the memset";
      // A fetch, then a copy back on the same default stream, not waiting on the Transfer.
      for (SharedCell& c : cells) std::memset(c.data(), value + 0x20, bytes);
      ASSERT_EQ(offload_test::delay_stream(stream, 200), "");
      gpu::Transfer fetched = pool.fetch(std::span<const SharedCell>(cells), blocks, bytes, stream);
      std::vector<std::byte> back(n * bytes);
      ASSERT_EQ(cudaMemcpyAsync(back.data(), area.p, n * bytes, cudaMemcpyDeviceToHost, stream), cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      EXPECT_TRUE(fetched.ready()) << "the stream's later work ran after the fetch";
      EXPECT_TRUE(all_bytes(back, static_cast<std::uint8_t>(value + 0x20))) << "work after the fetch ran before it";
    }
  }
}

// A stream capturing a CUDA graph is refused before anything is enqueued
// (a graph would replay this call's block list and cells; copies cannot be
// captured): a capturing stream of the caller's, and the legacy default
// stream while a blocking stream captures. The captures end cleanly (the
// refusal did not invalidate them), and the stream moves blocks afterwards.
TEST(OffloadGpu, AStreamCapturingAGraphIsRefusedAndTheCaptureEndsCleanly) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 64 * KiB, n = 4;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  DeviceArea area(n * bytes);
  ASSERT_EQ(cudaMemset(area.p, 0x61, n * bytes), cudaSuccess);
  std::vector<std::uintptr_t> blocks(n);
  for (std::size_t i = 0; i < n; ++i) blocks[i] = area.at(i * bytes);
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    for (const bool legacy : {false, true}) {
      SCOPED_TRACE(std::string(to_string(route)) + (legacy ? ", the legacy stream" : ", a capturing stream"));
      gpu::OffloadOptions o;
      o.route = route;
      OffloadPool pool = OffloadPool::create(bytes, n, 0, o);
      std::vector<SharedCell> cells(n);
      ASSERT_EQ(pool.take(cells), TakeStatus::ok);
      for (SharedCell& c : cells) std::memset(c.data(), 0x77, bytes);
      cudaStream_t capturing = nullptr;  // blocking: the legacy stream is then unusable
      ASSERT_EQ(cudaStreamCreateWithFlags(&capturing, legacy ? cudaStreamDefault : cudaStreamNonBlocking), cudaSuccess);
      ASSERT_EQ(cudaStreamBeginCapture(capturing, cudaStreamCaptureModeRelaxed), cudaSuccess);
      cudaStream_t given = legacy ? nullptr : capturing;
      const Thrown store =
          thrown_by([&] { (void)pool.store(blocks, bytes, std::span<const SharedCell>(cells), given); });
      EXPECT_EQ(store.code, Errc::invalid_argument) << store.message;
      EXPECT_NE(store.message.find("is capturing a CUDA graph"), std::string::npos) << store.message;
      const Thrown fetch =
          thrown_by([&] { (void)pool.fetch(std::span<const SharedCell>(cells), blocks, bytes, given); });
      EXPECT_EQ(fetch.code, Errc::invalid_argument) << fetch.message;
      EXPECT_NE(fetch.message.find("is capturing a CUDA graph"), std::string::npos) << fetch.message;
      const Thrown none = thrown_by([&] { (void)pool.store({}, bytes, std::span<const SharedCell>(), given); });
      EXPECT_EQ(none.code, Errc::invalid_argument) << "checked also when no blocks are named: " << none.message;
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      EXPECT_EQ(cudaStreamIsCapturing(capturing, &status), cudaSuccess);
      EXPECT_EQ(status, cudaStreamCaptureStatusActive) << "the refusal invalidated the capture";
      cudaGraph_t graph = nullptr;
      EXPECT_EQ(cudaStreamEndCapture(capturing, &graph), cudaSuccess);
      EXPECT_NE(graph, nullptr);
      std::size_t nodes = 99;
      if (graph != nullptr) {
        EXPECT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
        EXPECT_EQ(nodes, 0u) << "nothing was captured";
        cudaGraphDestroy(graph);
      }
      for (const SharedCell& c : cells) EXPECT_TRUE(all_bytes(c.bytes(), 0x77)) << "a refused store moved a block";
      // Not capturing any more: the same stream moves blocks.
      pool.store(blocks, bytes, std::span<const SharedCell>(cells), given).wait();
      for (const SharedCell& c : cells) EXPECT_TRUE(all_bytes(c.bytes(), 0x61));
      EXPECT_EQ(cudaStreamDestroy(capturing), cudaSuccess);
      EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    }
  }
}

// PyTorch captures CUDA graphs in the global mode: while another thread
// captures so, the driver refuses this thread's event queries, waits and
// host registrations in the (default) global mode, and the refusal ends that
// thread's capture. Moves on a stream that is not capturing, their
// Transfers' ready() and wait(), and a new slab (the kernel route's first
// move) work meanwhile, byte-exact, and the other thread's capture stays
// whole.
TEST(OffloadGpu, MovesAndTheirTransfersWorkWhileAnotherThreadCapturesInGlobalMode) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 64 * KiB, n = 8;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    SCOPED_TRACE(to_string(route));
    gpu::OffloadOptions o;
    o.route = route;
    OffloadPool pool = OffloadPool::create(bytes, n, 0, o);
    std::vector<SharedCell> cells(n);
    ASSERT_EQ(pool.take(cells), TakeStatus::ok);
    DeviceArea area(2 * n * bytes);
    std::vector<std::byte> data(n * bytes);
    for (std::size_t i = 0; i < n; ++i) {
      const std::vector<std::byte> d = block_data(31000 + i, bytes);
      std::memcpy(data.data() + i * bytes, d.data(), bytes);
    }
    ASSERT_EQ(cudaMemcpy(area.p, data.data(), data.size(), cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemset(static_cast<std::byte*>(area.p) + n * bytes, 0, n * bytes), cudaSuccess);
    std::vector<std::uintptr_t> from(n), to(n);
    for (std::size_t i = 0; i < n; ++i) {
      from[i] = area.at(i * bytes);
      to[i] = area.at((n + i) * bytes);
    }
    cudaStream_t mine = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&mine, cudaStreamNonBlocking), cudaSuccess);
    std::mutex lock;
    std::condition_variable changed;
    int stage = 0;  // 1: the other thread captures; 2: this one is done
    std::string other;
    std::thread capturer([&] {
      cudaStream_t s = nullptr;
      if (cudaSetDevice(0) != cudaSuccess || cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess ||
          cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) != cudaSuccess) {
        other = "could not begin the capture";
      }
      {
        std::lock_guard hold(lock);
        stage = 1;
      }
      changed.notify_all();
      std::unique_lock wait_for(lock);
      changed.wait(wait_for, [&] { return stage == 2; });
      wait_for.unlock();
      if (!other.empty()) return;
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(s, &status) != cudaSuccess || status != cudaStreamCaptureStatusActive) {
        other = "the capture was invalidated while the other thread moved blocks";
      }
      cudaGraph_t graph = nullptr;
      if (cudaStreamEndCapture(s, &graph) != cudaSuccess || graph == nullptr) {
        if (other.empty()) other = "the capture did not end cleanly";
      }
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaStreamDestroy(s);
    });
    {
      std::unique_lock wait_for(lock);
      changed.wait(wait_for, [&] { return stage == 1; });
    }
    std::string mine_failed;
    try {
      gpu::Transfer stored = pool.store(from, bytes, std::span<const SharedCell>(cells), mine);
      while (!stored.ready()) std::this_thread::yield();
      stored.wait();
      gpu::Transfer fetched = pool.fetch(std::span<const SharedCell>(cells), to, bytes, mine);
      fetched.wait();
      if (!fetched.ready()) mine_failed = "ready() is false after wait()";
    } catch (const std::exception& e) {
      mine_failed = e.what();
    }
    {
      std::lock_guard hold(lock);
      stage = 2;
    }
    changed.notify_all();
    capturer.join();
    EXPECT_EQ(mine_failed, "");
    EXPECT_EQ(other, "");
    for (std::size_t i = 0; i < n; ++i) {
      EXPECT_EQ(differing_bytes(cells[i].data(), data.data() + i * bytes, bytes), 0u) << "stored block " << i;
    }
    std::vector<std::byte> back(n * bytes);
    ASSERT_EQ(cudaMemcpy(back.data(), reinterpret_cast<void*>(to[0]), back.size(), cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_EQ(differing_bytes(back.data(), data.data(), back.size()), 0u) << "fetched blocks";
    EXPECT_EQ(cudaStreamDestroy(mine), cudaSuccess);
  }
}

// A fork() child of a process that used CUDA must not call CUDA: there, a
// device pool's store refuses, a Transfer copied from the parent refuses
// ready() and wait() (Error(invalid_argument), before any CUDA call), and
// destroying the pool (its flights, slabs and registered Block) returns.
// The parent's pool works on afterwards.
TEST(OffloadGpu, AForkChildRefusesMovesAndTransfersAndLetsThePoolGo) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 64 * KiB, n = 4;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    SCOPED_TRACE(to_string(route));
    gpu::OffloadOptions o;
    o.route = route;
    std::optional<OffloadPool> pool(OffloadPool::create(bytes, n, 0, o));
    std::vector<SharedCell> cells(n);
    ASSERT_EQ(pool->take(cells), TakeStatus::ok);
    DeviceArea area(n * bytes);
    ASSERT_EQ(cudaMemset(area.p, 0x19, n * bytes), cudaSuccess);
    std::vector<std::uintptr_t> blocks(n);
    for (std::size_t i = 0; i < n; ++i) blocks[i] = area.at(i * bytes);
    const gpu::Transfer moved = pool->store(blocks, bytes, std::span<const SharedCell>(cells));
    moved.wait();
    const int code = testing::in_child([&] {
      const Thrown store = thrown_by([&] { (void)pool->store(blocks, bytes, std::span<const SharedCell>(cells)); });
      if (store.code != Errc::invalid_argument || store.message.find("fork() child") == std::string::npos) return 2;
      const gpu::Transfer copy = moved;  // NOLINT(performance-unnecessary-copy-initialization): the copy is the case
      const Thrown ready = thrown_by([&] { (void)copy.ready(); });
      if (ready.code != Errc::invalid_argument || ready.message.find("fork() child") == std::string::npos) return 3;
      const Thrown wait = thrown_by([&] { copy.wait(); });
      if (wait.code != Errc::invalid_argument || wait.message.find("fork() child") == std::string::npos) return 4;
      pool.reset();  // the pool goes here (its cells stay the parent's): no CUDA call, no hang
      return 0;
    });
    EXPECT_EQ(code, 0) << "2: store did not refuse, 3: ready() did not, 4: wait() did not, 98: something threw "
                          "another error (a CUDA call in the child)";
    EXPECT_TRUE(moved.ready());
    for (const SharedCell& c : cells) EXPECT_TRUE(all_bytes(c.bytes(), 0x19));
    pool->fetch(std::span<const SharedCell>(cells), blocks, bytes).wait();  // the parent's pool works on
  }
}

// fork() while other threads store and fetch: the child's copies of the
// pool's locks may be held by a thread that does not exist there. Destroying
// the pool in the child must neither take them (it hung there) nor call
// CUDA; every child must exit within its alarm, 20 forks per route.
TEST(OffloadGpu, AForkWhileThreadsMoveBlocksLeavesAChildThatLetsThePoolGo) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 64 * KiB, n = 8;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    SCOPED_TRACE(to_string(route));
    gpu::OffloadOptions o;
    o.route = route;
    std::optional<OffloadPool> pool(OffloadPool::create(bytes, 2 * n, 0, o));
    DeviceArea area(2 * n * bytes);
    ASSERT_NE(area.p, nullptr);
    std::atomic<bool> stop{false};
    std::atomic<std::size_t> moves{0};
    std::vector<std::thread> movers;
    for (std::size_t t = 0; t < 2; ++t) {
      movers.emplace_back([&, t] {
        std::vector<std::uint32_t> cells(n);
        std::vector<std::uintptr_t> blocks(n);
        for (std::size_t i = 0; i < n; ++i) {
          cells[i] = static_cast<std::uint32_t>(t * n + i);
          blocks[i] = area.at((t * n + i) * bytes);
        }
        while (!stop.load()) {
          pool->store(blocks, bytes, std::span<const std::uint32_t>(cells)).wait();
          pool->fetch(std::span<const std::uint32_t>(cells), blocks, bytes).wait();
          moves.fetch_add(1);
        }
      });
    }
    int hung = 0, failed = 0;
    for (int fork_round = 0; fork_round < 20; ++fork_round) {
      const int code = testing::exit_code_within(10, [&] {
        pool.reset();  // the child's copy of the pool goes: no lock taken, no CUDA call
        return 0;
      });
      if (code == 128 + SIGALRM) ++hung;
      if (code != 0) ++failed;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    stop = true;
    for (std::thread& t : movers) t.join();
    EXPECT_EQ(hung, 0) << "children hung destroying the pool";
    EXPECT_EQ(failed, 0) << "children failed (a CUDA call, or an error) destroying the pool";
    EXPECT_GT(moves.load(), 0u) << "the threads moved nothing while the process forked";
    std::printf("%s: 20 forks amid %zu store+fetch rounds\n", to_string(route), moves.load());
  }
}

// More blocks in one call than one cuMemcpyBatchAsync takes (8192: the
// copies route cuts the batch) and than one thread block's share of pairs
// (the kernel loads them 256 at a time): byte-exact both ways.
TEST(OffloadGpu, ABatchLargerThanOneDriverCallMovesEveryBlock) {
  UNIMEM_REQUIRE_GPU();
  round_trip(OffloadRoute::copies, 4096, 8192 + 300, 41, true);
  round_trip(OffloadRoute::kernel, 4096, 8192 + 300, 42, false);
}

// The header's promise: store and fetch from many threads at once on one
// pool, each thread its own cells, device blocks and stream (two use the
// legacy default stream, two the per-thread one), on both routes. Every
// round moves other data (its device blocks are rewritten first), and every
// round's store and fetch are checked, so a block moved by another call, or
// by an earlier round, shows.
TEST(OffloadGpu, ManyThreadsStoreAndFetchOnOnePoolAtOnce) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 64 * KiB, threads = 8, per_thread = 24, rounds = 10;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    gpu::OffloadOptions o;
    o.route = route;
    OffloadPool pool = OffloadPool::create(bytes, threads * per_thread, 0, o);
    const std::size_t half = threads * per_thread * bytes;
    DeviceArea area(2 * half);
    ASSERT_NE(area.p, nullptr);
    ASSERT_EQ(cudaMemset(area.p, 0, 2 * half), cudaSuccess);
    std::vector<std::string> failures(threads);
    std::vector<std::thread> workers;
    for (std::size_t t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        try {
          if (cudaSetDevice(0) != cudaSuccess) throw std::runtime_error("cudaSetDevice");
          cudaStream_t stream = nullptr;  // threads 0 and 1: the legacy default stream
          if (t == 2 || t == 3) stream = cudaStreamPerThread;
          if (t >= 4 && cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
            throw std::runtime_error("cudaStreamCreate");
          }
          std::vector<SharedCell> cells(per_thread);
          if (pool.take(cells) != TakeStatus::ok) throw std::runtime_error("take");
          std::vector<std::uintptr_t> from(per_thread), to(per_thread);
          for (std::size_t i = 0; i < per_thread; ++i) {
            from[i] = area.at((t * per_thread + i) * bytes);
            to[i] = area.at(half + (t * per_thread + i) * bytes);
          }
          std::vector<std::byte> data(per_thread * bytes), back(per_thread * bytes);
          for (std::size_t r = 0; r < rounds; ++r) {
            for (std::size_t i = 0; i < per_thread; ++i) {
              const std::vector<std::byte> d = block_data(100000 * (r + 1) + t * per_thread + i, bytes);
              std::memcpy(data.data() + i * bytes, d.data(), bytes);
            }
            if (cudaMemcpyAsync(reinterpret_cast<void*>(from[0]), data.data(), data.size(), cudaMemcpyHostToDevice,
                                stream) != cudaSuccess) {
              throw std::runtime_error("cudaMemcpyAsync");
            }
            pool.store(from, bytes, std::span<const SharedCell>(cells), stream).wait();
            for (std::size_t i = 0; i < per_thread; ++i) {
              if (std::memcmp(cells[i].data(), data.data() + i * bytes, bytes) != 0) {
                throw std::runtime_error("round " + std::to_string(r) + ": stored block " + std::to_string(i) +
                                         " differs");
              }
            }
            pool.fetch(std::span<const SharedCell>(cells), to, bytes, stream).wait();
            if (cudaMemcpyAsync(back.data(), reinterpret_cast<void*>(to[0]), back.size(), cudaMemcpyDeviceToHost,
                                stream) != cudaSuccess ||
                cudaStreamSynchronize(stream) != cudaSuccess) {
              throw std::runtime_error("cudaMemcpyAsync back");
            }
            if (back != data) throw std::runtime_error("round " + std::to_string(r) + ": a fetched block differs");
            for (SharedCell& c : cells) std::memset(c.data(), 0, bytes);  // the next store must rewrite them
          }
          if (t >= 4) cudaStreamDestroy(stream);
        } catch (const std::exception& e) {
          failures[t] = e.what();
        }
      });
    }
    for (std::thread& w : workers) w.join();
    for (std::size_t t = 0; t < threads; ++t) EXPECT_EQ(failures[t], "") << to_string(route) << ", thread " << t;
  }
}

// The driver API's virtual memory management calls, for the test below
// (looked up through the runtime: this binary does not link libcuda).
struct Vmm {
  decltype(&::cuMemGetAllocationGranularity) granularity = nullptr;
  decltype(&::cuMemAddressReserve) reserve = nullptr;
  decltype(&::cuMemAddressFree) free = nullptr;
  decltype(&::cuMemCreate) create = nullptr;
  decltype(&::cuMemRelease) release = nullptr;
  decltype(&::cuMemMap) map = nullptr;
  decltype(&::cuMemUnmap) unmap = nullptr;
  decltype(&::cuMemSetAccess) set_access = nullptr;
  bool load() {
    auto get = [](const char* name, auto& slot) {
      void* p = nullptr;
      cudaDriverEntryPointQueryResult found{};
      if (cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found) != cudaSuccess ||
          found != cudaDriverEntryPointSuccess) {
        return false;
      }
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(p);
      return true;
    };
    return get("cuMemGetAllocationGranularity", granularity) && get("cuMemAddressReserve", reserve) &&
           get("cuMemAddressFree", free) && get("cuMemCreate", create) && get("cuMemRelease", release) &&
           get("cuMemMap", map) && get("cuMemUnmap", unmap) && get("cuMemSetAccess", set_access);
  }
};

// Memory mapped with cuMemMap (PyTorch's expandable segments, vLLM's cuMem
// allocator): one reserved range of 6 granules with granules 0, 2 and 3
// mapped (2 and 3 by separate allocations) and granule 1 a hole; granule 4
// mapped without access for the device (no cuMemSetAccess), granule 5 mapped
// read-only for it. Blocks inside a mapping move; blocks in the hole, running
// into it, straddling two mappings, or in granule 4 are refused before
// anything moves; granule 5 is stored from but refused as a fetch target.
TEST(OffloadGpu, RefusesBlocksInUnmappedPartsOfAReservedRange) {
  UNIMEM_REQUIRE_GPU();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaFree(nullptr), cudaSuccess);  // the primary context, current
  Vmm vmm;
  if (!vmm.load()) GTEST_SKIP() << "skipped: the driver lacks the virtual memory management API";
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  std::size_t g = 0;
  ASSERT_EQ(vmm.granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
  ASSERT_GE(g, 256 * KiB);
  CUdeviceptr base = 0;
  ASSERT_EQ(vmm.reserve(&base, 6 * g, 0, 0, 0), CUDA_SUCCESS);
  constexpr int kMappings = 5;
  CUmemGenericAllocationHandle handles[kMappings] = {};
  const std::size_t mapped_at[kMappings] = {0, 2 * g, 3 * g, 4 * g, 5 * g};
  for (int k = 0; k < kMappings; ++k) {
    ASSERT_EQ(vmm.create(&handles[k], g, &prop, 0), CUDA_SUCCESS);
    ASSERT_EQ(vmm.map(base + mapped_at[k], g, 0, handles[k], 0), CUDA_SUCCESS);
    if (k == 3) continue;  // granule 4: no access for the device
    CUmemAccessDesc access{};
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    ASSERT_EQ(vmm.set_access(base + mapped_at[k], g, &access, 1), CUDA_SUCCESS);
    ASSERT_EQ(cudaMemset(reinterpret_cast<void*>(base + mapped_at[k]), 0x30 + k, g), cudaSuccess);
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  // Granule 5 (written 0x34 above) becomes read-only, where the driver allows it.
  CUmemAccessDesc read_only{};
  read_only.location = prop.location;
  read_only.flags = CU_MEM_ACCESS_FLAGS_PROT_READ;
  const bool have_read_only = vmm.set_access(base + 5 * g, g, &read_only, 1) == CUDA_SUCCESS;
  if (!have_read_only) std::printf("note: the driver refused a read-only mapping; that case is left out\n");
  constexpr std::size_t bytes = 64 * KiB;
  for (OffloadRoute route : {OffloadRoute::kernel, OffloadRoute::copies}) {
    gpu::OffloadOptions o;
    o.route = route;
    OffloadPool pool = OffloadPool::create(bytes, 4, 0, o);
    std::vector<SharedCell> cells(3);
    ASSERT_EQ(pool.take(cells), TakeStatus::ok);
    // Inside a mapping: moved.
    const std::uintptr_t good[] = {base, base + g - bytes, base + 2 * g + 2 * bytes};
    pool.store(good, bytes, std::span<const SharedCell>(cells)).wait();
    EXPECT_TRUE(all_bytes(cells[0].bytes(), 0x30)) << to_string(route);
    EXPECT_TRUE(all_bytes(cells[1].bytes(), 0x30)) << to_string(route);
    EXPECT_TRUE(all_bytes(cells[2].bytes(), 0x31)) << to_string(route);
    for (SharedCell& c : cells) std::memset(c.data(), 0x77, bytes);
    struct Case {
      const char* what;
      std::uintptr_t at;
      std::vector<const char*> says;
    };
    const Case cases[] = {
        {"running from a mapping into the hole", base + g - bytes / 2, {"runs past the end"}},
        {"in the hole", base + g + bytes, {"is not mapped", "is not memory CUDA allocated", "runs past the end"}},
        {"running from the hole into a mapping",
         base + 2 * g - bytes / 2,
         {"is not mapped", "is not memory CUDA allocated", "runs past the end"}},
        {"straddling two mappings", base + 3 * g - bytes / 2, {"runs past the end"}},
        {"in a mapping without access for the device", base + 4 * g + bytes, {"is not accessible to device 0"}},
    };
    for (const Case& c : cases) {
      const std::uintptr_t blocks[] = {good[0], good[1], c.at};
      const Thrown thrown = thrown_by([&] { (void)pool.store(blocks, bytes, std::span<const SharedCell>(cells)); });
      const Errc e = thrown.code;
      const std::string& message = thrown.message;
      EXPECT_EQ(e, Errc::invalid_argument) << to_string(route) << ", " << c.what << ": " << message;
      EXPECT_NE(message.find("device block 2"), std::string::npos) << message;
      EXPECT_TRUE(std::any_of(c.says.begin(), c.says.end(),
                              [&](const char* why) { return message.find(why) != std::string::npos; }))
          << to_string(route) << ", " << c.what << ": " << message;
      EXPECT_EQ(error_of([&] { (void)pool.fetch(std::span<const SharedCell>(cells), blocks, bytes); }),
                Errc::invalid_argument)
          << to_string(route) << ", " << c.what;
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << "a refused block faulted";
    for (const SharedCell& c : cells) EXPECT_TRUE(all_bytes(c.bytes(), 0x77)) << "a refused store moved a block";
    if (have_read_only) {
      // Read-only for the device: a store reads it (moved); a fetch would write it (refused).
      const std::uintptr_t readable[] = {good[0], good[1], base + 5 * g + bytes};
      pool.store(readable, bytes, std::span<const SharedCell>(cells)).wait();
      EXPECT_TRUE(all_bytes(cells[2].bytes(), 0x34)) << to_string(route) << ": a store from read-only memory";
      const Thrown fetch = thrown_by([&] { (void)pool.fetch(std::span<const SharedCell>(cells), readable, bytes); });
      EXPECT_EQ(fetch.code, Errc::invalid_argument) << to_string(route) << ": " << fetch.message;
      EXPECT_NE(fetch.message.find("is read-only for device 0"), std::string::npos) << fetch.message;
      EXPECT_NE(fetch.message.find("device block 2"), std::string::npos) << fetch.message;
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << "a refused fetch faulted";
    }
  }
  for (int k = 0; k < kMappings; ++k) {
    EXPECT_EQ(vmm.unmap(base + mapped_at[k], g), CUDA_SUCCESS);
    EXPECT_EQ(vmm.release(handles[k]), CUDA_SUCCESS);
  }
  EXPECT_EQ(vmm.free(base, 6 * g), CUDA_SUCCESS);
}

// Starts this binary again with UNIMEM_OFFLOAD_CHILD=what (a process that
// forked after using CUDA may not use it: exec starts afresh); returns its
// exit code, or 128 + the signal that ended it.
int run_child(const std::string& what) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("UNIMEM_OFFLOAD_CHILD", what.c_str(), 1);
    ::execl("/proc/self/exe", "unimem_offload_gpu_test", static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(OffloadGpu, AFailedStreamIsReportedByWaitAndTheCellsStayReturnable) {
  UNIMEM_REQUIRE_GPU();
  for (const char* route : {"kernel", "copies"}) {
    EXPECT_EQ(run_child(std::string("fault ") + route), 0)
        << route << " (9: the child threw, e.g. at setup or the first store): 2: setup, 3: ready() before the "
        << "failure, 4: wait() did not throw Error(cuda), 5: ready() after it did not, 6: a cell could not be "
        << "given back, 7: a later store neither threw Error(cuda) nor returned a Transfer whose wait() did";
  }
}

// This process stores blocks A; a child attaches (on the last GPU), fetches
// A by index and checks them, stores blocks B into cells this process took
// for it (by index), and stores and gives back cells of its own; this
// process checks B on the CPU and by fetching them to its GPU.
TEST(OffloadGpu, AnotherProcessFetchesWhatThisOneStoredAndStoresWhatItChecks) {
  UNIMEM_REQUIRE_GPU();
  constexpr std::size_t bytes = 512 * KiB, n = 12;
  OffloadPool pool = OffloadPool::create(bytes, 3 * n, 0);
  std::vector<SharedCell> a(n), b(n);
  ASSERT_EQ(pool.take(a), TakeStatus::ok);
  ASSERT_EQ(pool.take(b), TakeStatus::ok);
  for (SharedCell& c : b) std::memset(c.data(), 0xa5, bytes);
  DeviceArea area(n * bytes);
  std::vector<std::uintptr_t> blocks(n);
  for (std::size_t k = 0; k < n; ++k) {
    blocks[k] = area.at(k * bytes);
    const std::vector<std::byte> d = block_data(1000 + k, bytes);
    ASSERT_EQ(cudaMemcpy(reinterpret_cast<void*>(blocks[k]), d.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  }
  pool.store(blocks, bytes, std::span<const SharedCell>(a)).wait();
  std::ostringstream args;
  args << "peer " << pool.host_block().id().to_string() << " " << n;
  for (const SharedCell& c : a) args << " " << c.index();
  for (const SharedCell& c : b) args << " " << c.index();
  ASSERT_EQ(run_child(args.str()), 0) << "2: attach, 3: fetched A differs, 4: a take failed, 5: a give failed";
  for (std::size_t k = 0; k < n; ++k) {
    const std::vector<std::byte> d = block_data(2000 + k, bytes);
    EXPECT_EQ(differing_bytes(b[k].data(), d.data(), bytes), 0u) << "cell B" << k << " on the CPU";
  }
  ASSERT_EQ(cudaMemset(area.p, 0, n * bytes), cudaSuccess);
  pool.fetch(std::span<const SharedCell>(b), blocks, bytes).wait();
  std::vector<std::byte> back(n * bytes);
  ASSERT_EQ(cudaMemcpy(back.data(), area.p, n * bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  for (std::size_t k = 0; k < n; ++k) {
    const std::vector<std::byte> d = block_data(2000 + k, bytes);
    EXPECT_EQ(differing_bytes(back.data() + k * bytes, d.data(), bytes), 0u) << "block B" << k << " fetched here";
  }
  std::vector<SharedCell> rest(n);
  EXPECT_EQ(pool.take(rest), TakeStatus::ok) << "the child gave its own cells back";
}

}  // namespace

// ---- the child processes ---------------------------------------------------------

int fault_child(const std::string& route) {
  constexpr std::size_t bytes = 64 * KiB;
  gpu::OffloadOptions o;
  o.route = route == "copies" ? OffloadRoute::copies : OffloadRoute::kernel;
  OffloadPool pool = OffloadPool::create(bytes, 8, 0, o);  // loads the kernel now, before any failure
  DeviceArea area(8 * bytes);
  cudaStream_t s = nullptr;
  if (area.p == nullptr || cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) return 2;
  std::vector<SharedCell> cells(4);
  if (pool.take(cells) != TakeStatus::ok) return 2;
  const std::uintptr_t blocks[] = {area.at(0), area.at(bytes), area.at(2 * bytes), area.at(3 * bytes)};
  if (!offload_test::fail_stream_later(s, 300).empty()) return 2;
  gpu::Transfer t = pool.store(blocks, bytes, std::span<const SharedCell>(cells), s);  // accepted
  if (t.ready()) return 3;
  std::string message;
  try {
    t.wait();
  } catch (const Error& e) {
    message = e.what();
    if (e.code() != Errc::cuda) return 4;
  }
  if (message.empty()) return 4;
  std::printf("child: wait() threw: %s\n", message.c_str());
  if (error_of([&] { (void)t.ready(); }) != Errc::cuda) return 5;
  for (SharedCell& c : cells) {
    if (pool.give(std::move(c)) != GiveStatus::ok) return 6;
  }
  std::vector<SharedCell> again(2);
  if (pool.take(again) != TakeStatus::ok) return 6;
  // The context is lost: a later store throws Error(cuda) at once (nothing in
  // flight), or, where the driver still accepts it, its Transfer's wait() does.
  std::string later;
  bool at_once = false;
  const Errc e = error_of([&] {
    try {
      gpu::Transfer t2;
      try {
        t2 = pool.store({blocks, 2}, bytes, std::span<const SharedCell>(again), s);
      } catch (const Error&) {
        at_once = true;
        throw;
      }
      t2.wait();
    } catch (const Error& err) {
      later = err.what();
      throw;
    }
  });
  std::printf("child: a later store threw %s: %s\n", at_once ? "at once" : "from wait()", later.c_str());
  if (e != Errc::cuda) return 7;
  if (later.find("cuModuleLoadData") != std::string::npos) return 7;  // the kernel was loaded with the pool
  return 0;  // the pool goes: its destructor must not hang on the failed context
}

int peer_child(const std::string& args) {
  std::istringstream in(args);
  std::string word, id;
  std::size_t n = 0;
  in >> word >> id >> n;
  std::vector<std::uint32_t> a(n), b(n);
  for (auto& i : a) in >> i;
  for (auto& i : b) in >> i;
  const int device = cuda_devices() - 1;
  OffloadPool pool = OffloadPool::attach(BlockId::parse(id), device);
  const std::size_t bytes = pool.block_bytes();
  if (!pool.host_block().gpu_visible() || pool.blocks() != 3 * n) return 2;
  std::mt19937_64 rng(5);
  DeviceArea area(area_bytes(n, bytes), device);
  if (area.p == nullptr) return 2;
  const std::vector<std::size_t> where = placements(n, bytes, rng);
  std::vector<std::uintptr_t> blocks(n);
  for (std::size_t k = 0; k < n; ++k) blocks[k] = area.at(where[k]);
  pool.fetch(a, blocks, bytes).wait();
  std::vector<std::byte> got(bytes);
  for (std::size_t k = 0; k < n; ++k) {
    if (cudaMemcpy(got.data(), reinterpret_cast<void*>(blocks[k]), bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
      return 3;
    }
    if (got != block_data(1000 + k, bytes)) return 3;
  }
  for (std::size_t k = 0; k < n; ++k) {
    const std::vector<std::byte> d = block_data(2000 + k, bytes);
    if (cudaMemcpy(reinterpret_cast<void*>(blocks[k]), d.data(), bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
      return 3;
    }
  }
  pool.store(blocks, bytes, b).wait();
  std::vector<SharedCell> own(n);  // the last n cells
  if (pool.take(own) != TakeStatus::ok) return 4;
  pool.store(blocks, bytes, std::span<const SharedCell>(own)).wait();
  for (std::size_t k = 0; k < n; ++k) {
    if (std::memcmp(own[k].data(), block_data(2000 + k, bytes).data(), bytes) != 0) return 3;
  }
  for (SharedCell& c : own) {
    if (pool.give(std::move(c)) != GiveStatus::ok) return 5;
  }
  std::printf("child process: GPU %d fetched %zu blocks another process stored and stored %zu back\n", device, n,
              2 * n);
  return 0;
}

}  // namespace unimem

int main(int argc, char** argv) {
  if (const char* child = std::getenv("UNIMEM_OFFLOAD_CHILD")) {
    const std::string what = child;
    try {
      return what.rfind("fault ", 0) == 0 ? unimem::fault_child(what.substr(6)) : unimem::peer_child(what);
    } catch (const unimem::Error& e) {
      std::fprintf(stderr, "child process: %s\n", e.what());
      return 9;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
