// File identity and page-cache residency, as the GPU loader sees them.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "platform/files.hpp"
#include "platform/linux/errc.hpp"
#include "platform/region.hpp"
#include "testing.hpp"
#include "unimem/block.hpp"

namespace unimem::platform {
namespace {

std::string write_file(const std::string& path, std::size_t bytes, char fill) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::vector<char> data(bytes, fill);
  std::fwrite(data.data(), 1, bytes, f);
  std::fclose(f);
  return path;
}

// The one errno -> Errc mapping, and the errors that go through it.
TEST(Errc, EveryErrnoMeansTheSameToEveryCaller) {
  EXPECT_EQ(errc_of(ENOENT), Errc::not_found);
  EXPECT_EQ(errc_of(ENOTDIR), Errc::not_found);
  EXPECT_EQ(errc_of(ESRCH), Errc::not_found);
  EXPECT_EQ(errc_of(EACCES), Errc::permission_denied);
  EXPECT_EQ(errc_of(EPERM), Errc::permission_denied);
  EXPECT_EQ(errc_of(EIO), Errc::system);
  EXPECT_EQ(errc_of(0), Errc::system);
  const std::string missing = "/tmp/unimem_missing_dir_" + std::to_string(::getpid()) + "/file";
  EXPECT_EQ(testing::error_of([&] { (void)file_identity(missing); }), Errc::not_found);
  EXPECT_EQ(testing::error_of([&] { (void)map_file_region(missing, {}); }), Errc::not_found);
  EXPECT_EQ(testing::error_of([&] { (void)inheritable_duplicate(-1); }), Errc::system);  // EBADF
}

TEST(FileIdentity, ChangesWhenTheFileIsRewrittenOrResized) {
  const std::string path = write_file("/tmp/unimem_identity_" + std::to_string(::getpid()), 8192, 'a');
  const FileIdentity a = file_identity(path);
  EXPECT_EQ(a.size, 8192u);
  EXPECT_EQ(file_identity(path), a) << "nothing changed";
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // timestamps move with the kernel's tick
  write_file(path, 8192, 'b');
  const FileIdentity b = file_identity(path);
  EXPECT_NE(b, a) << "rewritten: the modification time moved";
  write_file(path, 4096, 'b');
  EXPECT_EQ(file_identity(path).size, 4096u);
  std::remove(path.c_str());
  EXPECT_EQ(testing::error_of([&] { (void)file_identity(path); }), Errc::not_found);
  EXPECT_EQ(testing::error_of([] { (void)file_identity("/tmp"); }), Errc::invalid_argument);
}

TEST(ResidentFraction, TellsCachedFromEvictedPages) {
  constexpr std::size_t kBytes = std::size_t{8} << 20;  // halves of whole folios (as below)
  const std::string path = write_file("/tmp/unimem_resident_" + std::to_string(::getpid()), kBytes, 'x');
  Block map = Block::map_file(path, {.pinning = Pinning::unpinned});
  EXPECT_GT(resident_fraction(map.data(), kBytes), 0.99) << "just written: in the page cache";
  const int fd = ::open(path.c_str(), O_RDONLY);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, kBytes / 2, POSIX_FADV_DONTNEED);  // the first half out
  ::close(fd);
  const double first = resident_fraction(map.data(), kBytes / 2);
  const double second = resident_fraction(map.data() + kBytes / 2, kBytes / 2);
  if (first > 0.5) GTEST_SKIP() << "this file system keeps pages the kernel was asked to drop";
  EXPECT_GT(second, 0.99);
  EXPECT_LT(resident_fraction(map.data(), kBytes), 0.75);
  EXPECT_EQ(resident_fraction(map.data(), 0), 1.0);
  std::remove(path.c_str());
}

// cachestat on the file says what mincore on a mapping says, range by range
// (the loader takes the first where the kernel answers).
TEST(ReadableFile, CachedFractionAgreesWithTheMapping) {
  // Large enough that its halves are whole folios (a file system with large
  // folios drops none that the range cuts).
  constexpr std::size_t kBytes = std::size_t{8} << 20;
  const std::string path = write_file("/tmp/unimem_cachestat_" + std::to_string(::getpid()), kBytes, 'c');
  const ReadableFile file(path, file_identity(path));
  const double whole = file.cached_fraction(0, kBytes);
  if (whole < 0) GTEST_SKIP() << "this kernel does not answer cachestat (older than 6.5, or refused by seccomp)";
  EXPECT_GT(whole, 0.99) << "just written: in the page cache";
  EXPECT_EQ(file.cached_fraction(4096, 0), 1.0);
  EXPECT_GT(file.cached_fraction(100, 5000), 0.99) << "a range not on page boundaries";
  const int fd = ::open(path.c_str(), O_RDONLY);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, kBytes / 2, POSIX_FADV_DONTNEED);  // the first half out
  ::close(fd);
  // mincore on a mapping, the independent witness of what was dropped.
  Block map = Block::map_file(path, {.pinning = Pinning::unpinned});
  if (resident_fraction(map.data(), kBytes / 2) > 0.5)
    GTEST_SKIP() << "this file system keeps pages the kernel was asked to drop";
  EXPECT_LT(file.cached_fraction(0, kBytes / 2), 0.1) << "the dropped half";
  EXPECT_GT(file.cached_fraction(kBytes / 2, kBytes / 2), 0.99);
  const double half = file.cached_fraction(0, kBytes);
  EXPECT_GT(half, 0.4);
  EXPECT_LT(half, 0.75);
  EXPECT_NEAR(half, resident_fraction(map.data(), kBytes), 0.05) << "mincore says the same";
  std::remove(path.c_str());
}

}  // namespace
}  // namespace unimem::platform
