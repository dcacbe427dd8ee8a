// src/bump.hpp — the compare-exchange loop behind every shared bump cursor
// (Tape's, and SharedTape's, which lives in its Block).
//
// A cursor is an offset into `capacity` bytes. The aligned position is computed
// from `align_base + cursor`: Tape passes its Block's address, so alignments
// larger than a page hold for addresses; SharedTape passes 0 and aligns
// offsets, which every process agrees on. A failed bump never stores, and a
// cursor found past the capacity (a corrupt shared header) reads as full.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "unimem/tape.hpp"

namespace unimem::detail {

struct Bumped {
  std::size_t offset;  // where the piece starts, valid when status == ok
  TakeStatus status;   // ok or full
};

// Moves `cursor` past `size` bytes at `align` (checked by the caller), then
// past up to `tail` more bytes (ASan red zones) as far as the capacity allows.
// Acquire/release, so whatever a clear() published is visible to the taker.
template <class Cursor>
inline Bumped bump(std::atomic<Cursor>& cursor, std::uintptr_t align_base, std::size_t capacity, std::size_t size,
                   std::size_t align, std::size_t tail = 0) noexcept {
  Cursor current = cursor.load(std::memory_order_acquire);
  for (;;) {
    std::uintptr_t bumped;
    if (current > capacity || __builtin_add_overflow(align_base + current, align - 1, &bumped)) {
      return {0, TakeStatus::full};
    }
    const std::size_t offset = (bumped & ~(std::uintptr_t{align} - 1)) - align_base;
    if (offset > capacity || size > capacity - offset) return {0, TakeStatus::full};
    const std::size_t end = offset + size + std::min(tail, capacity - offset - size);
    if (cursor.compare_exchange_weak(current, static_cast<Cursor>(end), std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
      return {offset, TakeStatus::ok};
    }
  }
}

}  // namespace unimem::detail
