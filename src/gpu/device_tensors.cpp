// src/gpu/device_tensors.cpp — safetensors models into device memory.
//
// A model is one .safetensors file or a sharded one: an index JSON whose
// "weight_map" names the file of every tensor. Every header is read and
// validated (parse_safetensors_header: the reference reader's rules) before
// any device memory is taken; then one allocation holds every tensor at
// 256-byte alignment (what cuBLAS and the CUDA caching allocators align to),
// and each file goes through the caller's Loader in one load, so adjacent
// tensors merge into large copies and a reloaded model needs no registration.
// DeviceMemory is plain RAII over cuMemAlloc/cuMemFree in the device's
// primary context (the one the CUDA runtime uses), so kernels launched
// through the runtime see the same addresses.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <utility>

#include "format.hpp"
#include "gpu/driver.hpp"
#include "unimem/gpu.hpp"

namespace unimem::gpu {
namespace {

constexpr std::size_t kTensorAlign = 256;
constexpr int kErrorOutOfMemory = 2;  // CUDA_ERROR_OUT_OF_MEMORY

[[noreturn]] void bad_index(const std::string& path, const std::string& why) {
  throw Error(Errc::bad_format, 0, "unimem: load_safetensors: " + path + ": " + why);
}

// The tensors each file must provide, in file order; empty list: all of them.
std::vector<std::pair<std::string, std::vector<std::string>>> shards_of(const std::string& path) {
  const bool is_index = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  if (!is_index) return {{path, {}}};
  std::ifstream in(path);
  if (!in) throw Error(Errc::not_found, 0, "unimem: load_safetensors: cannot open the index " + path);
  nlohmann::json index;
  try {
    in >> index;
  } catch (const nlohmann::json::exception& e) {
    bad_index(path, std::string("not JSON (") + e.what() + ")");
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    bad_index(path, "no \"weight_map\" object");
  }
  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  std::map<std::string, std::vector<std::string>> by_file;  // sorted: a stable file order
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    if (!file.is_string()) bad_index(path, "the file of \"" + tensor + "\" is not a string");
    const std::string name = file.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      bad_index(path, "\"" + name + "\" is not a file name in the index's folder");
    }
    by_file[(folder / name).string()].push_back(tensor);
  }
  if (by_file.empty()) bad_index(path, "the weight_map names no tensor");
  return {by_file.begin(), by_file.end()};
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
  // Every header first: nothing is allocated for a model that cannot load.
  struct File {
    std::string path;
    SafetensorsHeader header;
    std::vector<const TensorInfo*> wanted;
  };
  std::vector<File> files;
  std::size_t total = 0, count = 0;
  for (auto& [file, names] : shards_of(path)) {
    File f{file, read_safetensors_header(file), {}};
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
    for (const TensorInfo* t : f.wanted) total += (t->bytes + kTensorAlign - 1) / kTensorAlign * kTensorAlign;
    count += f.wanted.size();
    files.push_back(std::move(f));
  }

  {  // an index names each tensor once; a tensor found twice is a malformed model
    std::vector<std::pair<std::string_view, const std::string*>> names;
    names.reserve(count);
    for (const File& f : files) {
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

  DeviceTensors out;
  out.memory_ = DeviceMemory(loader.device(), total);
  out.tensors_.reserve(count);
  std::uintptr_t at = out.memory_.address();
  for (const File& f : files) {
    std::vector<DeviceSegment> segments;
    segments.reserve(f.wanted.size());
    for (const TensorInfo* t : f.wanted) {
      out.tensors_.push_back({t->name, t->dtype, t->shape, at, t->bytes, f.path});
      segments.push_back({t->file_offset, at, static_cast<std::size_t>(t->bytes)});
      at += (t->bytes + kTensorAlign - 1) / kTensorAlign * kTensorAlign;
    }
    out.reports_.push_back(loader.load(f.path, segments));
  }
  std::sort(out.tensors_.begin(), out.tensors_.end(),
            [](const DeviceTensor& a, const DeviceTensor& b) { return a.name < b.name; });
  return out;
}

}  // namespace unimem::gpu
