// src/block.cpp — Block: size validation and ownership; the platform does the rest.
#include "unimem/block.hpp"

#include <limits>
#include <utility>

#include "platform/region.hpp"

namespace unimem {

std::size_t Block::page_size() noexcept { return platform::page_size(); }

Block Block::open(std::size_t bytes, const BlockOptions& options) {
  if (bytes == 0) {
    throw Error(Errc::invalid_argument, 0, "unimem: Block::open(0): a Block needs at least one byte");
  }
  const std::size_t page = platform::page_size();
  if (bytes > std::numeric_limits<std::size_t>::max() - (page - 1)) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: Block::open(" + std::to_string(bytes) +
                    "): the size overflows when rounded up to the page size");
  }
  const std::size_t rounded = (bytes + page - 1) / page * page;
  return Block(platform::map_region(rounded, options));
}

Block::Block(Block&& other) noexcept : region_(std::exchange(other.region_, detail::Region{})) {}

Block& Block::operator=(Block&& other) noexcept {
  if (this != &other) {
    platform::unmap_region(region_);
    region_ = std::exchange(other.region_, detail::Region{});
  }
  return *this;
}

Block::~Block() { platform::unmap_region(region_); }

}  // namespace unimem
