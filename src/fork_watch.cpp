// src/fork_watch.cpp — the list of process-local allocators that a fork()ed
// child must disable (see unimem/detail/fork_watch.hpp).
//
// An intrusive list under one mutex: allocators are created and destroyed
// rarely, and linking must not allocate (Tape's move constructor is noexcept).
// The fork handlers (platform::at_fork: pthread_atfork on Linux) hold the
// mutex across fork(), so the child inherits a list
// no thread was halfway through changing; the child, single-threaded at that
// point, calls every hook and releases the mutex.
//
// The list is constant-initialized and never destroyed, so it exists before
// any static Tape is built and after the last is destroyed, and no fork() can
// catch it half-initialized. The handlers are registered while the library
// loads (a failure there, ENOMEM, aborts: fork protection silently off would
// be worse). Tapes and Grids must not be created or destroyed in a signal
// handler or an atfork handler (the mutex is not reentrant).
#include "unimem/detail/fork_watch.hpp"

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "platform/fork.hpp"

namespace unimem::detail {

struct ForkWatchList {
  std::mutex mutex;
  ForkWatch* first = nullptr;

  static void prepare() noexcept { list.mutex.lock(); }
  static void parent() noexcept { list.mutex.unlock(); }
  static void child() noexcept {
    for (ForkWatch* w = list.first; w != nullptr; w = w->next_) w->hook_(w->owner_);
    list.mutex.unlock();
  }

  void link(ForkWatch& w) noexcept {
    std::lock_guard lock(mutex);
    w.next_ = first;
    if (first != nullptr) first->prev_ = &w;
    first = &w;
  }
  void unlink(ForkWatch& w) noexcept {
    std::lock_guard lock(mutex);
    if (w.prev_ != nullptr) {
      w.prev_->next_ = w.next_;
    } else {
      first = w.next_;
    }
    if (w.next_ != nullptr) w.next_->prev_ = w.prev_;
  }

  static ForkWatchList list;
};

// std::mutex and a pointer: constant-initialized, trivially destructible.
constinit ForkWatchList ForkWatchList::list{};

namespace {
const bool handlers_registered = [] {
  if (!platform::at_fork(&ForkWatchList::prepare, &ForkWatchList::parent, &ForkWatchList::child)) {
    std::fputs("unimem: registering fork handlers failed: cannot protect allocators across fork()\n", stderr);
    std::abort();
  }
  return true;
}();
}  // namespace

ForkWatch::ForkWatch(void* owner, Hook hook) noexcept : owner_(owner), hook_(hook) {
  (void)handlers_registered;
  ForkWatchList::list.link(*this);
}

ForkWatch::~ForkWatch() { ForkWatchList::list.unlink(*this); }

}  // namespace unimem::detail
