// unimem/grid.hpp — Grid: a lock-free pool of fixed-size cells over a Block.
//
// A Grid cuts one Block into `cells` cells of `cell_size` bytes (a multiple
// of 64; every cell is 64-byte aligned) and lends them out as owning Cell
// handles. A Cell goes back to its Grid when destroyed, or earlier through
// give(). Two forms share one implementation:
//
//   unimem::Grid<4096, 64> fixed;            // sizes fixed at compile time
//   unimem::Grid<> kv(block_bytes, blocks);  // sizes chosen at run time (a KV cache)
//
// Thread safety: take() and give() are lock-free and may be called from any
// number of threads at once; no cell is ever out twice. Writes made to a cell
// before it is given back happen-before the next take() that returns it.
// A Cell may be moved to and destroyed on any thread.
//
// Thread caches: each thread keeps up to cache_cells() free cells of a Grid in
// a private cache in front of the shared lock-free list, moving them to and
// from the list in batches; a take/give pair on one thread then touches no
// shared cache line. So take() may come back empty while other threads'
// caches still hold free cells (at most cache_cells() per thread; grids too
// small to afford that have no caches). A thread's cached cells go back to
// their grid when it exits. Caches cover up to 4 grids per thread at a time.
//
// Lifetime: a Grid may be destroyed while Cells are still out or cached by
// other threads. Their memory stays valid, and the Grid's Block is released
// when the last of them has come back (a Cell destroyed, a thread exited,
// including cells that a thread's own thread_local objects give back while it
// exits). Destroying or moving a Grid must not race with its take()/give()
// (destroying or resetting a Cell is a give). A moved-from Grid hands out
// nothing.
//
// ABA: the shared list's head carries a 64-bit tag (16-byte compare-
// exchange), so a thread stalled inside take() cannot succeed with a stale
// link unless 2^64 list operations happen meanwhile (src/tagged_stack.hpp).
//
// fork(): the Grid's free list and thread caches live in process memory that
// fork() copies, while its cells are shared pages. In a forked child the Grid
// therefore refuses: take() comes back empty, forked() is true, and cells
// given back there are dropped (the parent still owns them). Use SharedGrid
// (unimem/share.hpp) for cells several processes take from.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <utility>

#include "unimem/block.hpp"
#include "unimem/cell.hpp"
#include "unimem/internal/grid_core.hpp"

namespace unimem {

// Marks a Grid whose sizes are chosen at run time (cf. std::dynamic_extent).
inline constexpr std::size_t dynamic = std::numeric_limits<std::size_t>::max();

// Cell sizes are multiples of this, and cells are aligned to it.
inline constexpr std::size_t kCellAlign = 64;

// A cell of a Grid, lent out by take(): an owning handle (detail::CellHandle,
// unimem/cell.hpp) that converts to false when empty, gives data(), size(),
// bytes(), index() and as<T>(), and goes back to its Grid when destroyed or
// reset(), from any thread, even after the Grid itself is gone. Move-only.
using Cell = detail::CellHandle<detail::GridCore>;

template <std::size_t CellSize = dynamic, std::size_t Cells = dynamic>
class Grid {
  static_assert((CellSize == dynamic) == (Cells == dynamic),
                "give both CellSize and Cells, or neither (Grid<> is sized at run time)");
  static_assert(CellSize == dynamic || (CellSize > 0 && CellSize % kCellAlign == 0),
                "CellSize must be a non-zero multiple of 64 bytes");
  static_assert(Cells == dynamic || (Cells > 0 && Cells < std::numeric_limits<std::uint32_t>::max()),
                "Cells must be in [1, 2^32 - 1)");

 public:
  // Compile-time form. Throws Block::open's errors.
  explicit Grid(const BlockOptions& options = {}) requires(CellSize != dynamic)
      : core_(new detail::GridCore(CellSize, Cells, options)) {}

  // Run-time form. Throws Error(invalid_argument) when cell_size is not a
  // non-zero multiple of 64, cells is 0 or 2^32 - 1 or more, or their product
  // overflows; and Block::open's errors.
  Grid(std::size_t cell_size, std::size_t cells, const BlockOptions& options = {}) requires(CellSize == dynamic)
      : core_(new detail::GridCore(cell_size, cells, options)) {}

  Grid(Grid&& other) noexcept : core_(std::exchange(other.core_, nullptr)) {}
  Grid& operator=(Grid&& other) noexcept {
    if (this != &other) {
      if (core_) core_->release_owner();
      core_ = std::exchange(other.core_, nullptr);
    }
    return *this;
  }
  Grid(const Grid&) = delete;
  Grid& operator=(const Grid&) = delete;
  ~Grid() {
    if (core_) core_->release_owner();
  }

  // A free cell, or an empty Cell when all are out (always, in a forked child
  // or a moved-from Grid). Lock-free; never throws.
  Cell take() noexcept { return core_ ? core_->take() : Cell(); }
  // Returns `cell` early. See GiveStatus. Lock-free; never throws.
  GiveStatus give(Cell&& cell) noexcept { return core_ ? core_->give(cell) : GiveStatus::foreign_cell; }

  // 0 for a moved-from Grid.
  std::size_t cell_size() const noexcept { return core_ ? core_->cell_size() : 0; }
  std::size_t cells() const noexcept { return core_ ? core_->cells() : 0; }
  // Free cells one thread may keep in its cache (0: no caching). Chosen from
  // the grid's size and the machine: cells / (8 x hardware threads), at most 32.
  std::size_t cache_cells() const noexcept { return core_ ? core_->cache_cells() : 0; }
  // An empty Block for a moved-from Grid.
  const Block& block() const noexcept { return core_ ? core_->block() : detail::empty_block(); }
  // True in a process forked from the one that built this Grid: take() there
  // always comes back empty (see "fork()" above). Never throws.
  bool forked() const noexcept { return core_ && core_->forked(); }

 private:
  detail::GridCore* core_;  // owned, but may outlive the Grid (see release_owner)
};

}  // namespace unimem
