// src/tape.cpp — Tape: one atomic cursor, advanced by compare-exchange
// (src/bump.hpp, shared with SharedTape), and the slow paths of lanes (see the
// lane protocol in tape.hpp).
//
// clear() is a release store of 0 to the cursor, which every take's acquire
// (load or compare-exchange) reads or follows in the cursor's modification
// order, so everything done before a clear happens-before the reuse of that
// memory. It poisons the Block (ASan builds) before that store, never after:
// a taker that sees the store unpoisons what it takes, and a later poison
// would undo it.
//
// clear() stores a fresh epoch (unique, see fresh_epoch) with a plain store:
// no locked instruction. Moves give both Tapes a fresh epoch, so Lanes never hand out a chunk of a
// Block their Tape no longer holds. A forked child's Tapes are marked by
// detail::ForkWatch, which moves their cursor past the end: every take fails
// there, and clear() refuses to rewind it.
#include "unimem/tape.hpp"

#include <utility>

#include "bump.hpp"
#include "poison.hpp"

namespace unimem {
namespace {

// Epochs need only be unique, never ordered: a Lane compares its epoch for
// equality, and keeps a chunk only while the Tape's epoch is the one it was
// reserved in. So clear() stores a fresh value instead of incrementing
// (fetch_add is a locked instruction: 7-15 ns on the H100 machine's Xeon,
// most of clear()'s cost). Each thread draws values from a block of 2^40
// of its own, taking a new block with one fetch_add when it starts clearing
// or runs out; after 2^23 blocks (blocks stay below bit 63) values come from
// a shared counter above bit 63. 0 (a new Tape) and ~0 (a Lane without a
// chunk) are never drawn.
constexpr int kBlockBits = 40;
std::atomic<std::uint64_t> next_block{1};
std::atomic<std::uint64_t> overflow{0};
thread_local std::uint64_t epoch_next = 0;
thread_local std::uint64_t epoch_end = 0;

std::uint64_t fresh_epoch() noexcept {
  if (epoch_next == epoch_end) {
    const std::uint64_t block = next_block.fetch_add(1, std::memory_order_relaxed);
    if (block >= (std::uint64_t{1} << (63 - kBlockBits))) {
      return (std::uint64_t{1} << 63) | overflow.fetch_add(1, std::memory_order_relaxed);
    }
    epoch_next = block << kBlockBits;
    epoch_end = epoch_next + (std::uint64_t{1} << kBlockBits);
  }
  return epoch_next++;
}

// Publishes a fresh epoch after a cursor store. Where the hardware keeps
// one order of all stores (x86-64's TSO, ARMv8's multi-copy atomicity), a
// plain release store suffices even for concurrent clears: a lane that read
// one clear's epoch before and after reserving its chunk reserved it after
// every cursor store ordered before that epoch store. The C++ memory model
// alone does not promise this for two clears racing each other (without a
// read-modify-write, one clear's epoch store does not join the other's
// release sequence), so elsewhere an exchange keeps the proof in the model.
inline void publish_epoch(std::atomic<std::uint64_t>& epoch) noexcept {
#if defined(__x86_64__) || defined(__aarch64__)
  epoch.store(fresh_epoch(), std::memory_order_release);
#else
  (void)epoch.exchange(fresh_epoch(), std::memory_order_acq_rel);
#endif
}

}  // namespace

Tape Tape::start(std::size_t bytes, const BlockOptions& options) { return Tape(Block::open(bytes, options)); }

Tape::Tape(Block block) : block_(std::move(block)) {
  if (block_.empty()) {
    throw Error(Errc::invalid_argument, 0, "unimem: a Tape needs a non-empty Block");
  }
  detail::poison(block_.data(), block_.size());
}

Tape::Tape(Tape&& other) noexcept
    : block_(std::move(other.block_)),
      cursor_(other.cursor_.exchange(0, std::memory_order_relaxed)),
      forked_(other.forked_) {
  other.epoch_.store(fresh_epoch(), std::memory_order_release);  // its lanes hold chunks of the Block moved here
}

Tape& Tape::operator=(Tape&& other) noexcept {
  if (this != &other) {
    detail::unpoison(block_.data(), block_.size());  // our pages are about to be unmapped
    block_ = std::move(other.block_);
    cursor_.store(other.cursor_.exchange(0, std::memory_order_relaxed), std::memory_order_relaxed);
    forked_ = other.forked_;
    epoch_.store(fresh_epoch(), std::memory_order_release);        // our lanes hold chunks of the unmapped Block
    other.epoch_.store(fresh_epoch(), std::memory_order_release);  // its lanes hold chunks of the Block moved here
  }
  return *this;
}

Tape::~Tape() {
  // Shadow memory outlives the mapping: leave none poisoned for whoever maps here next.
  detail::unpoison(block_.data(), block_.size());
}

void Tape::on_fork_child(void* tape) noexcept {
  auto* t = static_cast<Tape*>(tape);
  t->forked_ = true;
  // A cursor past the end makes every take fail as full, so the take path
  // itself needs no check; reserve() tells forked from full only on failure.
  t->cursor_.store(t->block_.size() + 1, std::memory_order_relaxed);
  t->epoch_.store(fresh_epoch(), std::memory_order_relaxed);  // every Lane copied into the child drops its chunk
}

Taken Tape::reserve(std::size_t size, std::size_t align, std::size_t tail) noexcept {
  const std::size_t capacity = block_.size();
  if (const TakeStatus bad = detail::check_take(size, align, capacity); bad != TakeStatus::ok) return {nullptr, bad};
  const detail::Bumped b =
      detail::bump(cursor_, reinterpret_cast<std::uintptr_t>(block_.data()), capacity, size, align, tail);
  if (b.status != TakeStatus::ok) return {nullptr, forked_ ? TakeStatus::forked : b.status};
  return {block_.data() + b.offset, TakeStatus::ok};
}

Taken Tape::take(std::size_t size, std::size_t align) noexcept {
  Taken t = reserve(size, align, kRedZone);
  if (t) detail::unpoison(t.ptr, size);
  return t;
}

bool Tape::untake(const Taken& taken, std::size_t size) noexcept {
  if (!taken || !owns(taken.ptr)) return false;  // (in a forked child the cursor is past the end: no match)
  const std::size_t begin = static_cast<std::size_t>(taken.ptr - block_.data());
  if (size > block_.size() - begin) return false;
  std::size_t end = begin + size + std::min(kRedZone, block_.size() - begin - size);  // as take() moved it
  // Poison before the cursor moves back (as clear() does): a take that then
  // gets these bytes unpoisons them after us, never before.
  detail::poison(taken.ptr, size);
  if (!cursor_.compare_exchange_strong(end, begin, std::memory_order_acq_rel)) {
    detail::unpoison(taken.ptr, size);  // still the caller's
    return false;
  }
  return true;
}

void Tape::clear() noexcept {
  if (forked_) return;  // the parent's memory: nothing here to rewind
  detail::poison(block_.data(), block_.size());
  // Order matters (see the lane protocol in tape.hpp): a lane that sees the
  // new epoch must also see the rewound cursor.
  cursor_.store(0, std::memory_order_release);
  publish_epoch(epoch_);
}

Taken Tape::Lane::hand_out(std::byte* p, std::size_t size) noexcept {
  detail::unpoison(p, size);
  return {p, TakeStatus::ok};
}

Taken Tape::Lane::take_slow(std::size_t size, std::size_t align) noexcept {
  if (const TakeStatus bad = detail::check_take(size, align, tape_->total()); bad != TakeStatus::ok)
    return {nullptr, bad};
  // Chunks grow, as pmr::monotonic_buffer_resource's buffers do: each
  // reservation twice the last, up to a 64th of what the Tape has free
  // (kMaxChunk at most), back to chunk_bytes() after a clear. Every
  // reservation is a compare-exchange on the Tape's one cursor, which 16
  // threads contend for (about 18M a second in all on the H100 machine's
  // Xeon): with fixed chunks, lanes taking 4 KiB or 1 MiB pieces were
  // bounded by it (0.11x and 0.01x pmr at 16 threads). What a lane leaves
  // unused is the rest of its last chunk; near a full Tape the cap shrinks.
  const std::size_t cap = std::max(chunk_, std::min(tape_->free() / 64, kMaxChunk) / 64 * 64);
  // A request too large for any chunk would waste most of one: the cursor serves it.
  if (size > cap / 2 || align > cap / 2) return tape_->take(size, align);
  for (;;) {
    const std::uint64_t epoch = tape_->epoch_.load(std::memory_order_acquire);
    if (epoch != epoch_) grown_ = chunk_;  // the first chunk since a clear (or ever)
    std::size_t want = std::min(grown_, cap);
    while (want < cap && (size > want / 2 || align > want / 2)) want = std::min(cap, want * 2);
    // A red zone after the chunk too (ASan builds): a piece that ends at the
    // chunk's end is followed by one like every other.
    const Taken chunk = tape_->reserve(want, 64, kRedZone);
    if (!chunk) {
      if (chunk.status == TakeStatus::forked) return chunk;
      return tape_->take(size, align);  // no room for a chunk; the request may still fit
    }
    if (tape_->epoch_.load(std::memory_order_acquire) != epoch) continue;  // may predate a clear
    next_ = reinterpret_cast<std::uintptr_t>(chunk.ptr);
    end_ = next_ + want;
    epoch_ = epoch;
    grown_ = std::min(kMaxChunk, want * 2);
    // Fits: the chunk is at least twice the request and twice the alignment.
    const std::uintptr_t p = (next_ + (align - 1)) & ~(std::uintptr_t{align} - 1);
    next_ = p + size;
    if constexpr (kRedZone != 0) next_ += std::min<std::uintptr_t>(kRedZone, end_ - next_);
    return hand_out(reinterpret_cast<std::byte*>(p), size);  // NOLINT(performance-no-int-to-ptr): see tape.hpp
  }
}

}  // namespace unimem
