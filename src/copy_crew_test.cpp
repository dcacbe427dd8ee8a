#include "copy_crew.hpp"

#include <grp.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <vector>

namespace unimem::detail {
namespace {

TEST(CopyCrew, CopiesEveryByteOfManyPiecesWithAnyCrewSize) {
  std::mt19937 rng(3);
  std::vector<std::byte> src(3u << 20);
  for (auto& b : src) b = static_cast<std::byte>(rng());
  for (unsigned threads : {0u, 1u, 2u, 5u, 16u}) {
    CopyCrew crew(threads);
    EXPECT_GE(crew.threads(), 1u);
    for (std::size_t n :
         {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{4096}, std::size_t{1} << 20, src.size() - 3}) {
      std::vector<std::byte> dst(n + 16, std::byte{0xee});
      crew.copy(dst.data() + 8, src.data() + 3, n);
      EXPECT_EQ(std::memcmp(dst.data() + 8, src.data() + 3, n), 0) << threads << " threads, " << n << " bytes";
      EXPECT_EQ(dst[7], std::byte{0xee}) << "wrote before the destination";
      EXPECT_EQ(dst[n + 8], std::byte{0xee}) << "wrote past the destination";
    }
  }
}

TEST(CopyCrew, ManyCopiesInARow) {
  CopyCrew crew(4);
  std::vector<std::byte> a(1 << 16), b(1 << 16);
  for (int round = 0; round < 2000; ++round) {
    a[round % a.size()] = static_cast<std::byte>(round);
    crew.copy(b.data(), a.data(), a.size());
    ASSERT_EQ(b[round % b.size()], static_cast<std::byte>(round));
  }
}

// When threads run out partway (RLIMIT_NPROC here; a container's
// pids limit elsewhere), the crew works with those that started instead of
// calling std::terminate. Runs in a child that becomes `nobody` (root is not
// bound by RLIMIT_NPROC) and may start one thread besides itself.
TEST(CopyCrew, WorksWithTheThreadsThatCouldStart) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as a user with no other processes";
  const pid_t pid = ::fork();
  ASSERT_NE(pid, -1);
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0) {
      std::_Exit(3);
    }
    const rlimit two{2, 2};  // this process and one thread
    if (::setrlimit(RLIMIT_NPROC, &two) != 0) std::_Exit(4);
    std::vector<std::byte> src(1 << 20), dst(1 << 20);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::byte>(i * 7);
    CopyCrew crew(8);
    if (crew.threads() >= 8) std::_Exit(5);  // the limit did not bite: nothing was tested
    crew.copy(dst.data(), src.data(), src.size());
    std::_Exit(dst == src ? 0 : 6);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status) << " (std::terminate is SIGABRT)";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3/4: could not drop privileges or set the limit, 5: all threads started, "
                                       "6: the copy was wrong";
}

}  // namespace
}  // namespace unimem::detail
