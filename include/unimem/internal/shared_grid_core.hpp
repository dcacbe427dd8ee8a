// unimem/internal/shared_grid_core.hpp — SharedGridCore, what a SharedGrid and its cells share in this process.
// Internal.
//
// The mapping, the sizes validated at attach, and a count of the cells out,
// which may outlive the SharedGrid (its cells keep it). src/shared_grid.cpp
// implements it. In the installed headers only because SharedCell's inline
// members call it: not part of the API, may change.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "unimem/block.hpp"
#include "unimem/cell.hpp"
#include "unimem/detail/fork_watch.hpp"

namespace unimem::detail {

class TaggedStack;

class SharedGridCore {
 public:
  // Formats (cells != 0) or validates (cells == 0) the Block's header.
  SharedGridCore(Block block, std::size_t cell_size, std::size_t cells);
  SharedGridCore(const SharedGridCore&) = delete;
  SharedGridCore& operator=(const SharedGridCore&) = delete;

  CellHandle<SharedGridCore> take() noexcept;
  GiveStatus give(CellHandle<SharedGridCore>& cell) noexcept;
  // Pushes a cell back on the shared list (what a cell's reset() calls).
  void give_back(std::uint32_t index) noexcept;
  // The SharedGrid is gone: frees the core now or when the last cell is back.
  void release_owner() noexcept;

  std::size_t cell_size() const noexcept { return cell_size_; }
  std::size_t cells() const noexcept { return cells_; }
  std::size_t offset_of(std::uint32_t index) const noexcept { return data_offset_ + std::size_t{index} * cell_size_; }
  std::uint64_t generation(std::uint32_t index) const noexcept {
    return index < cells_ ? generations_[index].load(std::memory_order_acquire) : 0;
  }
  std::size_t generations_offset() const noexcept { return generations_offset_; }
  const Block& block() const noexcept { return block_; }
  bool forked() const noexcept { return forked_; }

 private:
  ~SharedGridCore() = default;
  static void on_fork_child(void* core) noexcept;
  TaggedStack list() const noexcept;
  void release_refs(std::size_t n) noexcept;

  Block block_;
  std::size_t data_offset_ = 0;
  std::size_t cell_size_ = 0;
  std::size_t cells_ = 0;
  std::size_t generations_offset_ = 0;
  std::atomic<std::uint64_t>* generations_ = nullptr;  // in the Block: one per cell
  bool forked_ = false;                                // set only in a forked child, before any of its threads runs
  ForkWatch fork_watch_{this, &SharedGridCore::on_fork_child};
  std::atomic<std::size_t> refs_{1};  // 1 (the SharedGrid) + cells out in this process
};

}  // namespace unimem::detail
