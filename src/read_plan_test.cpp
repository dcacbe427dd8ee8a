#include "read_plan.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "testing.hpp"

namespace unimem::detail {
namespace {

using testing::error_of;

// A segment whose file offset and destination share their misalignment gets
// a direct body with page-cache head and tail; one that does not is read
// whole through the page cache.
TEST(ReadPlan, DirectBodiesBetweenBufferedHeadsAndTails) {
  alignas(4096) static std::byte dest[5 * 4096];
  std::uint64_t buffered = 0;
  const std::vector<ReadSegment> segments = {
      {100, dest + 100, 3 * 4096},  // same misalignment: head, body, tail
      {4096, dest + 1, 4096},       // destination out of step: all buffered
  };
  const std::vector<ReadChunk> c = plan_reads(segments, true, 4096, 1 << 20, buffered);
  ASSERT_EQ(c.size(), 4u);
  EXPECT_FALSE(c[0].direct);
  EXPECT_EQ(c[0].offset, 100u);
  EXPECT_EQ(c[0].bytes, 4096u - 100);
  EXPECT_TRUE(c[1].direct);
  EXPECT_EQ(c[1].offset, 4096u);
  EXPECT_EQ(c[1].dest, dest + 4096);
  EXPECT_EQ(c[1].bytes, 2u * 4096);
  EXPECT_FALSE(c[2].direct);
  EXPECT_EQ(c[2].offset, 3u * 4096);
  EXPECT_EQ(c[2].bytes, 100u);
  EXPECT_FALSE(c[3].direct);
  EXPECT_EQ(buffered, (4096u - 100) + 100 + 4096);

  buffered = 0;
  const std::vector<ReadChunk> all = plan_reads(segments, false, 4096, 1000, buffered);
  std::uint64_t bytes = 0;
  for (const ReadChunk& r : all) {
    EXPECT_FALSE(r.direct);
    EXPECT_LE(r.bytes, 1000u);
    bytes += r.bytes;
  }
  EXPECT_EQ(bytes, 4u * 4096);
  EXPECT_EQ(buffered, bytes);
}

TEST(ReadPlan, SegmentsOutsideTheFileOrWithoutDestinationAreRefused) {
  std::byte b[16];
  const std::vector<ReadSegment> ok = {{0, b, 8}, {8, b + 8, 8}, {16, nullptr, 0}};
  EXPECT_EQ(check_segments(ok, 16, "test"), 16u);
  std::uint64_t lo, hi;
  segment_span(ok, 16, lo, hi);
  EXPECT_EQ(lo, 0u);
  EXPECT_EQ(hi, 16u);
  const std::vector<ReadSegment> outside = {{9, b, 8}};
  EXPECT_EQ(error_of([&] { (void)check_segments(outside, 16, "test"); }), Errc::invalid_argument);
  const std::vector<ReadSegment> wraps = {{8, b, UINT64_MAX}};
  EXPECT_EQ(error_of([&] { (void)check_segments(wraps, 16, "test"); }), Errc::invalid_argument);
  const std::vector<ReadSegment> no_dest = {{0, nullptr, 4}};
  EXPECT_EQ(error_of([&] { (void)check_segments(no_dest, 16, "test"); }), Errc::invalid_argument);
}

}  // namespace
}  // namespace unimem::detail
