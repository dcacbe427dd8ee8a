// src/gpu/split_part.cpp — one device's part of a split tensor (split_part.hpp).
#include "gpu/split_part.hpp"

#include <string>

#include "unimem/error.hpp"

namespace unimem::gpu::detail {
namespace {

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

SplitPart split_part(const TensorInfo& t, Split split, std::size_t devices, std::size_t index) {
  SplitPart p;
  p.shape = t.shape;
  p.file_offset = t.file_offset;
  p.bytes = t.bytes;
  if (split == Split::replicate) return p;
  const char* how = split == Split::rows ? "rows" : "columns";
  if (t.shape.empty()) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: load_safetensors: \"" + t.name + "\" is a scalar; it cannot be split by " + how);
  }
  const std::size_t dim = split == Split::rows ? 0 : t.shape.size() - 1;
  const std::uint64_t n = t.shape[dim];
  if (n % devices != 0) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: load_safetensors: \"" + t.name + "\" (shape " + shape_text(t.shape) + ") cannot be split by " +
                    how + " across " + std::to_string(devices) + " devices: " + std::to_string(n) +
                    " is not a multiple of " + std::to_string(devices));
  }
  const std::uint64_t begin = index * (n / devices), end = begin + n / devices;
  std::uint64_t inner = dtype_bytes(t.dtype);  // bytes of one step along dim
  for (std::size_t i = dim + 1; i < t.shape.size(); ++i) inner *= t.shape[i];
  std::uint64_t outer = 1;  // how many times the dimension repeats
  for (std::size_t i = 0; i < dim; ++i) outer *= t.shape[i];
  p.shape[dim] = end - begin;
  p.part_begin = begin;
  p.file_offset = t.file_offset + begin * inner;
  p.bytes = (end - begin) * inner;
  if (outer == 0) {  // an empty tensor (an outer dimension of 0): nothing to read
    p.bytes = 0;
  } else if (outer > 1) {  // columns of a matrix: one row of the part per outer index
    p.rows = outer;
    p.file_pitch = n * inner;
  }
  return p;
}

}  // namespace unimem::gpu::detail
