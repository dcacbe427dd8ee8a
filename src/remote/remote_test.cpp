// Remote pools between two processes (this one and src/remote/remote_helper.cpp)
// over each transport, and in one process where a test needs both ends.
#include "unimem/remote.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "remote/descriptor.hpp"
#include "remote/remote_testing.hpp"
#include "testing.hpp"

namespace unimem::remote {
namespace {

using namespace std::chrono_literals;
using testing::fill;
using testing::holds;
using unimem::testing::error_of;
using unimem::testing::thrown_by;

constexpr std::size_t KiB = 1024;

// The helper binary: UNIMEM_REMOTE_HELPER where set (binaries copied to another machine), else the build's.
const char* helper_path() {
  const char* env = std::getenv("UNIMEM_REMOTE_HELPER");
  return env != nullptr ? env : UNIMEM_REMOTE_HELPER;
}

// The exporting process: started with the helper's arguments, talked to by lines.
class Peer {
 public:
  Peer(std::size_t cell_size, std::size_t cells, std::uint64_t seed, bool read_only = false) {
    int to[2], from[2];
    if (::pipe(to) != 0 || ::pipe(from) != 0) throw std::runtime_error("pipe");
    const std::string size = std::to_string(cell_size), count = std::to_string(cells), s = std::to_string(seed);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(to[0], 0);
      ::dup2(from[1], 1);
      ::close(to[1]);
      ::close(from[0]);
      ::execl(helper_path(), helper_path(), "export", size.c_str(), count.c_str(), s.c_str(),
              read_only ? "read-only" : nullptr, nullptr);
      std::_Exit(127);
    }
    ::close(to[0]);
    ::close(from[1]);
    in_ = ::fdopen(to[1], "w");
    out_ = ::fdopen(from[0], "r");
    const std::string line = read_line();
    if (line.rfind("descriptor ", 0) != 0) throw std::runtime_error("helper said: " + line);
    descriptor_ = testing::from_hex(line.substr(11));
  }
  ~Peer() {
    if (in_ != nullptr) std::fclose(in_);
    if (out_ != nullptr) std::fclose(out_);
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  const std::vector<std::byte>& descriptor() const { return descriptor_; }
  std::string ask(const std::string& command) {
    std::fprintf(in_, "%s\n", command.c_str());
    std::fflush(in_);
    return read_line();
  }
  void kill() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  std::string read_line() {
    char line[1 << 16];
    if (std::fgets(line, sizeof line, out_) == nullptr) return "(end of output)";
    std::string s(line);
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  pid_t pid_ = -1;
  FILE* in_ = nullptr;
  FILE* out_ = nullptr;
  std::vector<std::byte> descriptor_;
};

// Local cells: a SharedGrid of its own, every cell taken.
struct LocalCells {
  LocalCells(std::size_t cell_size, std::size_t count)
      : grid(SharedGrid::create(Block::open(SharedGrid::state_bytes(count) + cell_size * count), cell_size, count)) {
    for (std::size_t i = 0; i < count; ++i) cells.push_back(grid.take());
    std::sort(cells.begin(), cells.end(),
              [](const SharedCell& a, const SharedCell& b) { return a.index() < b.index(); });
  }
  SharedGrid grid;
  std::vector<SharedCell> cells;
};

// Each test runs over one route: UCX with UCX_TLS for this process and the
// helper, or the same-host route (the exporter's Block attached here). Over
// "sm" (shared memory: posix, sysv, cma) the RemotePool connects without
// peer failure detection, since UCX can detect failures only where it may
// also carry the bytes over tcp (RemoteOptions::detect_peer_failure); the
// same-host route detects them itself.
struct Transport {
  const char* name;
  const char* tls;
  bool detect_peer_failure;
  bool same_host;
};

class RemoteOver : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override { ::setenv("UCX_TLS", GetParam().tls, 1); }
  void TearDown() override { ::unsetenv("UCX_TLS"); }
  RemotePool connect(const std::vector<std::byte>& descriptor) const {
    RemoteOptions o;
    o.detect_peer_failure = GetParam().detect_peer_failure;
    o.same_host = GetParam().same_host;
    RemotePool far = RemotePool::connect(descriptor, o);
    EXPECT_EQ(far.route(), GetParam().same_host ? Route::same_host : Route::ucx);
    return far;
  }
};

std::string transport_name(const ::testing::TestParamInfo<Transport>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Transports, RemoteOver,
                         ::testing::Values(Transport{"tcp", "tcp", true, false}, Transport{"sm", "sm", false, false},
                                           Transport{"same_host", "tcp", true, true}),
                         transport_name);

TEST_P(RemoteOver, BytesAreExactBothWaysInRandomOrder) {
  std::mt19937 random(11);
  for (std::size_t cell_size : {4 * KiB, 64 * KiB, 256 * KiB, 2048 * KiB}) {
    const std::size_t count = std::max<std::size_t>(8, 16 * 1024 * KiB / cell_size / 4);
    SCOPED_TRACE(cell_size);
    Peer peer(cell_size, count, 5);
    RemotePool far = connect(peer.descriptor());
    ASSERT_EQ(far.cells(), count);
    ASSERT_EQ(far.cell_size(), cell_size);
    EXPECT_TRUE(far.has_generations());
    EXPECT_FALSE(far.read_only());
    LocalCells local(cell_size, count);
    std::vector<std::uint32_t> remote(count);
    std::iota(remote.begin(), remote.end(), 0u);
    std::shuffle(remote.begin(), remote.end(), random);
    // Local cell i gets remote cell remote[i].
    RemoteTransfer t = far.get(remote, local.cells);
    t.wait();
    EXPECT_EQ(t.cells(), count);
    EXPECT_EQ(t.bytes(), count * cell_size);
    for (std::size_t i = 0; i < count; ++i) ASSERT_TRUE(holds(local.cells[i].bytes(), remote[i], 5)) << i;
    // Back the other way, another seed, another order.
    std::shuffle(remote.begin(), remote.end(), random);
    for (std::size_t i = 0; i < count; ++i) fill(local.cells[i].bytes(), remote[i], 6);
    far.put(remote, local.cells).wait();
    EXPECT_EQ(peer.ask("verify 6"), "ok");
  }
}

TEST_P(RemoteOver, AdjacentCellsGoAsOneOperation) {
  Peer peer(4 * KiB, 64, 3);
  RemotePool far = connect(peer.descriptor());
  std::vector<std::byte> local(64 * 4 * KiB);
  // Remote 10..19 into consecutive local memory, named in reverse order: one run.
  std::vector<std::uint32_t> remote;
  std::vector<std::byte*> where;
  for (std::uint32_t r = 19; r >= 10; --r) {
    remote.push_back(r);
    where.push_back(local.data() + (r - 10) * 4 * KiB);
  }
  // Remote 30 and 32: not adjacent remotely. Remote 40, 41 into local cells out of order: not adjacent locally.
  remote.insert(remote.end(), {30, 32, 40, 41});
  for (std::size_t k : {20, 21, 31, 30}) where.push_back(local.data() + k * 4 * KiB);
  RemoteTransfer t = far.get(remote, where);
  t.wait();
  EXPECT_EQ(t.operations(), 5u);
  for (std::size_t i = 0; i < remote.size(); ++i) {
    EXPECT_TRUE(holds({where[i], 4 * KiB}, remote[i], 3)) << i;
  }
}

TEST_P(RemoteOver, ManyTransfersInFlightFromManyThreads) {
  constexpr std::size_t kCells = 64, kSize = 64 * KiB;
  Peer peer(kSize, kCells, 8);
  RemotePool far = connect(peer.descriptor());
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::byte> local(kCells * kSize);
      for (int round = 0; round < 3; ++round) {
        std::vector<RemoteTransfer> flying;
        for (std::uint32_t i = 0; i < kCells; ++i) {  // one transfer per cell, all in flight
          std::uint32_t r = (i * 7 + t) % kCells;
          std::byte* p = local.data() + i * kSize;
          flying.push_back(far.get(std::span(&r, 1), std::span(&p, 1)));
        }
        for (RemoteTransfer& f : flying) f.wait();
        for (std::uint32_t i = 0; i < kCells; ++i) {
          if (!holds({local.data() + i * kSize, kSize}, (i * 7 + t) % kCells, 8)) wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST_P(RemoteOver, BadCallsAreRefusedBeforeAnyNetworkOperation) {
  Peer peer(4 * KiB, 16, 1, /*read_only=*/true);
  RemotePool far = connect(peer.descriptor());
  EXPECT_TRUE(far.read_only());
  std::vector<std::byte> local(4 * KiB);
  std::byte* p = local.data();
  const std::byte* cp = local.data();
  std::uint32_t in_range = 3, past = 16;
  // A read works; a put through the read-only export does not.
  far.get(std::span(&in_range, 1), std::span(&p, 1)).wait();
  EXPECT_TRUE(holds(local, 3, 1));
  const auto put = thrown_by([&] { (void)far.put(std::span(&in_range, 1), std::span(&cp, 1)); });
  EXPECT_EQ(put.code, Errc::invalid_argument);
  EXPECT_NE(put.message.find("read-only"), std::string::npos) << put.message;
  // With the exporter gone, anything that reached the network would say
  // "disconnected": these are refused first.
  peer.kill();
  EXPECT_EQ(error_of([&] { (void)far.get(std::span(&past, 1), std::span(&p, 1)); }), Errc::invalid_argument);
  std::byte* null = nullptr;
  EXPECT_EQ(error_of([&] { (void)far.get(std::span(&in_range, 1), std::span(&null, 1)); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { (void)far.get(std::span(&in_range, 1), std::span<std::byte* const>()); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { (void)far.put(std::span(&in_range, 1), std::span(&cp, 1)); }), Errc::invalid_argument);
  // An empty call moves nothing and is done.
  EXPECT_TRUE(far.get(std::span<const std::uint32_t>(), std::span<std::byte* const>()).ready());
}

TEST_P(RemoteOver, AKilledExporterFailsTransfersInBoundedTimeAndARestartedOneServes) {
  if (!GetParam().detect_peer_failure) {
    GTEST_SKIP() << "without peer failure detection (shared memory alone) UCX cannot notice a dead exporter: a "
                    "transfer may never end (RemoteOptions::detect_peer_failure)";
  }
  constexpr std::size_t kCells = 16, kSize = 2048 * KiB;
  std::vector<std::byte> local(kCells * kSize);
  std::vector<std::byte*> where(kCells);
  std::vector<std::uint32_t> remote(kCells);
  for (std::size_t i = 0; i < kCells; ++i) {
    where[i] = local.data() + i * kSize;
    remote[i] = static_cast<std::uint32_t>(i);
  }
  {
    Peer peer(kSize, kCells, 4);
    RemotePool far = connect(peer.descriptor());
    std::vector<RemoteTransfer> flying;
    for (int i = 0; i < 8; ++i) flying.push_back(far.get(remote, where));
    peer.kill();  // SIGKILL, transfers in flight
    const auto start = std::chrono::steady_clock::now();
    Errc failed{};
    for (RemoteTransfer& t : flying) {
      try {
        t.wait();  // some may have finished before the kill
      } catch (const Error& e) {
        failed = e.code();
      }
    }
    // Later calls fail at once, or their transfer does, once the loss is known.
    for (int i = 0; i < 200 && failed == Errc{}; ++i) {
      try {
        far.get(remote, where).wait();
      } catch (const Error& e) {
        failed = e.code();
      }
    }
    const auto took = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(failed, Errc::disconnected);
    EXPECT_LT(took, 20s) << "the loss of the peer took too long to show";
    // The local memory is still the caller's: it can be written.
    std::memset(local.data(), 0, local.size());
  }
  Peer restarted(kSize, kCells, 9);
  RemotePool far = connect(restarted.descriptor());
  far.get(remote, where).wait();
  for (std::size_t i = 0; i < kCells; ++i) EXPECT_TRUE(holds({where[i], kSize}, i, 9)) << i;
}

TEST_P(RemoteOver, ADestroyedExporterFailsLaterCalls) {
  if (!GetParam().detect_peer_failure) {
    GTEST_SKIP() << "without peer failure detection (shared memory alone) UCX cannot notice a destroyed exporter";
  }
  SharedGrid grid = SharedGrid::create(Block::open(SharedGrid::state_bytes(4) + 4 * 4096), 4096, 4);
  std::vector<SharedCell> held;
  for (int i = 0; i < 4; ++i) held.push_back(grid.take());
  auto exporter = std::make_unique<Exporter>(Exporter::create(grid));
  RemotePool far = connect(exporter->descriptor());
  std::vector<std::byte> local(4096);
  std::byte* p = local.data();
  std::uint32_t one = 1;
  far.get(std::span(&one, 1), std::span(&p, 1)).wait();
  exporter.reset();  // the grid and its Block live on: only the export is gone
  Errc failed{};
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 200 && failed == Errc{}; ++i) {
    try {
      far.get(std::span(&one, 1), std::span(&p, 1)).wait();
    } catch (const Error& e) {
      failed = e.code();
    }
  }
  EXPECT_EQ(failed, Errc::disconnected);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

// Puts of 64 MiB in a loop while the owner destroys its Exporter and then
// writes the cell: no put lands after ~Exporter returned (the same-host
// route's beacon handshake; UCX's unmapping, elsewhere).
TEST_P(RemoteOver, NoPutLandsAfterTheExporterIsDestroyed) {
  if (!GetParam().detect_peer_failure) {
    GTEST_SKIP() << "without peer failure detection (shared memory alone) UCX cannot notice a destroyed exporter";
  }
  const std::size_t kSize = GetParam().same_host ? 64 << 20 : 4 << 20;
  SharedGrid grid = SharedGrid::create(Block::open(SharedGrid::state_bytes(1) + kSize), kSize, 1);
  SharedCell cell = grid.take();
  auto exporter = std::make_unique<Exporter>(Exporter::create(grid));
  RemotePool far = connect(exporter->descriptor());
  std::vector<std::byte> source(kSize, std::byte{0xab});
  const std::byte* from = source.data();
  std::uint32_t zero = 0;
  std::atomic<int> puts{0};
  std::atomic<bool> refused{false};
  std::thread writer([&] {
    for (int i = 0; i < 10000 && !refused.load(); ++i) {
      try {
        far.put(std::span(&zero, 1), std::span(&from, 1)).wait();
        puts.fetch_add(1);
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), Errc::disconnected);
        refused.store(true);
      }
    }
  });
  while (puts.load() < 2) std::this_thread::yield();
  exporter.reset();
  std::memset(cell.data(), 0, kSize);  // the owner's again
  writer.join();
  EXPECT_TRUE(refused.load());
  const std::vector<std::byte> zeros(kSize, std::byte{0});
  EXPECT_EQ(std::memcmp(cell.data(), zeros.data(), kSize), 0) << "a put landed after ~Exporter returned";
}

// Several threads with large calls at once: the process's copy helpers serve
// one, the others copy on their own threads; every byte lands where it should.
TEST_P(RemoteOver, LargeCallsFromSeveralThreadsAtOnce) {
  constexpr std::size_t kCells = 8, kSize = 2048 * KiB;
  Peer peer(kSize, kCells, 12);
  RemotePool far = connect(peer.descriptor());
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::byte> local(4 * kSize);
      for (int round = 0; round < 4; ++round) {
        std::vector<std::uint32_t> remote;
        std::vector<std::byte*> where;
        for (std::uint32_t i = 0; i < 4; ++i) {
          remote.push_back(static_cast<std::uint32_t>((t + round + 2 * i) % kCells));
          where.push_back(local.data() + i * kSize);
        }
        far.get(remote, where).wait();
        for (std::size_t i = 0; i < 4; ++i) {
          if (!holds({where[i], kSize}, remote[i], 12)) wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST_P(RemoteOver, AGenerationChangeIsReported) {
  Peer peer(4 * KiB, 8, 2);
  RemotePool far = connect(peer.descriptor());
  std::vector<std::byte> local(2 * 4 * KiB);
  std::vector<std::byte*> where{local.data(), local.data() + 4 * KiB};
  std::vector<std::uint32_t> remote{5, 6};
  RemoteTransfer first = far.get(remote, where, {.check_generations = true});
  EXPECT_TRUE(first.changed().empty());
  const std::vector<std::uint64_t> before = first.generations();
  ASSERT_EQ(before.size(), 2u);
  EXPECT_EQ(before[0] % 2, 1u);  // held
  EXPECT_EQ(peer.ask("flip 5"), "generation " + std::to_string(before[0] + 2));
  RemoteTransfer second = far.get(remote, where, {.check_generations = true});
  EXPECT_EQ(second.generations()[0], before[0] + 2);  // not the generation announced before
  EXPECT_EQ(second.generations()[1], before[1]);
}

// In one process: a thread hands one cell back and forth (take, fill with
// its generation, announce, give) while gets with generation checks read it.
// A read whose generations match the announced one must be whole.
TEST_P(RemoteOver, AReadWhoseGenerationsMatchIsNeverTorn) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "skipped under ThreadSanitizer: the reads race with the owner's writes on purpose (a seqlock: "
                  "the generations tell which reads to drop), which ThreadSanitizer reports as it should";
#endif
  constexpr std::size_t kSize = 64 * KiB;
  SharedGrid grid = SharedGrid::create(Block::open(SharedGrid::state_bytes(1) + kSize), kSize, 1);
  Exporter exporter = Exporter::create(grid);
  RemotePool far = connect(exporter.descriptor());
  std::atomic<std::uint64_t> announced{0};
  std::atomic<bool> stop{false};
  std::thread owner([&] {
    while (!stop.load()) {
      SharedCell c = grid.take();
      const std::uint64_t g = grid.generation(c.index());
      fill(c.bytes(), 0, g);
      announced.store(g);
      std::this_thread::sleep_for(std::chrono::microseconds(g / 2 % 8 * 400));  // some reads fit, some not
      c.reset();
    }
  });
  std::vector<std::byte> local(kSize);
  std::byte* p = local.data();
  std::uint32_t zero = 0;
  int whole = 0, refused = 0, torn = 0;
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  while (std::chrono::steady_clock::now() < deadline && (whole < 20 || refused < 20)) {
    const std::uint64_t g = announced.load();
    if (g == 0) continue;
    RemoteTransfer t = far.get(std::span(&zero, 1), std::span(&p, 1), {.check_generations = true});
    if (!t.changed().empty() || t.generations()[0] != g) {
      ++refused;
      continue;
    }
    ++whole;
    if (!holds(local, 0, g)) ++torn;
  }
  stop.store(true);
  owner.join();
  EXPECT_EQ(torn, 0);
  EXPECT_GT(whole, 0);
  EXPECT_GT(refused, 0);
}

TEST(Remote, SharedMemoryAloneIsRefusedWithAHint) {
  ::setenv("UCX_TLS", "posix,cma", 1);
  SharedGrid grid = SharedGrid::create(Block::open(1 << 20), 4096, 4);
  Exporter exporter = Exporter::create(grid);
  const auto t = thrown_by([&] { (void)RemotePool::connect(exporter.descriptor(), {.same_host = false}); });
  ::unsetenv("UCX_TLS");
  EXPECT_EQ(t.code, Errc::system);
  EXPECT_NE(t.message.find("UCX_TLS=sm,tcp"), std::string::npos) << t.message;
}

TEST(Remote, ExportsRefuseBadLayoutsAndChecksNeedGenerations) {
  Block block = Block::open(1 << 20);
  EXPECT_EQ(error_of([&] { (void)Exporter::create(block, 0, 4096, 257); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { (void)Exporter::create(block, 4096, 0, 1); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { (void)Exporter::create(block, ~std::size_t{0}, 64, 1); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { (void)Exporter::create(block, 64, std::size_t{1} << 63, 4); }), Errc::invalid_argument);
  SharedGrid moved = SharedGrid::create(Block::open(1 << 20), 4096, 4);
  SharedGrid keep = std::move(moved);
  EXPECT_EQ(error_of([&] { (void)Exporter::create(moved); }), Errc::invalid_argument);  // NOLINT: on purpose
  // A Block's cells: bytes move, generation checks are refused.
  std::memset(block.data(), 0x5c, block.size());
  Exporter exporter = Exporter::create(block, 4096, 4096, 16, {.read_only = true});
  EXPECT_TRUE(exporter.read_only());
  RemotePool far = RemotePool::connect(exporter.descriptor());
  EXPECT_FALSE(far.has_generations());
  EXPECT_EQ(far.generation(), exporter.generation());
  std::vector<std::byte> local(4096);
  std::byte* p = local.data();
  std::uint32_t i = 15;
  EXPECT_EQ(error_of([&] { (void)far.get(std::span(&i, 1), std::span(&p, 1), {.check_generations = true}); }),
            Errc::invalid_argument);
  far.get(std::span(&i, 1), std::span(&p, 1)).wait();
  EXPECT_EQ(local[0], std::byte{0x5c});
  EXPECT_EQ(local[4095], std::byte{0x5c});
  // Local cells of the wrong size, or empty, are refused.
  LocalCells wrong(8192, 1);
  EXPECT_EQ(error_of([&] { (void)far.get(std::span(&i, 1), std::span<const SharedCell>(wrong.cells)); }),
            Errc::invalid_argument);
  // A bad descriptor fails before any connection.
  std::vector<std::byte> d = exporter.descriptor();
  d.resize(d.size() - 1);
  EXPECT_EQ(error_of([&] { (void)RemotePool::connect(d); }), Errc::bad_format);
}

// A fork() child that destroys its copy of an Exporter (one with a progress
// thread, which does not exist in the child) returns, and leaves the
// parent's export standing for same-host readers.
TEST(Remote, AForkedChildDestroyingItsExporterLeavesTheParentsExport) {
  ::setenv("UCX_TLS", "tcp", 1);
  SharedGrid grid = SharedGrid::create(Block::open(SharedGrid::state_bytes(2) + 2 * 4096), 4096, 2);
  SharedCell cell = grid.take();
  fill(cell.bytes(), cell.index(), 33);
  auto exporter = std::make_unique<Exporter>(Exporter::create(grid));
  RemotePool far = RemotePool::connect(exporter->descriptor());
  ASSERT_EQ(far.route(), Route::same_host);
  const pid_t child = ::fork();
  if (child == 0) {
    ::alarm(20);  // a hang here fails the test (SIGALRM), instead of hanging it
    exporter.reset();
    std::_Exit(7);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 7) << "the child did not return from ~Exporter";
  ::unsetenv("UCX_TLS");
  std::vector<std::byte> local(4096);
  std::byte* p = local.data();
  std::uint32_t index = cell.index();
  EXPECT_NO_THROW(far.get(std::span(&index, 1), std::span(&p, 1)).wait());
  EXPECT_TRUE(holds(local, index, 33));
}

// The same-host route is taken where the descriptor says this host and the
// Block can be attached, and nowhere else: then UCX carries the bytes.
TEST(Remote, TheSameHostRouteIsTakenOnlyWhereItCan) {
  SharedGrid grid = SharedGrid::create(Block::open(SharedGrid::state_bytes(4) + 4 * 4096), 4096, 4);
  SharedCell cell = grid.take();
  fill(cell.bytes(), cell.index(), 21);
  Exporter exporter = Exporter::create(grid);
  std::vector<std::byte> local(4096);
  std::byte* p = local.data();
  std::uint32_t index = cell.index();
  auto reads_the_cell = [&](RemotePool& far) {
    std::memset(local.data(), 0, local.size());
    far.get(std::span(&index, 1), std::span(&p, 1)).wait();
    return holds(local, index, 21);
  };
  RemotePool here = RemotePool::connect(exporter.descriptor());
  EXPECT_EQ(here.route(), Route::same_host);
  EXPECT_TRUE(reads_the_cell(here));
  RemotePool off = RemotePool::connect(exporter.descriptor(), {.same_host = false});
  EXPECT_EQ(off.route(), Route::ucx);
  EXPECT_TRUE(reads_the_cell(off));
  // A descriptor from another boot of the machine (or another host): UCX.
  detail::Descriptor d = detail::parse(exporter.descriptor());
  ASSERT_TRUE(d.same_host);
  d.same_host->boot[3] ^= 0xff;
  RemotePool elsewhere = RemotePool::connect(detail::serialize(d));
  EXPECT_EQ(elsewhere.route(), Route::ucx);
  EXPECT_TRUE(reads_the_cell(elsewhere));
  // A descriptor claiming more of the Block than there is, or naming the
  // Block as its beacon: not taken, UCX carries the bytes.
  d = detail::parse(exporter.descriptor());
  d.same_host->block_bytes += std::size_t{1} << 30;
  RemotePool larger = RemotePool::connect(detail::serialize(d));
  EXPECT_EQ(larger.route(), Route::ucx);
  EXPECT_TRUE(reads_the_cell(larger));
  d = detail::parse(exporter.descriptor());
  d.same_host->beacon_fd = d.same_host->block_fd;
  d.same_host->beacon_object = d.same_host->block_object;
  RemotePool no_beacon = RemotePool::connect(detail::serialize(d));
  EXPECT_EQ(no_beacon.route(), Route::ucx);
  // On this host, an id that names nothing means the exporter is gone:
  // said at once, not after UCX's attempt.
  d = detail::parse(exporter.descriptor());
  d.same_host->block_object += 1;
  const auto stale = thrown_by([&] { (void)RemotePool::connect(detail::serialize(d)); });
  EXPECT_EQ(stale.code, Errc::disconnected);
  EXPECT_NE(stale.message.find("gone"), std::string::npos) << stale.message;
  // Memory no other process can map has no same-host section.
  BlockOptions private_pages;
  private_pages.shareable = false;
  Block unshared = Block::open(1 << 20, private_pages);
  Exporter plain = Exporter::create(unshared, 0, 4096, 16);
  EXPECT_FALSE(detail::parse(plain.descriptor()).same_host);
  EXPECT_EQ(RemotePool::connect(plain.descriptor()).route(), Route::ucx);
  RemotePool moved = std::move(here);
  EXPECT_EQ(moved.route(), Route::same_host);
  EXPECT_EQ(here.route(), Route::ucx);  // NOLINT(bugprone-use-after-move): a moved-from pool says so
}

}  // namespace
}  // namespace unimem::remote
