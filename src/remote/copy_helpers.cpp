// src/remote/copy_helpers.cpp — see src/remote/copy_helpers.hpp.
#include "remote/copy_helpers.hpp"

#include <system_error>

namespace unimem::remote::detail {

CopyHelpers::~CopyHelpers() {
  {
    std::lock_guard hold(lock_);
    stop_ = true;
  }
  work_.notify_all();
  for (std::thread& t : threads_) t.join();
}

unsigned CopyHelpers::helpers() const {
  std::lock_guard hold(lock_);
  return static_cast<unsigned>(threads_.size());
}

bool CopyHelpers::run(std::size_t slices, const std::function<void(std::size_t)>& slice) {
  Job job{&slice, slices};
  std::unique_lock hold(lock_);
  if (job_ != nullptr) return false;
  while (threads_.size() < wanted_) {
    try {
      threads_.emplace_back([this] { help(); });
    } catch (const std::system_error&) {
      break;  // as many as the system gives
    }
  }
  job_ = &job;
  hold.unlock();
  work_.notify_all();
  hold.lock();
  while (job.next < job.slices) {
    const std::size_t i = job.next++;
    hold.unlock();
    slice(i);
    hold.lock();
    ++job.done;
  }
  // Every slice is claimed: wait only for those helpers are copying.
  done_.wait(hold, [&] { return job.done == job.slices; });
  job_ = nullptr;
  return true;
}

void CopyHelpers::help() {
  std::unique_lock hold(lock_);
  for (;;) {
    work_.wait(hold, [&] { return stop_ || (job_ != nullptr && job_->next < job_->slices); });
    if (stop_) return;
    Job& job = *job_;  // lives until its caller sees done == slices, which needs this slice
    const std::size_t i = job.next++;
    hold.unlock();
    (*job.slice)(i);
    hold.lock();
    if (++job.done == job.slices) done_.notify_all();
  }
}

}  // namespace unimem::remote::detail
