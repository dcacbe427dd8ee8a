// unimem/share.hpp — one Block, several processes.
//
// Three ways to hand a Block to another process, all mapping the very same
// pages (writes on either side are seen by the other):
//   * by name: block.id().to_string() to any process of the same user, which
//     calls Block::attach(BlockId::parse(text)) while the owner keeps it open;
//   * on Linux, as a descriptor (<unimem/linux.hpp>): over a connected Unix
//     domain socket (send_block / receive_block), or to a child across
//     fork/exec (inheritable_descriptor, then adopt_block in the child).
// No named object is ever created: the pages go away when the last process
// holding them exits, however it exits.
//
// SharedTape and SharedGrid keep their allocation state (cursor, free list)
// inside the Block, as offsets, so several processes allocate from one Block
// at once without handing out the same bytes twice. Each process builds its
// own SharedTape/SharedGrid object over its own mapping of the Block.
//
// Thread and process safety: as Tape and Grid, across every process that
// maps the Block. A process killed while it holds cells or taken memory
// leaves the others working; what it held stays taken until the Block is
// cleared (SharedTape) or re-created (SharedGrid).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include "unimem/block.hpp"
#include "unimem/cell.hpp"
#include "unimem/grid.hpp"
#include "unimem/internal/shared_grid_core.hpp"
#include "unimem/layout.hpp"
#include "unimem/tape.hpp"

namespace unimem {

namespace detail {
struct SharedTapeHeader;
struct SharedGridHeader;
}  // namespace detail

// A bump allocator whose cursor lives in its Block. Alignments up to the page
// size hold in every process (offsets are aligned, and every process maps the
// Block page-aligned).
class SharedTape {
 public:
  // Formats `block` as an empty shared tape: the first page holds the state,
  // the rest is handed out. Throws Error(invalid_argument) for a Block that is
  // read-only or too small (under two pages).
  static SharedTape create(Block block);
  // Uses a Block another process formatted with create(). Throws
  // Error(not_a_block) when its header does not match. A read-only Block can
  // be attached for reading what others wrote; take() and clear() on it fail.
  static SharedTape attach(Block block);

  // A moved-from SharedTape is empty: takes fail with invalid_size.
  SharedTape(SharedTape&& other) noexcept;
  SharedTape& operator=(SharedTape&& other) noexcept;
  SharedTape(const SharedTape&) = delete;
  SharedTape& operator=(const SharedTape&) = delete;

  // As Tape::take, with align at most the page size (larger: invalid_align);
  // TakeStatus::read_only on a read-only mapping. Never throws.
  Taken take(std::size_t size, std::size_t align = alignof(std::max_align_t)) noexcept;
  template <class T>
  std::span<T> take(std::size_t count) noexcept {
    return detail::take_span<T>(*this, count);
  }
  // As Tape::clear, for every process. Never throws (no-op when read-only).
  void clear() noexcept;

  std::size_t used() const noexcept;
  std::size_t total() const noexcept { return capacity_; }
  std::size_t free() const noexcept { return total() - used(); }
  // The offset of `p` from the Block's start, the same in every process.
  std::size_t offset_of(const void* p) const noexcept {
    return static_cast<std::size_t>(static_cast<const std::byte*>(p) - block_.data());
  }
  // The pointer, in this process, for an offset from offset_of(); nullptr when
  // the offset is outside the handed-out area.
  std::byte* at(std::size_t offset) const noexcept {
    return offset >= data_offset_ && offset < data_offset_ + capacity_ ? block_.data() + offset : nullptr;
  }
  const Block& block() const noexcept { return block_; }

 private:
  SharedTape(Block block, bool format);
  detail::SharedTapeHeader* header() const noexcept;

  Block block_;
  std::size_t data_offset_ = 0;
  std::size_t capacity_ = 0;
};

// A cell of a SharedGrid: the same handle as a Grid's Cell (unimem/cell.hpp:
// data(), size(), index(), as<T>(); converts to false when empty), over the
// shared list. It goes back when destroyed or reset(). It may outlive the
// SharedGrid it came from: its memory stays valid (the mapping is kept) until
// it goes back, and it goes back to the shared list, where every other
// process can take it again.
using SharedCell = detail::CellHandle<detail::SharedGridCore>;

// A pool of fixed-size cells whose free list lives in its Block (the tagged
// stack Grid uses, src/tagged_stack.hpp; no thread caches, since they cannot
// survive a process being killed).
//
// Trust: every process of the user that maps the Block can write its header
// and free list. attach() reads each header field once and validates that
// copy; take() and give() check every index they read from the Block. A
// corrupt or hostile peer can make take() come back empty (or hand out cells
// it also hands out), but never makes this process read or write outside the
// Block.
//
// fork(): the shared state lives in the Block, but a SharedGrid object and
// its SharedCells are this process's (they count what it holds). In a child
// forked after they were made, take() comes back empty and inherited cells
// are dropped, not given back, when destroyed there: the parent still holds
// them. A child attaches its own: SharedGrid::attach(Block::attach(id)).
class SharedGrid {
 public:
  // Formats `block` for `cells` cells of `cell_size` bytes (a non-zero
  // multiple of 64); the state takes the first pages. Throws
  // Error(invalid_argument) when the sizes are bad or do not fit the Block.
  static SharedGrid create(Block block, std::size_t cell_size, std::size_t cells);
  // Uses a Block another process formatted with create(). Throws
  // Error(not_a_block) when its header does not match.
  static SharedGrid attach(Block block);

  // A moved-from SharedGrid hands out nothing; its cells stay valid.
  SharedGrid(SharedGrid&& other) noexcept;
  SharedGrid& operator=(SharedGrid&& other) noexcept;
  SharedGrid(const SharedGrid&) = delete;
  SharedGrid& operator=(const SharedGrid&) = delete;
  // Keeps the Block mapped until the last cell taken here goes back.
  ~SharedGrid();

  // A free cell, or an empty SharedCell when all are out. Lock-free across
  // processes; never throws.
  SharedCell take() noexcept;
  // Returns `cell` early. Refuses (and leaves untouched) a cell of another
  // grid and an empty one. Never throws.
  GiveStatus give(SharedCell&& cell) noexcept;

  std::size_t cell_size() const noexcept;
  std::size_t cells() const noexcept;
  // The offset of a cell's data from the Block's start, the same in every process.
  std::size_t offset_of(std::uint32_t index) const noexcept;
  // Cell `index`'s generation: 0 when formatted, bumped (by one) when the
  // cell is taken and again when it is given back, in any process, so it is
  // odd while the cell is held and even while it is free. A reader that sees
  // the same value before and after reading a cell's bytes knows the cell did
  // not change hands meanwhile (remote readers: unimem/remote.hpp). 0 for an
  // index not below cells() or a moved-from SharedGrid. Never throws.
  std::uint64_t generation(std::uint32_t index) const noexcept;
  // Where the generations live in the Block: cells() 64-bit little-endian
  // counters from this offset (page-aligned, on pages of their own, before
  // offset_of(0)). 0 for a moved-from SharedGrid.
  std::size_t generations_offset() const noexcept;
  // The bytes a Block needs before the first cell for a grid of `cells`
  // cells (its header, free list and generations): offset_of(0) of such a
  // grid. A Block of state_bytes(cells) + cells x cell_size bytes holds it.
  static std::size_t state_bytes(std::size_t cells) noexcept;
  const Block& block() const noexcept;
  // True in a process forked after this SharedGrid was made (see fork() above).
  bool forked() const noexcept;

 private:
  explicit SharedGrid(detail::SharedGridCore* core) noexcept : core_(core) {}
  detail::SharedGridCore* core_;  // owned, but may outlive the SharedGrid (its cells)
};

// A Layout for several processes: the weights live in a SharedTape that one
// process loads and the others attach read-only (a write there faults);
// scratch and history stay each process's own Tapes.
class SharedLayout : public detail::LayoutTapes<SharedTape> {
 public:
  // The loading process: a fresh shared weights Tape. Throws Block::open's errors.
  static SharedLayout create(std::size_t weights_bytes, std::size_t scratch_bytes, std::size_t history_bytes,
                             const BlockOptions& options = {});
  // Another process: the weights another process created, attached read-only
  // by id. Throws Block::attach's and SharedTape::attach's errors.
  static SharedLayout attach(const BlockId& weights, std::size_t scratch_bytes, std::size_t history_bytes,
                             const BlockOptions& options = {});

  // As Layout::stat; the weights line says "(shared)" or "(shared, read-only)".
  std::string stat() const;

 private:
  using LayoutTapes::LayoutTapes;
};

}  // namespace unimem
