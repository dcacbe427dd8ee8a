#include "format.hpp"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace unimem::detail
