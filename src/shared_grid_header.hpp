// src/shared_grid_header.hpp — the state a SharedGrid keeps in its Block.
//
// Layout: this header, then one 32-bit link per cell, then (from the first
// page boundary after them) the cells. Everything is an index or an offset,
// so every process agrees whatever address it mapped the Block at. Internal;
// the tests use it to play a hostile or very fast peer.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "unimem/grid.hpp"

namespace unimem::detail {

struct SharedGridHeader {
  std::uint64_t magic;  // "unimemG2" once formatted, published last ("unimemG1": the 32-bit tag layout)
  std::uint64_t cell_size;
  std::uint64_t cells;
  std::uint64_t data_offset;
  alignas(64) TaggedHead head;  // see src/tagged_stack.hpp
  // followed by `cells` links: std::atomic<std::uint32_t>
};

inline std::atomic<std::uint32_t>* links(SharedGridHeader* h) noexcept {
  return reinterpret_cast<std::atomic<std::uint32_t>*>(reinterpret_cast<std::byte*>(h) + sizeof(SharedGridHeader));
}

}  // namespace unimem::detail
