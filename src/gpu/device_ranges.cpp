// src/gpu/device_ranges.cpp — device allocations asked of the driver once each (see device_ranges.hpp).
#include "gpu/device_ranges.hpp"

#include <algorithm>
#include <cstdio>
#include <string>

#include "gpu/driver.hpp"
#include "unimem/error.hpp"

namespace unimem::gpu::detail {
namespace {

constexpr unsigned kMemoryTypeUnknown = 0;

std::string hex(std::uintptr_t v) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(v));
  return text;
}

}  // namespace

void DeviceRanges::require(std::uintptr_t address, std::size_t bytes, std::size_t index, const char* what) {
  const std::uintptr_t end = address + bytes;  // the caller checked that this does not wrap
  auto inside = [&](const Range& r) { return address >= r.begin && end <= r.end; };
  if (last_ < known_.size() && inside(known_[last_])) return;
  for (std::size_t i = 0; i < known_.size(); ++i) {
    if (inside(known_[i])) {
      last_ = i;
      return;
    }
  }
  auto refuse = [&](const std::string& why) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: OffloadPool: " + std::string(what) + " " + std::to_string(index) + " at " + hex(address) +
                    " (" + std::to_string(bytes) + " bytes) " + why + "; nothing was moved");
  };
  unsigned type = kMemoryTypeUnknown;
  int ordinal = -1;
  CUdeviceptr start = 0;
  std::size_t size = 0;
  int attributes[] = {kPointerMemoryType, kPointerDeviceOrdinal, kPointerRangeStart, kPointerRangeSize};
  void* data[] = {&type, &ordinal, &start, &size};
  check(driver().cuPointerGetAttributes(4, attributes, data, address), "cuPointerGetAttributes");
  if (type == kMemoryTypeUnknown) refuse("is not memory CUDA allocated (a stale or wrong address?)");
  if (type == kMemoryTypeHost) refuse("is host memory, not device memory");
  if (type != kMemoryTypeDevice) refuse("is not device memory (memory type " + std::to_string(type) + ")");
  if (ordinal != device_) {
    refuse("is memory of device " + std::to_string(ordinal) + ", and this pool moves blocks of device " +
           std::to_string(device_));
  }
  // The allocation's context: none for cuMemMap'ped memory; else the
  // device's primary context, where the pool's work runs.
  CUcontext owner = nullptr;
  int context_attribute[] = {kPointerContext};
  void* context_data[] = {&owner};
  if (driver().cuPointerGetAttributes(1, context_attribute, context_data, address) == 0 && owner != nullptr &&
      owner != primary_context(device_)) {
    refuse("is memory of another CUDA context of device " + std::to_string(device_) +
           " than its primary context (the one the CUDA runtime uses, and the pool's moves run in)");
  }
  // What the device (of the current context: the primary one) may do with
  // it: cuMemMap'ped memory has only the access cuMemSetAccess gave.
  unsigned access = kAccessReadWrite;
  int access_attribute[] = {kPointerAccessFlags};
  void* access_data[] = {&access};
  if (driver().cuPointerGetAttributes(1, access_attribute, access_data, address) == 0) {
    const bool reads = (access & kAccessRead) != 0;
    const bool writes = (access & kAccessReadWrite) == kAccessReadWrite;
    if (!reads) {
      refuse("is not accessible to device " + std::to_string(device_) +
             " (mapped without access for it: cuMemSetAccess)");
    }
    if (use_ == Use::write && !writes) {
      refuse("is read-only for device " + std::to_string(device_) +
             " (cuMemSetAccess gave read access only), and a fetch writes it");
    }
  }
  Range r{static_cast<std::uintptr_t>(start), static_cast<std::uintptr_t>(start) + size};
  // Memory mapped with cuMemMap (virtual memory management) reports its
  // whole reserved range above, holes included: keep only the mapping the
  // address lies in. Where the driver refuses these attributes (older
  // drivers) or reports no mapping size, the allocation's range stands.
  int mapped = 0;  // a bool written by the driver: zeroed, so any width reads right
  CUdeviceptr mapping_base = 0;
  std::size_t mapping_size = 0;
  int mapping_attributes[] = {kPointerMapped, kPointerMappingBase, kPointerMappingSize};
  void* mapping_data[] = {&mapped, &mapping_base, &mapping_size};
  if (driver().cuPointerGetAttributes(3, mapping_attributes, mapping_data, address) == 0) {
    if (mapped == 0) refuse("is not mapped (an address range reserved without memory behind it)");
    if (mapping_size != 0) {
      const auto base = static_cast<std::uintptr_t>(mapping_base);
      r.begin = std::max(r.begin, base);
      r.end = std::min(r.end, base + mapping_size);
    }
  }
  if (!inside(r)) {
    refuse("runs past the end of its device allocation or mapping (" + hex(r.begin) + ", " +
           std::to_string(r.end - r.begin) + " bytes)");
  }
  last_ = known_.size();
  known_.push_back(r);
}

}  // namespace unimem::gpu::detail
