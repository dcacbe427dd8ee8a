// src/gpu/offload_kernel.cpp — the gather/scatter kernel, as PTX (see offload_kernel.hpp).
//
// Work: n blocks, each cut into tiles of 16 KiB (256 threads x 4 vectors of
// 16 bytes). Thread t of a tile loads vectors t, t + 256, t + 512, t + 768
// (each warp reads 512 contiguous bytes per load), all four before it stores
// any: four 16-byte loads in flight per thread, a tile's 16 KiB per thread
// block.
//
// The grid is one thread block per multiprocessor (kGridPerMultiprocessor),
// not as many as fit: 132 x 16 KiB = 2 MiB in flight on an H100 is already
// ~20x PCIe's bandwidth-delay product (~55 GB/s x ~2 us = 110 KB), so more
// thread blocks add nothing to one move, while a grid that fills every SM
// makes a second kernel (the other direction's move, or the caller's compute)
// wait for SMs until this one drains: store and fetch at once ran at 52 GB/s
// on an H100 with a full grid, i.e. one after the other. Each thread block
// takes one contiguous share of the n x tiles work items, so it walks through
// few blocks and reads each block's (src, dst) pair once: pairs are loaded
// 256 at a time into shared memory by the whole thread block (one trip across
// the bus when the list is in host memory), guarded by barriers. The walk
// through shares is uniform within a thread block, so the barriers are
// reached by all its threads. Pairs are loaded volatile: the list's memory is
// reused between launches.
#include "gpu/offload_kernel.hpp"

#include <algorithm>

#include "gpu/ptx_kernel.hpp"

namespace unimem::gpu::detail {
namespace {

constexpr unsigned kThreads = 256;
// Thread blocks per multiprocessor in a launch (see above): 1 leaves room on
// every SM for a second move and for compute to run side by side.
constexpr unsigned kGridPerMultiprocessor = 1;
constexpr std::uint64_t kTileBytes = std::uint64_t{kThreads} * 4 * 16;  // 16 KiB: 4 vectors of 16 bytes per thread

constexpr const char kPtx[] = R"PTX(.version 7.0
.target sm_75
.address_size 64

.visible .entry unimem_offload_copy(
    .param .u64 pairs_param,
    .param .u64 n_param,
    .param .u64 vecs_param,
    .param .u64 tiles_param)
{
    .reg .pred %p<8>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<32>;
    .shared .align 16 .b8 pairs_smem[4096];

    ld.param.u64 %rd1, [pairs_param];
    ld.param.u64 %rd2, [n_param];
    ld.param.u64 %rd3, [vecs_param];
    ld.param.u64 %rd4, [tiles_param];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %nctaid.x;
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, pairs_smem;
    mul.lo.u64 %rd5, %rd2, %rd4;
    cvt.u64.u32 %rd6, %r2;
    add.u64 %rd7, %rd5, %rd6;
    sub.u64 %rd7, %rd7, 1;
    div.u64 %rd7, %rd7, %rd6;
    cvt.u64.u32 %rd8, %r1;
    mul.lo.u64 %rd9, %rd8, %rd7;
    add.u64 %rd10, %rd9, %rd7;
    min.u64 %rd10, %rd10, %rd5;
    mov.u64 %rd11, 0;
    mov.u64 %rd12, 0;
    cvt.u64.u32 %rd13, %r3;
ITEM:
    setp.ge.u64 %p1, %rd9, %rd10;
    @%p1 bra DONE;
    div.u64 %rd15, %rd9, %rd4;
    mul.lo.u64 %rd16, %rd15, %rd4;
    sub.u64 %rd16, %rd9, %rd16;
    setp.lt.u64 %p2, %rd15, %rd12;
    @%p2 bra COPY;
    bar.sync 0;
    mov.u64 %rd11, %rd15;
    add.u64 %rd12, %rd15, 256;
    min.u64 %rd12, %rd12, %rd2;
    add.u64 %rd17, %rd11, %rd13;
    setp.ge.u64 %p3, %rd17, %rd12;
    @%p3 bra LOADED;
    shl.b64 %rd18, %rd17, 4;
    add.u64 %rd18, %rd1, %rd18;
    ld.volatile.global.v2.u64 {%rd19, %rd20}, [%rd18];
    shl.b32 %r5, %r3, 4;
    add.u32 %r5, %r4, %r5;
    st.shared.v2.u64 [%r5], {%rd19, %rd20};
LOADED:
    bar.sync 0;
COPY:
    sub.u64 %rd21, %rd15, %rd11;
    cvt.u32.u64 %r6, %rd21;
    shl.b32 %r6, %r6, 4;
    add.u32 %r6, %r4, %r6;
    ld.shared.v2.u64 {%rd22, %rd23}, [%r6];
    cvta.to.global.u64 %rd22, %rd22;
    cvta.to.global.u64 %rd23, %rd23;
    shl.b64 %rd24, %rd16, 10;
    add.u64 %rd24, %rd24, %rd13;
    add.u64 %rd25, %rd24, 256;
    add.u64 %rd26, %rd24, 512;
    add.u64 %rd27, %rd24, 768;
    setp.lt.u64 %p4, %rd24, %rd3;
    setp.lt.u64 %p5, %rd25, %rd3;
    setp.lt.u64 %p6, %rd26, %rd3;
    setp.lt.u64 %p7, %rd27, %rd3;
    shl.b64 %rd28, %rd24, 4;
    add.u64 %rd29, %rd22, %rd28;
    add.u64 %rd30, %rd23, %rd28;
    @%p4 ld.global.v4.u32 {%r10, %r11, %r12, %r13}, [%rd29];
    @%p5 ld.global.v4.u32 {%r14, %r15, %r16, %r17}, [%rd29+4096];
    @%p6 ld.global.v4.u32 {%r18, %r19, %r20, %r21}, [%rd29+8192];
    @%p7 ld.global.v4.u32 {%r22, %r23, %r24, %r25}, [%rd29+12288];
    @%p4 st.global.v4.u32 [%rd30], {%r10, %r11, %r12, %r13};
    @%p5 st.global.v4.u32 [%rd30+4096], {%r14, %r15, %r16, %r17};
    @%p6 st.global.v4.u32 [%rd30+8192], {%r18, %r19, %r20, %r21};
    @%p7 st.global.v4.u32 [%rd30+12288], {%r22, %r23, %r24, %r25};
    add.u64 %rd9, %rd9, 1;
    bra ITEM;
DONE:
    ret;
}
)PTX";

const PtxKernel& kernel(int device) {
  return ptx_kernel(device, kPtx, "unimem_offload_copy", "the offload pool's block-copy kernel");
}

}  // namespace

void load_block_copy(int device) { (void)kernel(device); }

void launch_block_copy(int device, CUstream stream, CUdeviceptr pairs, std::uint64_t n, std::uint64_t block_bytes) {
  if (n == 0) return;
  const PtxKernel& k = kernel(device);
  std::uint64_t vecs = block_bytes / 16;
  std::uint64_t tiles = (block_bytes + kTileBytes - 1) / kTileBytes;
  const std::uint64_t most = std::uint64_t{static_cast<unsigned>(k.multiprocessors)} * kGridPerMultiprocessor;
  const auto grid = static_cast<unsigned>(std::min<std::uint64_t>(n * tiles, most));
  void* params[] = {&pairs, &n, &vecs, &tiles};
  check(driver().cuLaunchKernel(k.function, grid, 1, 1, kThreads, 1, 1, 0, stream, params, nullptr),
        "cuLaunchKernel (the offload pool's block copy)");
}

}  // namespace unimem::gpu::detail
