// src/remote/progress.cpp — the exporter's progress thread (see progress.hpp).
#include "remote/progress.hpp"

#include <algorithm>

namespace unimem::remote::detail {

ProgressThread::ProgressThread(ucp_worker_h worker) : worker_(worker), thread_([this] { run(); }) {}

ProgressThread::~ProgressThread() {
  stop_.store(true, std::memory_order_release);
  thread_.join();
}

void ProgressThread::run() noexcept {
  using clock = std::chrono::steady_clock;
  auto quiet_since = clock::now();
  std::chrono::microseconds nap{10};
  while (!stop_.load(std::memory_order_acquire)) {
    if (ucp_worker_progress(worker_) != 0) {
      quiet_since = clock::now();
      nap = std::chrono::microseconds(10);
    } else if (clock::now() - quiet_since > kSpin) {
      std::this_thread::sleep_for(nap);
      nap = std::min(2 * nap, std::chrono::duration_cast<std::chrono::microseconds>(kMaxSleep));
    }
  }
}

}  // namespace unimem::remote::detail
