// src/load_progress.hpp — one progress report from many threads.
//
// A GPU load moves bytes on the loading thread and on every staging worker
// at once, and the caller's callback (LoadOptions::progress) must see one
// story: one call at a time, `done` never going back, not so often that a
// Python callback (which takes the GIL) slows the load, and done == total
// only once every byte has arrived — which only the loading thread knows,
// after its final synchronize. Internal (not installed).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>

namespace unimem::detail {

class LoadProgress {
 public:
  // `report` may be empty (no reports) and must outlive this object; total > 0.
  LoadProgress(const std::function<void(std::uint64_t, std::uint64_t)>& report, std::uint64_t total)
      : report_(report), total_(total), step_(std::max<std::uint64_t>(total / 100, std::uint64_t{64} << 20)) {}

  // Counts n more bytes; reports when a step (1% of the total, at least 64
  // MiB) has passed since the last report, never with done == total. Any
  // thread. Throws what the callback throws.
  void add(std::uint64_t n) {
    if (!report_) return;
    const std::uint64_t done = done_.fetch_add(n, std::memory_order_relaxed) + n;
    // A stale `reported_` lets several threads past this check at once (or
    // makes the difference wrap): the same check under the lock decides, so
    // that only the first of them reports.
    if (done >= total_ || done - reported_.load(std::memory_order_relaxed) < step_) return;
    std::lock_guard hold(lock_);
    const std::uint64_t now = std::min(done_.load(std::memory_order_relaxed), total_ - 1);
    const std::uint64_t last = reported_.load(std::memory_order_relaxed);
    if (now <= last || now - last < step_) return;
    reported_.store(now, std::memory_order_relaxed);
    report_(now, total_);
  }

  // Reports done == total: once every byte is where it goes. The loading
  // thread, after the workers stopped. Throws what the callback throws.
  void finish() {
    if (!report_) return;
    std::lock_guard hold(lock_);
    reported_.store(total_, std::memory_order_relaxed);
    report_(total_, total_);
  }

 private:
  const std::function<void(std::uint64_t, std::uint64_t)>& report_;
  const std::uint64_t total_;
  const std::uint64_t step_;
  std::atomic<std::uint64_t> done_{0};
  std::atomic<std::uint64_t> reported_{0};
  std::mutex lock_;  // one report at a time
};

}  // namespace unimem::detail
