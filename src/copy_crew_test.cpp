#include "copy_crew.hpp"

#include <gtest/gtest.h>

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
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{4096}, std::size_t{1} << 20,
                          src.size() - 3}) {
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

}  // namespace
}  // namespace unimem::detail
