// unimem/cell.hpp — what Grid and SharedGrid lend out: an owning cell handle.
//
// Cell (grid.hpp) and SharedCell (share.hpp) are this one template over
// their pool; giving a cell back early says what happened as a GiveStatus.
// Included by grid.hpp and share.hpp; there is no need to include it alone.
//
// Thread safety: a handle is one object: moving, resetting or destroying it
// must not race with another use of the same handle; different handles of
// one pool may be used on any threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace unimem {

enum class [[nodiscard]] GiveStatus : std::uint8_t{
    ok,            // the cell is back in the grid; the Cell handle is now empty
    empty_cell,    // the Cell holds nothing (given already, or moved from); nothing changed
    foreign_cell,  // the Cell belongs to another grid; nothing changed, the Cell still holds it
};

namespace detail {

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
}  // namespace unimem
