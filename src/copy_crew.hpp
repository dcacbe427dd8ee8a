// src/copy_crew.hpp — a crew of threads that copy one buffer at a time together.
//
// Copying out of the page cache is limited by one core's memcpy (~10 GB/s);
// a crew shares each copy among its threads. The threads live as long as the
// crew, so a long series of copies (a file streamed through a staging ring)
// pays for starting them once. Idle threads sleep on an atomic (futex) wait.
// A crew that cannot start all its threads (RLIMIT_NPROC, a container's pids
// limit) works with those that started: fewer threads copy the same bytes.
// run() shares other work the same way (the GPU loader's reads of a cached
// file with pread, which fail cleanly where a copy out of a mapping of a
// file truncated meanwhile would raise SIGBUS).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <system_error>
#include <thread>
#include <vector>

namespace unimem::detail {

class CopyCrew {
 public:
  // `threads` copiers in all, the calling thread included (at least 1).
  // Never throws for want of threads: threads() tells how many started.
  explicit CopyCrew(unsigned threads) : threads_(threads == 0 ? 1 : threads) {
    const unsigned wanted = threads_;
    crew_.reserve(wanted - 1);
    try {
      for (unsigned k = 1; k < wanted; ++k) {
        // A thread reads threads_ only after its first job, which publishes it.
        crew_.emplace_back([this, k] { work(k); });
      }
    } catch (...) {  // std::system_error (no thread), std::bad_alloc (no thread state)
      // Threads 1..size() run; give the missing ones' share to the rest.
    }
    threads_ = static_cast<unsigned>(crew_.size()) + 1;
  }
  CopyCrew(const CopyCrew&) = delete;
  CopyCrew& operator=(const CopyCrew&) = delete;
  ~CopyCrew() {
    stop_.store(true, std::memory_order_relaxed);
    job_.fetch_add(1, std::memory_order_release);
    job_.notify_all();
    for (auto& t : crew_) t.join();
  }

  // Copies n bytes from src to dst (not overlapping) with every thread of the
  // crew; returns when all of it is copied. One caller at a time.
  void copy(std::byte* dst, const std::byte* src, std::size_t n) {
    (void)run(n, [dst, src](std::size_t b, std::size_t e) {
      std::memcpy(dst + b, src + b, e - b);
      return 0;
    });
  }

  // Runs part(begin, end) over [0, n) in one slice per thread, each returning
  // 0 or an error code; returns when every slice is done, with the first
  // nonzero code (0 when none failed). One caller at a time.
  template <class Part>
  int run(std::size_t n, Part&& part) {
    part_ = [&part](std::size_t b, std::size_t e) { return static_cast<int>(part(b, e)); };
    n_ = n;
    error_.store(0, std::memory_order_relaxed);
    finished_.store(0, std::memory_order_relaxed);
    job_.fetch_add(1, std::memory_order_release);
    job_.notify_all();
    share(0);
    for (unsigned done; (done = finished_.load(std::memory_order_acquire)) != threads_ - 1;) finished_.wait(done);
    part_ = nullptr;
    return error_.load(std::memory_order_relaxed);
  }

  unsigned threads() const noexcept { return threads_; }

 private:
  void share(unsigned k) {
    const std::size_t part = (n_ + threads_ - 1) / threads_;
    const std::size_t b = std::min(n_, k * part), e = std::min(n_, b + part);
    if (b >= e) return;
    if (const int err = part_(b, e); err != 0) {
      int none = 0;
      error_.compare_exchange_strong(none, err, std::memory_order_relaxed);
    }
  }
  void work(unsigned k) {
    std::uint64_t seen = 0;
    for (;;) {
      job_.wait(seen, std::memory_order_acquire);
      seen = job_.load(std::memory_order_acquire);
      if (stop_.load(std::memory_order_relaxed)) return;
      share(k);
      finished_.fetch_add(1, std::memory_order_acq_rel);
      finished_.notify_one();
    }
  }

  unsigned threads_;
  std::vector<std::thread> crew_;
  std::atomic<std::uint64_t> job_{0};
  std::atomic<unsigned> finished_{0};
  std::atomic<bool> stop_{false};
  std::function<int(std::size_t, std::size_t)> part_;  // the job's work on one slice
  std::size_t n_ = 0;
  std::atomic<int> error_{0};
};

}  // namespace unimem::detail
