#include "unimem/block.hpp"

#include <grp.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "format.hpp"
#include "platform/region.hpp"
#include "testing.hpp"
#include "unimem/linux.hpp"

namespace unimem {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

// What Block::open makes of `bytes` with huge pages asked for, where this
// kind of memory gets huge pages of `unit` bytes (0: none).
std::size_t huge_page_block_size(std::size_t bytes, std::size_t unit) {
  const std::size_t page = Block::page_size();
  const std::size_t paged = (bytes + page - 1) / page * page;
  if (unit == 0 || paged < unit) return paged;
  const std::size_t whole = (paged + unit - 1) / unit * unit;
  return whole - paged <= std::max(2 * MiB, paged / 8) ? whole : paged;
}

BlockOptions unpinned() {
  BlockOptions o;
  o.pinning = Pinning::unpinned;
  return o;
}

TEST(Block, RoundsUpToThePageSize) {
  const std::size_t page = Block::page_size();
  EXPECT_EQ(Block::open(1).size(), page);
  EXPECT_EQ(Block::open(page).size(), page);
  EXPECT_EQ(Block::open(page + 1).size(), 2 * page);
}

TEST(Block, IsPageAlignedZeroedAndWritable) {
  Block b = Block::open(3 * MiB + 5);
  ASSERT_NE(b.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % Block::page_size(), 0u);
  for (std::byte x : b.bytes()) ASSERT_EQ(x, std::byte{0});
  std::memset(b.data(), 0x5a, b.size());
  EXPECT_EQ(b.bytes()[b.size() - 1], std::byte{0x5a});
}

TEST(Block, TypedViewsCoverTheWholeBlock) {
  Block b = Block::open(MiB);
  EXPECT_EQ(b.bytes().size(), b.size());
  EXPECT_EQ(b.as_f32().size(), b.size() / 4);
  EXPECT_EQ(b.as_u16().size(), b.size() / 2);
  EXPECT_EQ(static_cast<const void*>(b.as_f32().data()), b.data());
  b.as_f32_mut()[7] = 1.5f;
  b.as_u16_mut()[0] = 0x3c00;  // f16 1.0 as raw bits
  EXPECT_EQ(b.as_f32()[7], 1.5f);
  EXPECT_EQ(b.as_u16()[0], 0x3c00);
}

TEST(Block, RejectsZeroAndOverflowingSizes) {
  try {
    (void)Block::open(0);
    FAIL() << "open(0) succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_EQ(e.sys_errno(), 0);
    EXPECT_NE(std::string(e.what()).find("at least one byte"), std::string::npos) << e.what();
  }
  try {
    (void)Block::open(SIZE_MAX);
    FAIL() << "open(SIZE_MAX) succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("overflows"), std::string::npos) << e.what();
  }
}

TEST(Block, RefusesMoreThanTheMachineCanBack) {
  for (const BlockOptions& o : {BlockOptions{}, unpinned()}) {
    try {
      (void)Block::open(SIZE_MAX / 2, o);
      FAIL() << "a Block of 8 EiB opened";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::out_of_memory) << e.what();
      EXPECT_NE(std::string(e.what()).find("of RAM"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(testing::unimem_mappings(), 0);
}

TEST(Block, HandleIsASealedMemfdOfTheBlocksSize) {
  Block b = Block::open(2 * MiB);
  ASSERT_GE(block_descriptor(b), 0);
  struct stat st {};
  ASSERT_EQ(::fstat(block_descriptor(b), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), b.size());
  EXPECT_EQ(b.id().object, static_cast<std::uint64_t>(st.st_ino));
  EXPECT_EQ(b.id().handle, block_descriptor(b));
  EXPECT_EQ(b.id().process, ::getpid());
  const int seals = ::fcntl(block_descriptor(b), F_GET_SEALS);
  EXPECT_TRUE(seals & F_SEAL_SHRINK);
  EXPECT_TRUE(seals & F_SEAL_GROW);
  EXPECT_NE(::ftruncate(block_descriptor(b), 0), 0) << "a shared Block must not be truncatable";
  EXPECT_TRUE(::fcntl(block_descriptor(b), F_GETFD) & FD_CLOEXEC);
}

TEST(Block, IdsOfLiveBlocksDiffer) {
  Block a = Block::open(4096), b = Block::open(4096);
  EXPECT_NE(a.id(), b.id());
}

TEST(Block, SecondMappingOfTheHandleSeesTheSamePages) {
  Block b = Block::open(MiB);
  void* other = ::mmap(nullptr, b.size(), PROT_READ | PROT_WRITE, MAP_SHARED, block_descriptor(b), 0);
  ASSERT_NE(other, MAP_FAILED);
  b.as_f32_mut()[1000] = 42.0f;
  EXPECT_EQ(static_cast<float*>(other)[1000], 42.0f);
  static_cast<float*>(other)[3] = -1.0f;
  EXPECT_EQ(b.as_f32()[3], -1.0f);
  ::munmap(other, b.size());
}

TEST(Block, PinnedByDefaultAndUnpinnedOnRequest) {
  const std::size_t before = testing::locked_bytes();
  {
    Block b = Block::open(4 * MiB);
    EXPECT_TRUE(b.pinned());
    EXPECT_GE(testing::locked_bytes(), before + 4 * MiB);
  }
  EXPECT_EQ(testing::locked_bytes(), before);
  Block u = Block::open(4 * MiB, unpinned());
  EXPECT_FALSE(u.pinned());
  EXPECT_EQ(testing::locked_bytes(), before);
}

TEST(Block, LazyBacksPagesOnFirstTouch) {
  const std::size_t page = Block::page_size();
  Block b = Block::open(8 * MiB);
  EXPECT_EQ(testing::resident_pages(b.data(), b.size(), page), 0u);
  b.bytes()[5 * page] = std::byte{1};
  EXPECT_EQ(testing::resident_pages(b.data(), b.size(), page), 1u);
}

TEST(Block, WarmBacksEveryPageWithSeveralThreads) {
  const std::size_t page = Block::page_size();
  for (unsigned threads : {0u, 1u, 3u, 64u}) {
    BlockOptions o;
    o.backing = Backing::warm;
    o.warm_threads = threads;
    Block b = Block::open(9 * MiB + page, o);
    EXPECT_EQ(testing::resident_pages(b.data(), b.size(), page), b.size() / page) << threads << " threads";
    for (std::size_t i = 0; i < b.size(); i += page) ASSERT_EQ(b.bytes()[i], std::byte{0});
  }
}

TEST(Block, PrivateBlocksHaveNoHandleAndMayGetHugePages) {
  BlockOptions o;
  o.shareable = false;
  o.huge_pages = true;
  o.backing = Backing::warm;
  Block b = Block::open(16 * MiB + 1, o);
  const std::size_t unit = platform::huge_page_unit(false);
  EXPECT_EQ(b.size(), huge_page_block_size(16 * MiB + 1, unit));
  EXPECT_EQ(block_descriptor(b), -1);
  EXPECT_FALSE(b.id());
  EXPECT_TRUE(b.pinned());
  EXPECT_EQ(testing::unimem_mappings(), 0) << "a private Block has no memfd";
  for (std::byte x : b.bytes()) ASSERT_EQ(x, std::byte{0});
  b.as_u16_mut()[12345] = 7;
  EXPECT_EQ(b.as_u16()[12345], 7);
  const std::size_t huge = b.huge_page_bytes();
  EXPECT_LE(huge, b.size());
  EXPECT_EQ(huge % (2 * MiB), 0u);
  std::printf("private Block: %zu of %zu bytes in huge pages\n", huge, b.size());
}

// A huge page is one aligned window wholly inside a mapping. A Block asked
// for huge pages starts on a window's edge and ends on one, where the system
// gives that kind of memory huge pages; otherwise, and below one huge page,
// it is sized as any Block. (Before: a 3 MiB Block at whatever address mmap
// chose got at most one huge page, often none.)
TEST(Block, AskingForHugePagesAlignsAndRoundsToThem) {
  const std::size_t page = Block::page_size();
  for (const bool shareable : {false, true}) {
    const std::size_t unit = platform::huge_page_unit(shareable);
    BlockOptions o = unpinned();
    o.shareable = shareable;
    o.huge_pages = true;
    o.backing = Backing::warm;
    for (const std::size_t bytes : {std::size_t{1}, MiB + 1, 2 * MiB, 3 * MiB + 1, 5 * MiB, 9 * MiB + 1}) {
      Block b = Block::open(bytes, o);
      EXPECT_EQ(b.size(), huge_page_block_size(bytes, unit)) << bytes << " bytes, shareable " << shareable;
      if (unit != 0 && b.size() >= unit) {
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % unit, 0u) << bytes << " bytes, shareable " << shareable;
      }
      const std::size_t huge = b.huge_page_bytes();
      EXPECT_LE(huge, b.size());
      for (std::size_t i = 0; i < b.size(); i += page) ASSERT_EQ(b.bytes()[i], std::byte{0});
      b.bytes()[b.size() - 1] = std::byte{1};  // the rounded part is the Block's too
      if (bytes == 3 * MiB + 1) {
        std::printf("%s Block of 3 MiB + 1: %zu bytes, %zu of them in huge pages (unit %zu)\n",
                    shareable ? "shareable" : "private", b.size(), huge, unit);
      }
    }
    // Without huge pages asked for, nothing changes.
    o.huge_pages = false;
    EXPECT_EQ(Block::open(3 * MiB + 1, o).size(), 3 * MiB + page);
  }
}

TEST(Block, MoveTransfersOwnershipAndAssignmentReleasesTheOld) {
  Block a = Block::open(MiB);
  std::byte* data = a.data();
  const int fd = block_descriptor(a);
  Block b = std::move(a);
  EXPECT_EQ(b.data(), data);
  EXPECT_EQ(block_descriptor(b), fd);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_FALSE(a.contains(data));

  Block c = Block::open(MiB);
  const int old_fd = block_descriptor(c);
  std::byte* old_data = c.data();
  c = std::move(b);
  EXPECT_EQ(c.data(), data);
  EXPECT_FALSE(testing::fd_is_open(old_fd));
  EXPECT_FALSE(testing::is_mapped(old_data));
}

TEST(Block, DestructionUnmapsAndClosesEverything) {
  std::byte* data;
  int fd;
  {
    Block b = Block::open(MiB);
    data = b.data();
    fd = block_descriptor(b);
    EXPECT_TRUE(testing::is_mapped(data));
    EXPECT_TRUE(testing::fd_is_open(fd));
  }
  EXPECT_FALSE(testing::is_mapped(data));
  EXPECT_FALSE(testing::fd_is_open(fd));
}

TEST(Block, ContainsExactlyItsBytes) {
  Block b = Block::open(4096);
  EXPECT_TRUE(b.contains(b.data()));
  EXPECT_TRUE(b.contains(b.data() + b.size() - 1));
  EXPECT_FALSE(b.contains(b.data() + b.size()));
  EXPECT_FALSE(b.contains(b.data() - 1));
  EXPECT_FALSE(b.contains(nullptr));
}

TEST(Block, ConstAccessFromManyThreads) {
  Block b = Block::open(MiB, unpinned());
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&b, t] {
      auto f = b.as_f32_mut();
      const std::size_t n = f.size() / 8;
      for (std::size_t i = t * n; i < (t + 1) * n; ++i) f[i] = static_cast<float>(i);
    });
  }
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < b.as_f32().size(); ++i) ASSERT_EQ(b.as_f32()[i], static_cast<float>(i));
}

int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

// Runs in a forked child: as an unprivileged user with an 8 MiB memlock limit
// (what a non-root user gets here), pinning 16 MiB must fail cleanly.
[[noreturn]] void open_past_the_memlock_limit() {
  if (::geteuid() == 0) {
    // root ignores RLIMIT_MEMLOCK (CAP_IPC_LOCK): become nobody.
    if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0) {
      std::fprintf(stderr, "cannot drop privileges: %s\n", std::strerror(errno));
      std::_Exit(3);
    }
    ::prctl(PR_SET_DUMPABLE, 1);
  }
  rlimit limit{};
  ::getrlimit(RLIMIT_MEMLOCK, &limit);
  limit.rlim_cur = limit.rlim_max == RLIM_INFINITY ? 8 * MiB : std::min<rlim_t>(limit.rlim_max, 8 * MiB);
  if (::setrlimit(RLIMIT_MEMLOCK, &limit) != 0) std::_Exit(3);

  const int fds = open_fds();
  try {
    Block b = Block::open(16 * MiB);
    std::fprintf(stderr, "a 16 MiB Block was pinned under an %s memlock limit\n",
                 detail::format_bytes(limit.rlim_cur).c_str());
    std::_Exit(4);
  } catch (const Error& e) {
    const std::string what = e.what();
    bool ok = e.code() == Errc::memlock_limit && (e.sys_errno() == ENOMEM || e.sys_errno() == EPERM);
    for (const std::string& needle :
         {std::string("RLIMIT_MEMLOCK is ") + detail::format_bytes(limit.rlim_cur), std::string("16.0 MiB"),
          std::string("ulimit -l"), std::string("Pinning::unpinned")}) {
      if (what.find(needle) == std::string::npos) {
        std::fprintf(stderr, "message lacks '%s': %s\n", needle.c_str(), what.c_str());
        ok = false;
      }
    }
    if (open_fds() != fds || testing::unimem_mappings() != 0) {
      std::fprintf(stderr, "a failed open left a descriptor or mapping behind\n");
      ok = false;
    }
    // Below the limit, and unpinned above it, opening still works.
    Block small = Block::open(4 * MiB);
    BlockOptions o;
    o.pinning = Pinning::unpinned;
    Block big = Block::open(16 * MiB, o);
    ok = ok && small.pinned() && !big.pinned();
    std::_Exit(ok ? 0 : 5);
  }
}

TEST(BlockDeathTest, MemlockLimitGivesAClearErrorAndLeavesNothing) {
  EXPECT_EXIT(open_past_the_memlock_limit(), ::testing::ExitedWithCode(0), "");
}

// Runs in a forked child, as an unprivileged user: rounding a pinned Block up
// to whole huge pages must not make it exceed a memlock limit that its own
// size fits under; it then keeps its page-rounded size.
[[noreturn]] void open_huge_pages_just_under_the_memlock_limit(std::size_t unit) {
  if (::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
                           ::setresuid(65534, 65534, 65534) != 0)) {
    std::_Exit(3);
  }
  ::prctl(PR_SET_DUMPABLE, 1);
  rlimit limit{};
  ::getrlimit(RLIMIT_MEMLOCK, &limit);
  const std::size_t page = Block::page_size();
  const std::size_t want = 3 * unit + unit / 2;  // rounds up to 4 units, past the limit
  const std::size_t locked = platform::locked_bytes();
  limit.rlim_cur = want + page + locked;
  if (::setrlimit(RLIMIT_MEMLOCK, &limit) != 0) std::_Exit(3);
  BlockOptions o;
  o.shareable = false;
  o.huge_pages = true;
  const int fds = open_fds();
  try {
    Block b = Block::open(want, o);
    if (b.size() != want || !b.pinned()) {
      std::fprintf(stderr, "got %zu bytes, pinned %d\n", b.size(), b.pinned());
      std::_Exit(4);
    }
    // Still on a huge-page boundary, though its size is not whole huge pages
    // (which Linux 6.7+ would align by itself).
    if (reinterpret_cast<std::uintptr_t>(b.data()) % unit != 0) {
      std::fprintf(stderr, "not aligned to %zu: %p\n", unit, static_cast<void*>(b.data()));
      std::_Exit(8);
    }
    b.bytes()[want - 1] = std::byte{1};
    // The refused first try left nothing locked or open.
    if (platform::locked_bytes() > locked + want || open_fds() != fds) {
      std::fprintf(stderr, "%zu bytes locked, %d descriptors (before: %zu, %d)\n", platform::locked_bytes(), open_fds(),
                   locked, fds);
      std::_Exit(6);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "open failed: %s\n", e.what());
    std::_Exit(5);
  }
  std::_Exit(platform::locked_bytes() == locked && open_fds() == fds ? 0 : 7);
}

TEST(BlockDeathTest, RoundingToHugePagesNeverCostsAnOpenUnderTheMemlockLimit) {
  const std::size_t unit = platform::huge_page_unit(false);
  if (unit == 0) GTEST_SKIP() << "private memory gets no huge pages here (transparent_hugepage/enabled)";
  rlimit limit{};
  ::getrlimit(RLIMIT_MEMLOCK, &limit);
  if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < 4 * unit + platform::locked_bytes()) {
    GTEST_SKIP() << "the hard memlock limit is below " << detail::format_bytes(4 * unit) << ": nothing to set up";
  }
  EXPECT_EXIT(open_huge_pages_just_under_the_memlock_limit(unit), ::testing::ExitedWithCode(0), "");
}

// The code and message of the unimem::Error `f` throws.
template <class F>
std::pair<Errc, std::string> error_and_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  return {Errc{}, ""};
}

// The id attach would get for descriptor `fd` of this process.
BlockId id_of(int fd) {
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0);
  return BlockId{::getpid(), fd, static_cast<std::uint64_t>(st.st_ino)};
}

// A directory cannot be opened for writing (EISDIR) and a socket not at all
// through /proc (ENXIO); both are "not a Block", as the header documents.
TEST(BlockAttach, ADirectoryOrASocketIsNotABlock) {
  const int dir = ::open(std::filesystem::temp_directory_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dir, 0);
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  for (const auto& [what, fd] : {std::pair{"directory", dir}, std::pair{"socket", sv[0]}}) {
    for (bool read_only : {false, true}) {
      BlockOptions o = unpinned();
      o.read_only = read_only;
      const auto [code, message] = error_and_message([&, fd = fd] { (void)Block::attach(id_of(fd), o); });
      EXPECT_EQ(code, Errc::not_a_block) << what << (read_only ? ", read-only: " : ": ") << message;
      EXPECT_NE(message.find("not a regular file"), std::string::npos) << message;
    }
  }
  EXPECT_TRUE(testing::fd_is_open(dir)) << "attach must not close the owner's descriptor";
  ::close(dir);
  ::close(sv[0]);
  ::close(sv[1]);
}

// A FIFO with no writer: a read-only open would wait for one forever. The
// attach runs in a child that an alarm ends after 10 s (142: it hung).
TEST(BlockAttach, AFifoIsRefusedWithoutBlocking) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("unimem_attach_fifo_" + std::to_string(::getpid()))).string();
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // a reader, not a writer
  ASSERT_GE(fd, 0);
  for (bool read_only : {true, false}) {
    const int code = testing::exit_code_within(10, [&] {
      BlockOptions o = unpinned();
      o.read_only = read_only;
      const auto [error, message] = error_and_message([&] { (void)Block::attach(id_of(fd), o); });
      if (error != Errc::not_a_block) return 1;
      return message.find("not a regular file") != std::string::npos ? 0 : 2;
    });
    EXPECT_EQ(code, 0) << (read_only ? "read-only" : "read-write") << " attach (1: another error, 142: it hung)";
  }
  ::close(fd);
  ::unlink(path.c_str());
}

TEST(Errc, HasNames) {
  EXPECT_STREQ(to_string(Errc::memlock_limit), "memlock_limit");
  EXPECT_STREQ(to_string(Errc::invalid_argument), "invalid_argument");
  EXPECT_STREQ(to_string(static_cast<Errc>(999)), "unknown");
}

}  // namespace
}  // namespace unimem
