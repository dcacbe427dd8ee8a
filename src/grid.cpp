// src/grid.cpp — Grid's shared free list and lifetime.
//
// The free list is a TaggedStack (src/tagged_stack.hpp, shared with
// SharedGrid) over a side array of links. Cells move on and off it in batches
// (thread caches, src/grid_cache.cpp): a batch pop walks up to N links from
// the head and swings the head past them in one compare-exchange; if the head
// is unchanged (same tag), no push or pop happened meanwhile, so the walked
// links were stable.
//
// Membership is checked by identity: a Cell remembers its GridCore, so a cell
// from another grid is refused before any index is used, and a Cell handle is
// emptied when given, so the same cell cannot go back twice.
//
// Lifetime: refs_ counts the Grid itself plus every cell not on the shared
// list (out as a Cell, or in some thread's cache). The Grid's destructor
// drops its reference; whoever brings refs_ to zero (the destructor, or the
// last Cell or thread cache to come back) frees the core and its Block. Cells
// that come back to an orphaned core only count down.
//
// fork(): the child's copy of the core is marked forked (detail::ForkWatch)
// and hands out nothing; cells given back there only count down.
#include "unimem/grid.hpp"

#include <algorithm>
#include <string>
#include <thread>

#include "grid_cache.hpp"
#include "tagged_stack.hpp"

namespace unimem::detail {
namespace {

std::atomic<std::uint64_t> next_uid{1};

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

// Enough cached cells to amortise the shared list, few enough that caches on
// every hardware thread hold at most an eighth of the grid.
std::uint32_t choose_cache_cells(std::size_t cells) {
  const std::size_t threads = std::max(1u, std::thread::hardware_concurrency());
  const std::size_t n = std::min<std::size_t>(GridCore::kMaxCacheCells, cells / (8 * threads));
  return n < 4 ? 0 : static_cast<std::uint32_t>(n & ~std::size_t{1});
}

}  // namespace

GridCore::GridCore(std::size_t cell_size, std::size_t cells, const BlockOptions& options)
    : cell_size_(cell_size),
      cells_(cells),
      cache_cells_(0),
      uid_(next_uid.fetch_add(1, std::memory_order_relaxed)),
      block_(open_cells(cell_size, cells, options)),
      next_(new std::atomic<std::uint32_t>[cells]),
      fork_watch_(this, &GridCore::on_fork_child),
      head_{},
      refs_(1) {
  cache_cells_ = choose_cache_cells(cells);
  list().format();  // lowest index first: 0 -> 1 -> ... -> cells-1 -> none
}

TaggedStack GridCore::list() noexcept { return TaggedStack(&head_, next_.get(), static_cast<std::uint32_t>(cells_)); }

void GridCore::on_fork_child(void* core) noexcept { static_cast<GridCore*>(core)->forked_ = true; }

std::uint32_t GridCore::pop_batch(std::uint32_t* out, std::uint32_t max) noexcept {
  const std::uint32_t n = list().pop(out, max);
  if (n != 0) refs_.fetch_add(n, std::memory_order_relaxed);
  return n;
}

void GridCore::release_refs(std::size_t n) noexcept {
  if (refs_.fetch_sub(n, std::memory_order_acq_rel) == n) delete this;
}

void GridCore::flush(const std::uint32_t* cells, std::uint32_t n) noexcept {
  if (n == 0) return;
  // Once orphaned (or forked) nobody takes again: the cells need not be listed.
  if (!forked_ && !orphaned_.load(std::memory_order_acquire)) list().push(cells, n);
  release_refs(n);  // last access: may free this core
}

Cell GridCore::take_shared() noexcept {
  std::uint32_t index;
  return pop_batch(&index, 1) ? make_cell(index) : Cell();
}

GiveStatus GridCore::give(Cell& cell) noexcept { return cell.give_to(this); }

void GridCore::release_owner() noexcept {
  orphaned_.store(true, std::memory_order_release);
  if (cache_cells_ != 0) grid_cache::drop(*this);  // this thread's cached cells
  release_refs(1);
}

}  // namespace unimem::detail
