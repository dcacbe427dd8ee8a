#include "format.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace unimem::detail {
namespace {

TEST(FormatBytes, PicksTheLargestUnitBelow1024) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1023), "1023 B");
  EXPECT_EQ(format_bytes(1024), "1.0 KiB");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(16u << 20), "16.0 MiB");
  EXPECT_EQ(format_bytes(std::size_t{3} << 30), "3.0 GiB");
  EXPECT_EQ(format_bytes(SIZE_MAX), "16.0 EiB");
}

TEST(ErrnoText, NamesTheError) {
  EXPECT_EQ(errno_text(ENOENT), "No such file or directory");
  EXPECT_EQ(errno_text(EACCES), "Permission denied");
  EXPECT_FALSE(errno_text(123456).empty());
}

// Every thread gets its own text while others format theirs.
TEST(ErrnoText, IsThreadSafe) {
  const std::vector<int> codes = {ENOENT, EACCES, EIO, ENOMEM, 123456, -7};
  std::vector<std::string> expected;
  for (int c : codes) expected.push_back(errno_text(c));
  std::vector<int> wrong(codes.size(), 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < codes.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20000; ++i) wrong[t] += errno_text(codes[t]) != expected[t];
    });
  }
  for (auto& t : threads) t.join();
  for (std::size_t t = 0; t < codes.size(); ++t) EXPECT_EQ(wrong[t], 0) << "errno " << codes[t];
}

// std::strerror may return a buffer that another thread's call overwrites;
// the library promises thread safety (read_file on many threads), so its
// messages go through errno_text. Tests may use strerror; the library and
// the tool may not.
TEST(ErrnoText, NoLibrarySourceCallsStrerror) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(__FILE__).parent_path().parent_path();
  if (!fs::is_directory(root / "src") || !fs::is_directory(root / "tools")) GTEST_SKIP() << "no sources at " << root;
  const std::regex call(R"(\bstrerror\s*\()");
  int checked = 0;
  for (const fs::path& dir : {root / "src", root / "tools"}) {
    for (const auto& entry : fs::recursive_directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      const std::string ext = entry.path().extension().string();
      if (!entry.is_regular_file() || name.find("_test.") != std::string::npos || name == "testing.hpp" ||
          (ext != ".cpp" && ext != ".hpp" && ext != ".cu")) {
        continue;
      }
      std::ifstream in(entry.path());
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      EXPECT_FALSE(std::regex_search(text, call)) << entry.path() << " calls strerror: use detail::errno_text";
      ++checked;
    }
  }
  EXPECT_GT(checked, 10);
}

}  // namespace
}  // namespace unimem::detail
