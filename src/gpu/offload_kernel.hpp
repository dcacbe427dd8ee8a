// src/gpu/offload_kernel.hpp — the offload pool's gather/scatter kernel (OffloadRoute::kernel).
//
// One launch copies any number of equal-sized blocks between any two
// device-addressable places: device memory and registered host memory, in
// either direction. The library carries no nvcc-built code, so the kernel is
// hand-written PTX that the driver compiles for the device it meets, once per
// device and process (as src/gpu/convert.cpp).
#pragma once

#include <cstdint>

#include "gpu/driver.hpp"

namespace unimem::gpu::detail {

// One block to copy: from `src` to `dst`, both device addresses (a registered
// host cell's is its host address on unified-addressing systems), both
// 16-byte aligned.
struct BlockPair {
  CUdeviceptr src;
  CUdeviceptr dst;
};
static_assert(sizeof(BlockPair) == 16, "the kernel reads pairs as 16-byte vectors");

// Loads the kernel into `device`'s primary context (current on this thread),
// once per device and process; later calls return at once. The pool calls it
// when it is made, so that no move pays for it and a later failure of the
// context cannot surface as a module-load error. Throws Error(cuda).
void load_block_copy(int device);

// Copies `n` blocks of `block_bytes` (a non-zero multiple of 16) as `pairs`
// lists them (n pairs at a device-addressable address: device memory or
// registered host memory, which must stay valid until the kernel is done) on
// `stream`, which belongs to `device`'s primary context, current on this
// thread (nullptr, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD name its default
// streams, as everywhere in the driver API). Returns at once; the stream
// orders the work. Throws Error(cuda) when the driver refuses the module (if
// not loaded yet) or the launch. Does nothing for n == 0.
void launch_block_copy(int device, CUstream stream, CUdeviceptr pairs, std::uint64_t n, std::uint64_t block_bytes);

}  // namespace unimem::gpu::detail
