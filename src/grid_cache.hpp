// src/grid_cache.hpp — per-thread caches of free Grid cells.
#pragma once

#include <cstdint>

#include "unimem/grid.hpp"

namespace unimem::detail::grid_cache {

// A cell from this thread's cache of `core`, refilled from the shared list in
// a batch when empty; an empty Cell when the grid has none. Never throws.
Cell take(GridCore& core) noexcept;

// Puts `index` in this thread's cache of `core`, spilling half the cache to
// the shared list when full. Returns false when the cell was not cached (the
// grid is orphaned, or the thread is exiting): the caller returns it. Never
// throws.
bool give(GridCore& core, std::uint32_t index) noexcept;

// Returns this thread's cached cells of `core` to it. Never throws.
void drop(GridCore& core) noexcept;

}  // namespace unimem::detail::grid_cache
