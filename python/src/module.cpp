// python/src/module.cpp — unimem._unimem: the C++ API for Python, zero copy.
//
// What this file owns: the objects that hand out memory (Block, Tape, Grid
// and its cells, Layout, OffloadPool and its cells and transfers), the
// mapping of unimem::Error to Python classes, and the module's definition.
// Around it, by concern: views.hpp/.cpp (dtypes, Views, DLPack and buffer
// exports), loading.cpp (unimem.load_safetensors's C++ half), remote.cpp
// (UCX remote pools, where built).
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
#include "unimem/detail/fork_watch.hpp"
#include "unimem/unimem.hpp"
#include "views.hpp"

namespace unimem::python {
void bind_loading(py::module_& m);  // python/src/loading.cpp

namespace {

// ---- objects ---------------------------------------------------------------
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
// The host memory a pool lends its cells from: a Grid's Block, or an
// OffloadPool's host_block() (its blocks() are KV blocks).
const Block& block_of(const Grid<>& grid) { return grid.block(); }
const Block& block_of(const gpu::OffloadPool& pool) { return pool.host_block(); }

template <class CellT, class Pool>
struct PyCellOf {
  struct Box {
    CellT cell;
    std::shared_ptr<const Pool> pool;
    const Block& block() const { return block_of(*pool); }
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
      .def_property_readonly("id", [](const PyOffloadPool& p) { return p.pool->host_block().id().to_string(); });
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

  bind_loading(m);
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
