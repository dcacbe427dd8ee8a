// src/gpu/ptx_kernel.hpp — hand-written PTX kernels, loaded once per device.
//
// The library links no CUDA runtime and compiles no device code (it builds
// where nvcc is absent), so its kernels (dtype conversion, the offload pool's
// block copy) are PTX text that the driver compiles for the device it meets.
// Loading is the same for every such kernel: once per kernel and device for
// the process (modules stay loaded, as the runtime's do), under one lock.
#pragma once

#include "gpu/driver.hpp"

namespace unimem::gpu::detail {

struct PtxKernel {
  CUfunction function = nullptr;
  int multiprocessors = 1;  // of the device it was loaded for
};

// The entry point `entry` of `ptx` in `device`'s primary context (current on
// this thread), loading the module on first use. `ptx` must outlive the
// process (a string literal): it names the kernel in the cache. `what` names
// the kernel in errors. Thread-safe. Throws Error(cuda) when the driver
// refuses the module or the function.
const PtxKernel& ptx_kernel(int device, const char* ptx, const char* entry, const char* what);

}  // namespace unimem::gpu::detail
