// src/gpu/ptx_kernel.cpp — the cache of loaded PTX kernels (see ptx_kernel.hpp).
#include "gpu/ptx_kernel.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace unimem::gpu::detail {

const PtxKernel& ptx_kernel(int device, const char* ptx, const char* entry, const char* what) {
  // Never destroyed: a static OffloadPool may launch (or wait for) kernels
  // after this function's statics would have been destroyed at exit.
  static std::mutex& lock = *new std::mutex;  // NOLINT: never freed, on purpose
  // std::map: references to its values stay valid as kernels are added.
  static auto& loaded = *new std::map<std::pair<const char*, int>, PtxKernel>;  // NOLINT: never freed, on purpose
  std::lock_guard hold(lock);
  if (auto it = loaded.find({ptx, device}); it != loaded.end()) return it->second;
  const Driver& d = driver();
  CUmodule module = nullptr;
  check(d.cuModuleLoadData(&module, ptx), std::string("cuModuleLoadData (") + what + ")");
  PtxKernel k;
  check(d.cuModuleGetFunction(&k.function, module, entry), "cuModuleGetFunction");
  CUdevice dev = 0;
  check(d.cuDeviceGet(&dev, device), "cuDeviceGet");
  check(d.cuDeviceGetAttribute(&k.multiprocessors, kAttrMultiprocessorCount, dev),
        "cuDeviceGetAttribute (multiprocessors)");
  k.multiprocessors = std::max(1, k.multiprocessors);
  return loaded.emplace(std::pair{ptx, device}, k).first->second;
}

}  // namespace unimem::gpu::detail
