// src/remote/progress.cpp — the exporter's progress thread (see progress.hpp).
#include "remote/progress.hpp"

namespace unimem::remote::detail {

ProgressThread::ProgressThread(ucp_worker_h worker) : worker_(worker), thread_([this] { run(); }) {}

ProgressThread::~ProgressThread() {
  stop_.store(true, std::memory_order_release);
  (void)ucp_worker_signal(worker_);  // thread-safe in UCP: wakes ucp_worker_wait
  thread_.join();
}

void ProgressThread::run() noexcept {
  using clock = std::chrono::steady_clock;
  while (!stop_.load(std::memory_order_acquire)) {
    auto quiet_since = clock::now();
    while (clock::now() - quiet_since < kSpin && !stop_.load(std::memory_order_relaxed)) {
      if (ucp_worker_progress(worker_) != 0) quiet_since = clock::now();
    }
    // Sleep only when arming finds nothing pending (UCS_OK); UCS_ERR_BUSY:
    // events arrived meanwhile, progress them first.
    if (ucp_worker_arm(worker_) == UCS_OK && !stop_.load(std::memory_order_acquire)) {
      (void)ucp_worker_wait(worker_);
    }
  }
}

}  // namespace unimem::remote::detail
