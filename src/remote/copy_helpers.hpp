// src/remote/copy_helpers.hpp — threads that help a large copy if they can,
// and never make it wait when they cannot.
//
// The same-host route copies a call's cells on the calling thread; a call of
// many MiB goes faster with more cores on it. A crew that splits the call
// into one fixed share per thread (src/copy_crew.hpp, right for the GPU
// loader's dedicated threads) makes the call as slow as its slowest thread:
// on a busy host, a helper that is not scheduled for a few milliseconds
// stalls the copy at a fraction of one core's rate. Here the work is cut into
// small slices that every participant claims one at a time, the caller
// included: helpers that wake late find nothing left and sleep again, and
// the caller waits only for slices a helper has claimed and is copying.
// Internal to unimem::remote.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace unimem::remote::detail {

class CopyHelpers {
 public:
  // Up to `helpers` threads beside the caller, started at the first run();
  // fewer where the system refuses threads. Never throws.
  explicit CopyHelpers(unsigned helpers) noexcept : wanted_(helpers) {}
  ~CopyHelpers();
  CopyHelpers(const CopyHelpers&) = delete;
  CopyHelpers& operator=(const CopyHelpers&) = delete;

  // Calls slice(i) for every i in [0, slices), on the calling thread and on
  // any helper that is free, and returns when every call has returned.
  // `slice` must not throw. Returns false (and calls nothing) when another
  // run() is in progress: the caller then does the work itself. Any thread.
  bool run(std::size_t slices, const std::function<void(std::size_t)>& slice);

  // Helper threads started so far. Any thread.
  unsigned helpers() const;

 private:
  struct Job {
    const std::function<void(std::size_t)>* slice;
    std::size_t slices;
    std::size_t next = 0;  // the next slice to claim
    std::size_t done = 0;  // slices finished
  };
  void help();

  const unsigned wanted_;
  mutable std::mutex lock_;
  std::condition_variable work_;  // a job was posted, or stop
  std::condition_variable done_;  // a helper finished the job's last slice
  Job* job_ = nullptr;            // the job in progress (the caller's), under lock_
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace unimem::remote::detail
