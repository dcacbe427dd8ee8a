// unimem/tape.hpp — Tape: a lock-free bump allocator over a Block.
//
// A Tape hands out consecutive pieces of one Block and takes them all back at
// once with clear(). There is no per-allocation free: memory whose lifetime
// ends together (a token's activations, a conversation's KV entries) lives on
// one Tape and is released in O(1).
//
// Two ways to take:
//   tape.take(size, align)   shared: one compare-exchange on the Tape's cursor
//                            per take; any thread, no setup.
//   Tape::Lane lane(tape);   per owner (usually per thread): reserves a chunk
//   lane.take(size, align)   of the Tape with one atomic operation, then hands
//                            out memory from it with plain arithmetic. On x86
//                            a locked instruction costs as much as a whole
//                            malloc+free, so this is the fast path.
//
// Thread safety: Tape::take(), clear() and every observer may be called from
// any number of threads at once; no byte is handed out twice between two
// clears, by any mix of shared takes and lanes. clear() only rewinds: the
// caller must make sure nobody still uses memory taken before the clear (in
// AddressSanitizer builds such uses are reported, and a red zone follows
// every take so that overflows into the next piece are reported too). A take()
// that races with a clear() may return memory from before it, which is then
// already released. A clear() happens-before every take() that observes it
// (a release store that takes acquire), so memory reused after a clear() needs
// no further fence: threads may hand a Tape to each other with clear() alone.
// Moving or destroying a Tape must not race with any other use of it. A move
// (construction or assignment) invalidates the Lanes of both Tapes: their
// next take reserves a fresh chunk from the Tape they were built on, or fails
// (invalid_size) when that Tape was moved from.
//
// fork(): the cursor and every Lane live in process memory that fork() copies,
// while the Block's pages stay shared. In a forked child a Tape that existed
// at the fork refuses every take (TakeStatus::forked) and clear() does
// nothing there; the parent is unaffected. SharedTape (unimem/share.hpp)
// keeps its cursor in the Block and works across fork().
//
// Lane protocol (how clear() invalidates lanes it never touches): the Tape
// keeps an epoch beside its cursor. clear() stores 0 to the cursor, then
// stores a new epoch, one no clear or move has stored before (release). A lane remembers the epoch its chunk was
// reserved in and checks it (one acquire load of a line that only clear()
// writes, so it stays in every core's cache) before each take; on a mismatch
// it reserves a new chunk. A reservation reads the epoch before and after
// taking its chunk from the cursor and keeps the chunk only if both reads
// agree; otherwise the chunk may predate the clear and is dropped. Hence, once
// clear() returns, every lane's next take sees the new epoch and hands out
// only memory reserved after the clear.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "unimem/block.hpp"
#include "unimem/detail/fork_watch.hpp"
#include "unimem/version.hpp"

namespace unimem {

// (clang-format reads the attribute below as a brace initializer)
// clang-format off
enum class [[nodiscard]] TakeStatus : std::uint8_t {
  ok,
  full,           // does not fit in what is left; may fit after clear()
  invalid_size,   // size is 0, or larger than the whole Tape: can never succeed
  invalid_align,  // align is 0 or not a power of two (or, for SharedTape, above the page size)
  read_only,      // the memory is mapped read-only in this process (SharedTape)
  forked,         // this process is a fork() child of the Tape's: the parent owns its memory
};
// clang-format on

// What take() returns: a pointer, or why there is none.
struct [[nodiscard]] Taken {
  std::byte* ptr = nullptr;
  TakeStatus status = TakeStatus::full;

  explicit operator bool() const noexcept { return ptr != nullptr; }
};

namespace detail {
// The argument check every take shares: ok, invalid_align or invalid_size.
constexpr TakeStatus check_take(std::size_t size, std::size_t align, std::size_t capacity) noexcept {
  if (align == 0 || (align & (align - 1)) != 0) return TakeStatus::invalid_align;
  if (size == 0 || size > capacity) return TakeStatus::invalid_size;
  return TakeStatus::ok;
}

// take<T>(count) for Tape and Tape::Lane: room for `count` raw T, or empty.
template <class T, class Taker>
std::span<T> take_span(Taker& taker, std::size_t count) noexcept {
  static_assert(std::is_trivially_destructible_v<T>, "a Tape never runs destructors");
  if (count > SIZE_MAX / sizeof(T)) return {};
  Taken t = taker.take(count * sizeof(T), alignof(T));
  if (!t) return {};
  return {reinterpret_cast<T*>(t.ptr), count};
}
}  // namespace detail

class Tape {
 public:
  // Bytes left poisoned after every take (where they fit) when the library
  // was built with AddressSanitizer, so that an overflow into the next piece
  // is reported; 0 otherwise. Fixed by the library's build (version.hpp),
  // not by the includer's flags: a program and the library agree on it.
  static constexpr std::size_t kRedZone = UNIMEM_TAPE_RED_ZONE;

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
    return detail::take_span<T>(*this, count);
  }

  // Gives back `taken` (of `size` bytes) when nothing was taken after it, so
  // that a failed multi-step fill leaves no trace. Returns whether it did.
  // The alignment padding before it stays taken. Never throws.
  [[nodiscard]] bool untake(const Taken& taken, std::size_t size) noexcept;

  // Rewinds to empty in O(1) and invalidates every Lane; touches no memory.
  // Everything done before it happens-before the takes that reuse the memory.
  // Never throws.
  void clear() noexcept;

  class Lane;

  // Bytes handed out since the last clear, alignment padding and the unused
  // rest of lanes' chunks included.
  // (Clamped: a forked child's cursor lies past the end.)
  std::size_t used() const noexcept { return std::min(cursor_.load(std::memory_order_relaxed), total()); }
  std::size_t free() const noexcept { return total() - used(); }
  std::size_t total() const noexcept { return block_.size(); }
  // True when `p` points into this Tape's Block (taken or not).
  bool owns(const void* p) const noexcept { return block_.contains(p); }
  const Block& block() const noexcept { return block_; }
  // True in a process forked from the one that made this Tape (see fork()
  // above): every take fails there with TakeStatus::forked. Never throws.
  bool forked() const noexcept { return forked_; }

 private:
  static void on_fork_child(void* tape) noexcept;
  // Moves the cursor past `size` bytes at `align` and `tail` more (red zone);
  // no ASan unpoisoning.
  Taken reserve(std::size_t size, std::size_t align, std::size_t tail) noexcept;

  Block block_;
  detail::ForkWatch fork_watch_{this, &Tape::on_fork_child};
  // The cursor is written by every shared take and lane refill; the epoch only
  // by clear() and moves. Separate lines keep lanes' epoch checks from missing
  // the cache.
  alignas(64) std::atomic<std::size_t> cursor_{0};   // offset of the first free byte
  alignas(64) std::atomic<std::uint64_t> epoch_{0};  // new with every clear and move (unique, not counted)
  bool forked_ = false;                              // set only in a forked child, before any of its threads runs
};

// A private allocation front for one owner (one thread at a time) over a Tape.
// Not thread-safe itself: give each thread its own Lane. A Lane must not
// outlive its Tape. After its Tape is moved (to or from), its next take
// reserves a fresh chunk, or fails when the Tape was moved from. Move-only: a
// copy would hand out the same bytes as the original.
class Tape::Lane {
 public:
  static constexpr std::size_t kDefaultChunk = std::size_t{64} << 10;
  // Large enough that lanes taking 1 MiB pieces on 16 threads refill rarely
  // (at 64 MiB, every 64 takes: the refills' compare-exchanges on the one
  // cursor were the bound); a lane's unused rest is still at most a 64th of
  // what its Tape had free.
  static constexpr std::size_t kMaxChunk = std::size_t{1} << 30;

  // A lane over `tape` whose first reservation is `chunk_bytes` (rounded up
  // to a multiple of 64, at least 64); each later one is twice the one before,
  // up to a 64th of what the Tape has free (kMaxChunk at most), and the first
  // after a clear() is chunk_bytes again. A lane may thus leave up to its last
  // chunk unused until the next clear. Reserves nothing until the first take.
  explicit Lane(Tape& tape, std::size_t chunk_bytes = kDefaultChunk) noexcept
      : tape_(&tape), chunk_(round_chunk(chunk_bytes)), grown_(chunk_) {}

  // The moved-from Lane keeps its Tape but no chunk: its next take reserves one.
  Lane(Lane&& other) noexcept
      : tape_(other.tape_),
        chunk_(other.chunk_),
        grown_(other.grown_),
        next_(other.next_),
        end_(other.end_),
        epoch_(other.epoch_) {
    other.drop_chunk();
  }
  Lane& operator=(Lane&& other) noexcept {
    if (this != &other) {
      tape_ = other.tape_;
      chunk_ = other.chunk_;
      grown_ = other.grown_;
      next_ = other.next_;
      end_ = other.end_;
      epoch_ = other.epoch_;
      other.drop_chunk();
    }
    return *this;
  }
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  // As Tape::take. A request larger than half the next chunk gets a larger
  // one (up to the cap above); one larger than half the cap goes to the
  // shared cursor directly. Never throws.
  Taken take(std::size_t size, std::size_t align = alignof(std::max_align_t)) noexcept {
    // Fast path: the chunk is current and the request fits. Invalid requests
    // never fit (align 0 wraps p below next_; size 0 wraps size - 1), so the
    // slow path sorts them out.
    if ((align & (align - 1)) == 0 && tape_->epoch_.load(std::memory_order_acquire) == epoch_) {
      const std::uintptr_t p = (next_ + (align - 1)) & ~(std::uintptr_t{align} - 1);
      if (p >= next_ && p <= end_ && size - 1 < end_ - p) {
        next_ = p + size;
        if constexpr (kRedZone != 0) next_ += std::min<std::uintptr_t>(kRedZone, end_ - next_);
        // Lanes do address arithmetic so that any alignment holds for the address.
        if constexpr (kRedZone == 0) {
          return {reinterpret_cast<std::byte*>(p), TakeStatus::ok};  // NOLINT(performance-no-int-to-ptr)
        } else {
          return hand_out(reinterpret_cast<std::byte*>(p), size);  // NOLINT(performance-no-int-to-ptr)
        }
      }
    }
    return take_slow(size, align);
  }

  // As Tape::take<T>. Never throws.
  template <class T>
  std::span<T> take(std::size_t count) noexcept {
    return detail::take_span<T>(*this, count);
  }

  std::size_t chunk_bytes() const noexcept { return chunk_; }
  Tape& tape() const noexcept { return *tape_; }

 private:
  // chunk_bytes rounded up to a multiple of 64, at least 64, and without
  // wrapping to 0 near SIZE_MAX (a 0 chunk never grows: takes would spin).
  static constexpr std::size_t round_chunk(std::size_t bytes) noexcept {
    return bytes < 64 ? 64 : bytes > SIZE_MAX - 63 ? SIZE_MAX / 64 * 64 : (bytes + 63) / 64 * 64;
  }
  Taken take_slow(std::size_t size, std::size_t align) noexcept;
  static Taken hand_out(std::byte* p, std::size_t size) noexcept;
  void drop_chunk() noexcept {
    next_ = end_ = 0;
    epoch_ = ~std::uint64_t{0};
  }

  Tape* tape_;
  std::size_t chunk_;        // the first reservation's size
  std::size_t grown_;        // the next reservation's size
  std::uintptr_t next_ = 0;  // [next_, end_) is what is left of the chunk
  std::uintptr_t end_ = 0;
  std::uint64_t epoch_ = ~std::uint64_t{0};  // the epoch the chunk belongs to; none yet
};

}  // namespace unimem
