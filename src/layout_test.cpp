#include "unimem/layout.hpp"

#include <gtest/gtest.h>

#include "testing.hpp"

namespace unimem {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

TEST(Layout, OpensThreeSeparateTapes) {
  Layout l = Layout::open(4 * MiB, MiB, 2 * MiB);
  EXPECT_EQ(l.weights().total(), 4 * MiB);
  EXPECT_EQ(l.scratch().total(), MiB);
  EXPECT_EQ(l.history().total(), 2 * MiB);
  EXPECT_NE(l.weights().block().id(), l.scratch().block().id());
  EXPECT_NE(l.scratch().block().id(), l.history().block().id());
  EXPECT_TRUE(l.weights().block().pinned());
}

TEST(Layout, ClearPassClearsScratchOnly) {
  Layout l = Layout::open(MiB, MiB, MiB);
  ASSERT_TRUE(l.weights().take(1000));
  ASSERT_TRUE(l.scratch().take(2000));
  ASSERT_TRUE(l.history().take(3000));
  l.clear_pass();
  EXPECT_EQ(l.weights().used(), 1000u + Tape::kRedZone);  // a red zone follows takes in ASan builds
  EXPECT_EQ(l.scratch().used(), 0u);
  EXPECT_EQ(l.history().used(), 3000u + Tape::kRedZone);
}

TEST(Layout, ClearTalkClearsScratchAndHistory) {
  Layout l = Layout::open(MiB, MiB, MiB);
  ASSERT_TRUE(l.weights().take(1000));
  ASSERT_TRUE(l.scratch().take(2000));
  ASSERT_TRUE(l.history().take(3000));
  l.clear_talk();
  EXPECT_EQ(l.weights().used(), 1000u + Tape::kRedZone);  // a red zone follows takes in ASan builds
  EXPECT_EQ(l.scratch().used(), 0u);
  EXPECT_EQ(l.history().used(), 0u);
}

TEST(Layout, StatReportsEveryTapeInHumanUnits) {
  Layout l = Layout::open(16 * MiB, MiB, 4 * MiB);
  ASSERT_TRUE(l.weights().take(12 * MiB));
  ASSERT_TRUE(l.history().take(MiB + MiB / 2));
  const std::string s = l.stat();
  EXPECT_NE(s.find("weights"), std::string::npos) << s;
  EXPECT_NE(s.find("12.0 MiB /   16.0 MiB"), std::string::npos) << s;
  EXPECT_NE(s.find("( 75.0%)"), std::string::npos) << s;
  EXPECT_NE(s.find("scratch"), std::string::npos) << s;
  EXPECT_NE(s.find("0 B /    1.0 MiB"), std::string::npos) << s;
  EXPECT_NE(s.find("history"), std::string::npos) << s;
  EXPECT_NE(s.find("1.5 MiB /    4.0 MiB  ( 37.5%)"), std::string::npos) << s;
}

TEST(Layout, ConstAccessors) {
  const Layout l = Layout::open(MiB, MiB, MiB);
  EXPECT_EQ(l.weights().used(), 0u);
  EXPECT_EQ(l.scratch().free(), MiB);
  EXPECT_EQ(l.history().total(), MiB);
}

TEST(Layout, AFailedOpenLeavesNothing) {
  EXPECT_THROW(Layout::open(MiB, 0, MiB), Error);
  EXPECT_THROW(Layout::open(MiB, MiB, SIZE_MAX / 2), Error);
  EXPECT_EQ(testing::unimem_mappings(), 0);
}

}  // namespace
}  // namespace unimem
