// src/grid_cache.hpp — per-thread caches of free Grid cells.
#pragma once

#include <cstdint>

#include "unimem/grid.hpp"

namespace unimem::detail::grid_cache {

// The cache's take and give are GridCore::take() and GridCore::give_back()
// themselves (src/grid_cache.cpp), where they compile into one function each.

// Returns this thread's cached cells of `core` to it. Never throws.
void drop(GridCore& core) noexcept;

}  // namespace unimem::detail::grid_cache
