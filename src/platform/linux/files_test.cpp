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
  const std::string path = write_file("/tmp/unimem_resident_" + std::to_string(::getpid()), 1 << 20, 'x');
  Block map = Block::map_file(path, {.pinning = Pinning::unpinned});
  EXPECT_GT(resident_fraction(map.data(), 1 << 20), 0.99) << "just written: in the page cache";
  const int fd = ::open(path.c_str(), O_RDONLY);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 1 << 19, POSIX_FADV_DONTNEED);  // the first half out
  ::close(fd);
  const double first = resident_fraction(map.data(), 1 << 19);
  const double second = resident_fraction(map.data() + (1 << 19), 1 << 19);
  if (first > 0.5) GTEST_SKIP() << "this file system keeps pages the kernel was asked to drop";
  EXPECT_GT(second, 0.99);
  EXPECT_LT(resident_fraction(map.data(), 1 << 20), 0.75);
  EXPECT_EQ(resident_fraction(map.data(), 0), 1.0);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace unimem::platform
