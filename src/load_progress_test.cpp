// One progress report from many threads (src/load_progress.hpp): what a GPU
// load's callback sees while its workers count bytes at once. Run under
// ThreadSanitizer in CI.
#include "load_progress.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace unimem::detail {
namespace {

constexpr std::uint64_t MiB = std::uint64_t{1} << 20;

TEST(LoadProgress, ManyThreadsOneStoryThenTheTotalOnce) {
  constexpr unsigned kThreads = 16;
  constexpr std::uint64_t kSlice = 4 * MiB, kSlicesPerThread = 256;  // 16 GiB in all
  const std::uint64_t total = kThreads * kSlice * kSlicesPerThread;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> seen;
  std::atomic<int> inside{0};
  bool overlapped = false;
  const std::function<void(std::uint64_t, std::uint64_t)> report = [&](std::uint64_t done, std::uint64_t all) {
    if (inside.fetch_add(1) != 0) overlapped = true;
    seen.emplace_back(done, all);
    inside.fetch_sub(1);
  };
  LoadProgress progress(report, total);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (std::uint64_t i = 0; i < kSlicesPerThread; ++i) progress.add(kSlice);
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_FALSE(seen.empty()) << "reports while the bytes move";
  for (const auto& [done, all] : seen) EXPECT_LT(done, total) << "done == total before finish()";
  progress.finish();
  EXPECT_FALSE(overlapped) << "two calls at once";
  ASSERT_EQ(seen.back(), std::make_pair(total, total));
  const std::uint64_t step = total / 100;  // 1% of 16 GiB is above the 64 MiB floor
  for (std::size_t i = 1; i < seen.size(); ++i) {
    EXPECT_GT(seen[i].first, seen[i - 1].first) << "call " << i;
    EXPECT_EQ(seen[i].second, total);
    // Two threads that both passed the unlocked check must not both report:
    // the second finds a step not yet passed since the first's report.
    if (i + 1 < seen.size()) {
      EXPECT_GE(seen[i].first - seen[i - 1].first, step) << "call " << i << " came less than a step after the last";
    }
  }
  EXPECT_GE(seen.front().first, step);
  EXPECT_LE(seen.size(), 101u) << "one report per 1% (and 64 MiB), not one per slice, then the total";
}

TEST(LoadProgress, SmallLoadsReportOnlyTheEnd) {
  std::vector<std::uint64_t> seen;
  const std::function<void(std::uint64_t, std::uint64_t)> report = [&](std::uint64_t done, std::uint64_t) {
    seen.push_back(done);
  };
  LoadProgress progress(report, 10 * MiB);  // below one 64 MiB step
  for (int i = 0; i < 10; ++i) progress.add(MiB);
  EXPECT_TRUE(seen.empty());
  progress.finish();
  EXPECT_EQ(seen, std::vector<std::uint64_t>{10 * MiB});
}

TEST(LoadProgress, NoCallbackNoCallsAndAThrowingOneReachesTheCaller) {
  const std::function<void(std::uint64_t, std::uint64_t)> none;
  LoadProgress quiet(none, 1024 * MiB);
  quiet.add(512 * MiB);
  quiet.finish();  // nothing to call: no crash

  const std::function<void(std::uint64_t, std::uint64_t)> throwing = [](std::uint64_t, std::uint64_t) {
    throw std::runtime_error("the caller's own error");
  };
  LoadProgress loud(throwing, 1024 * MiB);
  EXPECT_THROW(loud.add(512 * MiB), std::runtime_error);
  loud.add(1);  // within a step of the failed report's count: no call, no throw
  EXPECT_THROW(loud.finish(), std::runtime_error);
}

}  // namespace
}  // namespace unimem::detail
