// src/shared_tape.cpp — a Tape whose cursor lives in its Block.
//
// Page 0 of the Block holds the header (magic, capacity, cursor); pages 1..n
// are handed out. The cursor is an offset, so every process, whatever address
// it mapped the Block at, agrees on what is taken. Alignment is applied to the
// offset (src/bump.hpp, the loop Tape runs too), which equals alignment of the
// address for any align up to the page size (every mapping is page-aligned).
// Sizes come from this process's own mapping, never from the header, and a
// cursor past the end reads as full: a corrupt header cannot move a take
// outside the Block.
#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "unimem/share.hpp"

#include "bump.hpp"
#include "shared_magic.hpp"

namespace unimem {
namespace detail {

struct SharedTapeHeader {
  std::uint64_t magic;  // "unimemT1", published last (src/shared_magic.hpp)
  std::uint64_t data_offset;
  std::uint64_t capacity;
  alignas(64) std::atomic<std::uint64_t> cursor;
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "shared state needs address-free atomics");

}  // namespace detail

namespace {
constexpr std::uint64_t kMagic = detail::magic_word("unimemT1");
}

SharedTape::SharedTape(Block block, bool format) : block_(std::move(block)) {
  const std::size_t page = Block::page_size();
  if (format) {
    if (block_.read_only())
      throw Error(Errc::invalid_argument, 0, "unimem: SharedTape::create: the Block is read-only");
    if (block_.size() < 2 * page)
      throw Error(Errc::invalid_argument, 0, "unimem: SharedTape::create: the Block needs at least two pages");
    auto* h = new (block_.data()) detail::SharedTapeHeader{};
    h->data_offset = page;
    h->capacity = block_.size() - page;
    h->cursor.store(0, std::memory_order_relaxed);
    detail::publish_magic(h->magic, kMagic);
  } else {
    auto* h = header();
    if (block_.size() < 2 * page || detail::read_magic(h->magic) != kMagic || h->data_offset != page ||
        h->capacity != block_.size() - page) {
      throw Error(Errc::not_a_block, 0,
                  "unimem: SharedTape::attach: the Block's header is not a shared tape's (or was formatted for "
                  "another size or page size)");
    }
  }
  data_offset_ = page;
  capacity_ = block_.size() - page;
}

SharedTape::SharedTape(SharedTape&& other) noexcept
    : block_(std::move(other.block_)),
      data_offset_(std::exchange(other.data_offset_, 0)),
      capacity_(std::exchange(other.capacity_, 0)) {}

SharedTape& SharedTape::operator=(SharedTape&& other) noexcept {
  if (this != &other) {
    block_ = std::move(other.block_);
    data_offset_ = std::exchange(other.data_offset_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

SharedTape SharedTape::create(Block block) { return SharedTape(std::move(block), true); }
SharedTape SharedTape::attach(Block block) { return SharedTape(std::move(block), false); }

detail::SharedTapeHeader* SharedTape::header() const noexcept {
  return std::launder(reinterpret_cast<detail::SharedTapeHeader*>(block_.data()));
}

Taken SharedTape::take(std::size_t size, std::size_t align) noexcept {
  if (align > Block::page_size()) return {nullptr, TakeStatus::invalid_align};  // offsets align addresses up to a page
  if (const TakeStatus bad = detail::check_take(size, align, capacity_); bad != TakeStatus::ok) return {nullptr, bad};
  if (block_.read_only()) return {nullptr, TakeStatus::read_only};
  const detail::Bumped b = detail::bump(header()->cursor, 0, capacity_, size, align);
  if (b.status != TakeStatus::ok) return {nullptr, b.status};
  return {block_.data() + data_offset_ + b.offset, TakeStatus::ok};
}

void SharedTape::clear() noexcept {
  if (!block_.empty() && !block_.read_only()) header()->cursor.store(0, std::memory_order_release);
}

std::size_t SharedTape::used() const noexcept {
  if (block_.empty()) return 0;  // moved from
  // Another process may have written anything there.
  return static_cast<std::size_t>(std::min<std::uint64_t>(header()->cursor.load(std::memory_order_relaxed), capacity_));
}

}  // namespace unimem
