// python/src/views.cpp — dtypes by name, Views, and their DLPack and buffer exports.
//
// A View is the one currency between the bindings and Python: every object
// that hands out memory hands out Views (views.hpp). This file owns how a
// View's shape is checked and how it leaves: as a DLPack capsule (versioned
// or legacy, as the consumer asks; each holds its own reference to the
// owner, so a tensor outliving its Python object keeps the memory valid) or
// through the buffer protocol.
#include "views.hpp"

#include <Python.h>

#include <memory>
#include <string>
#include <utility>

namespace unimem::python {
namespace {

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

}  // namespace

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

}  // namespace unimem::python
