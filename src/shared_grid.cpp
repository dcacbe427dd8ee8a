// src/shared_grid.cpp — a Grid whose free list lives in its Block.
//
// Layout: header (magic, sizes, tagged head) and one 32-bit link per cell in
// the first pages, then the cells. Everything is an index or an offset, so
// every process agrees whatever address it mapped the Block at. The head packs
// a 32-bit tag with the first free index against ABA, as Grid's list does.
// Links are read with bounds checks: another process can only corrupt them by
// writing the header itself, and then take() reports the grid empty rather
// than reading outside it.
#include <cstring>
#include <limits>
#include <new>
#include <string>

#include "unimem/share.hpp"

namespace unimem {
namespace detail {

struct SharedGridHeader {
  char magic[8];
  std::uint64_t cell_size;
  std::uint64_t cells;
  std::uint64_t data_offset;
  alignas(64) std::atomic<std::uint64_t> head;  // (tag << 32) | first free index
  // followed by `cells` links: std::atomic<std::uint32_t>
};

inline std::atomic<std::uint32_t>* links(SharedGridHeader* h) noexcept {
  return reinterpret_cast<std::atomic<std::uint32_t>*>(reinterpret_cast<std::byte*>(h) + sizeof(SharedGridHeader));
}

}  // namespace detail

namespace {

constexpr char kMagic[8] = {'u', 'n', 'i', 'm', 'e', 'm', 'G', '1'};
constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

constexpr std::uint64_t pack(std::uint64_t tag, std::uint32_t index) { return (tag << 32) | index; }
constexpr std::uint32_t index_of(std::uint64_t head) { return static_cast<std::uint32_t>(head); }

std::size_t data_offset_for(std::size_t cells) {
  const std::size_t page = Block::page_size();
  const std::size_t bytes = sizeof(detail::SharedGridHeader) + cells * sizeof(std::uint32_t);
  return (bytes + page - 1) / page * page;
}

}  // namespace

SharedGrid::SharedGrid(Block block, std::size_t cell_size, std::size_t cells) : block_(std::move(block)) {
  auto* h = header();
  if (cells != 0) {  // format
    auto fail = [&](const std::string& why) {
      throw Error(Errc::invalid_argument, 0, "unimem: SharedGrid::create: " + why);
    };
    if (block_.read_only()) fail("the Block is read-only");
    if (cell_size == 0 || cell_size % kCellAlign != 0) fail("cell size " + std::to_string(cell_size) + " is not a non-zero multiple of 64");
    if (cells >= kNone) fail("cell count " + std::to_string(cells) + " is not below 2^32 - 1");
    const std::size_t offset = data_offset_for(cells);
    if (offset > block_.size() || cell_size > (block_.size() - offset) / cells) {
      fail(std::to_string(cells) + " cells of " + std::to_string(cell_size) + " bytes and their state do not fit a Block of " +
           std::to_string(block_.size()) + " bytes");
    }
    h = new (block_.data()) detail::SharedGridHeader{};
    h->cell_size = cell_size;
    h->cells = cells;
    h->data_offset = offset;
    for (std::size_t i = 0; i < cells; ++i) {
      new (detail::links(h) + i) std::atomic<std::uint32_t>(i + 1 < cells ? static_cast<std::uint32_t>(i + 1) : kNone);
    }
    h->head.store(pack(0, 0), std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    std::memcpy(h->magic, kMagic, sizeof kMagic);
  } else {  // validate
    const bool ok = block_.size() >= Block::page_size() && std::memcmp(h->magic, kMagic, sizeof kMagic) == 0 &&
                    h->cell_size != 0 && h->cell_size % kCellAlign == 0 && h->cells != 0 && h->cells < kNone &&
                    h->data_offset == data_offset_for(h->cells) && h->data_offset <= block_.size() &&
                    h->cell_size <= (block_.size() - h->data_offset) / h->cells;
    if (!ok) {
      throw Error(Errc::not_a_block, 0, "unimem: SharedGrid::attach: the Block's header is not a shared grid's");
    }
  }
  cell_size_ = h->cell_size;
  cells_ = h->cells;
  data_offset_ = h->data_offset;
}

SharedGrid SharedGrid::create(Block block, std::size_t cell_size, std::size_t cells) {
  if (cells == 0) throw Error(Errc::invalid_argument, 0, "unimem: SharedGrid::create: zero cells");
  return SharedGrid(std::move(block), cell_size, cells);
}

SharedGrid SharedGrid::attach(Block block) { return SharedGrid(std::move(block), 0, 0); }

detail::SharedGridHeader* SharedGrid::header() const noexcept {
  return std::launder(reinterpret_cast<detail::SharedGridHeader*>(block_.data()));
}

SharedCell SharedGrid::take() noexcept {
  if (block_.read_only()) return {};
  auto* h = header();
  std::uint64_t head = h->head.load(std::memory_order_acquire);
  for (;;) {
    const std::uint32_t index = index_of(head);
    if (index >= cells_) return {};  // kNone: every cell is out
    const std::uint32_t next = detail::links(h)[index].load(std::memory_order_relaxed);
    if (h->head.compare_exchange_weak(head, pack((head >> 32) + 1, next), std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      return SharedCell(this, block_.data() + offset_of(index), index);
    }
  }
}

void SharedGrid::give_back(std::uint32_t index) noexcept {
  auto* h = header();
  std::uint64_t head = h->head.load(std::memory_order_relaxed);
  for (;;) {
    detail::links(h)[index].store(index_of(head), std::memory_order_relaxed);
    if (h->head.compare_exchange_weak(head, pack((head >> 32) + 1, index), std::memory_order_release,
                                      std::memory_order_relaxed)) {
      return;
    }
  }
}

GiveStatus SharedGrid::give(SharedCell&& cell) noexcept {
  if (cell.pool_ == nullptr) return GiveStatus::empty_cell;
  if (cell.pool_ != this) return GiveStatus::foreign_cell;
  cell.reset();
  return GiveStatus::ok;
}

}  // namespace unimem
