// unimem/detail/fork_watch.hpp — how process-local allocators learn of fork().
//
// A Block's pages are MAP_SHARED, so after fork() parent and child see the
// same bytes; but a Tape's cursor or a Grid's free list lives in ordinary
// process memory, which fork() copies. Both processes would then hand out the
// same bytes. Every process-local allocator therefore holds a ForkWatch: the
// child of a fork() calls each live watch's hook (from a pthread_atfork
// handler, before fork() returns there) and the allocator refuses from then
// on. Internal: not part of the API.
#pragma once

#include <atomic>

namespace unimem::detail {

class ForkWatch {
 public:
  using Hook = void (*)(void* owner) noexcept;

  // Links this watch into the process's list: from now on a fork()ed child
  // calls hook(owner) once. Never throws.
  ForkWatch(void* owner, Hook hook) noexcept;
  // Unlinks. Never throws.
  ~ForkWatch();
  ForkWatch(const ForkWatch&) = delete;
  ForkWatch& operator=(const ForkWatch&) = delete;

 private:
  friend struct ForkWatchList;
  void* owner_;
  Hook hook_;
  ForkWatch* prev_ = nullptr;
  ForkWatch* next_ = nullptr;
};

// True in a fork() child of the process that made it: what objects holding
// another process's handles (CUDA streams, events, registrations) test before
// they touch those handles or their own locks, which fork() may have copied
// held by a thread that does not exist in the child. Not movable (the watch
// points at it). Never throws.
class ForkedFlag {
 public:
  ForkedFlag() noexcept : watch_(this, &set) {}
  ForkedFlag(const ForkedFlag&) = delete;
  ForkedFlag& operator=(const ForkedFlag&) = delete;
  bool forked() const noexcept { return forked_.load(std::memory_order_relaxed); }

 private:
  // The child is single-threaded when the hook runs: relaxed suffices, and
  // every thread it starts later sees the store (thread creation orders it).
  static void set(void* self) noexcept {
    static_cast<ForkedFlag*>(self)->forked_.store(true, std::memory_order_relaxed);
  }
  std::atomic<bool> forked_{false};
  ForkWatch watch_;  // declared after forked_: linked once forked_ exists
};

}  // namespace unimem::detail
