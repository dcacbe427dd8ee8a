// unimem/tape.hpp — Tape: a lock-free bump allocator over a Block.
//
// A Tape hands out consecutive pieces of one Block and takes them all back at
// once with clear(). There is no per-allocation free: memory whose lifetime
// ends together (a token's activations, a conversation's KV entries) lives on
// one Tape and is released in O(1).
//
// Thread safety: take(), clear() and every observer may be called from any
// number of threads at once; take() never hands out the same byte twice
// between two clears. clear() only rewinds the cursor: the caller must make
// sure nobody still uses memory taken before the clear (in AddressSanitizer
// builds such uses are reported). A clear() happens-before every take() that
// observes it, so memory reused after a clear() needs no further fence.
// Moving or destroying a Tape must not race with any other use of it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "unimem/block.hpp"

namespace unimem {

enum class TakeStatus : std::uint8_t {
  ok,
  full,          // does not fit in what is left; may fit after clear()
  invalid_size,  // size is 0, or larger than the whole Tape: can never succeed
  invalid_align, // align is 0 or not a power of two
};

// What take() returns: a pointer, or why there is none.
struct Taken {
  std::byte* ptr = nullptr;
  TakeStatus status = TakeStatus::full;

  explicit operator bool() const noexcept { return ptr != nullptr; }
};

class Tape {
 public:
  // Opens a Block of at least `bytes` (see Block::open, whose errors it throws)
  // and starts a Tape over all of it.
  static Tape start(std::size_t bytes, const BlockOptions& options = {});

  // A Tape over all of `block`, which it owns from now on. Throws
  // Error(invalid_argument) for an empty Block.
  explicit Tape(Block block);

  Tape(Tape&& other) noexcept;
  Tape& operator=(Tape&& other) noexcept;
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;
  // Never throws.
  ~Tape();

  // Takes `size` bytes whose address is a multiple of `align`. Lock-free;
  // never throws. On failure ptr is nullptr, status says why, and the Tape is
  // unchanged.
  Taken take(std::size_t size, std::size_t align = alignof(std::max_align_t)) noexcept;

  // Takes room for `count` objects of T at alignof(T) and returns it as a
  // span; the memory is raw (no constructor runs), so T must be implicit-
  // lifetime (trivial types, arrays of them). Returns an empty span when
  // take() fails (count == 0 included). Never throws.
  template <class T>
  std::span<T> take(std::size_t count) noexcept {
    static_assert(std::is_trivially_destructible_v<T>, "a Tape never runs destructors");
    if (count > SIZE_MAX / sizeof(T)) return {};
    Taken t = take(count * sizeof(T), alignof(T));
    if (!t) return {};
    return {reinterpret_cast<T*>(t.ptr), count};
  }

  // Rewinds to empty in O(1); touches no memory. Never throws.
  void clear() noexcept;

  // Bytes handed out since the last clear, alignment padding included.
  std::size_t used() const noexcept { return cursor_.load(std::memory_order_relaxed); }
  std::size_t free() const noexcept { return total() - used(); }
  std::size_t total() const noexcept { return block_.size(); }
  // True when `p` points into this Tape's Block (taken or not).
  bool owns(const void* p) const noexcept { return block_.contains(p); }
  const Block& block() const noexcept { return block_; }

 private:
  Block block_;
  std::atomic<std::size_t> cursor_{0};  // offset of the first free byte
};

}  // namespace unimem
