// src/remote/progress.hpp — the thread that serves an exporter's worker.
//
// Transports that emulate one-sided operations (tcp) need the exporter's
// worker progressed to answer a read or write, and every transport needs it
// to notice readers that went away. The thread polls while requests keep
// coming (a sleep costs a wakeup per request, visible at 256 KiB over tcp),
// and after kSpin of quiet arms the worker and sleeps in ucp_worker_wait
// until UCX has an event for it or the destructor signals it.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace unimem::remote::detail {

class ProgressThread {
 public:
  static constexpr std::chrono::microseconds kSpin{200};

  // Starts serving `worker` (made with UCP_FEATURE_WAKEUP); from here on only
  // this thread touches it, until the destructor returns.
  explicit ProgressThread(ucp_worker_h worker);
  // Wakes the thread and joins it. Never throws.
  ~ProgressThread();
  ProgressThread(const ProgressThread&) = delete;
  ProgressThread& operator=(const ProgressThread&) = delete;

 private:
  void run() noexcept;

  ucp_worker_h worker_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace unimem::remote::detail
