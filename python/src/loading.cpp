// python/src/loading.cpp — safetensors models into unimem memory, for unimem.load_safetensors.
//
// What this file owns: reading a model's files into a pinned Tape on the CPU
// (load_host) or into GPU memory through gpu::Loaders kept across calls, one
// per device list (load_devices), and handing the tensors to Python as Views
// or ready-made DLPack capsules (pack). Python's side (unimem/__init__.py)
// resolves indexes, checks names and turns capsules into torch tensors.
// Every read runs without the GIL; progress callbacks take it back.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "unimem/detail/fork_watch.hpp"
#include "unimem/unimem.hpp"
#include "views.hpp"

namespace unimem::python {
namespace {

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
    const std::size_t bytes = Safetensors::bytes_needed(read_safetensors_header(path), 64);
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
    // Private memory, on huge pages where they back a load faster.
    const bool huge = huge_pages_pay_off_for_loads();
    Tape tape = with_pinning(pinned, "load_safetensors", [&](bool pin) {
      return Tape::start(std::max<std::size_t>(bytes, 1), block_options(gpu_visible, false, huge, pin));
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

}  // namespace

void bind_loading(py::module_& m) {
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
}

}  // namespace unimem::python
