// src/fork_watch.cpp — the list of process-local allocators that a fork()ed
// child must disable (see unimem/detail/fork_watch.hpp).
//
// An intrusive list under one mutex: allocators are created and destroyed
// rarely, and linking must not allocate (Tape's move constructor is noexcept).
// pthread_atfork holds the mutex across fork(), so the child inherits a list
// no thread was halfway through changing; the child, single-threaded at that
// point, calls every hook and releases the mutex.
#include "unimem/detail/fork_watch.hpp"

#include <pthread.h>

#include <mutex>

namespace unimem::detail {

struct ForkWatchList {
  static ForkWatchList& get() noexcept {
    static ForkWatchList list;  // constructed before any watch links in
    return list;
  }

  ForkWatchList() noexcept { ::pthread_atfork(&prepare, &parent, &child); }

  static void prepare() noexcept { get().mutex.lock(); }
  static void parent() noexcept { get().mutex.unlock(); }
  static void child() noexcept {
    ForkWatchList& list = get();
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
    if (w.prev_ != nullptr)
      w.prev_->next_ = w.next_;
    else
      first = w.next_;
    if (w.next_ != nullptr) w.next_->prev_ = w.prev_;
  }

  std::mutex mutex;
  ForkWatch* first = nullptr;
};

ForkWatch::ForkWatch(void* owner, Hook hook) noexcept : owner_(owner), hook_(hook) { ForkWatchList::get().link(*this); }

ForkWatch::~ForkWatch() { ForkWatchList::get().unlink(*this); }

}  // namespace unimem::detail
