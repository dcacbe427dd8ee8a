// src/tagged_stack.hpp — the lock-free free list behind Grid and SharedGrid.
//
// A Treiber stack of 32-bit cell indices. The links live in an array of
// atomics beside the cells, never in them: a stale pop may read the link of a
// cell another thread now owns and must not race with the owner's writes.
//
// ABA: the head is one 16-byte word, the first free index and a 64-bit tag
// that every change increments, swapped with a 16-byte compare-exchange
// (x86-64: lock cmpxchg16b). A popper that read (tag, index) and the index's
// link, then stalled, succeeds with a stale link only if the tag came back to
// the same value: exactly 2^64 changes later. At the fastest rate one cache
// line can change hands (~10^9 compare-exchanges per second; measured peaks
// are below 10^8, docs/DESIGN.md) that is 584 years. With the former 32-bit
// tag it was about a minute.
//
// Trust: a SharedGrid's head and links live in memory every process of the
// user can write. Every index read from them is checked against the cell
// count before it is used, so a corrupt or hostile list makes pops come back
// short or empty but never makes this process index outside its arrays.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>

#include "unimem/grid.hpp"

#if !defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16)
#error "unimem needs a 16-byte compare-and-swap (x86-64: build with -mcx16)"
#endif

#if defined(__SANITIZE_THREAD__)
#define UNIMEM_TAGGED_STACK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNIMEM_TAGGED_STACK_TSAN 1
#endif
#endif
#if defined(UNIMEM_TAGGED_STACK_TSAN)
#include <sanitizer/tsan_interface.h>
#if !defined(__x86_64__)
#error "ThreadSanitizer builds of unimem need x86-64 (see swap() in src/tagged_stack.hpp)"
#endif
#endif

namespace unimem::detail {

class TaggedStack {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  TaggedStack(TaggedHead* head, std::atomic<std::uint32_t>* links, std::uint32_t cells) noexcept
      : head_(head), links_(links), cells_(cells) {}

  // Lists every cell as free, lowest index first. Not thread-safe: for a
  // stack nobody else uses yet.
  void format() noexcept {
    for (std::uint32_t i = 0; i + 1 < cells_; ++i) links_[i].store(i + 1, std::memory_order_relaxed);
    links_[cells_ - 1].store(kNone, std::memory_order_relaxed);
    head_->index = 0;
    head_->tag = 0;
  }

  // Pops up to `max` cells into `out` with one compare-exchange; returns how
  // many (0 when the stack is empty). Never throws.
  std::uint32_t pop(std::uint32_t* out, std::uint32_t max) noexcept {
    Word head = load();
    for (;;) {
      std::uint32_t n = 0;
      std::uint64_t i = index_of(head);
      while (i < cells_ && n < max) {
        out[n++] = static_cast<std::uint32_t>(i);
        i = links_[i].load(std::memory_order_relaxed);
      }
      if (n == 0) return 0;
      if (swap(head, pack(tag_of(head) + 1, i))) return n;
    }
  }

  // Pushes the `n` (>= 1) cells of `cells`, cells[0] on top. Never throws.
  void push(const std::uint32_t* cells, std::uint32_t n) noexcept {
    for (std::uint32_t k = 0; k + 1 < n; ++k) links_[cells[k]].store(cells[k + 1], std::memory_order_relaxed);
    Word head = load();
    for (;;) {
      const std::uint64_t first = index_of(head);
      links_[cells[n - 1]].store(first < cells_ ? static_cast<std::uint32_t>(first) : kNone, std::memory_order_relaxed);
      if (swap(head, pack(tag_of(head) + 1, cells[0]))) return;
    }
  }

 private:
  // may_alias: the head is also read as two 8-byte fields.
  __extension__ typedef unsigned __int128 Word __attribute__((may_alias));
  static_assert(sizeof(TaggedHead) == sizeof(Word) && alignof(TaggedHead) == 16);

  static constexpr Word pack(std::uint64_t tag, std::uint64_t index) { return (Word{tag} << 64) | index; }
  static constexpr std::uint64_t index_of(Word w) { return static_cast<std::uint64_t>(w); }
  static constexpr std::uint64_t tag_of(Word w) { return static_cast<std::uint64_t>(w >> 64); }

  // Two 8-byte loads, both acquire, the tag first. The pair may tear (an
  // index newer than the tag); every change bumps the tag, so the
  // compare-exchange then fails and hands back a consistent word. If it
  // succeeds, the head still is the word whose tag was read, and the links
  // walked after the acquire are at least as new as the swap that wrote it;
  // newer ones would have changed the tag. (Acquire on the tag matters on
  // weakly ordered CPUs: with the index acquire and the tag relaxed, a pop
  // could pair a new tag with links read before it.)
  Word load() const noexcept {
    const std::uint64_t tag = __atomic_load_n(&head_->tag, __ATOMIC_ACQUIRE);
    const std::uint64_t index = __atomic_load_n(&head_->index, __ATOMIC_ACQUIRE);
    return pack(tag, index);
  }
  // Replaces the head with `desired` if it still is `expected` (a full
  // barrier); otherwise loads the current head into `expected`.
  bool swap(Word& expected, Word desired) noexcept {
    Word* word = reinterpret_cast<Word*>(head_);
#if defined(UNIMEM_TAGGED_STACK_TSAN)
    // ThreadSanitizer emulates 16-byte atomics under a lock of its own
    // process, which other processes sharing a SharedGrid do not take. Use
    // the instruction itself and tell TSan about the ordering it gives.
    __tsan_release(word);
    std::uint64_t lo = static_cast<std::uint64_t>(expected), hi = static_cast<std::uint64_t>(expected >> 64);
    asm volatile("lock cmpxchg16b %[word]"
                 : [word] "+m"(*word), "+a"(lo), "+d"(hi)
                 : "b"(static_cast<std::uint64_t>(desired)), "c"(static_cast<std::uint64_t>(desired >> 64))
                 : "memory", "cc");
    __tsan_acquire(word);
    const Word seen = (Word{hi} << 64) | lo;
#else
    const Word seen = __sync_val_compare_and_swap(word, expected, desired);
#endif
    if (seen == expected) return true;
    expected = seen;
    return false;
  }

  TaggedHead* head_;
  std::atomic<std::uint32_t>* links_;
  std::uint32_t cells_;
};

}  // namespace unimem::detail
