// src/tape.cpp — Tape: one atomic cursor, advanced by compare-exchange, and
// the slow paths of lanes (see the lane protocol in tape.hpp).
//
// The cursor is an offset into the Block. take() computes the aligned address
// from the real address (so alignments larger than a page work), checks the
// fit, and publishes the new end with one compare-exchange; a failed take
// never stores. clear() is a single release store of 0, which pairs with the
// acquire in take() so that everything done before a clear happens-before the
// reuse of that memory.
#include "unimem/tape.hpp"

#include <utility>

#include "poison.hpp"

namespace unimem {

Tape Tape::start(std::size_t bytes, const BlockOptions& options) {
  return Tape(Block::open(bytes, options));
}

Tape::Tape(Block block) : block_(std::move(block)) {
  if (block_.empty()) {
    throw Error(Errc::invalid_argument, 0, "unimem: a Tape needs a non-empty Block");
  }
  detail::poison(block_.data(), block_.size());
}

Tape::Tape(Tape&& other) noexcept
    : block_(std::move(other.block_)),
      cursor_(other.cursor_.exchange(0, std::memory_order_relaxed)) {}

Tape& Tape::operator=(Tape&& other) noexcept {
  if (this != &other) {
    detail::unpoison(block_.data(), block_.size());  // our pages are about to be unmapped
    block_ = std::move(other.block_);
    cursor_.store(other.cursor_.exchange(0, std::memory_order_relaxed), std::memory_order_relaxed);
  }
  return *this;
}

Tape::~Tape() {
  // Shadow memory outlives the mapping: leave none poisoned for whoever maps here next.
  detail::unpoison(block_.data(), block_.size());
}

Taken Tape::reserve(std::size_t size, std::size_t align) noexcept {
  const std::size_t capacity = block_.size();
  if (const TakeStatus bad = detail::check_take(size, align, capacity); bad != TakeStatus::ok) return {nullptr, bad};

  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(block_.data());
  std::size_t cursor = cursor_.load(std::memory_order_acquire);
  for (;;) {
    std::uintptr_t bumped;
    if (__builtin_add_overflow(base + cursor, align - 1, &bumped)) return {nullptr, TakeStatus::full};
    const std::size_t offset = (bumped & ~(std::uintptr_t{align} - 1)) - base;
    if (offset > capacity || size > capacity - offset) return {nullptr, TakeStatus::full};
    if (cursor_.compare_exchange_weak(cursor, offset + size, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      return {block_.data() + offset, TakeStatus::ok};
    }
  }
}

Taken Tape::take(std::size_t size, std::size_t align) noexcept {
  Taken t = reserve(size, align);
  if (t) detail::unpoison(t.ptr, size);
  return t;
}

bool Tape::untake(const Taken& taken, std::size_t size) noexcept {
  if (!taken || !owns(taken.ptr)) return false;
  const std::size_t begin = static_cast<std::size_t>(taken.ptr - block_.data());
  std::size_t end = begin + size;
  if (!cursor_.compare_exchange_strong(end, begin, std::memory_order_acq_rel)) return false;
  detail::poison(taken.ptr, size);
  return true;
}

void Tape::clear() noexcept {
  // Order matters (see the lane protocol in tape.hpp): a lane that sees the
  // new epoch must also see the rewound cursor.
  cursor_.store(0, std::memory_order_relaxed);
  epoch_.fetch_add(1, std::memory_order_release);
  detail::poison(block_.data(), block_.size());
}

Taken Tape::Lane::hand_out(std::byte* p, std::size_t size) noexcept {
  detail::unpoison(p, size);
  return {p, TakeStatus::ok};
}

Taken Tape::Lane::take_slow(std::size_t size, std::size_t align) noexcept {
  if (const TakeStatus bad = detail::check_take(size, align, tape_->total()); bad != TakeStatus::ok) return {nullptr, bad};
  // A large request would waste most of a chunk: serve it from the cursor.
  if (size > chunk_ / 2 || align > chunk_ / 2) return tape_->take(size, align);
  for (;;) {
    const std::uint64_t epoch = tape_->epoch_.load(std::memory_order_acquire);
    const Taken chunk = tape_->reserve(chunk_, 64);
    if (!chunk) return tape_->take(size, align);  // no room for a chunk; the request may still fit
    if (tape_->epoch_.load(std::memory_order_acquire) != epoch) continue;  // may predate a clear
    next_ = reinterpret_cast<std::uintptr_t>(chunk.ptr);
    end_ = next_ + chunk_;
    epoch_ = epoch;
    // Fits: the chunk is at least twice the request and twice the alignment.
    const std::uintptr_t p = (next_ + (align - 1)) & ~(std::uintptr_t{align} - 1);
    next_ = p + size;
    return hand_out(reinterpret_cast<std::byte*>(p), size);
  }
}

}  // namespace unimem
