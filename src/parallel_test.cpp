#include "parallel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace unimem::detail {
namespace {

using Slices = std::vector<std::pair<std::size_t, std::size_t>>;

Slices run(std::size_t bytes, unsigned threads, std::size_t grain, std::size_t max_slice) {
  std::mutex lock;
  Slices out;
  for_each_slice(bytes, threads, grain, max_slice, [&](std::size_t b, std::size_t e) {
    std::lock_guard<std::mutex> hold(lock);
    out.emplace_back(b, e);
  });
  std::sort(out.begin(), out.end());
  return out;
}

TEST(ForEachSlice, CoversTheRangeExactlyOnceInGrainMultiples) {
  for (std::size_t bytes : {std::size_t{1}, std::size_t{4096}, std::size_t{10} << 20, (std::size_t{37} << 20) + 4096}) {
    for (unsigned threads : {0u, 1u, 3u, 16u}) {
      Slices s = run(bytes, threads, 2 << 20, SIZE_MAX);
      ASSERT_FALSE(s.empty());
      EXPECT_EQ(s.front().first, 0u);
      EXPECT_EQ(s.back().second, bytes);
      for (std::size_t i = 0; i < s.size(); ++i) {
        EXPECT_LT(s[i].first, s[i].second);
        if (i > 0) {
          EXPECT_EQ(s[i - 1].second, s[i].first) << "gap or overlap";
        }
        if (i + 1 < s.size()) {
          EXPECT_EQ(s[i].second % (2 << 20), 0u) << "slice not on a grain boundary";
        }
      }
      EXPECT_LE(s.size(), threads ? threads : default_threads(bytes));
    }
  }
}

TEST(ForEachSlice, NoSliceExceedsTheMaximum) {
  const std::size_t grain = 4096, max_slice = 5 * grain;
  Slices s = run(100 * grain + 7, 2, grain, max_slice);
  for (auto [b, e] : s) EXPECT_LE(e - b, max_slice);
  EXPECT_GE(s.size(), 21u);
}

TEST(ForEachSlice, UsesSeveralThreads) {
  std::mutex lock;
  std::set<std::thread::id> ids;
  for_each_slice(std::size_t{64} << 20, 4, 1 << 20, std::size_t{64} << 20, [&](std::size_t, std::size_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard<std::mutex> hold(lock);
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_GT(ids.size(), 1u);
}

TEST(ForEachSlice, RethrowsTheFirstErrorAfterAllFinish) {
  std::atomic<int> finished{0};
  EXPECT_THROW(for_each_slice(std::size_t{8} << 20, 4, 1 << 20, 1 << 20,
                              [&](std::size_t b, std::size_t) {
                                if (b == (std::size_t{3} << 20)) throw std::runtime_error("slice 3");
                                finished.fetch_add(1);
                              }),
               std::runtime_error);
  EXPECT_EQ(finished.load(), 7);
}

TEST(ForEachSlice, ZeroBytesCallsNothing) {
  bool called = false;
  for_each_slice(0, 4, 4096, 4096, [&](std::size_t, std::size_t) { called = true; });
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace unimem::detail
