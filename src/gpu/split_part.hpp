// src/gpu/split_part.hpp — which bytes of a tensor each device holds when a
// model is spread over several GPUs (load_safetensors with a split rule).
//
// Kept apart from the loading so that the arithmetic (and the refusals)
// can be tested on a machine without a GPU: a rows cut is one contiguous
// range of the file, a columns cut is one strided rectangle (a row of the
// part per outer index).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "unimem/gpu.hpp"
#include "unimem/safetensors.hpp"

namespace unimem::gpu::detail {

// One device's part of a tensor as the file holds it.
struct SplitPart {
  std::vector<std::uint64_t> shape;  // of the part
  std::uint64_t part_begin = 0;      // where it starts along the split dimension
  std::uint64_t file_offset = 0;     // of the first byte of its first row
  std::uint64_t bytes = 0;           // of one row (of all of it when rows == 1)
  std::uint64_t rows = 1;            // > 1: a strided rectangle
  std::uint64_t file_pitch = 0;      // between rows in the file, when rows > 1
};

// Part `index` (of `devices`) of `t` as `split` cuts it: replicate gives
// every device the whole tensor; rows cuts dimension 0, columns the last,
// into `devices` equal parts, part i being [i*n/devices, (i+1)*n/devices).
// Throws Error(invalid_argument), naming the tensor, for a cut dimension that
// is not a multiple of `devices` (tensor parallelism needs equal parts) and
// for a rows or columns cut of a tensor of rank 0. Requires devices >= 1
// and index < devices.
SplitPart split_part(const TensorInfo& t, Split split, std::size_t devices, std::size_t index);

}  // namespace unimem::gpu::detail
