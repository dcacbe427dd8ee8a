// src/block_access.hpp — how a platform's own entry points make and read Blocks.
//
// Block's constructor from a Region and its handle are private: the portable
// API names Blocks by BlockId only. A platform header (<unimem/linux.hpp>)
// adds entry points that need both, implemented in src/platform/<os>/; this
// is the one door they go through (Block befriends it), so nothing else
// reaches past Block's interface.
#pragma once

#include <cstdint>

#include "unimem/block.hpp"

namespace unimem::detail {

struct BlockAccess {
  // A Block over `region`, backed and made GPU-visible as `options` ask (as
  // Block::attach does after mapping). Throws what Block::attach throws; the
  // region is released on throw.
  static Block open(const Region& region, const BlockOptions& options) {
    Block block(region);
    block.finish_open(options);
    return block;
  }
  // The platform's handle of the Block's shareable object; -1: none.
  static std::intptr_t handle(const Block& block) noexcept { return block.region_.handle; }
};

}  // namespace unimem::detail
