// python/src/views.hpp — what the bindings hand to Python: Views of typed memory.
//
// Every object that hands out memory hands out a View: an address, a dtype, a
// shape, where the bytes live (DLPack's device) and a shared_ptr to what keeps
// them valid (a Block, a Tape, a Grid cell, device tensors). Owners are C++
// objects only, never Python ones: consumers may drop an export on any thread,
// without the GIL. Shared by the binding files (module.cpp, loading.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dlpack.hpp"
#include "unimem/unimem.hpp"

namespace unimem::python {

namespace py = pybind11;
using namespace dlpack;

struct DTypeName {
  DType dtype;
  const char* name;  // as torch and numpy spell it
  DLDataType dl;
  const char* format;  // buffer protocol (bf16 and fp8: their raw bits)
};

const DTypeName& info_of(DType t);

// "float32", "F32", ... Throws Error(invalid_argument).
DType parse_dtype(const std::string& name);

struct View {
  std::shared_ptr<const void> owner;  // keeps `data` valid
  std::byte* data = nullptr;
  std::vector<std::int64_t> shape;
  DType dtype = DType::U8;
  DLDevice device{kDLCPU, 0};
  bool read_only = false;

  // Every View's shape was checked when it was made (checked_bytes): these
  // products fit.
  std::size_t count() const {
    std::size_t n = 1;
    for (std::int64_t d : shape) n *= static_cast<std::size_t>(d);
    return n;
  }
  std::size_t nbytes() const { return count() * dtype_bytes(dtype); }
};

// The bytes of `shape` elements of `dtype`; throws Error(invalid_argument)
// when the product of the dimensions other than 0 and the element size
// passes 2^63 - 1 (a shape from Python is any list of integers; and NumPy,
// like other consumers, refuses a shape such as (0, 2^63 - 1) too).
std::size_t checked_bytes(const std::vector<std::int64_t>& shape, DType dtype, const char* what);

// `v` as a count or index from 0 to `max`, or nullopt when it is not an
// integer (bool included) or lies outside. Never throws a C++ error for bad
// input (only a Python error raised by __index__ itself).
std::optional<std::size_t> whole_number(py::handle v, std::size_t max);

// One dimension: any integer (int, NumPy's integers: whatever has
// __index__), 0 to 2^63 - 1. Throws Error(invalid_argument).
std::int64_t dimension_of(py::handle d);

// A shape: None (nullopt: the caller's default), one integer, or a sequence
// of them (() is a 0-d scalar). Throws Error(invalid_argument).
std::optional<std::vector<std::int64_t>> shape_of(const py::object& shape);

// `v` as a DLPack capsule (__dlpack__'s arguments: versioned when
// max_version >= (1, 0); dl_device may ask for GPU-visible host memory as
// kDLCPU); the capsule holds its own reference to the owner. Throws
// py::buffer_error for a copy, another device, or a read-only view asked as
// a legacy capsule.
py::object dlpack_capsule(const View& v, const py::object& stream, const py::object& max_version,
                          const py::object& dl_device, const py::object& copy);

// `v` for the buffer protocol (C-contiguous strides). Throws py::buffer_error
// for GPU memory.
py::buffer_info buffer_of(const View& v);

// A View of `dtype` elements at `data`, within `bytes`, shaped `shape`
// (nullopt: 1-D, as many elements as fit). Throws Error(invalid_argument)
// when the shape does not fit.
View make_view(std::shared_ptr<const void> owner, std::byte* data, std::size_t bytes, DType dtype,
               std::optional<std::vector<std::int64_t>> shape, DLDevice device, bool read_only);

// The device a Block's memory is for DLPack: CUDA host memory where GPUs see it.
inline DLDevice host_device(const Block& b) { return {b.gpu_visible() ? kDLCUDAHost : kDLCPU, 0}; }

// A T stored at `p` in this machine's byte order, whatever its alignment.
template <class T>
inline T load_as(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// ---- BlockOptions from Python's arguments --------------------------------------------

inline BlockOptions block_options(bool gpu, bool shareable, bool huge_pages, bool pinned, bool read_only = false) {
  BlockOptions o;
  o.visibility = gpu ? Visibility::gpus : Visibility::host;
  o.shareable = shareable;
  o.huge_pages = huge_pages;
  o.pinning = pinned ? Pinning::pinned : Pinning::unpinned;
  o.read_only = read_only;
  return o;
}

// Runs open(pin) as `pinned` asks: True pins or raises (the memlock limit's
// error), False never pins, None pins where RLIMIT_MEMLOCK allows and
// otherwise opens unpinned pages and says so with a ResourceWarning (the
// default: a user's first line works under the 8 MiB limit most accounts
// have). `open` runs without the GIL.
template <class Open>
auto with_pinning(const py::object& pinned, const char* what, Open open) -> decltype(open(true)) {
  if (!pinned.is_none()) {
    if (!py::isinstance<py::bool_>(pinned)) {
      throw Error(Errc::invalid_argument, 0, std::string("unimem: ") + what + ": pinned is True, False or None");
    }
    const bool pin = pinned.cast<bool>();
    py::gil_scoped_release released;
    return open(pin);
  }
  try {
    py::gil_scoped_release released;
    return open(true);
  } catch (const Error& e) {
    if (e.code() != Errc::memlock_limit) throw;
    const std::string warning = std::string("unimem: ") + what + ": " + e.what() +
                                " Using unpinned pages instead (pinned=False skips pinning; pinned=True insists).";
    if (PyErr_WarnEx(PyExc_ResourceWarning, warning.c_str(), 1) != 0) throw py::error_already_set();
  }
  py::gil_scoped_release released;
  return open(false);
}

}  // namespace unimem::python
