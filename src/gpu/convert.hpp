// src/gpu/convert.hpp — dtype conversion on the GPU while loading (bf16 <-> f16 <-> f32).
//
// The library links no CUDA runtime and compiles no device code (it builds
// where nvcc is absent), so the kernel is hand-written PTX that the driver
// compiles for the device it meets, once per device and process.
#pragma once

#include <cstdint>

#include "gpu/driver.hpp"
#include "unimem/safetensors.hpp"

namespace unimem::gpu::detail {

// True for the pairs the kernel converts: F32, F16 and BF16 to each other
// (a pair of equal types included: nothing to do then). Never throws.
bool convertible(DType from, DType to) noexcept;

// Converts n elements from `src` (of dtype `from`) to `dst` (of `to`) on
// `stream`, which belongs to `device`'s primary context, current on this
// thread. F32 to F16 and to BF16 round to nearest even; NaN stays NaN, and
// what F16 cannot hold becomes infinity. Returns at once; the stream orders
// the work. Throws Error(invalid_argument) for a pair not convertible,
// Error(cuda) when the driver refuses the module or the launch.
void convert(int device, CUstream stream, CUdeviceptr src, CUdeviceptr dst, std::uint64_t n, DType from, DType to);

}  // namespace unimem::gpu::detail
