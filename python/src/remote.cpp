// python/src/remote.cpp — Python bindings of unimem::remote (built where UCX is).
//
// What this file owns: unimem.Exporter, unimem.RemotePool and
// unimem.RemoteTransfer, and OffloadPool.export(read_only=...). The
// module's other classes stay in module.cpp: this file reaches an
// OffloadPool only through its Python face (its `id`), attaching the same
// pages by id in a mapping of its own (kNoDevice: no GPU registration), so
// no C++ type crosses the two files. Writes through either mapping are the
// same bytes.
//
// Cells are named by 1-D integer arrays (any buffer of integers: no per-item
// Python work) or sequences of ints or of objects with an `index` (an
// OffloadCell). Local memory is an OffloadPool's cells (by index) or one
// C-contiguous buffer holding the cells back to back. Every blocking call
// releases the GIL; a transfer keeps its local memory's Python object alive.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "unimem/remote.hpp"

namespace py = pybind11;

namespace unimem::python {
namespace {

// Integers of a 1-D buffer (1-8 bytes, signed or unsigned) or a sequence.
std::vector<std::uint64_t> integers(const py::handle& items, const char* what) {
  std::vector<std::uint64_t> out;
  if (py::isinstance<py::buffer>(items) && !py::isinstance<py::bytes>(items)) {
    const py::buffer_info info = py::reinterpret_borrow<py::buffer>(items).request();
    const std::string f = info.format.empty() ? std::string() : info.format.substr(info.format.size() - 1);
    const bool is_signed = f == "b" || f == "h" || f == "i" || f == "l" || f == "q";
    const bool is_unsigned = f == "B" || f == "H" || f == "I" || f == "L" || f == "Q";
    if (info.ndim != 1 || !(is_signed || is_unsigned) || info.itemsize > 8) {
      throw Error(
          Errc::invalid_argument, 0,
          std::string("unimem: ") + what + ": a 1-D array of integers or a sequence, not format '" + info.format + "'");
    }
    out.resize(static_cast<std::size_t>(info.shape[0]));
    const auto* base = static_cast<const std::byte*>(info.ptr);
    const unsigned bits = static_cast<unsigned>(info.itemsize) * 8;
    for (std::size_t i = 0; i < out.size(); ++i) {
      std::uint64_t u = 0;
      std::memcpy(&u, base + static_cast<std::ptrdiff_t>(i) * info.strides[0], static_cast<std::size_t>(info.itemsize));
      if (is_signed && ((u >> (bits - 1)) & 1)) {
        throw Error(Errc::invalid_argument, 0, std::string("unimem: ") + what + ": a negative value");
      }
      out[i] = u;
    }
    return out;
  }
  for (const py::handle item : py::reinterpret_borrow<py::sequence>(items)) {
    const py::handle i = py::hasattr(item, "index") && !py::isinstance<py::int_>(item) ? item.attr("index") : item;
    const auto v = i.cast<long long>();
    if (v < 0) throw Error(Errc::invalid_argument, 0, std::string("unimem: ") + what + ": a negative value");
    out.push_back(static_cast<std::uint64_t>(v));
  }
  return out;
}

std::vector<std::uint32_t> cell_indices(const py::handle& items, const char* what) {
  std::vector<std::uint32_t> out;
  for (std::uint64_t v : integers(items, what)) {
    if (v >= 0xffffffffu)
      throw Error(Errc::invalid_argument, 0, std::string("unimem: ") + what + ": an index above 2^32 - 2");
    out.push_back(static_cast<std::uint32_t>(v));
  }
  return out;
}

// An OffloadPool's pages in a mapping of this file's (see the design note).
std::shared_ptr<gpu::OffloadPool> pool_by_id(const py::handle& pool) {
  if (!py::hasattr(pool, "id") || !py::hasattr(pool, "block_bytes")) {
    throw Error(Errc::invalid_argument, 0, "unimem: expected an OffloadPool");
  }
  const std::string id = pool.attr("id").cast<std::string>();
  py::gil_scoped_release released;
  return std::make_shared<gpu::OffloadPool>(gpu::OffloadPool::attach(BlockId::parse(id), gpu::kNoDevice));
}

struct PyExporter {
  std::shared_ptr<gpu::OffloadPool> pool;  // before the exporter: it outlives it
  std::unique_ptr<remote::Exporter> exporter;
  py::bytes descriptor() const {
    const std::vector<std::byte> d = exporter->descriptor();
    return {reinterpret_cast<const char*>(d.data()), d.size()};
  }
};

std::shared_ptr<PyExporter> make_exporter(const py::handle& pool, bool read_only) {
  auto out = std::make_shared<PyExporter>();
  out->pool = pool_by_id(pool);
  py::gil_scoped_release released;
  out->exporter = std::make_unique<remote::Exporter>(remote::Exporter::create(*out->pool, {.read_only = read_only}));
  return out;
}

struct PyRemoteTransfer {
  remote::RemoteTransfer transfer;
  py::object keep;  // the local memory's owner
};

struct PyRemotePool {
  std::shared_ptr<remote::RemotePool> pool;
  std::map<std::string, std::shared_ptr<gpu::OffloadPool>> locals;  // attached local pools, by id

  // The local addresses of the call: an OffloadPool's cells, or a buffer's slices.
  std::vector<std::byte*> local(const py::object& memory, const py::object& cells, std::size_t n, bool write) {
    const std::size_t size = pool->cell_size();
    std::vector<std::byte*> out;
    if (py::hasattr(memory, "id") && py::hasattr(memory, "block_bytes")) {
      if (cells.is_none()) throw Error(Errc::invalid_argument, 0, "unimem: RemotePool: name the OffloadPool's cells");
      const std::string id = memory.attr("id").cast<std::string>();
      auto& mapped = locals[id];
      if (!mapped) mapped = pool_by_id(memory);
      if (mapped->block_bytes() != size) {
        throw Error(Errc::invalid_argument, 0,
                    "unimem: RemotePool: the local pool's blocks are " + std::to_string(mapped->block_bytes()) +
                        " bytes, the remote's " + std::to_string(size));
      }
      for (std::uint32_t i : cell_indices(cells, "local cells")) {
        const std::span<std::byte> c = mapped->cell(i);
        if (c.empty())
          throw Error(Errc::invalid_argument, 0,
                      "unimem: RemotePool: local cell " + std::to_string(i) + " is out of range");
        out.push_back(c.data());
      }
      return out;
    }
    if (!cells.is_none())
      throw Error(Errc::invalid_argument, 0, "unimem: RemotePool: local cells name an OffloadPool's");
    const py::buffer_info info = py::reinterpret_borrow<py::buffer>(memory).request(write);
    const auto bytes = static_cast<std::size_t>(info.size * info.itemsize);
    bool contiguous = true;
    for (py::ssize_t d = info.ndim - 1, stride = info.itemsize; d >= 0; stride *= info.shape[d], --d) {
      contiguous = contiguous && (info.shape[d] == 1 || info.strides[d] == stride);
    }
    if (!contiguous || bytes != n * size) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: RemotePool: the local buffer must be C-contiguous and hold " + std::to_string(n) +
                      " cells of " + std::to_string(size) + " bytes (" + std::to_string(n * size) + "), not " +
                      std::to_string(bytes));
    }
    for (std::size_t i = 0; i < n; ++i) out.push_back(static_cast<std::byte*>(info.ptr) + i * size);
    return out;
  }

  PyRemoteTransfer get(const py::object& remote_cells, const py::object& into, const py::object& local_cells,
                       bool check) {
    const std::vector<std::uint32_t> at = cell_indices(remote_cells, "remote cells");
    const std::vector<std::byte*> where = local(into, local_cells, at.size(), true);
    py::gil_scoped_release released;
    return {pool->get(at, where, {.check_generations = check}), {}};
  }
  PyRemoteTransfer put(const py::object& remote_cells, const py::object& from, const py::object& local_cells) {
    const std::vector<std::uint32_t> at = cell_indices(remote_cells, "remote cells");
    const std::vector<std::byte*> where = local(from, local_cells, at.size(), false);
    const std::vector<const std::byte*> source(where.begin(), where.end());
    py::gil_scoped_release released;
    return {pool->put(at, source), {}};
  }
};

}  // namespace

void bind_remote(py::module_& m) {
  py::class_<PyExporter, std::shared_ptr<PyExporter>>(
      m, "Exporter", "An OffloadPool's cells exported to remote peers over UCX (alive as long as this object).")
      .def(py::init(&make_exporter), py::arg("pool"), py::kw_only(), py::arg("read_only") = false)
      .def_property_readonly("descriptor", &PyExporter::descriptor)
      .def_property_readonly("read_only", [](const PyExporter& e) { return e.exporter->read_only(); })
      .def_property_readonly("generation", [](const PyExporter& e) { return e.exporter->generation(); });

  // OffloadPool.export(read_only=False) -> bytes: the export lives until the
  // interpreter exits (one per pool and mode; unimem.Exporter for a shorter life).
  m.attr("_exports") = py::dict();
  py::object offload_pool = m.attr("OffloadPool");
  offload_pool.attr("export") = py::cpp_function(
      [m](const py::object& self, bool read_only) {
        py::dict exports = m.attr("_exports");
        const py::tuple key = py::make_tuple(self.attr("id"), read_only);
        if (!exports.contains(key)) exports[key] = py::cast(make_exporter(self, read_only));
        return exports[key].attr("descriptor");
      },
      py::name("export"), py::is_method(offload_pool), py::arg("read_only") = false,
      "Exports the pool's cells to remote peers (UCX); returns the descriptor to hand them (unimem.RemotePool).");

  py::class_<PyRemoteTransfer>(m, "RemoteTransfer", "One remote get or put.")
      .def("ready",
           [](const PyRemoteTransfer& t) {
             py::gil_scoped_release released;
             return t.transfer.ready();
           })
      .def(
          "wait",
          [](const PyRemoteTransfer& t, std::optional<double> timeout) {
            py::gil_scoped_release released;
            if (!timeout) {
              t.transfer.wait();
              return true;
            }
            return t.transfer.wait(std::chrono::milliseconds(static_cast<long long>(*timeout * 1000)));
          },
          py::arg("timeout") = py::none(), "Waits (at most timeout seconds); True when done.")
      .def_property_readonly("changed",
                             [](const PyRemoteTransfer& t) {
                               py::gil_scoped_release released;
                               return t.transfer.changed();
                             })
      .def_property_readonly("generations",
                             [](const PyRemoteTransfer& t) {
                               py::gil_scoped_release released;
                               return t.transfer.generations();
                             })
      .def_property_readonly("cells", [](const PyRemoteTransfer& t) { return t.transfer.cells(); })
      .def_property_readonly("bytes", [](const PyRemoteTransfer& t) { return t.transfer.bytes(); })
      .def_property_readonly("operations", [](const PyRemoteTransfer& t) { return t.transfer.operations(); });

  py::class_<PyRemotePool>(m, "RemotePool",
                           "The cells of an export on another process or host: over UCX, or on the exporter's own "
                           "host by mapping its memory (route 'same_host').")
      .def(py::init([](const py::bytes& descriptor, bool detect_peer_failure, double keepalive, bool same_host) {
             const std::string d = descriptor;
             remote::RemoteOptions o;
             o.detect_peer_failure = detect_peer_failure;
             o.same_host = same_host;
             o.keepalive = std::chrono::milliseconds(static_cast<long long>(keepalive * 1000));
             py::gil_scoped_release released;
             auto p = std::make_shared<remote::RemotePool>(
                 remote::RemotePool::connect(std::span(reinterpret_cast<const std::byte*>(d.data()), d.size()), o));
             return PyRemotePool{std::move(p), {}};
           }),
           py::arg("descriptor"), py::kw_only(), py::arg("detect_peer_failure") = true, py::arg("keepalive") = 1.0,
           py::arg("same_host") = true)
      .def(
          "get",
          [](PyRemotePool& p, const py::object& remote_cells, const py::object& into, const py::object& local_cells,
             bool check) {
            PyRemoteTransfer t = p.get(remote_cells, into, local_cells, check);
            t.keep = into;
            return t;
          },
          py::arg("remote_cells"), py::arg("into"), py::arg("local_cells") = py::none(), py::kw_only(),
          py::arg("check_generations") = false,
          "Reads remote cells into an OffloadPool's cells (local_cells) or a buffer of len(remote_cells) cells.")
      .def(
          "put",
          [](PyRemotePool& p, const py::object& remote_cells, const py::object& source, const py::object& local_cells) {
            PyRemoteTransfer t = p.put(remote_cells, source, local_cells);
            t.keep = source;
            return t;
          },
          py::arg("remote_cells"), py::arg("source"), py::arg("local_cells") = py::none(),
          "Writes an OffloadPool's cells (local_cells) or a buffer's into remote cells.")
      .def_property_readonly("cells", [](const PyRemotePool& p) { return p.pool->cells(); })
      .def_property_readonly("cell_size", [](const PyRemotePool& p) { return p.pool->cell_size(); })
      .def_property_readonly("read_only", [](const PyRemotePool& p) { return p.pool->read_only(); })
      .def_property_readonly("generation", [](const PyRemotePool& p) { return p.pool->generation(); })
      .def_property_readonly(
          "route",
          [](const PyRemotePool& p) { return p.pool->route() == remote::Route::same_host ? "same_host" : "ucx"; },
          "'same_host' (the exporter's memory mapped here, copied with memcpy) or 'ucx'.");
}

}  // namespace unimem::python
