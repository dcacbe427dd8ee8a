// src/platform/region.hpp — the seam between Block and the operating system.
//
// Everything Block needs from a platform is here: create, map, pin and warm a
// shareable region, and tear it down. Linux implements it in platform/linux/
// (memfd + mmap + mlock2); Apple Silicon will implement it in platform/apple/
// (IOSurface + lock). A new platform is one new folder and one line in
// CMakeLists.txt; nothing above Block changes.
#pragma once

#include <cstddef>

#include "unimem/block.hpp"

namespace unimem::platform {

// The granularity of a Region's size. Never throws.
std::size_t page_size() noexcept;

// Creates and maps a fresh shareable region of exactly `bytes` bytes, which the
// caller has already validated as non-zero and a multiple of page_size().
// Applies options.pinning and options.backing. Throws Error; on throw, nothing
// stays created, mapped or open.
detail::Region map_region(std::size_t bytes, const BlockOptions& options);

// Undoes map_region. Safe on an empty Region. Never throws.
void unmap_region(detail::Region& region) noexcept;

}  // namespace unimem::platform
