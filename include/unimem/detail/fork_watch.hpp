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

}  // namespace unimem::detail
