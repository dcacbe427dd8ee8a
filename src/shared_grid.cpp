// src/shared_grid.cpp — a Grid whose free list lives in its Block.
//
// The list is the TaggedStack Grid uses (src/tagged_stack.hpp), its head and
// links in the Block (src/shared_grid_header.hpp). Another process of the
// same user can write them at any time, so the sizes this process uses are
// the ones it validated at attach, read once from the header into locals
// (atomic loads: the compiler may not read a field twice), and the stack
// checks every index it reads against that cell count.
//
// Generations: each cell has a 64-bit counter in the Block, bumped when the
// cell is taken and again when it is given back (odd while held), so that a
// reader in another process or on another host (src/remote/) can tell that a
// cell changed hands while it read it. Only the holder of a cell bumps its
// counter, one atomic add each way, so take and give stay lock-free.
//
// Lifetime: as Grid's core, a SharedGridCore counts the SharedGrid and the
// cells out in this process; the last of them unmaps the Block. A cell that
// outlives its SharedGrid still goes back to the shared list, since other
// processes may still take from it. In a forked child the core (copied with
// the process) is marked by detail::ForkWatch: it takes nothing and drops the
// inherited cells, which the parent still holds.
#include <cstring>
#include <limits>
#include <new>
#include <string>

#include "shared_grid_header.hpp"
#include "shared_magic.hpp"
#include "tagged_stack.hpp"
#include "unimem/share.hpp"

namespace unimem {
namespace {

constexpr std::uint64_t kMagic = detail::magic_word("unimemG3");

detail::SharedGridOffsets offsets_for(std::size_t cells) {
  return detail::shared_grid_offsets(cells, Block::page_size());
}

// One read of a header field another process may be changing.
std::uint64_t read_once(std::uint64_t& field) noexcept {
  return std::atomic_ref<std::uint64_t>(field).load(std::memory_order_relaxed);
}

}  // namespace

namespace detail {

SharedGridCore::SharedGridCore(Block block, std::size_t cell_size, std::size_t cells) : block_(std::move(block)) {
  const std::size_t page = Block::page_size();
  if (cells != 0) {  // format
    auto fail = [&](const std::string& why) {
      throw Error(Errc::invalid_argument, 0, "unimem: SharedGrid::create: " + why);
    };
    if (block_.read_only()) fail("the Block is read-only");
    if (cell_size == 0 || cell_size % kCellAlign != 0) {
      fail("cell size " + std::to_string(cell_size) + " is not a non-zero multiple of 64");
    }
    if (cells >= TaggedStack::kNone) fail("cell count " + std::to_string(cells) + " is not below 2^32 - 1");
    const detail::SharedGridOffsets at = offsets_for(cells);
    const std::size_t offset = at.data;
    if (offset > block_.size() || cell_size > (block_.size() - offset) / cells) {
      fail(std::to_string(cells) + " cells of " + std::to_string(cell_size) +
           " bytes and their state do not fit a Block of " + std::to_string(block_.size()) + " bytes");
    }
    auto* h = new (block_.data()) SharedGridHeader{};
    h->cell_size = cell_size;
    h->cells = cells;
    h->data_offset = offset;
    h->generations_offset = at.generations;
    for (std::size_t i = 0; i < cells; ++i) new (links(h) + i) std::atomic<std::uint32_t>();
    generations_ = reinterpret_cast<std::atomic<std::uint64_t>*>(block_.data() + at.generations);
    for (std::size_t i = 0; i < cells; ++i) new (generations_ + i) std::atomic<std::uint64_t>(0);
    cell_size_ = cell_size;
    cells_ = cells;
    data_offset_ = offset;
    generations_offset_ = at.generations;
    list().format();
    publish_magic(h->magic, kMagic);
  } else {  // validate a copy: each field read once
    if (block_.size() < page) {
      throw Error(Errc::not_a_block, 0, "unimem: SharedGrid::attach: the Block is smaller than a page");
    }
    auto* h = std::launder(reinterpret_cast<SharedGridHeader*>(block_.data()));
    const std::uint64_t magic = read_magic(h->magic);
    const std::uint64_t size = read_once(h->cell_size), count = read_once(h->cells), offset = read_once(h->data_offset);
    const std::uint64_t generations = read_once(h->generations_offset);
    const bool counted = count != 0 && count < TaggedStack::kNone;
    const detail::SharedGridOffsets at = offsets_for(counted ? count : 1);
    const bool ok = magic == kMagic && size != 0 && size % kCellAlign == 0 && counted && offset == at.data &&
                    generations == at.generations && offset <= block_.size() &&
                    size <= (block_.size() - offset) / count;
    if (!ok) {
      throw Error(Errc::not_a_block, 0,
                  "unimem: SharedGrid::attach: the Block's header is not a shared grid's (or is of an older "
                  "unimem, or is being changed)");
    }
    cell_size_ = size;
    cells_ = count;
    data_offset_ = offset;
    generations_offset_ = generations;
    generations_ = reinterpret_cast<std::atomic<std::uint64_t>*>(block_.data() + generations);
  }
}

TaggedStack SharedGridCore::list() const noexcept {
  auto* h = std::launder(reinterpret_cast<SharedGridHeader*>(block_.data()));
  return TaggedStack(&h->head, links(h), static_cast<std::uint32_t>(cells_));
}

void SharedGridCore::on_fork_child(void* core) noexcept { static_cast<SharedGridCore*>(core)->forked_ = true; }

SharedCell SharedGridCore::take() noexcept {
  if (block_.read_only() || forked_) return {};
  std::uint32_t index;
  if (list().pop(&index, 1) == 0) return {};
  // Odd from here: the holder's writes come after the bump (the fence orders
  // them after it for a reader that checks the generation around its read).
  generations_[index].fetch_add(1, std::memory_order_acq_rel);
#if !defined(__SANITIZE_THREAD__)  // GCC's ThreadSanitizer refuses fences; the add alone orders it on x86
  std::atomic_thread_fence(std::memory_order_release);
#endif
  refs_.fetch_add(1, std::memory_order_relaxed);
  return SharedCell(this, block_.data() + offset_of(index), index);
}

GiveStatus SharedGridCore::give(SharedCell& cell) noexcept { return cell.give_to(this); }

void SharedGridCore::give_back(std::uint32_t index) noexcept {
  if (!forked_) {                                                 // in a forked child the cell is the parent's
    generations_[index].fetch_add(1, std::memory_order_release);  // even again, after the holder's writes
    list().push(&index, 1);
  }
  release_refs(1);  // last access: may free this core
}

void SharedGridCore::release_refs(std::size_t n) noexcept {
  if (refs_.fetch_sub(n, std::memory_order_acq_rel) == n) delete this;
}

void SharedGridCore::release_owner() noexcept { release_refs(1); }

}  // namespace detail

SharedGrid SharedGrid::create(Block block, std::size_t cell_size, std::size_t cells) {
  if (cells == 0) throw Error(Errc::invalid_argument, 0, "unimem: SharedGrid::create: zero cells");
  return SharedGrid(new detail::SharedGridCore(std::move(block), cell_size, cells));
}

SharedGrid SharedGrid::attach(Block block) { return SharedGrid(new detail::SharedGridCore(std::move(block), 0, 0)); }

SharedGrid::SharedGrid(SharedGrid&& other) noexcept : core_(std::exchange(other.core_, nullptr)) {}

SharedGrid& SharedGrid::operator=(SharedGrid&& other) noexcept {
  if (this != &other) {
    if (core_ != nullptr) core_->release_owner();
    core_ = std::exchange(other.core_, nullptr);
  }
  return *this;
}

SharedGrid::~SharedGrid() {
  if (core_ != nullptr) core_->release_owner();
}

SharedCell SharedGrid::take() noexcept { return core_ != nullptr ? core_->take() : SharedCell(); }

GiveStatus SharedGrid::give(SharedCell&& cell) noexcept {
  return core_ != nullptr ? core_->give(cell) : GiveStatus::foreign_cell;
}

std::size_t SharedGrid::cell_size() const noexcept { return core_ != nullptr ? core_->cell_size() : 0; }
std::size_t SharedGrid::cells() const noexcept { return core_ != nullptr ? core_->cells() : 0; }
std::uint64_t SharedGrid::generation(std::uint32_t index) const noexcept {
  return core_ != nullptr ? core_->generation(index) : 0;
}
std::size_t SharedGrid::generations_offset() const noexcept {
  return core_ != nullptr ? core_->generations_offset() : 0;
}
std::size_t SharedGrid::state_bytes(std::size_t cells) noexcept { return offsets_for(cells).data; }
std::size_t SharedGrid::offset_of(std::uint32_t index) const noexcept {
  return core_ != nullptr ? core_->offset_of(index) : 0;
}
bool SharedGrid::forked() const noexcept { return core_ != nullptr && core_->forked(); }

const Block& SharedGrid::block() const noexcept { return core_ != nullptr ? core_->block() : detail::empty_block(); }

}  // namespace unimem
