// CopyHelpers (src/remote/copy_helpers.hpp): every slice exactly once, the
// caller never waiting for a helper that is not there, one run at a time.
// Run under ThreadSanitizer in CI.
#include "remote/copy_helpers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace unimem::remote::detail {
namespace {

TEST(CopyHelpers, EverySliceOnceFromManyCallersAtOnce) {
  CopyHelpers helpers(3);
  constexpr std::size_t kSlices = 257;
  std::atomic<int> refused{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 50; ++round) {
        std::vector<std::atomic<int>> hits(kSlices);
        const std::function<void(std::size_t)> slice = [&](std::size_t i) { hits[i].fetch_add(1); };
        if (!helpers.run(kSlices, slice)) {
          refused.fetch_add(1);  // another caller's run: this one copies alone
          for (std::size_t i = 0; i < kSlices; ++i) slice(i);
        }
        for (std::size_t i = 0; i < kSlices; ++i) ASSERT_EQ(hits[i].load(), 1) << i;
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_LE(helpers.helpers(), 3u);
}

// While one run is in progress, another caller is refused at once (and does
// its work itself), then is served once the first is done.
TEST(CopyHelpers, ASecondRunWhileOneIsInProgressIsRefused) {
  CopyHelpers helpers(1);
  std::atomic<bool> inside{false}, release{false};
  const std::function<void(std::size_t)> blocking = [&](std::size_t) {
    inside.store(true);
    while (!release.load()) std::this_thread::yield();
  };
  std::thread first([&] { EXPECT_TRUE(helpers.run(1, blocking)); });
  while (!inside.load()) std::this_thread::yield();
  std::atomic<int> calls{0};  // the helper and the caller may both count
  const std::function<void(std::size_t)> counting = [&](std::size_t) { ++calls; };
  EXPECT_FALSE(helpers.run(3, counting));
  EXPECT_EQ(calls.load(), 0) << "a refused run calls nothing";
  release.store(true);
  first.join();
  EXPECT_TRUE(helpers.run(3, counting));
  EXPECT_EQ(calls.load(), 3);
}

TEST(CopyHelpers, HelpersShareTheWork) {
  CopyHelpers helpers(2);
  std::set<std::thread::id> ids;
  std::mutex ids_lock;
  // Each slice waits (up to 10 s, for a loaded machine) until a second
  // thread has taken one: only a helper can be that thread.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  const std::function<void(std::size_t)> slice = [&](std::size_t) {
    {
      std::lock_guard hold(ids_lock);
      ids.insert(std::this_thread::get_id());
    }
    for (;;) {
      {
        std::lock_guard hold(ids_lock);
        if (ids.size() >= 2) return;
      }
      if (std::chrono::steady_clock::now() > deadline) return;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  };
  ASSERT_TRUE(helpers.run(64, slice));
  EXPECT_GE(ids.size(), 2u) << "the caller and at least one helper";
  EXPECT_EQ(helpers.helpers(), 2u);
}

// Without helpers (none wanted, or none the system would start) the caller
// does every slice and returns.
TEST(CopyHelpers, WithoutHelpersTheCallerDoesItAll) {
  CopyHelpers none(0);
  int calls = 0;
  const std::function<void(std::size_t)> slice = [&](std::size_t) { ++calls; };
  ASSERT_TRUE(none.run(10, slice));
  EXPECT_EQ(calls, 10);
  EXPECT_EQ(none.helpers(), 0u);
  ASSERT_TRUE(none.run(0, slice));  // nothing to do: done at once
  EXPECT_EQ(calls, 10);
}

}  // namespace
}  // namespace unimem::remote::detail
