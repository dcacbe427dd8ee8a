// src/grid.cpp — Grid: a Treiber stack of cell indices with an ABA tag.
//
// The free list is a stack of 32-bit indices whose head shares one 64-bit
// word with a 32-bit tag bumped on every change, so a compare-exchange cannot
// succeed against a head that was popped and pushed back in between (ABA).
// The links live in a side array of atomics, not in the cells: a stale pop
// may read the link of a cell that another thread already owns, and that
// must not race with the owner's writes to the cell.
//
// Membership is checked by identity: a Cell remembers its GridCore, so a
// cell from another grid is refused before any index is used, and a Cell
// handle is emptied when given, so the same cell cannot go back twice.
#include "unimem/grid.hpp"

#include <string>

namespace unimem::detail {
namespace {

constexpr std::uint64_t pack(std::uint64_t tag, std::uint32_t index) { return (tag << 32) | index; }
constexpr std::uint32_t index_of(std::uint64_t head) { return static_cast<std::uint32_t>(head); }
constexpr std::uint64_t next_tag(std::uint64_t head) { return (head >> 32) + 1; }

[[noreturn]] void bad_size(const std::string& why) {
  throw Error(Errc::invalid_argument, 0, "unimem: cannot build a Grid: " + why);
}

Block open_cells(std::size_t cell_size, std::size_t cells, const BlockOptions& options) {
  if (cell_size == 0 || cell_size % kCellAlign != 0) {
    bad_size("cell size " + std::to_string(cell_size) + " is not a non-zero multiple of 64 bytes");
  }
  if (cells == 0 || cells >= std::numeric_limits<std::uint32_t>::max()) {
    bad_size("cell count " + std::to_string(cells) + " is not in [1, 2^32 - 1)");
  }
  if (cell_size > std::numeric_limits<std::size_t>::max() / cells) {
    bad_size(std::to_string(cells) + " cells of " + std::to_string(cell_size) + " bytes overflow size_t");
  }
  return Block::open(cell_size * cells, options);
}

}  // namespace

GridCore::GridCore(std::size_t cell_size, std::size_t cells, const BlockOptions& options)
    : cell_size_(cell_size),
      cells_(cells),
      block_(open_cells(cell_size, cells, options)),
      next_(new std::atomic<std::uint32_t>[cells]),
      head_(pack(0, 0)) {
  // Hand cells out lowest index first: 0 -> 1 -> ... -> cells-1 -> none.
  for (std::size_t i = 0; i + 1 < cells; ++i) next_[i].store(static_cast<std::uint32_t>(i + 1), std::memory_order_relaxed);
  next_[cells - 1].store(kNone, std::memory_order_relaxed);
}

Cell GridCore::take() noexcept {
  std::uint64_t head = head_.load(std::memory_order_acquire);
  for (;;) {
    const std::uint32_t index = index_of(head);
    if (index == kNone) return Cell();
    const std::uint32_t next = next_[index].load(std::memory_order_relaxed);
    if (head_.compare_exchange_weak(head, pack(next_tag(head), next), std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
      return Cell(this, block_.data() + std::size_t{index} * cell_size_, index);
    }
  }
}

void GridCore::push(std::uint32_t index) noexcept {
  std::uint64_t head = head_.load(std::memory_order_relaxed);
  for (;;) {
    next_[index].store(index_of(head), std::memory_order_relaxed);
    if (head_.compare_exchange_weak(head, pack(next_tag(head), index), std::memory_order_release,
                                    std::memory_order_relaxed)) {
      return;
    }
  }
}

GiveStatus GridCore::give(Cell& cell) noexcept {
  if (cell.core_ == nullptr) return GiveStatus::empty_cell;
  if (cell.core_ != this) return GiveStatus::foreign_cell;
  cell.reset();
  return GiveStatus::ok;
}

void GridCore::give_back(std::uint32_t index) noexcept {
  if (orphaned_.load(std::memory_order_acquire)) {
    // The Grid is gone: nobody takes again, so the cell need not be listed.
    if (outstanding_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    return;
  }
  push(index);
}

void GridCore::release_owner() noexcept {
  // No take/give runs concurrently (the Grid's contract), so the list is still.
  std::size_t free_cells = 0;
  for (std::uint32_t i = index_of(head_.load(std::memory_order_acquire)); i != kNone;
       i = next_[i].load(std::memory_order_relaxed)) {
    ++free_cells;
  }
  if (free_cells == cells_) {
    delete this;
    return;
  }
  outstanding_.store(cells_ - free_cells, std::memory_order_relaxed);
  orphaned_.store(true, std::memory_order_release);
}

}  // namespace unimem::detail
