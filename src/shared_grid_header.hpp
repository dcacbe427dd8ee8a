// src/shared_grid_header.hpp — the state a SharedGrid keeps in its Block.
//
// Layout: this header, then one 32-bit link per cell; from the next page
// boundary one 64-bit generation per cell (its own pages, so that they can be
// exported read-only to remote readers while the cells are exported
// writable: src/remote/); then, from the next page boundary, the cells. Everything is an index or an offset,
// so every process agrees whatever address it mapped the Block at. Internal;
// the tests use it to play a hostile or very fast peer.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "unimem/grid.hpp"

namespace unimem::detail {

struct SharedGridHeader {
  std::uint64_t magic;  // "unimemG3" once formatted, published last ("unimemG2": no generations,
                        // "unimemG1": the 32-bit tag layout)
  std::uint64_t cell_size;
  std::uint64_t cells;
  std::uint64_t data_offset;
  std::uint64_t generations_offset;
  alignas(64) TaggedHead head;  // see src/tagged_stack.hpp
  // followed by `cells` links: std::atomic<std::uint32_t>
};

// Where a grid of `cells` cells keeps its generations and its cells (offsets
// from the Block's start, page-aligned).
struct SharedGridOffsets {
  std::size_t generations;
  std::size_t data;
};
inline SharedGridOffsets shared_grid_offsets(std::size_t cells, std::size_t page) noexcept {
  auto round_up = [page](std::size_t bytes) { return (bytes + page - 1) / page * page; };
  const std::size_t generations = round_up(sizeof(SharedGridHeader) + cells * sizeof(std::uint32_t));
  return {generations, round_up(generations + cells * sizeof(std::uint64_t))};
}

inline std::atomic<std::uint32_t>* links(SharedGridHeader* h) noexcept {
  return reinterpret_cast<std::atomic<std::uint32_t>*>(reinterpret_cast<std::byte*>(h) + sizeof(SharedGridHeader));
}

}  // namespace unimem::detail
