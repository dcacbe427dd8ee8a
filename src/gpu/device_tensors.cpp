// src/gpu/device_tensors.cpp — safetensors models into device memory.
//
// A model is one .safetensors file or a sharded one: an index JSON whose
// "weight_map" names the file of every tensor. Every header is read and
// validated (parse_safetensors_header: the reference reader's rules) before
// any device memory is taken; then one allocation holds every tensor at
// 256-byte alignment (what cuBLAS and the CUDA caching allocators align to),
// and each file goes through the caller's Loader in one load, so adjacent
// tensors merge into large copies and a reloaded model needs no registration.
// load_safetensors runs those steps in order: read_model (every header),
// check_names_unique, plan_parts (each device's part of each tensor, and the
// bytes each device needs), one allocation per device, one load per file,
// then convert_parts (dtype conversions in scratch).
// DeviceMemory is plain RAII over cuMemAlloc/cuMemFree in the device's
// primary context (the one the CUDA runtime uses), so kernels launched
// through the runtime see the same addresses.
#include <algorithm>
#include <utility>

#include "format.hpp"
#include "gpu/convert.hpp"
#include "gpu/driver.hpp"
#include "gpu/loader_probe.hpp"
#include "gpu/split_part.hpp"
#include "unimem/gpu.hpp"

namespace unimem::gpu {
namespace {

constexpr std::size_t kTensorAlign = 256;
constexpr int kErrorOutOfMemory = 2;  // CUDA_ERROR_OUT_OF_MEMORY

// A file of the model, its header, and the tensors wanted from it (not the
// public ModelFile, which names a file and its tensors only).
struct ShardPlan {
  std::string path;
  SafetensorsHeader header;
  std::vector<const TensorInfo*> wanted;
};

// Reads every header of the model at `path` (one file, or an index and its
// shards), so that nothing is allocated for a model that cannot load; adds
// the number of tensors wanted to `count`. Throws what
// safetensors_model_files and read_safetensors_header throw, and
// Error(not_found) for a tensor the index puts in a file that lacks it.
std::vector<ShardPlan> read_model(const std::string& path, std::size_t& count) {
  std::vector<ShardPlan> files;
  for (auto& [file, names] : safetensors_model_files(path)) {
    ShardPlan f{file, read_safetensors_header(file), {}};
    if (names.empty()) {
      for (const TensorInfo& t : f.header.tensors) f.wanted.push_back(&t);
    } else {
      for (const std::string& name : names) {
        auto it = std::find_if(f.header.tensors.begin(), f.header.tensors.end(),
                               [&](const TensorInfo& t) { return t.name == name; });
        if (it == f.header.tensors.end()) {
          std::string why = "unimem: load_safetensors: ";
          why.append(path).append(" puts \"").append(name).append("\" in ").append(file).append(", which lacks it");
          throw Error(Errc::not_found, 0, why);
        }
        f.wanted.push_back(&*it);
      }
      std::sort(f.wanted.begin(), f.wanted.end(),
                [](const TensorInfo* a, const TensorInfo* b) { return a->file_offset < b->file_offset; });
    }
    count += f.wanted.size();
    files.push_back(std::move(f));
  }
  return files;
}

// An index names each tensor once: throws Error(bad_format) for a tensor found twice.
void check_names_unique(const std::vector<ShardPlan>& files, std::size_t count) {
  std::vector<std::pair<std::string_view, const std::string*>> names;
  names.reserve(count);
  for (const ShardPlan& f : files) {
    for (const TensorInfo* t : f.wanted) names.emplace_back(t->name, &f.path);
  }
  std::sort(names.begin(), names.end());
  for (std::size_t i = 1; i < names.size(); ++i) {
    if (names[i].first == names[i - 1].first) {
      throw Error(Errc::bad_format, 0,
                  "unimem: load_safetensors: \"" + std::string(names[i].first) + "\" is in both " +
                      *names[i - 1].second + " and " + *names[i].second);
    }
  }
}

// Each device's part of a tensor: where it comes from in the file and where
// it goes. Converted parts land in scratch first.
struct Part {
  const TensorInfo* tensor;
  const ShardPlan* file;
  std::size_t device_index;  // into the Loader's devices
  DeviceTensor out;          // address: an offset into its device's memory until allocated
  DeviceSegment segment;
  bool convert;
  std::uint64_t elements;
  std::uint64_t scratch_offset;
};

// Plans every device's part of every wanted tensor (split or replicated, as
// options.split says), and the bytes each device needs: `total` for the
// tensors, `scratch_total` for parts loaded before a dtype conversion.
std::vector<Part> plan_parts(const std::vector<ShardPlan>& files, std::span<const int> devices,
                             const TensorLoadOptions& options, std::size_t count, std::vector<std::uint64_t>& total,
                             std::vector<std::uint64_t>& scratch_total) {
  const std::size_t k = devices.size();
  std::vector<Part> parts;
  parts.reserve(count * k);
  auto aligned = [](std::uint64_t n) { return (n + kTensorAlign - 1) / kTensorAlign * kTensorAlign; };
  for (const ShardPlan& f : files) {
    for (const TensorInfo* t : f.wanted) {
      const Split split = t->shape.empty() || !options.split ? Split::replicate : options.split(*t);
      const std::size_t esize = dtype_bytes(t->dtype);
      const bool convert = options.dtype && *options.dtype != t->dtype && detail::convertible(t->dtype, *options.dtype);
      const DType dtype = convert ? *options.dtype : t->dtype;
      for (std::size_t device_index = 0; device_index < k; ++device_index) {
        Part p{t, &f, device_index, {t->name, dtype, t->shape, 0, 0, f.path, split, 0}, {}, convert, 0, 0};
        p.segment.device = devices[device_index];
        const detail::SplitPart part = detail::split_part(*t, split, k, device_index);
        p.out.shape = part.shape;
        p.out.part_begin = part.part_begin;
        p.segment.file_offset = part.file_offset;
        p.segment.bytes = static_cast<std::size_t>(part.bytes);
        if (part.rows > 1) {
          p.segment.rows = static_cast<std::size_t>(part.rows);
          p.segment.file_pitch = static_cast<std::size_t>(part.file_pitch);
          p.segment.device_pitch = p.segment.bytes;
        }
        const std::uint64_t stored = static_cast<std::uint64_t>(p.segment.bytes) * p.segment.rows;
        p.elements = stored / esize;
        p.out.bytes = p.elements * dtype_bytes(dtype);
        p.out.address = total[device_index];
        total[device_index] += aligned(p.out.bytes);
        if (convert) {
          p.scratch_offset = scratch_total[device_index];
          scratch_total[device_index] += aligned(stored);
        }
        parts.push_back(std::move(p));
      }
    }
  }
  return parts;
}

// Converts every part loaded into scratch into its tensor's dtype, on each
// device's default stream, and waits for it.
void convert_parts(const std::vector<Part>& parts, std::span<const int> devices,
                   const std::vector<std::uint64_t>& scratch_total) {
  const std::size_t k = devices.size();
  const detail::Driver& d = detail::driver();
  for (std::size_t device_index = 0; device_index < k; ++device_index) {
    if (scratch_total[device_index] == 0) continue;
    detail::ContextScope context(devices[device_index]);
    for (const Part& p : parts) {
      if (p.device_index == device_index && p.convert) {
        detail::convert(devices[device_index], nullptr, p.segment.device_address, p.out.address, p.elements,
                        p.tensor->dtype, p.out.dtype);
      }
    }
    detail::check(d.cuStreamSynchronize(nullptr), "cuStreamSynchronize (after dtype conversion)");
  }
}

}  // namespace

DeviceMemory::DeviceMemory(int device, std::size_t bytes) : device_(device) {
  const detail::Driver& d = detail::driver();
  detail::ContextScope context(device);
  detail::CUdeviceptr p = 0;
  const detail::CUresult r = d.cuMemAlloc(&p, std::max<std::size_t>(bytes, 1));
  if (r == kErrorOutOfMemory) {
    throw Error(Errc::out_of_memory, 0,
                "unimem: device " + std::to_string(device) + " has no room for " + unimem::detail::format_bytes(bytes) +
                    " (cuMemAlloc: out of memory)");
  }
  detail::check(r, "cuMemAlloc of " + unimem::detail::format_bytes(bytes) + " on device " + std::to_string(device));
  address_ = static_cast<std::uintptr_t>(p);
  size_ = bytes;
}

DeviceMemory::DeviceMemory(DeviceMemory&& other) noexcept
    : address_(std::exchange(other.address_, 0)), size_(std::exchange(other.size_, 0)), device_(other.device_) {}

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& other) noexcept {
  if (this != &other) {
    release();
    address_ = std::exchange(other.address_, 0);
    size_ = std::exchange(other.size_, 0);
    device_ = other.device_;
  }
  return *this;
}

DeviceMemory::~DeviceMemory() { release(); }

void DeviceMemory::release() noexcept {
  if (address_ == 0) return;
  try {
    detail::ContextScope context(device_);
    detail::driver().cuMemFree(static_cast<detail::CUdeviceptr>(address_));
  } catch (...) {  // no driver or context any more: nothing left to free
  }
  address_ = 0;
  size_ = 0;
}

const DeviceTensor* DeviceTensors::find(std::string_view name) const noexcept {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const DeviceTensor& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

const DeviceTensor& DeviceTensors::at(std::string_view name) const {
  if (const DeviceTensor* t = find(name)) return *t;
  throw Error(Errc::not_found, 0, "unimem: no tensor called \"" + std::string(name) + "\"");
}

DeviceTensors load_safetensors(const std::string& path, Loader& loader) {
  if (loader.devices().size() != 1) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: load_safetensors: the Loader has " + std::to_string(loader.devices().size()) +
                    " devices; the overload with TensorLoadOptions returns one DeviceTensors per device");
  }
  return std::move(load_safetensors(path, loader, TensorLoadOptions{}).front());
}

std::vector<DeviceTensors> load_safetensors(const std::string& path, Loader& loader, const TensorLoadOptions& options) {
  if (options.dtype && !detail::convertible(*options.dtype, *options.dtype)) {
    throw Error(
        Errc::invalid_argument, 0,
        std::string("unimem: load_safetensors: tensors convert to F32, F16 or BF16, not ") + to_string(*options.dtype));
  }
  // Every header first: nothing is allocated for a model that cannot load.
  std::size_t count = 0;
  const std::vector<ShardPlan> files = read_model(path, count);
  check_names_unique(files, count);
  detail::loader_probe_step("headers");

  const std::span<const int> devices = loader.devices();
  const std::size_t k = devices.size();
  std::vector<std::uint64_t> total(k, 0), scratch_total(k, 0);
  std::vector<Part> parts = plan_parts(files, devices, options, count, total, scratch_total);

  std::vector<DeviceTensors> out(k);
  std::vector<DeviceMemory> scratch(k);
  for (std::size_t device_index = 0; device_index < k; ++device_index) {
    out[device_index].memory_ = DeviceMemory(devices[device_index], static_cast<std::size_t>(total[device_index]));
    if (scratch_total[device_index] != 0)
      scratch[device_index] =
          DeviceMemory(devices[device_index], static_cast<std::size_t>(scratch_total[device_index]));
    out[device_index].tensors_.reserve(count);
  }
  detail::loader_probe_step("allocated");
  for (Part& p : parts) {
    p.out.address += out[p.device_index].memory_.address();
    p.segment.device_address = p.convert ? scratch[p.device_index].address() + p.scratch_offset : p.out.address;
  }
  // One load per file, for every device at once. Progress counts tensor
  // bytes of the whole model; the last report waits for the conversions.
  std::uint64_t model_bytes = 0;
  for (const ShardPlan& f : files) {
    for (const TensorInfo* t : f.wanted) model_bytes += t->bytes;
  }
  std::uint64_t loaded = 0, reported = 0;
  for (const ShardPlan& f : files) {
    std::vector<DeviceSegment> segments;
    for (const Part& p : parts) {
      if (p.file == &f) segments.push_back(p.segment);
    }
    std::uint64_t file_bytes = 0;
    for (const TensorInfo* t : f.wanted) file_bytes += t->bytes;
    LoadOptions o;
    o.drop_page_cache = options.drop_page_cache;
    if (options.progress && model_bytes != 0) {
      // The Loader counts the file bytes its chunks cover; scaled to this file's tensor bytes.
      o.progress = [&](std::uint64_t done, std::uint64_t total) {
        const auto part = static_cast<std::uint64_t>(static_cast<long double>(done) * file_bytes /
                                                     static_cast<long double>(std::max<std::uint64_t>(total, 1)));
        const std::uint64_t now = std::min(loaded + part, model_bytes - 1);
        if (now <= reported) return;
        reported = now;
        options.progress(now, model_bytes);
      };
    }
    const ReadReport r = loader.load(f.path, segments, o);
    loaded += file_bytes;
    for (DeviceTensors& d : out) d.reports_.push_back(r);
  }
  convert_parts(parts, devices, scratch_total);
  if (options.progress && model_bytes != 0) options.progress(model_bytes, model_bytes);
  for (Part& p : parts) out[p.device_index].tensors_.push_back(std::move(p.out));
  for (DeviceTensors& t : out) {
    std::sort(t.tensors_.begin(), t.tensors_.end(),
              [](const DeviceTensor& a, const DeviceTensor& b) { return a.name < b.name; });
  }
  return out;
}

}  // namespace unimem::gpu
