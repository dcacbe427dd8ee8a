// python/src/module.cpp — unimem._unimem: the C++ API for Python, zero copy.
//
// Every object that hands out memory hands out a View: an address, a dtype, a
// shape, where the bytes live (DLPack's device) and a shared_ptr to what keeps
// them valid (a Block, a Tape, a Grid cell, device tensors). Views export
// DLPack capsules (versioned or legacy, as the consumer asks) and the buffer
// protocol; each export holds its own reference to the owner, so an array
// that outlives the Python object it came from keeps the memory valid.
//
// Owners are C++ objects only, never Python ones: consumers may run a
// capsule's deleter on any thread, without the GIL (PyTorch frees tensors
// from its own threads), and dropping a C++ shared_ptr needs no GIL.
//
// Errors: unimem::Error becomes the Python class that unimem/__init__.py
// registers for its code (unimem.Error subclasses that also derive from
// MemoryError, FileNotFoundError, PermissionError, ValueError or OSError).
#include <Python.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "dlpack.hpp"
#include "unimem/detail/fork_watch.hpp"
#include "unimem/unimem.hpp"

namespace py = pybind11;

namespace unimem::python {
namespace {

using namespace dlpack;

// ---- dtypes --------------------------------------------------------------

struct DTypeName {
  DType dtype;
  const char* name;  // as torch and numpy spell it
  DLDataType dl;
  const char* format;  // buffer protocol (bf16 and fp8: their raw bits)
};

constexpr DTypeName kDTypes[] = {
    {DType::BOOL, "bool", {kDLBool, 8, 1}, "?"},
    {DType::U8, "uint8", {kDLUInt, 8, 1}, "B"},
    {DType::I8, "int8", {kDLInt, 8, 1}, "b"},
    {DType::F8_E5M2, "float8_e5m2", {kDLFloat8_e5m2, 8, 1}, "B"},
    {DType::F8_E4M3, "float8_e4m3fn", {kDLFloat8_e4m3fn, 8, 1}, "B"},
    {DType::I16, "int16", {kDLInt, 16, 1}, "h"},
    {DType::U16, "uint16", {kDLUInt, 16, 1}, "H"},
    {DType::F16, "float16", {kDLFloat, 16, 1}, "e"},
    {DType::BF16, "bfloat16", {kDLBfloat, 16, 1}, "H"},
    {DType::I32, "int32", {kDLInt, 32, 1}, "i"},
    {DType::U32, "uint32", {kDLUInt, 32, 1}, "I"},
    {DType::F32, "float32", {kDLFloat, 32, 1}, "f"},
    {DType::I64, "int64", {kDLInt, 64, 1}, "q"},
    {DType::U64, "uint64", {kDLUInt, 64, 1}, "Q"},
    {DType::F64, "float64", {kDLFloat, 64, 1}, "d"},
};

const DTypeName& info_of(DType t) {
  for (const DTypeName& d : kDTypes) {
    if (d.dtype == t) return d;
  }
  throw Error(Errc::invalid_argument, 0, "unimem: unknown dtype");
}

// "float32", "F32", ... Throws Error(invalid_argument).
DType parse_dtype(const std::string& name) {
  for (const DTypeName& d : kDTypes) {
    if (name == d.name || name == to_string(d.dtype)) return d.dtype;
  }
  throw Error(Errc::invalid_argument, 0, "unimem: unknown dtype '" + name + "'");
}

// ---- views ---------------------------------------------------------------

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
std::size_t checked_bytes(const std::vector<std::int64_t>& shape, DType dtype, const char* what) {
  std::int64_t bytes = static_cast<std::int64_t>(dtype_bytes(dtype));
  bool zero = false;
  for (std::int64_t d : shape) {
    if (d == 0) {
      zero = true;
    } else if (__builtin_mul_overflow(bytes, d, &bytes)) {
      throw Error(Errc::invalid_argument, 0, std::string("unimem: ") + what + ": the shape's byte size overflows");
    }
  }
  return zero ? 0 : static_cast<std::size_t>(bytes);
}

DLDevice host_device(const Block& b) { return {b.gpu_visible() ? kDLCUDAHost : kDLCPU, 0}; }

// A T stored at `p` in this machine's byte order, whatever its alignment.
template <class T>
T load_as(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// `v` as a count or index from 0 to `max`, or nullopt when it is not an
// integer (bool included) or lies outside. Never throws a C++ error for bad
// input (only a Python error raised by __index__ itself).
std::optional<std::size_t> whole_number(py::handle v, std::size_t max) {
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr())) return std::nullopt;
  const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
  if (!index) throw py::error_already_set();
  if (PyObject_RichCompareBool(index.ptr(), py::int_(0).ptr(), Py_LT) == 1) return std::nullopt;
  const unsigned long long u = PyLong_AsUnsignedLongLong(index.ptr());
  if (u == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();  // above 2^64 - 1
    return std::nullopt;
  }
  if (u > max) return std::nullopt;
  return static_cast<std::size_t>(u);
}

// One dimension: any integer (int, NumPy's integers: whatever has
// __index__), 0 to 2^63 - 1. Throws Error(invalid_argument).
std::int64_t dimension_of(py::handle d) {
  const std::optional<std::size_t> v = whole_number(d, INT64_MAX);
  if (!v) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: a shape's dimensions are integers from 0 to 2^63 - 1, not " + py::repr(d).cast<std::string>());
  }
  return static_cast<std::int64_t>(*v);
}

// A shape: None (nullopt: the caller's default), one integer, or a sequence
// of them (() is a 0-d scalar). Throws Error(invalid_argument).
std::optional<std::vector<std::int64_t>> shape_of(const py::object& shape) {
  if (shape.is_none()) return std::nullopt;
  std::vector<std::int64_t> out;
  if (PyIndex_Check(shape.ptr()) && !PyBool_Check(shape.ptr())) {
    out.push_back(dimension_of(shape));
    return out;
  }
  if (!PySequence_Check(shape.ptr()) || py::isinstance<py::str>(shape) || py::isinstance<py::bytes>(shape)) {
    throw Error(
        Errc::invalid_argument, 0,
        "unimem: a shape is an integer or a sequence of integers, not " + std::string(Py_TYPE(shape.ptr())->tp_name));
  }
  for (py::handle d : shape) out.push_back(dimension_of(d));
  if (out.size() > 64) throw Error(Errc::invalid_argument, 0, "unimem: a shape has more than 64 dimensions");
  return out;
}

// What a capsule's DLManagedTensor owns.
struct Export {
  std::shared_ptr<const void> owner;
  std::vector<std::int64_t> shape;
};

template <class Managed>
void delete_managed(Managed* m) {
  delete static_cast<Export*>(m->manager_ctx);
  delete m;
}

// A capsule nobody consumed still owns its tensor.
template <class Managed>
void destroy_capsule(PyObject* capsule, const char* name) {
  if (!PyCapsule_IsValid(capsule, name)) return;  // renamed "used_...": the consumer owns it
  PyObject *type, *value, *trace;
  PyErr_Fetch(&type, &value, &trace);
  auto* m = static_cast<Managed*>(PyCapsule_GetPointer(capsule, name));
  if (m != nullptr && m->deleter != nullptr) m->deleter(m);
  PyErr_Restore(type, value, trace);
}

void destroy_versioned(PyObject* c) { destroy_capsule<DLManagedTensorVersioned>(c, "dltensor_versioned"); }
void destroy_legacy(PyObject* c) { destroy_capsule<DLManagedTensor>(c, "dltensor"); }

// `m` in a capsule called `name`; from then on the capsule (or its consumer)
// owns `m` and the Export in `ctx`.
template <class Managed>
py::object wrap(Managed* m, const char* name, PyCapsule_Destructor destroy, std::unique_ptr<Export>& ctx) {
  PyObject* c = PyCapsule_New(m, name, destroy);
  if (c == nullptr) {
    delete m;
    throw py::error_already_set();
  }
  ctx.release();
  return py::reinterpret_steal<py::object>(c);
}

py::object dlpack_capsule(const View& v, const py::object& stream, const py::object& max_version,
                          const py::object& dl_device, const py::object& copy) {
  (void)stream;  // every producer here finished its writes before the view existed
  if (!copy.is_none() && copy.cast<bool>()) {
    throw py::buffer_error("unimem: views are zero-copy; __dlpack__(copy=True) is not supported");
  }
  DLDevice device = v.device;
  if (!dl_device.is_none()) {
    const auto d = dl_device.cast<std::pair<int, int>>();
    // GPU-visible host memory is CPU memory too: exported as such on request, still zero copy.
    const bool as_cpu = d.first == kDLCPU && d.second == 0 && v.device.device_type == kDLCUDAHost;
    if (!as_cpu && (d.first != v.device.device_type || d.second != v.device.device_id)) {
      throw py::buffer_error("unimem: the view lives on DLPack device (" + std::to_string(v.device.device_type) + ", " +
                             std::to_string(v.device.device_id) + "); it cannot be exported to another");
    }
    if (as_cpu) device = DLDevice{kDLCPU, 0};
  }
  bool versioned = false;
  if (!max_version.is_none()) versioned = max_version.cast<std::pair<int, int>>().first >= 1;
  if (!versioned && v.read_only) {
    throw py::buffer_error(
        "unimem: the view is read-only, which a legacy DLPack capsule cannot say; ask for a versioned one "
        "(max_version >= (1, 0))");
  }
  auto ctx = std::make_unique<Export>(Export{v.owner, v.shape});
  DLTensor t{};
  t.data = v.data;
  t.device = device;
  t.ndim = static_cast<std::int32_t>(v.shape.size());
  t.dtype = info_of(v.dtype).dl;
  t.shape = ctx->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  if (versioned) {
    return wrap(new DLManagedTensorVersioned{kVersion, ctx.get(), &delete_managed<DLManagedTensorVersioned>,
                                             v.read_only ? kFlagReadOnly : 0, t},
                "dltensor_versioned", &destroy_versioned, ctx);
  }
  return wrap(new DLManagedTensor{t, ctx.get(), &delete_managed<DLManagedTensor>}, "dltensor", &destroy_legacy, ctx);
}

py::buffer_info buffer_of(const View& v) {
  if (v.device.device_type == kDLCUDA) {
    throw py::buffer_error("unimem: the view is in GPU memory; use DLPack (torch.from_dlpack) instead");
  }
  const std::size_t item = dtype_bytes(v.dtype);
  std::vector<py::ssize_t> shape(v.shape.begin(), v.shape.end()), strides(v.shape.size());
  py::ssize_t stride = static_cast<py::ssize_t>(item);
  for (std::size_t i = v.shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= static_cast<py::ssize_t>(v.shape[i]);
  }
  return py::buffer_info(v.data, static_cast<py::ssize_t>(item), info_of(v.dtype).format,
                         static_cast<py::ssize_t>(v.shape.size()), shape, strides, v.read_only);
}

// A View of `dtype` elements at `data`, within `bytes`, shaped `shape`
// (nullopt: 1-D, as many elements as fit). Throws Error(invalid_argument)
// when the shape does not fit.
View make_view(std::shared_ptr<const void> owner, std::byte* data, std::size_t bytes, DType dtype,
               std::optional<std::vector<std::int64_t>> shape, DLDevice device, bool read_only) {
  const std::size_t item = dtype_bytes(dtype);
  if (!shape) shape.emplace(1, static_cast<std::int64_t>(bytes / item));
  const std::size_t need = checked_bytes(*shape, dtype, "view");
  if (need > bytes) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: a view of " + std::to_string(need) + " bytes does not fit in " + std::to_string(bytes));
  }
  return View{std::move(owner), data, std::move(*shape), dtype, device, read_only};
}

// ---- objects ---------------------------------------------------------------

BlockOptions block_options(bool gpu, bool shareable, bool huge_pages, bool pinned, bool read_only = false) {
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

struct PyBlock {
  std::shared_ptr<Block> block;

  View view(const std::string& dtype, const py::object& shape, std::size_t offset) const {
    if (offset > block->size())
      throw Error(Errc::invalid_argument, 0, "unimem: offset " + std::to_string(offset) + " is past the Block");
    return make_view(block, block->data() + offset, block->size() - offset, parse_dtype(dtype), shape_of(shape),
                     host_device(*block), block->read_only());
  }
  View whole() const { return view("uint8", py::none(), 0); }
};

struct PyTape {
  std::shared_ptr<Tape> tape;

  View take(const py::object& shape, const std::string& dtype, std::size_t align) {
    const DType t = parse_dtype(dtype);
    std::optional<std::vector<std::int64_t>> given = shape_of(shape);
    if (!given) throw Error(Errc::invalid_argument, 0, "unimem: Tape.take: a shape is needed (() for a scalar)");
    std::vector<std::int64_t> dims = std::move(*given);
    const std::size_t bytes = checked_bytes(dims, t, "Tape.take");
    const Taken taken = tape->take(bytes, align);
    switch (taken.status) {
      case TakeStatus::ok:
        break;
      case TakeStatus::full:
        throw Error(Errc::out_of_memory, 0,
                    "unimem: Tape.take: " + std::to_string(bytes) + " bytes do not fit; " +
                        std::to_string(tape->free()) + " of " + std::to_string(tape->total()) +
                        " are free (clear() frees them all)");
      case TakeStatus::invalid_size:
        throw Error(Errc::invalid_argument, 0,
                    "unimem: Tape.take: size " + std::to_string(bytes) + " is 0 or larger than the Tape");
      case TakeStatus::invalid_align:
        throw Error(Errc::invalid_argument, 0,
                    "unimem: Tape.take: alignment " + std::to_string(align) + " is not a power of two");
      default:  // forked: this process is a fork() child of the Tape's
        throw Error(Errc::unsupported, 0,
                    "unimem: Tape.take refused: a Tape belongs to the process that made it, not to a fork() child");
    }
    return View{tape, taken.ptr, std::move(dims), t, host_device(tape->block()), false};
  }
};

// A cell held from Python, of a Grid (Cell) or an OffloadPool (SharedCell):
// it goes back to its pool when the last of the Python object and the arrays
// made from it goes (give() drops the object's part). The box also keeps the
// pool alive (for an OffloadPool, its registration) while the cell is out.
template <class CellT, class Pool>
struct PyCellOf {
  struct Box {
    CellT cell;
    std::shared_ptr<const Pool> pool;
    const Block& block() const { return pool->block(); }
  };
  std::shared_ptr<Box> box;
  const Pool* pool = nullptr;  // identity of the pool it came from
  std::uint32_t index = 0;

  static PyCellOf wrap(CellT c, std::shared_ptr<const Pool> from) {
    const std::uint32_t at = c.index();
    const Pool* id = from.get();
    return PyCellOf{std::make_shared<Box>(Box{std::move(c), std::move(from)}), id, at};
  }
  const Box& held() const {
    if (!box) throw Error(Errc::invalid_argument, 0, "unimem: the cell was given back already");
    return *box;
  }
  View view(const std::string& dtype, const py::object& shape) const {
    const Box& b = held();
    return make_view(box, b.cell.data(), b.cell.size(), parse_dtype(dtype), shape_of(shape), host_device(b.block()),
                     false);
  }
};
using PyCell = PyCellOf<Cell, Grid<>>;

struct PyGrid {
  std::shared_ptr<Grid<>> grid;

  std::optional<PyCell> take() {
    Cell c = grid->take();
    if (!c) return std::nullopt;
    return PyCell::wrap(std::move(c), grid);
  }
  void give(PyCell& cell) {
    if (cell.pool != grid.get()) throw Error(Errc::invalid_argument, 0, "unimem: Grid.give: a cell of another Grid");
    (void)cell.held();
    cell.box.reset();
  }
};

// ---- KV-cache offload -------------------------------------------------------

using PyOffloadCell = PyCellOf<SharedCell, gpu::OffloadPool>;

struct PyTransfer {
  gpu::Transfer transfer;
};

struct PyOffloadPool {
  std::shared_ptr<gpu::OffloadPool> pool;

  PyOffloadCell wrap(SharedCell c) const { return PyOffloadCell::wrap(std::move(c), pool); }
  // One cell (n None) or n cells, all or nothing; None when the pool has too few free.
  py::object take(const py::object& count) {
    if (count.is_none()) {
      SharedCell c = pool->take();
      return c ? py::cast(wrap(std::move(c))) : py::object(py::none());
    }
    // Checked before anything is allocated: n is the caller's.
    const std::optional<std::size_t> n = whole_number(count, pool->blocks());
    if (!n) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: OffloadPool.take(" + py::repr(count).cast<std::string>() +
                      "): n is a count from 0 to the pool's " + std::to_string(pool->blocks()) + " blocks");
    }
    std::vector<SharedCell> cells(*n);
    const TakeStatus status = pool->take(cells);
    if (status == TakeStatus::full) return py::none();
    if (status != TakeStatus::ok) {
      const char* why = status == TakeStatus::read_only ? "the pool is mapped read-only here"
                        : status == TakeStatus::forked  ? "this is a fork() child of the process that made it"
                                                        : "more cells than the pool has";
      throw Error(Errc::invalid_argument, 0, "unimem: OffloadPool.take(" + std::to_string(*n) + "): " + why);
    }
    py::list out;
    for (SharedCell& c : cells) out.append(wrap(std::move(c)));
    return out;
  }
  void give(PyOffloadCell& cell) const {
    if (cell.pool != pool.get())
      throw Error(Errc::invalid_argument, 0, "unimem: OffloadPool.give: a cell of another pool");
    (void)cell.held();
    cell.box.reset();
  }
  // Cells as indices: a 1-D integer array (NumPy, anything with the buffer
  // protocol: no per-item Python work), or a sequence of Cell objects of this
  // pool (held) or plain indices (cells another process holds); anything else
  // is refused before anything moves.
  std::vector<std::uint32_t> indices(const py::object& cells) const {
    std::vector<std::uint32_t> out;
    if (py::isinstance<py::buffer>(cells)) {
      for (const std::uint64_t i : integers(cells, "cells")) {
        if (i > UINT32_MAX) throw Error(Errc::invalid_argument, 0, "unimem: cells: an index above 2^32 - 1");
        out.push_back(static_cast<std::uint32_t>(i));
      }
      return out;
    }
    out.reserve(py::len(cells));
    for (const py::handle item : py::reinterpret_borrow<py::sequence>(cells)) {
      if (py::isinstance<PyOffloadCell>(item)) {
        const auto& c = item.cast<const PyOffloadCell&>();
        if (c.pool != pool.get()) throw Error(Errc::invalid_argument, 0, "unimem: a cell of another OffloadPool");
        (void)c.held();
        out.push_back(c.index);
      } else {
        const std::optional<std::size_t> i = whole_number(item, UINT32_MAX);
        if (!i) {
          throw Error(Errc::invalid_argument, 0,
                      "unimem: cells: " + py::repr(item).cast<std::string>() +
                          " is neither a cell of this pool nor an index from 0 to 2^32 - 1");
        }
        out.push_back(static_cast<std::uint32_t>(*i));
      }
    }
    return out;
  }
  // Device addresses: a 1-D array of 64-bit integers, or a sequence of ints.
  static std::vector<std::uintptr_t> addresses(const py::object& blocks) {
    if (!py::isinstance<py::buffer>(blocks)) {
      if (!PySequence_Check(blocks.ptr()) || py::isinstance<py::str>(blocks)) {
        throw Error(Errc::invalid_argument, 0, "unimem: device_blocks: a 1-D array of integers or a sequence of them");
      }
      std::vector<std::uintptr_t> out;
      out.reserve(py::len(blocks));
      for (const py::handle item : blocks) {
        const std::optional<std::size_t> a = whole_number(item, UINTPTR_MAX);
        if (!a) {
          throw Error(Errc::invalid_argument, 0,
                      "unimem: device_blocks: " + py::repr(item).cast<std::string>() + " is not an address");
        }
        out.push_back(*a);
      }
      return out;
    }
    const std::vector<std::uint64_t> v = integers(blocks, "device_blocks");
    return {v.begin(), v.end()};
  }
  // The integers of a 1-D array (signed or unsigned, 1 to 8 bytes, any
  // stride, in this machine's byte order: '<' on a little-endian machine,
  // '>' on a big-endian one, '@' or '=' anywhere; any other order is refused,
  // not read as this machine's).
  static std::vector<std::uint64_t> integers(const py::object& array, const char* what) {
    const py::buffer_info info = py::reinterpret_borrow<py::buffer>(array).request();
    std::string format = info.format;
    constexpr char kNative = std::endian::native == std::endian::little ? '<' : '>';
    if (!format.empty() && (format[0] == '@' || format[0] == '=' || format[0] == kNative)) format.erase(0, 1);
    const std::string f = format.size() == 1 ? format : std::string();
    const bool is_signed = f == "b" || f == "h" || f == "i" || f == "l" || f == "q";
    const bool is_unsigned = f == "B" || f == "H" || f == "I" || f == "L" || f == "Q";
    const bool width_ok = info.itemsize == 1 || info.itemsize == 2 || info.itemsize == 4 || info.itemsize == 8;
    if (info.ndim != 1 || !(is_signed || is_unsigned) || !width_ok) {
      throw Error(Errc::invalid_argument, 0,
                  std::string("unimem: ") + what + ": a 1-D array of integers in this machine's byte order, " +
                      "or a sequence, not format '" + info.format + "' with " + std::to_string(info.ndim) +
                      " dimensions");
    }
    std::vector<std::uint64_t> out(static_cast<std::size_t>(info.shape[0]));
    const auto* base = static_cast<const std::byte*>(info.ptr);
    // Each item read as its own type (this machine's order, checked above)
    // and widened: a negative value is one whatever the width.
    auto load = [&](const std::byte* p) -> std::int64_t {
      switch (info.itemsize) {
        case 1:
          return is_signed ? std::int64_t{load_as<std::int8_t>(p)} : std::int64_t{load_as<std::uint8_t>(p)};
        case 2:
          return is_signed ? std::int64_t{load_as<std::int16_t>(p)} : std::int64_t{load_as<std::uint16_t>(p)};
        case 4:
          return is_signed ? std::int64_t{load_as<std::int32_t>(p)} : std::int64_t{load_as<std::uint32_t>(p)};
        default:
          return load_as<std::int64_t>(p);
      }
    };
    for (std::size_t i = 0; i < out.size(); ++i) {
      const std::byte* p = base + static_cast<std::ptrdiff_t>(i) * info.strides[0];
      if (info.itemsize == 8 && !is_signed) {
        out[i] = load_as<std::uint64_t>(p);
        continue;
      }
      const std::int64_t v = load(p);
      if (v < 0) throw Error(Errc::invalid_argument, 0, std::string("unimem: ") + what + ": a negative value");
      out[i] = static_cast<std::uint64_t>(v);
    }
    return out;
  }
  PyTransfer store(const py::object& device_blocks, const py::object& cells, std::uintptr_t stream) {
    const std::vector<std::uintptr_t> at_device = addresses(device_blocks);
    const std::vector<std::uint32_t> at = indices(cells);
    py::gil_scoped_release released;
    return {pool->store(at_device, pool->block_bytes(), at, reinterpret_cast<void*>(stream))};
  }
  PyTransfer fetch(const py::object& cells, const py::object& device_blocks, std::uintptr_t stream) {
    const std::vector<std::uint32_t> at = indices(cells);
    const std::vector<std::uintptr_t> at_device = addresses(device_blocks);
    py::gil_scoped_release released;
    return {pool->fetch(at, at_device, pool->block_bytes(), reinterpret_cast<void*>(stream))};
  }
};

gpu::OffloadRoute parse_route(const std::string& route) {
  for (auto r : {gpu::OffloadRoute::automatic, gpu::OffloadRoute::kernel, gpu::OffloadRoute::copies}) {
    if (route == gpu::to_string(r)) return r;
  }
  throw Error(Errc::invalid_argument, 0, "unimem: route must be automatic, kernel or copies, not " + route);
}

struct PyLayout {
  std::shared_ptr<Layout> layout;
  PyTape tape(Tape& t) const { return PyTape{std::shared_ptr<Tape>(layout, &t)}; }
};

// ---- errors ----------------------------------------------------------------

std::array<PyObject*, 16> error_types{};  // by Errc value; set by unimem/__init__.py

void set_error_types(const py::dict& by_code) {
  for (auto [code, cls] : by_code) {
    const int c = code.cast<int>();
    if (c < 0 || c >= static_cast<int>(error_types.size())) continue;
    Py_XDECREF(error_types[c]);
    error_types[c] = cls.ptr();
    Py_INCREF(error_types[c]);
  }
}

void translate(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const Error& e) {
    const auto c = static_cast<std::size_t>(e.code());
    PyObject* cls = c < error_types.size() && error_types[c] ? error_types[c] : PyExc_RuntimeError;
    // Messages are UTF-8 (Error keeps them so); decoded leniently all the
    // same, so that no message can turn into a UnicodeDecodeError.
    const std::string what = e.what();
    py::object message = py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(what.data(), static_cast<Py_ssize_t>(what.size()), "backslashreplace"));
    if (!message) throw py::error_already_set();
    py::tuple args = py::make_tuple(message, to_string(e.code()), e.sys_errno());
    PyErr_SetObject(cls, args.ptr());
  }
}

// ---- safetensors -------------------------------------------------------------

// One file's tensors in a pinned Tape: Safetensors keeps its header, the
// Tape its bytes; both stay while any tensor view does.
struct HostModel {
  Tape tape;
  Safetensors model;
};

std::vector<std::pair<std::string, View>> load_host(const std::string& path, bool gpu_visible,
                                                    const py::object& progress, const py::object& pinned) {
  std::shared_ptr<HostModel> m;
  {
    // Room for every tensor at 64 bytes without parsing the header twice: a
    // tensor's entry in the header takes at least 40 bytes, so the header's
    // length bounds the count, and each tensor adds at most 63 bytes of
    // padding. Untouched pages of the Tape cost nothing.
    FileReader file(path);
    std::byte length[8] = {};
    if (file.size() >= 8) (void)file.read(0, length);
    std::uint64_t header = 0;
    for (int i = 7; i >= 0; --i) header = header << 8 | static_cast<std::uint8_t>(length[i]);
    header = std::min<std::uint64_t>(header, file.size());
    const std::size_t bytes = static_cast<std::size_t>(file.size() + (header / 40 + 1) * 64) + 2 * Block::page_size();
    ReadOptions r;
    if (!progress.is_none()) {
      // Copies of the callback (ReadOptions is copied into the reader) copy
      // this shared_ptr, not the Python object: no reference counting
      // without the GIL. The last copy is `r`'s, dropped under the GIL.
      auto callback = std::make_shared<py::object>(progress);
      r.progress = [callback](std::uint64_t done, std::uint64_t total) {
        py::gil_scoped_acquire gil;
        (*callback)(done, total);
      };
    }
    Tape tape = with_pinning(pinned, "load_safetensors", [&](bool pin) {
      return Tape::start(std::max<std::size_t>(bytes, 1), block_options(gpu_visible, false, false, pin));
    });
    py::gil_scoped_release released;
    m = std::make_shared<HostModel>(HostModel{std::move(tape), {}});
    m->model = Safetensors::load(path, m->tape, 64, r);
  }
  const DLDevice device = host_device(m->tape.block());
  std::vector<std::pair<std::string, View>> out;
  out.reserve(m->model.tensors().size());
  for (const Tensor& t : m->model.tensors()) {
    std::vector<std::int64_t> shape(t.info->shape.begin(), t.info->shape.end());
    out.emplace_back(t.info->name, View{m, t.data, std::move(shape), t.info->dtype, device, false});
  }
  return out;
}

// Loaders kept across calls, one per device list: a reload of a cached file
// then costs no registration. Never destroyed: a static destructor runs after
// the CUDA runtime of the program (PyTorch's) has torn its state down, and a
// Loader's destructor calls the driver. unimem/__init__.py releases them from
// Python's atexit instead, while the driver is still up; a Loader made after
// that is left to the process's exit.
std::mutex& loaders_lock = *new std::mutex;  // NOLINT: never freed, on purpose
struct KeptLoader {
  std::vector<int> devices;
  std::shared_ptr<gpu::Loader> loader;
  // Set in a fork() child (a DataLoader worker, say), where the parent's
  // Loader refuses to load: the child makes its own.
  std::unique_ptr<unimem::detail::ForkedFlag> forked = std::make_unique<unimem::detail::ForkedFlag>();
};
std::vector<KeptLoader>& loaders = *new std::vector<KeptLoader>;  // NOLINT: never freed, on purpose

std::shared_ptr<gpu::Loader> loader_for(const std::vector<int>& devices) {
  std::lock_guard hold(loaders_lock);
  for (auto it = loaders.begin(); it != loaders.end(); ++it) {
    if (it->devices != devices) continue;
    if (!it->forked->forked()) return it->loader;
    loaders.erase(it);  // the parent's: let go (a Loader in a fork() child releases nothing)
    break;
  }
  auto l = std::make_shared<gpu::Loader>(std::span<const int>(devices));
  loaders.push_back(KeptLoader{devices, l});
  return l;
}

// Every device's tensors: one list per device, in `devices` order.
std::vector<std::vector<std::pair<std::string, View>>> load_devices(const std::string& path,
                                                                    const std::vector<int>& devices,
                                                                    const std::optional<std::string>& dtype,
                                                                    const py::object& split, const py::object& progress,
                                                                    bool drop_page_cache) {
  gpu::TensorLoadOptions o;
  if (dtype) o.dtype = parse_dtype(*dtype);
  o.drop_page_cache = drop_page_cache;
  if (!progress.is_none()) {
    // Called from the loading thread and staging workers, the GIL released:
    // copies share this pointer, not the Python object (see load_host).
    auto callback = std::make_shared<py::object>(progress);
    o.progress = [callback](std::uint64_t done, std::uint64_t total) {
      py::gil_scoped_acquire gil;
      (*callback)(done, total);
    };
  }
  // `split`: None, one rule for every tensor, or a rule per tensor name
  // (unimem/__init__.py evaluates a callable into that).
  auto as_split = [](const std::string& r) {
    if (r == "replicate") return gpu::Split::replicate;
    if (r == "rows") return gpu::Split::rows;
    if (r == "columns") return gpu::Split::columns;
    throw Error(Errc::invalid_argument, 0, "unimem: split must be 'replicate', 'rows' or 'columns', not '" + r + "'");
  };
  std::vector<std::pair<std::string, gpu::Split>> rules;
  if (py::isinstance<py::str>(split)) {
    const gpu::Split all = as_split(split.cast<std::string>());
    o.split = [all](const TensorInfo&) { return all; };
  } else if (!split.is_none()) {
    for (auto [name, rule] : split.cast<py::dict>())
      rules.emplace_back(name.cast<std::string>(), as_split(rule.cast<std::string>()));
    std::sort(rules.begin(), rules.end());
    o.split = [&rules](const TensorInfo& t) {
      auto it = std::lower_bound(rules.begin(), rules.end(), t.name,
                                 [](const auto& r, const std::string& n) { return r.first < n; });
      return it != rules.end() && it->first == t.name ? it->second : gpu::Split::replicate;
    };
  }
  const std::shared_ptr<gpu::Loader> loader = loader_for(devices);
  std::vector<gpu::DeviceTensors> loaded;
  {
    py::gil_scoped_release released;
    loaded = gpu::load_safetensors(path, *loader, o);
  }
  std::vector<std::vector<std::pair<std::string, View>>> out;
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    auto owner = std::make_shared<gpu::DeviceTensors>(std::move(loaded[i]));
    auto& list = out.emplace_back();
    list.reserve(owner->tensors().size());
    for (const gpu::DeviceTensor& t : owner->tensors()) {
      std::vector<std::int64_t> shape(t.shape.begin(), t.shape.end());
      list.emplace_back(t.name, View{owner, reinterpret_cast<std::byte*>(t.address), std::move(shape), t.dtype,
                                     DLDevice{kDLCUDA, devices[i]}, false});
    }
  }
  return out;
}

// What the loaders hand to Python, per tensor: (name, View) for mode 0; for
// modes 1 (versioned) and 2 (legacy), (name, DLPack capsule, dtype name to
// view it as, or None), ready for torch's importer: a capsule made here costs
// a fraction of a __dlpack__ call from Python, which is most of the
// per-tensor cost of a model of many small tensors. GPU-visible host memory
// goes out as kDLCPU there (torch 2.11 imports no kDLCUDAHost), fp8 and bool
// as uint8 (older importers know no fp8 code, and torch 1.13 takes no
// kDLBool; the caller views it back where its torch has the type).
py::list pack(std::vector<std::pair<std::string, View>>& tensors, int mode) {
  py::list out(tensors.size());
  const py::object none = py::none(), no_version = py::none(), versioned = py::make_tuple(1, 0);
  std::size_t i = 0;
  for (auto& [name, view] : tensors) {
    if (mode == 0) {
      out[i++] = py::make_tuple(name, py::cast(std::move(view)));
      continue;
    }
    py::object as_dtype = none;
    if (view.dtype == DType::F8_E4M3 || view.dtype == DType::F8_E5M2 || view.dtype == DType::BOOL) {
      as_dtype = py::str(info_of(view.dtype).name);
      view.dtype = DType::U8;
    }
    if (view.device.device_type == kDLCUDAHost) view.device = DLDevice{kDLCPU, 0};
    out[i++] =
        py::make_tuple(name, dlpack_capsule(view, none, mode == 1 ? versioned : no_version, none, none), as_dtype);
  }
  return out;
}

// What a Grid's Cell and an OffloadPool's cell offer alike: views, give,
// DLPack of the whole cell.
template <class PyC>
void bind_cell(py::class_<PyC> cls) {
  cls.def("view", &PyC::view, py::arg("dtype") = "uint8", py::arg("shape") = py::none())
      .def("give",
           [](PyC& c) {
             (void)c.held();
             c.box.reset();
           })
      .def_property_readonly("index", [](const PyC& c) { return c.held().cell.index(); })
      .def_property_readonly("address",
                             [](const PyC& c) { return reinterpret_cast<std::uintptr_t>(c.held().cell.data()); })
      .def_property_readonly("size", [](const PyC& c) { return c.held().cell.size(); })
      .def_property_readonly("given", [](const PyC& c) { return !c.box; })
      .def(
          "__dlpack__",
          [](const PyC& c, const py::object& stream, const py::object& max_version, const py::object& dl_device,
             const py::object& copy) {
            return dlpack_capsule(c.view("uint8", py::none()), stream, max_version, dl_device, copy);
          },
          py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__",
           [](const PyC& c) { return py::make_tuple(static_cast<int>(host_device(c.held().block()).device_type), 0); });
}

}  // namespace
}  // namespace unimem::python

#ifdef UNIMEM_PYTHON_REMOTE
namespace unimem::python {
void bind_remote(py::module_& m);  // python/src/remote.cpp
}  // namespace unimem::python
#endif

PYBIND11_MODULE(_unimem, m) {
  using namespace unimem;
  using namespace unimem::python;
  m.doc() = "unimem: one piece of memory for the CPU, every GPU and other processes (C++ core)";
  py::register_exception_translator(&translate);
  m.def("_set_error_types", &set_error_types);
  py::dict codes;
  for (int c = 1; c <= static_cast<int>(Errc::bad_format); ++c) codes[to_string(static_cast<Errc>(c))] = c;
  m.attr("_error_codes") = codes;

  py::class_<View>(m, "View", py::buffer_protocol(), R"(Memory unimem owns, shaped and typed; zero copy.

Export it with DLPack (torch.from_dlpack(view), numpy.from_dlpack(view)) or the
buffer protocol (memoryview(view), numpy.asarray(view)). Exports keep the
memory valid after the object they came from is gone.)")
      .def_buffer(&buffer_of)
      .def(
          "__dlpack__",
          [](const View& v, const py::object& stream, const py::object& max_version, const py::object& dl_device,
             const py::object& copy) { return dlpack_capsule(v, stream, max_version, dl_device, copy); },
          py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__",
           [](const View& v) { return py::make_tuple(static_cast<int>(v.device.device_type), v.device.device_id); })
      .def_property_readonly("address", [](const View& v) { return reinterpret_cast<std::uintptr_t>(v.data); })
      .def_property_readonly("nbytes", &View::nbytes)
      .def_property_readonly("shape", [](const View& v) { return py::tuple(py::cast(v.shape)); })
      .def_property_readonly("dtype", [](const View& v) { return std::string(info_of(v.dtype).name); })
      .def_property_readonly("read_only", [](const View& v) { return v.read_only; })
      .def(
          "view_as",
          [](const View& v, const std::string& dtype) {
            const DType t = parse_dtype(dtype);
            if (dtype_bytes(t) != dtype_bytes(v.dtype)) {
              throw Error(Errc::invalid_argument, 0,
                          "unimem: View.view_as: " + dtype + " is not as wide as " + info_of(v.dtype).name);
            }
            View w = v;
            w.dtype = t;
            return w;
          },
          py::arg("dtype"), "The same bytes as another dtype of the same width.")
      .def(
          "as_cpu",
          [](const View& v) {
            if (v.device.device_type == kDLCUDA) {
              throw Error(Errc::invalid_argument, 0, "unimem: View.as_cpu: the view is in GPU memory");
            }
            View w = v;
            w.device = DLDevice{kDLCPU, 0};
            return w;
          },
          "The same memory as a plain CPU view (DLPack kDLCPU). GPU-visible host memory exports as kDLCUDAHost, "
          "which some consumers (torch 2.11's from_dlpack) do not import; this one they do, still zero copy.")
      .def("__repr__", [](const View& v) {
        return "<unimem.View " + std::string(info_of(v.dtype).name) + " " +
               py::str(py::tuple(py::cast(v.shape))).cast<std::string>() + " at 0x" +
               py::str(py::int_(reinterpret_cast<std::uintptr_t>(v.data)).attr("__format__")("x")).cast<std::string>() +
               ", DLPack device " + std::to_string(v.device.device_type) + ">";
      });

  py::class_<PyBlock>(m, "Block", py::buffer_protocol(), "Pinned, shareable pages at a stable address.")
      .def(py::init([](std::size_t size, bool gpu, bool shareable, bool huge_pages, const py::object& pinned) {
             return with_pinning(pinned, "Block", [&](bool pin) {
               return PyBlock{
                   std::make_shared<Block>(Block::open(size, block_options(gpu, shareable, huge_pages, pin)))};
             });
           }),
           py::arg("size"), py::kw_only(), py::arg("gpu") = false, py::arg("shareable") = true,
           py::arg("huge_pages") = false, py::arg("pinned") = py::none())
      .def_static(
          "attach",
          [](const std::string& id, bool read_only, bool gpu) {
            py::gil_scoped_release released;
            return PyBlock{std::make_shared<Block>(
                Block::attach(BlockId::parse(id), block_options(gpu, true, false, true, read_only)))};
          },
          py::arg("id"), py::kw_only(), py::arg("read_only") = false, py::arg("gpu") = false)
      .def_static(
          "map_file",
          [](const std::string& path, bool gpu) {
            py::gil_scoped_release released;
            BlockOptions o = block_options(gpu, true, false, false);
            return PyBlock{std::make_shared<Block>(Block::map_file(path, o))};
          },
          py::arg("path"), py::kw_only(), py::arg("gpu") = false)
      .def("make_gpu_visible",
           [](PyBlock& b) {
             py::gil_scoped_release released;
             b.block->make_gpu_visible();
           })
      .def("view", &PyBlock::view, py::arg("dtype") = "uint8", py::arg("shape") = py::none(), py::arg("offset") = 0)
      .def_buffer([](const PyBlock& b) { return buffer_of(b.whole()); })
      .def(
          "__dlpack__",
          [](const PyBlock& b, const py::object& stream, const py::object& max_version, const py::object& dl_device,
             const py::object& copy) { return dlpack_capsule(b.whole(), stream, max_version, dl_device, copy); },
          py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__",
           [](const PyBlock& b) { return py::make_tuple(static_cast<int>(host_device(*b.block).device_type), 0); })
      .def_property_readonly("size", [](const PyBlock& b) { return b.block->size(); })
      .def_property_readonly("address",
                             [](const PyBlock& b) { return reinterpret_cast<std::uintptr_t>(b.block->data()); })
      .def_property_readonly("gpu_visible", [](const PyBlock& b) { return b.block->gpu_visible(); })
      .def_property_readonly("pinned", [](const PyBlock& b) { return b.block->pinned(); })
      .def_property_readonly("read_only", [](const PyBlock& b) { return b.block->read_only(); })
      .def_property_readonly("id", [](const PyBlock& b) {
        const BlockId id = b.block->id();
        return id ? py::object(py::str(id.to_string())) : py::object(py::none());
      });

  py::class_<PyTape>(m, "Tape", "A bump allocator over a Block: take() in O(1), clear() frees everything.")
      .def(py::init([](std::size_t size, bool gpu, bool shareable, bool huge_pages, const py::object& pinned) {
             return with_pinning(pinned, "Tape", [&](bool pin) {
               return PyTape{std::make_shared<Tape>(Tape::start(size, block_options(gpu, shareable, huge_pages, pin)))};
             });
           }),
           py::arg("size"), py::kw_only(), py::arg("gpu") = false, py::arg("shareable") = true,
           py::arg("huge_pages") = false, py::arg("pinned") = py::none())
      .def("take", &PyTape::take, py::arg("shape"), py::arg("dtype") = "uint8", py::arg("align") = 64)
      .def("clear", [](PyTape& t) { t.tape->clear(); })
      .def_property_readonly("used", [](const PyTape& t) { return t.tape->used(); })
      .def_property_readonly("free", [](const PyTape& t) { return t.tape->free(); })
      .def_property_readonly("total", [](const PyTape& t) { return t.tape->total(); })
      .def_property_readonly("address",
                             [](const PyTape& t) { return reinterpret_cast<std::uintptr_t>(t.tape->block().data()); })
      .def_property_readonly("gpu_visible", [](const PyTape& t) { return t.tape->block().gpu_visible(); });

  bind_cell(
      py::class_<PyCell>(m, "Cell", "A cell taken from a Grid; back to the Grid once it and its arrays are gone."));

  py::class_<PyGrid>(m, "Grid", "A lock-free pool of fixed-size cells over a Block.")
      .def(py::init([](std::size_t cell_size, std::size_t cells, bool gpu, bool shareable, const py::object& pinned) {
             return with_pinning(pinned, "Grid", [&](bool pin) {
               return PyGrid{std::make_shared<Grid<>>(cell_size, cells, block_options(gpu, shareable, false, pin))};
             });
           }),
           py::arg("cell_size"), py::arg("cells"), py::kw_only(), py::arg("gpu") = false, py::arg("shareable") = true,
           py::arg("pinned") = py::none())
      .def("take", &PyGrid::take, "A free cell, or None when all are out.")
      .def("give", &PyGrid::give, py::arg("cell"))
      .def_property_readonly("cell_size", [](const PyGrid& g) { return g.grid->cell_size(); })
      .def_property_readonly("cells", [](const PyGrid& g) { return g.grid->cells(); })
      .def_property_readonly("gpu_visible", [](const PyGrid& g) { return g.grid->block().gpu_visible(); });

  bind_cell(py::class_<PyOffloadCell>(m, "OffloadCell",
                                      "A cell of an OffloadPool; back to the pool once it and its arrays are gone."));

  py::class_<PyTransfer>(m, "Transfer", "One store or fetch: done when the work it queued on its stream is.")
      .def("ready", [](const PyTransfer& t) { return t.transfer.ready(); })
      .def("wait",
           [](const PyTransfer& t) {
             py::gil_scoped_release released;
             t.transfer.wait();
           })
      .def_property_readonly("blocks", [](const PyTransfer& t) { return t.transfer.blocks(); })
      .def_property_readonly("bytes", [](const PyTransfer& t) { return t.transfer.bytes(); });

  py::class_<PyOffloadPool>(
      m, "OffloadPool", "KV-cache offload: shared, GPU-visible host cells and batched moves to and from GPU memory.")
      .def(py::init([](std::size_t block_bytes, std::size_t blocks, const std::optional<int>& device,
                       const std::string& route) {
             gpu::OffloadOptions o;
             o.route = parse_route(route);
             py::gil_scoped_release released;
             return PyOffloadPool{std::make_shared<gpu::OffloadPool>(
                 gpu::OffloadPool::create(block_bytes, blocks, device.value_or(gpu::kNoDevice), o))};
           }),
           py::arg("block_bytes"), py::arg("blocks"), py::kw_only(), py::arg("device") = 0,
           py::arg("route") = "automatic")
      .def_static(
          "attach",
          [](const std::string& id, const std::optional<int>& device, const std::string& route) {
            gpu::OffloadOptions o;
            o.route = parse_route(route);
            py::gil_scoped_release released;
            return PyOffloadPool{std::make_shared<gpu::OffloadPool>(
                gpu::OffloadPool::attach(BlockId::parse(id), device.value_or(gpu::kNoDevice), o))};
          },
          py::arg("id"), py::kw_only(), py::arg("device") = 0, py::arg("route") = "automatic")
      .def("take", &PyOffloadPool::take, py::arg("n") = py::none(),
           "A free cell (n None) or a list of n cells, all or nothing; None when too few are free.")
      .def("give", &PyOffloadPool::give, py::arg("cell"))
      .def("store", &PyOffloadPool::store, py::arg("device_blocks"), py::arg("cells"), py::kw_only(),
           py::arg("stream") = 0, "Copies device block i into cells[i] for every i, on `stream` (0: the default).")
      .def("fetch", &PyOffloadPool::fetch, py::arg("cells"), py::arg("device_blocks"), py::kw_only(),
           py::arg("stream") = 0, "Copies cells[i] into device block i for every i, on `stream` (0: the default).")
      .def_property_readonly("block_bytes", [](const PyOffloadPool& p) { return p.pool->block_bytes(); })
      .def_property_readonly("blocks", [](const PyOffloadPool& p) { return p.pool->blocks(); })
      .def_property_readonly("device",
                             [](const PyOffloadPool& p) {
                               return p.pool->device() == gpu::kNoDevice ? py::object(py::none())
                                                                         : py::object(py::int_(p.pool->device()));
                             })
      .def_property_readonly("route", [](const PyOffloadPool& p) { return gpu::to_string(p.pool->route_taken()); })
      .def_property_readonly("id", [](const PyOffloadPool& p) { return p.pool->block().id().to_string(); });
#ifdef UNIMEM_PYTHON_REMOTE
  bind_remote(m);  // after OffloadPool: adds OffloadPool.export
#endif

  py::class_<PyLayout>(m, "Layout", "Three Tapes for inference: weights, scratch (per pass), history (per talk).")
      .def(py::init(
               [](std::size_t weights, std::size_t scratch, std::size_t history, bool gpu, const py::object& pinned) {
                 return with_pinning(pinned, "Layout", [&](bool pin) {
                   return PyLayout{std::make_shared<Layout>(
                       Layout::open(weights, scratch, history, block_options(gpu, true, false, pin)))};
                 });
               }),
           py::arg("weights"), py::arg("scratch"), py::arg("history"), py::kw_only(), py::arg("gpu") = false,
           py::arg("pinned") = py::none())
      .def_property_readonly("weights", [](const PyLayout& l) { return l.tape(l.layout->weights()); })
      .def_property_readonly("scratch", [](const PyLayout& l) { return l.tape(l.layout->scratch()); })
      .def_property_readonly("history", [](const PyLayout& l) { return l.tape(l.layout->history()); })
      .def("clear_pass", [](PyLayout& l) { l.layout->clear_pass(); })
      .def("clear_talk", [](PyLayout& l) { l.layout->clear_talk(); })
      .def("stat", [](const PyLayout& l) { return l.layout->stat(); });

  m.def(
      "_header",
      [](const std::string& path) {
        py::list out;
        for (const TensorInfo& t : read_safetensors_header(path).tensors) {
          out.append(py::make_tuple(t.name, info_of(t.dtype).name, py::tuple(py::cast(t.shape))));
        }
        return out;
      },
      py::arg("path"), "The tensors of a safetensors file: (name, dtype, shape) in file order.");
  m.def(
      "_load_host",
      [](const std::string& path, bool gpu_visible, const py::object& progress, int mode, const py::object& pinned) {
        auto tensors = load_host(path, gpu_visible, progress, pinned);
        return pack(tensors, mode);
      },
      py::arg("path"), py::arg("gpu_visible"), py::arg("progress"), py::arg("mode") = 0,
      py::arg("pinned") = py::none());
  m.def(
      "_model_files",
      [](const std::string& path) {
        py::list out;
        for (const ModelFile& f : safetensors_model_files(path)) out.append(py::make_tuple(f.path, f.tensors));
        return out;
      },
      py::arg("path"),
      "The files of a model (a .safetensors file, or the shards an index names, each with its tensors; "
      "none listed: all of the file's).");
  m.def(
      "_load_devices",
      [](const std::string& path, const std::vector<int>& devices, const std::optional<std::string>& dtype,
         const py::object& split, int mode, const py::object& progress, bool drop_page_cache) {
        auto lists = load_devices(path, devices, dtype, split, progress, drop_page_cache);
        py::list out;
        for (auto& tensors : lists) out.append(pack(tensors, mode));
        return out;
      },
      py::arg("path"), py::arg("devices"), py::arg("dtype"), py::arg("split"), py::arg("mode") = 0,
      py::arg("progress") = py::none(), py::arg("drop_page_cache") = false);
  m.def("_release_loaders", [] {
    std::vector<KeptLoader> released;
    {
      std::lock_guard hold(loaders_lock);
      released.swap(loaders);
    }
    py::gil_scoped_release unlocked;  // unregistering takes a while: other threads run meanwhile
    released.clear();
  });
  m.def(
      "page_cache_fraction",
      [](const std::string& path, std::uint64_t begin, std::optional<std::uint64_t> end) {
        const std::uint64_t stop = end ? *end : file_size(path);
        py::gil_scoped_release released;
        return page_cache_fraction(path, begin, stop);
      },
      py::arg("path"), py::arg("begin") = 0, py::arg("end") = py::none(),
      "The fraction of the file's pages in [begin, end) (end: the file's size) that are in the page cache.");
  m.def("gpu_available", [] { return gpu::available(); });
  m.def("gpu_unavailable_reason", [] { return gpu::unavailable_reason(); });
  m.def("gpu_count", [] { return gpu::available() ? static_cast<int>(gpu::devices().size()) : 0; });

  m.attr("__version__") = UNIMEM_VERSION_STRING;
  m.def(
      "build_info",
      [] {
        const BuildInfo b = build_info();
        return py::dict(py::arg("version") = b.version, py::arg("io_uring") = b.io_uring,
                        py::arg("io_uring_status") = b.io_uring_status, py::arg("cuda_driver") = b.cuda_driver,
                        py::arg("cuda_driver_version") = b.cuda_driver_version, py::arg("gpu_count") = b.gpu_count,
                        py::arg("cuda_status") = b.cuda_status, py::arg("compiler") = b.compiler);
      },
      "What this build compiled in (io_uring) and what the machine offers (CUDA driver), as a dict.");
  m.def(
      "_cli",
      [](const std::vector<std::string>& args) {
        py::gil_scoped_release released;
        return cli::run(args);
      },
      py::arg("args"), "The unimem command line tool (python3 -m unimem): args as argv; returns the exit status.");
}
