// The tagged free list behind Grid and SharedGrid, driven directly.
#include "tagged_stack.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <vector>

namespace unimem::detail {
namespace {

struct List {
  explicit List(std::uint32_t cells) : links(new std::atomic<std::uint32_t>[cells]), stack(&head, links.get(), cells) {
    stack.format();
  }
  TaggedHead head{};
  std::unique_ptr<std::atomic<std::uint32_t>[]> links;
  TaggedStack stack;
};

TEST(TaggedStack, PopsLowestFirstInBatchesAndPushesOnTop) {
  List l(8);
  std::uint32_t out[8];
  ASSERT_EQ(l.stack.pop(out, 3), 3u);
  EXPECT_EQ(out[0], 0u);
  EXPECT_EQ(out[2], 2u);
  const std::uint32_t back[2] = {1, 0};
  l.stack.push(back, 2);
  ASSERT_EQ(l.stack.pop(out, 8), 7u);
  EXPECT_EQ(out[0], 1u);
  EXPECT_EQ(out[1], 0u);
  EXPECT_EQ(out[2], 3u);
  EXPECT_EQ(l.stack.pop(out, 8), 0u);
  EXPECT_EQ(l.head.tag, 3u) << "every change bumps the tag";
}

// The tag is 64 bits: it carries past 2^32 instead of wrapping to the value a
// stalled compare-exchange may still hold.
TEST(TaggedStack, TheTagDoesNotWrapAt32Bits) {
  List l(4);
  l.head.tag = (std::uint64_t{1} << 32) - 1;
  std::uint32_t out[1];
  ASSERT_EQ(l.stack.pop(out, 1), 1u);
  EXPECT_EQ(l.head.tag, std::uint64_t{1} << 32);
  l.stack.push(out, 1);
  EXPECT_EQ(l.head.tag, (std::uint64_t{1} << 32) + 1);
  EXPECT_EQ(l.head.index, out[0]);
}

// Links and head from memory another process can write: out-of-range values
// end the list instead of being used as indices.
TEST(TaggedStack, OutOfRangeIndicesEndTheList) {
  List l(4);
  l.links[1].store(1000);  // corrupt: 0 -> 1 -> 1000
  std::uint32_t out[4];
  ASSERT_EQ(l.stack.pop(out, 4), 2u);
  EXPECT_EQ(out[1], 1u);
  EXPECT_EQ(l.stack.pop(out, 4), 0u) << "the rest of the list is unreachable, not read out of range";
  l.head.index = ~std::uint64_t{0} - 5;
  EXPECT_EQ(l.stack.pop(out, 4), 0u);
  const std::uint32_t back[1] = {3};
  l.stack.push(back, 1);  // a corrupt head is not linked in
  EXPECT_EQ(l.links[3].load(), TaggedStack::kNone);
  ASSERT_EQ(l.stack.pop(out, 4), 1u);
  EXPECT_EQ(out[0], 3u);
}

}  // namespace
}  // namespace unimem::detail
