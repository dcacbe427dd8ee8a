// src/grid_cache.cpp — per-thread caches of free Grid cells.
//
// A shared free list costs a contended compare-exchange per take and per
// give, and collapses under many threads (µs per operation at 16 threads).
// Each thread instead keeps a few free cells of each grid it uses in a
// thread_local array: a take/give pair that hits the cache touches only this
// thread's memory and the grid's read-mostly fields. Misses move half a cache
// between the cache and the shared list in one batch.
//
// Entries name their grid by pointer and uid together: a core's address may
// be reused by a later grid, its uid never is. An entry with cells keeps its
// core alive (they count in the core's refs_), so only entries with cells
// are ever dereferenced. When a thread exits, a thread_local guard returns
// every cached cell to its grid; a grid destroyed meanwhile is freed by the
// last such return. thread_locals die in reverse order of construction, so
// objects the thread built before its first take (and that hold Cells) die
// after the guard: from the guard's run on, this thread caches nothing, and
// such late cells go straight back to their grid's shared list.
//
// GridCore's two hot entry points, take() and give_back(), are defined here
// rather than in grid.cpp, so that a take or a give that hits the cache is
// one call from the header into this file, with the cache's code inlined
// (it was three calls deep: 12 ns per take+give, mostly calls).
#include "grid_cache.hpp"

// initial-exec: one instruction per access. The Python build asks for
// global-dynamic instead (CMakeLists.txt: UNIMEM_PYTHON).
#ifndef UNIMEM_TLS_MODEL
#define UNIMEM_TLS_MODEL "initial-exec"
#endif

namespace unimem::detail::grid_cache {
namespace {

constexpr int kEntries = 4;  // grids cached per thread at once

struct Entry {
  GridCore* core;
  std::uint64_t uid;
  std::uint32_t count;
  std::uint32_t cells[GridCore::kMaxCacheCells];
};

// Trivial, so access needs no guard; the flusher below gives it a destructor.
__attribute__((tls_model(UNIMEM_TLS_MODEL))) thread_local Entry entries[kEntries];
// Set when the flusher has run: the thread is exiting and must not cache.
__attribute__((tls_model(UNIMEM_TLS_MODEL))) thread_local bool exiting = false;

void flush(Entry& e) noexcept {
  const std::uint32_t n = e.count;
  GridCore* core = e.core;
  e.count = 0;
  e.core = nullptr;
  e.uid = 0;
  if (n != 0) core->flush(e.cells, n);  // may free the core: nothing after
}

struct Flusher {
  bool armed = false;
  ~Flusher() {
    exiting = true;
    for (Entry& e : entries) flush(e);
  }
};
thread_local Flusher flusher;

inline Entry* find(const GridCore& core) noexcept {
  for (Entry& e : entries) {
    if (e.core == &core && e.uid == core.uid()) return &e;
  }
  return nullptr;
}

// An entry for `core`: a free one, else one whose grid is gone, else the
// first, whose cells go back to their (live) grid.
Entry& claim(GridCore& core) noexcept {
  flusher.armed = true;  // registers the thread-exit flush
  Entry* chosen = nullptr;
  for (Entry& e : entries) {
    if (e.count == 0) {
      chosen = &e;
      break;
    }
  }
  if (chosen == nullptr) {
    for (Entry& e : entries) {
      if (e.core->orphaned()) {
        chosen = &e;
        break;
      }
    }
  }
  if (chosen == nullptr) chosen = &entries[0];
  flush(*chosen);
  chosen->core = &core;
  chosen->uid = core.uid();
  return *chosen;
}

// A cell from this thread's cache of `core`, refilled from the shared list in
// a batch when empty; an empty Cell when the grid has none.
[[gnu::always_inline]] inline Cell take(GridCore& core) noexcept {
  if (exiting) return core.take_shared();
  Entry* e = find(core);
  if (e != nullptr && e->count != 0) return core.make_cell(e->cells[--e->count]);
  if (e == nullptr) e = &claim(core);
  e->count = core.pop_batch(e->cells, core.cache_cells() / 2);
  if (e->count == 0) return Cell();
  return core.make_cell(e->cells[--e->count]);
}

// Puts `index` in this thread's cache of `core`, spilling half the cache to
// the shared list when full. Returns false when the cell was not cached (the
// grid is orphaned, or the thread is exiting): the caller returns it.
[[gnu::always_inline]] inline bool give(GridCore& core, std::uint32_t index) noexcept {
  if (exiting) return false;  // nobody would flush this cache again
  if (core.orphaned()) {
    drop(core);  // nobody takes from an orphaned grid: empty this thread's cache of it too
    return false;
  }
  Entry* e = find(core);
  if (e == nullptr) e = &claim(core);
  if (e->count == core.cache_cells()) {
    const std::uint32_t half = e->count / 2;
    core.flush(e->cells + half, e->count - half);  // not the last reference: the grid lives
    e->count = half;
  }
  e->cells[e->count++] = index;
  return true;
}

}  // namespace

void drop(GridCore& core) noexcept {
  if (Entry* e = find(core)) flush(*e);
}

}  // namespace unimem::detail::grid_cache

namespace unimem::detail {

Cell GridCore::take() noexcept {
  if (forked_) return Cell();  // the parent owns these cells (see grid.hpp)
  if (cache_cells_ != 0) return grid_cache::take(*this);
  return take_shared();
}

void GridCore::give_back(std::uint32_t index) noexcept {
  if (cache_cells_ != 0 && !forked_ && grid_cache::give(*this, index)) return;
  flush(&index, 1);
}

}  // namespace unimem::detail
