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
#include "unimem/detail/fork_watch.hpp"

namespace unimem {

// Marks a Grid whose sizes are chosen at run time (cf. std::dynamic_extent).
inline constexpr std::size_t dynamic = std::numeric_limits<std::size_t>::max();

// Cell sizes are multiples of this, and cells are aligned to it.
inline constexpr std::size_t kCellAlign = 64;

enum class [[nodiscard]] GiveStatus : std::uint8_t{
    ok,            // the cell is back in the grid; the Cell handle is now empty
    empty_cell,    // the Cell holds nothing (given already, or moved from); nothing changed
    foreign_cell,  // the Cell belongs to another grid; nothing changed, the Cell still holds it
};

namespace detail {
class GridCore;
class TaggedStack;

// The head of a tagged free list (src/tagged_stack.hpp): the first free
// index and a tag bumped by every change, swapped together in 16 bytes.
struct alignas(16) TaggedHead {
  std::uint64_t index;
  std::uint64_t tag;
};

// An owning handle to one cell of a `Pool` (GridCore, SharedGrid). Move-only;
// returns the cell to its pool when destroyed. An empty handle (default-
// constructed, moved-from, given, or what take() returns when the pool is
// exhausted) converts to false. The pool provides cell_size() and
// give_back(index).
template <class Pool>
class CellHandle {
 public:
  CellHandle() noexcept = default;
  CellHandle(CellHandle&& other) noexcept
      : pool_(std::exchange(other.pool_, nullptr)), data_(other.data_), index_(other.index_) {}
  CellHandle& operator=(CellHandle&& other) noexcept {
    if (this != &other) {
      reset();
      pool_ = std::exchange(other.pool_, nullptr);
      data_ = other.data_;
      index_ = other.index_;
    }
    return *this;
  }
  CellHandle(const CellHandle&) = delete;
  CellHandle& operator=(const CellHandle&) = delete;
  ~CellHandle() { reset(); }

  explicit operator bool() const noexcept { return pool_ != nullptr; }
  // The cell's first byte (64-byte aligned), or nullptr when empty.
  std::byte* data() const noexcept { return pool_ ? data_ : nullptr; }
  // The cell's size in bytes, or 0 when empty.
  std::size_t size() const noexcept { return pool_ ? pool_->cell_size() : 0; }
  std::span<std::byte> bytes() const noexcept { return {data(), size()}; }
  // The cell's position in its pool, in [0, cells()). Meaningless when empty.
  std::uint32_t index() const noexcept { return index_; }

  // The cell as an array of T (T must be implicit-lifetime, e.g. float).
  template <class T>
  std::span<T> as() const noexcept {
    return {reinterpret_cast<T*>(data()), size() / sizeof(T)};
  }

  // Returns the cell to its pool now; the handle becomes empty. Never throws.
  void reset() noexcept {
    if (pool_ != nullptr) std::exchange(pool_, nullptr)->give_back(index_);
  }

 private:
  friend Pool;
  // What every pool's give() does: refuses an empty cell or one of another
  // pool (leaving it untouched), else returns it to `pool`. Never throws.
  GiveStatus give_to(const Pool* pool) noexcept {
    if (pool_ == nullptr) return GiveStatus::empty_cell;
    if (pool_ != pool) return GiveStatus::foreign_cell;
    reset();
    return GiveStatus::ok;
  }

  CellHandle(Pool* pool, std::byte* data, std::uint32_t index) noexcept : pool_(pool), data_(data), index_(index) {}

  Pool* pool_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint32_t index_ = 0;
};
}  // namespace detail

// A cell of a Grid: see detail::CellHandle.
using Cell = detail::CellHandle<detail::GridCore>;

namespace detail {

// The size-agnostic implementation behind every Grid<...>. Internal.
class GridCore {
 public:
  static constexpr std::uint32_t kMaxCacheCells = 32;

  // Throws Error(invalid_argument) for bad sizes, and Block::open's errors.
  GridCore(std::size_t cell_size, std::size_t cells, const BlockOptions& options);
  GridCore(const GridCore&) = delete;
  GridCore& operator=(const GridCore&) = delete;

  Cell take() noexcept;
  GiveStatus give(Cell& cell) noexcept;
  // Called by a Cell returning home. Never throws.
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
  Cell make_cell(std::uint32_t index) noexcept;
  // One cell straight from the shared list, no thread cache. Never throws.
  Cell take_shared() noexcept;

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

inline Cell GridCore::make_cell(std::uint32_t index) noexcept {
  return Cell(this, block_.data() + std::size_t{index} * cell_size_, index);
}

}  // namespace detail

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
