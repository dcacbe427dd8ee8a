// Host identity and process watches (src/platform/host.hpp): what a remote
// pool's reader relies on to take, and to guard, the same-host route.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include "platform/host.hpp"
#include "testing.hpp"

namespace unimem::platform {
namespace {

using unimem::testing::error_of;

TEST(HostIdentity, IsKnownStableAndComparesEveryField) {
  const HostIdentity here = host_identity();
  ASSERT_TRUE(here.known()) << "Linux has a boot id and a pid namespace";
  EXPECT_EQ(host_identity(), here);
  EXPECT_FALSE(HostIdentity{}.known());
  EXPECT_NE(HostIdentity{}, here);
  HostIdentity other_boot = here;
  other_boot.boot[0] ^= 1;
  EXPECT_NE(other_boot, here);
  // The namespace is the one /proc names, and the boot id is not all zeros.
  struct stat ns {};
  ASSERT_EQ(::stat("/proc/self/ns/pid", &ns), 0);
  EXPECT_EQ(here.pid_namespace, static_cast<std::uint64_t>(ns.st_ino));
}

TEST(ProcessWatch, SeesAChildDieEvenBeforeItIsReaped) {
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    char c;
    (void)!::read(go[0], &c, 1);
    std::_Exit(0);
  }
  ProcessWatch watch(child);
  EXPECT_TRUE(watch.alive());
  ProcessWatch moved(std::move(watch));
  EXPECT_FALSE(watch.alive());  // NOLINT(bugprone-use-after-move): a moved-from watch watches nothing
  EXPECT_TRUE(moved.alive());
  ::kill(child, SIGKILL);
  // Dead, not reaped yet (a zombie): already not alive.
  for (int i = 0; i < 2000 && moved.alive(); ++i) ::usleep(1000);
  EXPECT_FALSE(moved.alive());
  ::waitpid(child, nullptr, 0);
  EXPECT_FALSE(moved.alive());
  ::close(go[0]);
  ::close(go[1]);
}

TEST(ProcessWatch, RefusesWhatIsNoProcess) {
  EXPECT_EQ(error_of([] { ProcessWatch w(0); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([] { ProcessWatch w(-5); }), Errc::invalid_argument);
  // Above any pid_max Linux allows (2^22): never a process.
  EXPECT_EQ(error_of([] { ProcessWatch w(0x3fffffff); }), Errc::not_found);
  EXPECT_FALSE(ProcessWatch().alive());
}

}  // namespace
}  // namespace unimem::platform
