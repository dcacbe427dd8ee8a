// src/remote/progress.hpp — the thread that serves an exporter's worker.
//
// Transports that emulate one-sided operations (tcp) need the exporter's
// worker progressed to answer a read or write, and every transport needs it
// to notice readers that went away. The thread polls while requests keep
// coming; after kSpin of quiet it sleeps, a little longer each time up to
// kMaxSleep (so an idle exporter wakes about 1000 times a second, and the
// first request after a quiet spell waits up to that long).
//
// It does not sleep on the worker's event descriptor (UCP_FEATURE_WAKEUP):
// a context that asks for wakeups leaves out the transports that cannot give
// them, among them cma, UCX's zero-copy path between processes of one host.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace unimem::remote::detail {

class ProgressThread {
 public:
  static constexpr std::chrono::microseconds kSpin{200};
  static constexpr std::chrono::microseconds kMaxSleep{1000};

  // Starts serving `worker`; from here on only this thread touches it,
  // until the destructor returns.
  explicit ProgressThread(ucp_worker_h worker);
  // Stops the thread and joins it (within kMaxSleep). Never throws.
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
