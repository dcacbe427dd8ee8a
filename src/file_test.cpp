#include "unimem/file.hpp"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "platform/read_probe.hpp"
#include "testing.hpp"
#include "unimem/block.hpp"
#include "unimem/build_info.hpp"
#include "unimem/version.hpp"

namespace unimem {
namespace {

namespace fs = std::filesystem;
constexpr std::size_t MiB = std::size_t{1} << 20;

// A file of random bytes that removes itself.
struct TempFile {
  fs::path path;
  std::vector<std::byte> data;
  TempFile(std::size_t bytes, const fs::path& dir = fs::temp_directory_path(), unsigned seed = 1) {
    static std::atomic<int> counter{0};
    path = dir / ("unimem_file_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    data.resize(bytes);
    std::mt19937_64 rng(seed);
    for (auto& b : data) b = static_cast<std::byte>(rng());
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(bytes));
    evict();
  }
  // Drops the file from the page cache, so reads go to the disk (and O_DIRECT
  // is used) as for a file nobody read recently.
  void evict() const {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
  ~TempFile() { fs::remove(path); }
};

using testing::error_of;
using testing::Thrown;
using testing::thrown_by;

void expect_consistent(const ReadReport& r) {
  EXPECT_EQ(r.path == ReadPath::direct_async, r.fallback_reason.empty())
      << to_string(r.path) << ": " << r.fallback_reason;
  std::printf("path %s%s%s, %llu of %llu bytes buffered\n", to_string(r.path), r.fallback_reason.empty() ? "" : ": ",
              r.fallback_reason.c_str(), static_cast<unsigned long long>(r.buffered_bytes),
              static_cast<unsigned long long>(r.bytes));
}

TEST(ReadFile, WholeFileIntoABlock) {
  TempFile f(7 * MiB + 123);
  Block b = Block::open(f.data.size());
  ReadReport r = read_file(f.path, 0, b.bytes().first(f.data.size()));
  EXPECT_EQ(r.bytes, f.data.size());
  EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0);
  expect_consistent(r);
  if (r.path == ReadPath::direct_async) {
    EXPECT_LT(r.buffered_bytes, 4096u) << "only the unaligned tail goes through the page cache";
  }
}

// Whether reads can use io_uring is decided when unimem is built (CMake's
// UNIMEM_IO_URING): build_info() says what was compiled in, and a read in a
// build without it takes the pread route and says why in its report.
TEST(ReadFile, ReportsWhetherIoUringIsBuiltIn) {
  const BuildInfo info = build_info();
  EXPECT_EQ(info.version, UNIMEM_VERSION_STRING);
#ifdef UNIMEM_TEST_EXPECT_IO_URING
  EXPECT_EQ(info.io_uring, UNIMEM_TEST_EXPECT_IO_URING != 0) << "the library does not match CMake's choice";
#endif
  TempFile f(2 * MiB + 100);
  Block b = Block::open(f.data.size());
  ReadOptions o;
  o.small_read_bytes = 0;  // the machinery, not the small-read shortcut
  const ReadReport r = read_file(f.path, 0, b.bytes().first(f.data.size()), o);
  EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0);
  expect_consistent(r);
  const bool via_ring = r.path == ReadPath::direct_async || r.path == ReadPath::buffered_async;
  if (!info.io_uring) {
    EXPECT_FALSE(via_ring) << to_string(r.path);
    EXPECT_NE(r.fallback_reason.find("io_uring not built in"), std::string::npos) << r.fallback_reason;
    EXPECT_NE(info.io_uring_status.find("not built in"), std::string::npos) << info.io_uring_status;
  } else {
    EXPECT_EQ(r.fallback_reason.find("not built in"), std::string::npos) << r.fallback_reason;
    EXPECT_TRUE(info.io_uring_status == "available" || info.io_uring_status.starts_with("unavailable ("))
        << info.io_uring_status;
    EXPECT_EQ(via_ring, info.io_uring_status == "available") << to_string(r.path) << ": " << r.fallback_reason;
  }
}

TEST(ReadFile, EveryPathGivesTheSameBytes) {
  TempFile f(3 * MiB + 5000);
  for (bool ring : {true, false}) {
    for (bool direct : {true, false}) {
      Block b = Block::open(f.data.size());
      ReadOptions o;
      o.io_uring = ring;
      o.direct = direct;
      o.chunk_bytes = 256 * 1024;
      o.queue_depth = 4;
      o.threads = 3;
      o.small_read_bytes = 0;  // the machinery, not the small-read shortcut
      f.evict();
      ReadReport r = read_file(f.path, 0, b.bytes().first(f.data.size()), o);
      EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0) << ring << direct;
      if (!ring) {
        EXPECT_TRUE(r.path == ReadPath::direct_threads || r.path == ReadPath::buffered_threads);
      }
      if (!direct) {
        EXPECT_EQ(r.buffered_bytes, r.bytes);
      }
      expect_consistent(r);
    }
  }
}

TEST(ReadFile, UnalignedOffsetsAndDestinationsAndScatter) {
  TempFile f(5 * MiB + 77);
  Block b = Block::open(6 * MiB);
  const ReadSegment segments[] = {
      {4096 * 3, b.data() + 4096, 2 * MiB},             // aligned: O_DIRECT where possible
      {12345, b.data() + 3 * MiB + 12345 % 4096, MiB},  // offset and destination agree mod 4 KiB
      {999, b.data() + 4 * MiB + 4097, 70000},          // they do not: page cache only
      {f.data.size() - 10, b.data() + 5 * MiB, 10},     // the file's last bytes
  };
  ReadReport r = read_file(f.path, segments);
  for (const ReadSegment& s : segments) {
    EXPECT_EQ(std::memcmp(s.dest, f.data.data() + s.file_offset, s.bytes), 0) << s.file_offset;
  }
  EXPECT_EQ(r.bytes, 2 * MiB + MiB + 70000 + 10);
  EXPECT_GE(r.buffered_bytes, 70000u + 10u);
  expect_consistent(r);
}

// Below ReadOptions::small_read_bytes, one pread per piece in the calling
// thread: no ring, no threads, no O_DIRECT set-up.
TEST(ReadFile, SmallReadsSkipTheMachinery) {
  TempFile f(100 * 1024 + 7);
  Block b = Block::open(f.data.size());
  const ReadReport r = read_file(f.path, 0, b.bytes().first(f.data.size()));
  EXPECT_EQ(r.path, ReadPath::buffered_threads);
  EXPECT_NE(r.fallback_reason.find("small read"), std::string::npos) << r.fallback_reason;
  EXPECT_EQ(r.buffered_bytes, r.bytes);
  EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0);
  ReadOptions off;
  off.small_read_bytes = 0;
  EXPECT_EQ(read_file(f.path, 0, b.bytes().first(f.data.size()), off).fallback_reason.find("small read"),
            std::string::npos);
}

TEST(ReadFile, ACachedFileIsReadFromTheCache) {
  TempFile f(2 * MiB);
  Block b = Block::open(f.data.size());
  ReadOptions through_cache;
  through_cache.direct = false;
  read_file(f.path, 0, b.bytes().first(f.data.size()), through_cache);  // now it is cached
  ReadReport r = read_file(f.path, 0, b.bytes().first(f.data.size()));
  EXPECT_EQ(r.buffered_bytes, r.bytes);
  EXPECT_NE(r.fallback_reason.find("page cache"), std::string::npos) << r.fallback_reason;
  EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0);
}

TEST(ReadFile, ReportsProgressUpToTheTotal) {
  TempFile f(4 * MiB);
  Block b = Block::open(f.data.size());
  for (bool ring : {true, false}) {
    std::uint64_t last = 0, calls = 0, total_seen = 0;
    ReadOptions o;
    o.io_uring = ring;
    o.chunk_bytes = 512 * 1024;
    o.progress = [&](std::uint64_t done, std::uint64_t total) {
      EXPECT_GE(done, last);
      if (!ring) {
        EXPECT_GT(done, 0u) << "reported before any read completed";
      }
      last = done;
      total_seen = total;
      ++calls;
    };
    read_file(f.path, 0, b.bytes().first(f.data.size()), o);
    EXPECT_GT(calls, 0u);
    EXPECT_EQ(last, f.data.size());
    EXPECT_EQ(total_seen, f.data.size());
  }
}

TEST(ReadFile, TmpfsFallsBackToThePageCache) {
  if (!fs::exists("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  TempFile f(2 * MiB + 1, "/dev/shm");
  Block b = Block::open(f.data.size());
  ReadReport r = read_file(f.path, 0, b.bytes().first(f.data.size()));
  EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0);
  if (r.path != ReadPath::direct_async && r.path != ReadPath::direct_threads) {
    EXPECT_EQ(r.buffered_bytes, r.bytes);
    EXPECT_TRUE(r.fallback_reason.find("O_DIRECT") != std::string::npos ||
                r.fallback_reason.find("page cache") != std::string::npos)
        << r.fallback_reason;
  }
  expect_consistent(r);
}

TEST(ReadFile, BadInputGivesClearErrors) {
  TempFile f(MiB);
  Block b = Block::open(2 * MiB);
  EXPECT_EQ(error_of([&] { read_file("/nonexistent/unimem.bin", 0, b.bytes()); }), Errc::not_found);
  EXPECT_EQ(error_of([&] { read_file(f.path, 1, b.bytes().first(MiB)); }), Errc::invalid_argument) << "past the end";
  EXPECT_EQ(error_of([&] { read_file(f.path, 2 * MiB, b.bytes().first(1)); }), Errc::invalid_argument);
  const ReadSegment null_dest{0, nullptr, 10};
  EXPECT_EQ(error_of([&] { read_file(f.path, std::span<const ReadSegment>(&null_dest, 1)); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { read_file(fs::temp_directory_path(), 0, b.bytes().first(1)); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { (void)file_size("/nonexistent/unimem.bin"); }), Errc::not_found);
  EXPECT_EQ(file_size(f.path), MiB);
  // Nothing to read is fine.
  EXPECT_EQ(read_file(f.path, 0, std::span<std::byte>()).bytes, 0u);
}

// A failure reported by one completion while others are in flight: read_file
// must reap every read the kernel took before it throws, since the caller may
// free the destinations right away (Safetensors::load gives them back to its
// Tape) while the kernel would still be writing into them.
TEST(ReadFile, AFailedCompletionLeavesNoReadInFlight) {
  TempFile f(2 * MiB);
  for (bool direct : {false, true}) {
    f.evict();
    Block b = Block::open(f.data.size());
    detail::ReadRingProbe probe;
    probe.fail_completion = 3;
    probe.fail_errno = EIO;
    ReadOptions o;
    o.small_read_bytes = 0;  // through the ring
    o.direct = direct;
    o.chunk_bytes = 4096;  // 512 reads, 64 at a time: the third fails amid the rest
    o.queue_depth = 64;
    detail::set_read_ring_probe(&probe);
    const Thrown t = thrown_by([&] { read_file(f.path, 0, b.bytes().first(f.data.size()), o); });
    detail::set_read_ring_probe(nullptr);
    if (probe.submitted == 0) GTEST_SKIP() << "io_uring is unavailable here: " << build_info().io_uring_status;
    std::printf("direct %d: %zu reads submitted, %zu reaped when it threw\n", direct, probe.submitted, probe.reaped);
    EXPECT_EQ(t.code, Errc::system) << t.message;
    EXPECT_EQ(t.sys_errno, EIO) << t.message;
    EXPECT_NE(t.message.find("failed"), std::string::npos) << t.message;
    EXPECT_GT(probe.submitted, probe.fail_completion) << "the failure should come with reads still in flight";
    EXPECT_EQ(probe.reaped, probe.submitted) << "read_file threw with " << probe.submitted - probe.reaped
                                             << " reads still in flight (direct " << direct << ")";
  }
}

// A submit the kernel refuses (EAGAIN, ENOMEM) leaves the prepared reads in
// the ring's submission queue. A FileReader that kept that ring handed them
// to the kernel with its next read: into the first read's destination (freed
// by then) and with indices into the first read's chunk list.
TEST(FileReader, ARefusedSubmitLeavesNothingForTheNextRead) {
  TempFile f(2 * MiB);
  ReadOptions o;
  o.small_read_bytes = 0;  // through the ring
  o.direct = false;
  o.chunk_bytes = 4096;  // the first read: 16 reads prepared at once
  o.queue_depth = 16;
  detail::ReadRingProbe probe;
  probe.fail_submit = 1;
  probe.fail_submit_errno = EAGAIN;
  detail::set_read_ring_probe(&probe);
  FileReader reader(f.path, o);
  Thrown refused;
  {
    std::vector<std::byte> first(64 * 1024);  // freed before the next read
    refused = thrown_by([&] { (void)reader.read(0, first); });
  }
  if (probe.rings_made == 0) {
    detail::set_read_ring_probe(nullptr);
    GTEST_SKIP() << "io_uring is unavailable here";
  }
  EXPECT_EQ(refused.code, Errc::system) << refused.message;
  EXPECT_EQ(refused.sys_errno, EAGAIN) << refused.message;
  EXPECT_EQ(probe.submitted, 0u) << "the refused submit handed nothing to the kernel";
  // The next read, of one chunk at another offset, must read exactly that.
  std::vector<std::byte> second(4096, std::byte{0xAA});
  const ReadReport r = reader.read(MiB + 4096, second);
  detail::set_read_ring_probe(nullptr);
  EXPECT_EQ(r.bytes, second.size());
  EXPECT_EQ(std::memcmp(second.data(), f.data.data() + MiB + 4096, second.size()), 0)
      << "the second read returned other bytes than the file's";
  EXPECT_EQ(probe.submitted, 1u) << "only the second read's one chunk reached the kernel";
  EXPECT_EQ(probe.reaped, 1u);
  EXPECT_EQ(probe.rings_made, 2u) << "the ring holding refused reads is replaced";
}

// A FileReader opens and probes its file once and keeps its ring: the pieces
// of a long load (gpu::Loader stages 64 MiB at a time) used to reopen the
// file and make a ring each, and a file replaced between two pieces mixed
// two files' bytes.
TEST(FileReader, OpensTheFileOnceAndKeepsOneRingForEveryRead) {
  TempFile f(8 * MiB);
  TempFile other(8 * MiB, fs::temp_directory_path(), 2);
  Block b = Block::open(f.data.size());
  ReadOptions o;
  o.small_read_bytes = 0;  // through the ring even for small pieces
  detail::ReadRingProbe probe;
  detail::set_read_ring_probe(&probe);
  FileReader reader(f.path, o);
  EXPECT_EQ(reader.size(), f.data.size());
  EXPECT_EQ(reader.path(), f.path.string());
  ReadReport first;
  for (std::size_t piece = 0; piece < 8; ++piece) {
    if (piece == 4) fs::rename(other.path, f.path);  // the path now names another file
    const ReadReport r = reader.read(piece * MiB, b.bytes().subspan(piece * MiB, MiB));
    if (piece == 0) first = r;
    EXPECT_EQ(r.bytes, MiB);
  }
  detail::set_read_ring_probe(nullptr);
  expect_consistent(first);
  EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0) << "every piece comes from the file opened";
  if (first.path == ReadPath::direct_async || first.path == ReadPath::buffered_async) {
    EXPECT_EQ(probe.rings_made, 1u) << "one ring for all eight reads";
  }
  // read_file is one FileReader read: a ring per call.
  probe = {};
  detail::set_read_ring_probe(&probe);
  for (int i = 0; i < 2; ++i) (void)read_file(f.path, 0, b.bytes().first(MiB), o);
  detail::set_read_ring_probe(nullptr);
  if (probe.rings_made != 0) {
    EXPECT_EQ(probe.rings_made, 2u);
  }
}

// A failed read leaves the reader usable: nothing in flight, the ring drained.
TEST(FileReader, StaysUsableAfterAFailedRead) {
  TempFile f(2 * MiB);
  Block b = Block::open(f.data.size());
  ReadOptions o;
  o.small_read_bytes = 0;
  o.chunk_bytes = 4096;
  o.queue_depth = 64;
  FileReader reader(f.path, o);
  detail::ReadRingProbe probe;
  probe.fail_completion = 3;
  detail::set_read_ring_probe(&probe);
  const Thrown t = thrown_by([&] { (void)reader.read(0, b.bytes().first(f.data.size())); });
  detail::set_read_ring_probe(nullptr);
  if (probe.submitted == 0) GTEST_SKIP() << "io_uring is unavailable here: " << build_info().io_uring_status;
  EXPECT_EQ(t.code, Errc::system) << t.message;
  EXPECT_EQ(probe.reaped, probe.submitted);
  std::memset(b.data(), 0, f.data.size());
  const ReadReport r = reader.read(0, b.bytes().first(f.data.size()));
  EXPECT_EQ(r.bytes, f.data.size());
  EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0);
  // Bad segments are refused before anything is read.
  const Thrown outside = thrown_by([&] { (void)reader.read(f.data.size() - 10, b.bytes().first(11)); });
  EXPECT_EQ(outside.code, Errc::invalid_argument) << outside.message;
  EXPECT_NE(outside.message.find("outside"), std::string::npos) << outside.message;
  EXPECT_EQ(thrown_by([] { FileReader("/nonexistent/unimem"); }).code, Errc::not_found);
}

// The same for an exception from the progress callback.
TEST(ReadFile, AThrowingProgressCallbackLeavesNoReadInFlight) {
  TempFile f(2 * MiB);
  Block b = Block::open(f.data.size());
  detail::ReadRingProbe probe;
  ReadOptions o;
  o.small_read_bytes = 0;  // through the ring
  o.direct = false;
  o.chunk_bytes = 4096;
  o.queue_depth = 64;
  o.progress = [](std::uint64_t, std::uint64_t) { throw std::runtime_error("stop"); };
  detail::set_read_ring_probe(&probe);
  bool caught = false;
  try {
    read_file(f.path, 0, b.bytes().first(f.data.size()), o);
  } catch (const std::runtime_error& e) {
    caught = std::string(e.what()) == "stop";
  }
  detail::set_read_ring_probe(nullptr);
  if (probe.submitted == 0) GTEST_SKIP() << "io_uring is unavailable here: " << build_info().io_uring_status;
  EXPECT_TRUE(caught) << "the callback's exception reaches the caller";
  EXPECT_EQ(probe.reaped, probe.submitted) << "read_file threw with reads still in flight";
}

// The pread fallback too: a throwing callback reaches the caller after every
// reader has stopped (it used to end in std::terminate, with readers running).
TEST(ReadFile, AThrowingProgressCallbackStopsThePreadReaders) {
  TempFile f(2 * MiB);
  Block b = Block::open(f.data.size());
  ReadOptions o;
  o.direct = false;
  o.io_uring = false;
  o.chunk_bytes = 4096;
  o.threads = 4;
  o.progress = [](std::uint64_t, std::uint64_t) { throw std::runtime_error("stop"); };
  bool caught = false;
  try {
    read_file(f.path, 0, b.bytes().first(f.data.size()), o);
  } catch (const std::runtime_error& e) {
    caught = std::string(e.what()) == "stop";
  }
  EXPECT_TRUE(caught) << "the callback's exception reaches the caller";
}

// io_uring takes a 32-bit length and Linux moves at most 2 GiB - 4 KiB per
// read: a chunk of 4 GiB used to become a read of 0 bytes.
TEST(ReadFile, ChunkBytesAbove1GiBIsRefused) {
  TempFile f(64 * 1024);
  std::vector<std::byte> dest(f.data.size());
  for (std::size_t chunk :
       {std::size_t{4} << 30, (std::size_t{4} << 30) + 4096, (std::size_t{1} << 30) + 1, SIZE_MAX}) {
    ReadOptions o;
    o.chunk_bytes = chunk;
    const Thrown t = thrown_by([&] { read_file(f.path, 0, dest, o); });
    EXPECT_EQ(t.code, Errc::invalid_argument) << "chunk_bytes " << chunk << ": " << t.message;
    EXPECT_NE(t.message.find("chunk_bytes"), std::string::npos) << t.message;
  }
  ReadOptions o;
  o.chunk_bytes = std::size_t{1} << 30;  // the largest allowed
  EXPECT_EQ(read_file(f.path, 0, dest, o).bytes, f.data.size());
  EXPECT_EQ(std::memcmp(dest.data(), f.data.data(), f.data.size()), 0);
}

// A FIFO without a writer: opening it to read blocks forever, so every entry
// point must check the type first. Each call runs in a child that an alarm
// ends after 10 s (exit 142 = it hung).
struct Fifo {
  fs::path path;
  Fifo() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() / ("unimem_fifo_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    if (::mkfifo(path.c_str(), 0600) != 0) path.clear();
  }
  ~Fifo() {
    if (!path.empty()) fs::remove(path);
  }
};

// 0: Error(code) naming "not a regular file"; 1: another code; 2: another message; 3: no error.
template <class F>
int refused_as(Errc code, F&& f) {
  const Thrown t = thrown_by(f);
  if (t.code == Errc{}) return 3;
  if (t.code != code) return 1;
  return t.message.find("not a regular file") != std::string::npos ? 0 : 2;
}

TEST(ReadFile, AFifoIsRefusedWithoutBlocking) {
  Fifo fifo;
  ASSERT_FALSE(fifo.path.empty()) << "mkfifo failed";
  EXPECT_EQ(testing::exit_code_within(10,
                                      [&] {
                                        std::byte byte[1];
                                        return refused_as(Errc::invalid_argument,
                                                          [&] { read_file(fifo.path, 0, byte); });
                                      }),
            0)
      << "read_file (142: it hung)";
  EXPECT_EQ(testing::exit_code_within(10,
                                      [&] {
                                        ReadOptions o;
                                        o.io_uring = false;
                                        o.direct = false;
                                        std::byte byte[1];
                                        return refused_as(Errc::invalid_argument,
                                                          [&] { read_file(fifo.path, 0, byte, o); });
                                      }),
            0)
      << "read_file, pread (142: it hung)";
  EXPECT_EQ(
      testing::exit_code_within(
          10, [&] { return refused_as(Errc::invalid_argument, [&] { (void)page_cache_fraction(fifo.path, 0, 1); }); }),
      0)
      << "page_cache_fraction (142: it hung)";
}

TEST(MapFile, AFifoIsRefusedWithoutBlocking) {
  Fifo fifo;
  ASSERT_FALSE(fifo.path.empty()) << "mkfifo failed";
  EXPECT_EQ(testing::exit_code_within(
                10, [&] { return refused_as(Errc::invalid_argument, [&] { (void)Block::map_file(fifo.path); }); }),
            0)
      << "Block::map_file (142: it hung)";
}

TEST(ReadFile, UnreadableFileIsPermissionDenied) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  TempFile f(4096);
  fs::permissions(f.path, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EXIT(
      {
        if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
            ::setresuid(65534, 65534, 65534) != 0) {
          std::_Exit(4);
        }
        std::vector<std::byte> dest(4096);
        std::_Exit(error_of([&] { read_file(f.path, 0, dest); }) == Errc::permission_denied ? 0 : 5);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(MapFile, MapsThePageCacheReadOnly) {
  TempFile f(3 * MiB + 10);
  for (Backing backing : {Backing::lazy, Backing::warm}) {
    BlockOptions o;
    o.backing = backing;
    Block b = Block::map_file(f.path, o);
    EXPECT_TRUE(b.read_only());
    EXPECT_FALSE(b.id()) << "a mapped file is not a shareable Block";
    EXPECT_EQ(b.size(), (f.data.size() + Block::page_size() - 1) / Block::page_size() * Block::page_size());
    EXPECT_EQ(std::memcmp(b.data(), f.data.data(), f.data.size()), 0);
    EXPECT_EQ(b.bytes()[f.data.size()], std::byte{0}) << "past the end reads as zero";
  }
  EXPECT_EQ(error_of([] { (void)Block::map_file("/nonexistent/unimem.bin"); }), Errc::not_found);
  TempFile empty(0);
  EXPECT_EQ(error_of([&] { (void)Block::map_file(empty.path); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([] { (void)Block::map_file(fs::temp_directory_path()); }), Errc::invalid_argument);
}

}  // namespace
}  // namespace unimem
