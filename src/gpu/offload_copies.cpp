// src/gpu/offload_copies.cpp — block copies on the copy engines (see offload_copies.hpp).
//
// cuMemcpyBatchAsync takes three parallel arrays (destinations, sources,
// sizes) and one attribute set for all copies: sources are read in stream
// order (CU_MEMCPY_SRC_ACCESS_ORDER_STREAM: a store reads device blocks that
// earlier kernels on the stream wrote), no location hints (they apply only to
// managed and pageable memory). CUDA 13's entry point is
// cuMemcpyBatchAsync_v2; CUDA 12.8's, exported as cuMemcpyBatchAsync, has an
// extra failIdx argument. Both are looked up by name at load (driver.cpp).
#include "gpu/offload_copies.hpp"

#include <algorithm>
#include <string>
#include <vector>

namespace unimem::gpu::detail {

bool has_batched_copies() {
  const Driver& d = driver();
  return d.cuMemcpyBatchAsync_v2 != nullptr || d.cuMemcpyBatchAsync_v1 != nullptr;
}

void enqueue_block_copies(CUstream stream, std::span<const BlockPair> pairs, std::uint64_t block_bytes) {
  const Driver& d = driver();
  if (!has_batched_copies()) {
    for (const BlockPair& p : pairs) check(d.cuMemcpyAsync(p.dst, p.src, block_bytes, stream), "cuMemcpyAsync");
    return;
  }
  MemcpyAttributes attributes;
  attributes.srcAccessOrder = kSrcAccessOrderStream;
  std::size_t first_index = 0;
  const std::size_t most = std::min(pairs.size(), kMaxBatch);
  std::vector<CUdeviceptr> dsts(most), srcs(most);
  std::vector<std::size_t> sizes(most, block_bytes);
  for (std::size_t begin = 0; begin < pairs.size(); begin += kMaxBatch) {
    const std::size_t n = std::min(kMaxBatch, pairs.size() - begin);
    for (std::size_t i = 0; i < n; ++i) {
      dsts[i] = pairs[begin + i].dst;
      srcs[i] = pairs[begin + i].src;
    }
    CUresult r = 0;
    std::size_t failed = 0;
    if (d.cuMemcpyBatchAsync_v2 != nullptr) {
      r = d.cuMemcpyBatchAsync_v2(dsts.data(), srcs.data(), sizes.data(), n, &attributes, &first_index, 1, stream);
    } else {
      r = d.cuMemcpyBatchAsync_v1(dsts.data(), srcs.data(), sizes.data(), n, &attributes, &first_index, 1, &failed,
                                  stream);
    }
    check(r, "cuMemcpyBatchAsync of " + std::to_string(n) + " blocks");
  }
}

}  // namespace unimem::gpu::detail
