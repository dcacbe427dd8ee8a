// unimem/internal/grid_core.hpp — GridCore, the size-agnostic implementation behind every Grid<...>. Internal.
//
// Grid<CellSize, Cells> is a thin template over one GridCore, which owns the
// Block, the shared free list and the count of cells out; src/grid.cpp and
// src/grid_cache.cpp implement it. It is in the installed headers only
// because Grid's inline members call it: not part of the API, may change.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "unimem/block.hpp"
#include "unimem/cell.hpp"
#include "unimem/detail/fork_watch.hpp"
#include "unimem/internal/tagged_head.hpp"

namespace unimem::detail {

class GridCore;
class TaggedStack;

class GridCore {
 public:
  static constexpr std::uint32_t kMaxCacheCells = 32;

  // Throws Error(invalid_argument) for bad sizes, and Block::open's errors.
  GridCore(std::size_t cell_size, std::size_t cells, const BlockOptions& options);
  GridCore(const GridCore&) = delete;
  GridCore& operator=(const GridCore&) = delete;

  CellHandle<GridCore> take() noexcept;
  GiveStatus give(CellHandle<GridCore>& cell) noexcept;
  // Called by a cell returning home. Never throws.
  void give_back(std::uint32_t index) noexcept;
  // Called by the owning Grid's destructor: frees the core now, or when the
  // last cell out or cached comes back.
  void release_owner() noexcept;

  // The shared list, for thread caches (src/grid_cache.cpp). pop_batch takes
  // up to `max` cells; flush returns `n` cells and may free the core (when
  // orphaned and they were the last ones out), so the caller must not touch
  // the core after it.
  std::uint32_t pop_batch(std::uint32_t* out, std::uint32_t max) noexcept;
  void flush(const std::uint32_t* cells, std::uint32_t n) noexcept;
  CellHandle<GridCore> make_cell(std::uint32_t index) noexcept;
  // One cell straight from the shared list, no thread cache. Never throws.
  CellHandle<GridCore> take_shared() noexcept;

  std::size_t cell_size() const noexcept { return cell_size_; }
  std::size_t cells() const noexcept { return cells_; }
  std::uint32_t cache_cells() const noexcept { return cache_cells_; }
  std::uint64_t uid() const noexcept { return uid_; }
  bool orphaned() const noexcept { return orphaned_.load(std::memory_order_acquire); }
  bool forked() const noexcept { return forked_; }
  const Block& block() const noexcept { return block_; }

 private:
  ~GridCore() = default;
  static void on_fork_child(void* core) noexcept;
  TaggedStack list() noexcept;  // the shared free list over head_ and next_

  void release_refs(std::size_t n) noexcept;

  // Read on every take/give; written once (orphaned_ at most once, forked_
  // only in a forked child, before any of its threads runs).
  std::size_t cell_size_;
  std::size_t cells_;
  std::uint32_t cache_cells_;
  bool forked_ = false;
  std::uint64_t uid_;                  // never reused, unlike addresses: names the core in thread caches
  std::atomic<bool> orphaned_{false};  // the Grid is gone; cells still out or cached
  Block block_;
  std::unique_ptr<std::atomic<std::uint32_t>[]> next_;  // free-list links, one per cell
  ForkWatch fork_watch_;

  // Written when cells move between the shared list and thread caches or Cells.
  alignas(64) TaggedHead head_;    // see src/tagged_stack.hpp
  std::atomic<std::size_t> refs_;  // 1 (the Grid) + cells not in the shared list
};

inline CellHandle<GridCore> GridCore::make_cell(std::uint32_t index) noexcept {
  return CellHandle<GridCore>(this, block_.data() + std::size_t{index} * cell_size_, index);
}

}  // namespace unimem::detail
