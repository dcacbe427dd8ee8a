// src/gpu/offload_copies.hpp — the offload pool's copy-engine route (OffloadRoute::copies).
//
// Many equal-sized copies between device-addressable places in as few driver
// calls as the driver allows: cuMemcpyBatchAsync (CUDA 12.8 and later; the
// batch executes in stream order, its copies in any order) where the driver
// has it, else one cuMemcpyAsync per block (every driver of the last decade).
#pragma once

#include <cstdint>
#include <span>

#include "gpu/driver.hpp"
#include "gpu/offload_kernel.hpp"

namespace unimem::gpu::detail {

// True when the loaded driver offers cuMemcpyBatchAsync. Throws what driver() throws.
bool has_batched_copies();

// Enqueues one copy of `block_bytes` per pair on `stream` (current context's).
// The pairs are read before this returns. Throws Error(cuda) when the driver
// refuses a call; copies enqueued by earlier calls of the same invocation
// (batches are cut at kMaxBatch copies; the per-block fallback calls once per
// block) may then still be in flight: the caller synchronizes the stream.
void enqueue_block_copies(CUstream stream, std::span<const BlockPair> pairs, std::uint64_t block_bytes);

// Copies per cuMemcpyBatchAsync call (the driver documents no limit; this
// bounds the arrays it is handed at a few hundred KiB).
inline constexpr std::size_t kMaxBatch = 8192;

}  // namespace unimem::gpu::detail
