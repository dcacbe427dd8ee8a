// src/gpu/driver.cpp — libcuda.so.1 loaded at run time (platform::
// open_library), once per process.
#include "gpu/driver.hpp"

#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include "platform/library.hpp"
#include "unimem/error.hpp"

namespace unimem::gpu::detail {
namespace {

struct Loaded {
  Driver driver{};
  Errc failure{};
  std::string message;  // empty when the driver is usable
};

template <class F>
bool bind(void* library, const char* name, F*& slot) {
  slot = reinterpret_cast<F*>(platform::library_symbol(library, name));
  return slot != nullptr;
}

// Runs once (the static in driver() below), so the process-global getenv is
// not raced by another load.
Loaded load() {
  Loaded out;
  const char* override_path = std::getenv("UNIMEM_CUDA_DRIVER");  // NOLINT(concurrency-mt-unsafe): once
  const std::string path = override_path && *override_path ? override_path : "libcuda.so.1";
  // The handle is never closed: registered memory and contexts live until exit.
  void* library = platform::open_library(path);
  if (library == nullptr) {
    out.failure = Errc::no_cuda_driver;
    out.message = "unimem: no CUDA driver: cannot load " + path + " (" + platform::library_error() +
                  "). Install the NVIDIA driver, or keep the Block host-only (Visibility::host)";
    return out;
  }
  Driver& d = out.driver;
  // Versioned names are the ones the CUDA headers map the plain names to.
  const bool bound =
      bind(library, "cuInit", d.cuInit) && bind(library, "cuDriverGetVersion", d.cuDriverGetVersion) &&
      bind(library, "cuDeviceGetCount", d.cuDeviceGetCount) && bind(library, "cuDeviceGet", d.cuDeviceGet) &&
      bind(library, "cuDeviceGetName", d.cuDeviceGetName) &&
      bind(library, "cuDeviceGetAttribute", d.cuDeviceGetAttribute) &&
      bind(library, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain) &&
      bind(library, "cuCtxPushCurrent_v2", d.cuCtxPushCurrent) &&
      bind(library, "cuCtxPopCurrent_v2", d.cuCtxPopCurrent) &&
      bind(library, "cuMemHostRegister_v2", d.cuMemHostRegister) &&
      bind(library, "cuMemHostUnregister", d.cuMemHostUnregister) &&
      bind(library, "cuMemHostGetDevicePointer_v2", d.cuMemHostGetDevicePointer) &&
      bind(library, "cuGetErrorName", d.cuGetErrorName) && bind(library, "cuStreamCreate", d.cuStreamCreate) &&
      bind(library, "cuStreamDestroy_v2", d.cuStreamDestroy) &&
      bind(library, "cuStreamSynchronize", d.cuStreamSynchronize) && bind(library, "cuEventCreate", d.cuEventCreate) &&
      bind(library, "cuEventDestroy_v2", d.cuEventDestroy) && bind(library, "cuEventRecord", d.cuEventRecord) &&
      bind(library, "cuEventSynchronize", d.cuEventSynchronize) &&
      bind(library, "cuMemcpyHtoDAsync_v2", d.cuMemcpyHtoDAsync) && bind(library, "cuMemAlloc_v2", d.cuMemAlloc) &&
      bind(library, "cuMemFree_v2", d.cuMemFree) && bind(library, "cuMemcpy2DAsync_v2", d.cuMemcpy2DAsync) &&
      bind(library, "cuModuleLoadData", d.cuModuleLoadData) &&
      bind(library, "cuModuleGetFunction", d.cuModuleGetFunction) &&
      bind(library, "cuLaunchKernel", d.cuLaunchKernel) && bind(library, "cuMemcpyAsync", d.cuMemcpyAsync) &&
      bind(library, "cuEventQuery", d.cuEventQuery) &&
      bind(library, "cuPointerGetAttributes", d.cuPointerGetAttributes) &&
      bind(library, "cuStreamGetCtx", d.cuStreamGetCtx) && bind(library, "cuStreamWaitEvent", d.cuStreamWaitEvent);
  if (!bound) {
    out.failure = Errc::no_cuda_driver;
    out.message = "unimem: no usable CUDA driver: " + path + " lacks a driver API entry point (" +
                  platform::library_error() + "). Update the NVIDIA driver";
    return out;
  }
  // Optional entry points, absent from older drivers (unimem works without
  // them); bound after the check above, whose message reads library_error().
  if (!bind(library, "cuMemcpyBatchAsync_v2", d.cuMemcpyBatchAsync_v2)) {
    bind(library, "cuMemcpyBatchAsync", d.cuMemcpyBatchAsync_v1);
  }
  // The unsuffixed cuStreamIsCapturing reads handle 0 as the legacy default
  // stream (the _ptsz form reads it as the per-thread one), as the other
  // stream calls bound above do.
  bind(library, "cuStreamIsCapturing", d.cuStreamIsCapturing);
  bind(library, "cuThreadExchangeStreamCaptureMode", d.cuThreadExchangeStreamCaptureMode);
  bind(library, "cuDeviceCanAccessPeer", d.cuDeviceCanAccessPeer);
  bind(library, "cuCtxEnablePeerAccess", d.cuCtxEnablePeerAccess);
  if (CUresult r = d.cuInit(0); r != 0) {
    const char* name = nullptr;
    d.cuGetErrorName(r, &name);
    out.failure = r == kErrorNoDevice ? Errc::no_cuda_device : Errc::no_cuda_driver;
    out.message = std::string("unimem: the CUDA driver did not initialise: ") + (name ? name : "error") + " (" +
                  std::to_string(r) + ")" +
                  (r == kErrorNoDevice ? ". This machine has no CUDA device visible to this process" : "");
    return out;
  }
  d.cuDriverGetVersion(&d.version);
  if (d.cuDeviceGetCount(&d.device_count) != 0 || d.device_count <= 0) {
    out.failure = Errc::no_cuda_device;
    out.message = "unimem: the CUDA driver sees no device (check CUDA_VISIBLE_DEVICES and nvidia-smi)";
  }
  return out;
}

// Never destroyed (see primary_context()).
const Loaded& loaded() {
  static const Loaded& result = *new Loaded(load());  // thread-safe, once; NOLINT: never freed, on purpose
  return result;
}

}  // namespace

const Driver& driver() {
  const Loaded& l = loaded();
  if (!l.message.empty()) throw Error(l.failure, 0, l.message);
  return l.driver;
}

std::string error_name(CUresult r) {
  const char* name = nullptr;
  if (loaded().driver.cuGetErrorName) loaded().driver.cuGetErrorName(r, &name);
  return std::string(name ? name : "CUDA error") + " (" + std::to_string(r) + ")";
}

void check(CUresult r, const std::string& what) {
  if (r == 0) return;
  throw Error(Errc::cuda, 0, "unimem: " + what + " failed: " + error_name(r));
}

CUcontext primary_context(int ordinal) {
  const Driver& d = driver();
  // Never destroyed: objects with static storage (a Loader, an OffloadPool)
  // make contexts current in their destructors, which may run after this
  // function's statics would have been destroyed.
  static std::mutex& lock = *new std::mutex;                              // NOLINT: never freed, on purpose
  static std::vector<CUcontext>& contexts = *new std::vector<CUcontext>;  // NOLINT: never freed, on purpose
  std::lock_guard<std::mutex> hold(lock);
  if (contexts.empty()) contexts.resize(static_cast<std::size_t>(d.device_count), nullptr);
  if (ordinal < 0 || ordinal >= d.device_count) {
    throw Error(
        Errc::invalid_argument, 0,
        "unimem: no CUDA device " + std::to_string(ordinal) + " (there are " + std::to_string(d.device_count) + ")");
  }
  CUcontext& c = contexts[static_cast<std::size_t>(ordinal)];
  if (c == nullptr) {
    CUdevice device = 0;
    check(d.cuDeviceGet(&device, ordinal), "cuDeviceGet");
    check(d.cuDevicePrimaryCtxRetain(&c, device), "retaining the primary context of device " + std::to_string(ordinal));
  }
  return c;
}

bool context_lost(CUresult r) noexcept {
  switch (r) {
    case 4:    // CUDA_ERROR_DEINITIALIZED: the driver is shutting down
    case 214:  // CUDA_ERROR_ECC_UNCORRECTABLE
    case 220:  // CUDA_ERROR_NVLINK_UNCORRECTABLE
    case 226:  // CUDA_ERROR_CONTAINED
    case 700:  // CUDA_ERROR_ILLEGAL_ADDRESS
    case 702:  // CUDA_ERROR_LAUNCH_TIMEOUT
    case 709:  // CUDA_ERROR_CONTEXT_IS_DESTROYED
    case 710:  // CUDA_ERROR_ASSERT
    case 714:  // CUDA_ERROR_HARDWARE_STACK_ERROR
    case 715:  // CUDA_ERROR_ILLEGAL_INSTRUCTION
    case 716:  // CUDA_ERROR_MISALIGNED_ADDRESS
    case 717:  // CUDA_ERROR_INVALID_ADDRESS_SPACE
    case 718:  // CUDA_ERROR_INVALID_PC
    case 719:  // CUDA_ERROR_LAUNCH_FAILED
    case 721:  // CUDA_ERROR_TENSOR_MEMORY_LEAK
    case 911:  // CUDA_ERROR_EXTERNAL_DEVICE
      return true;
    default:
      return false;
  }
}

RelaxedCapture::RelaxedCapture() noexcept {
  const Driver& d = loaded().driver;  // callers have the driver loaded (a context or event of it)
  if (d.cuThreadExchangeStreamCaptureMode == nullptr) return;
  int mode = kCaptureModeRelaxed;
  if (d.cuThreadExchangeStreamCaptureMode(&mode) == 0) {
    previous_ = mode;
    exchanged_ = true;
  }
}

RelaxedCapture::~RelaxedCapture() {
  if (!exchanged_) return;
  int mode = previous_;
  loaded().driver.cuThreadExchangeStreamCaptureMode(&mode);
}

ContextScope::ContextScope(int ordinal) {
  check(driver().cuCtxPushCurrent(primary_context(ordinal)), "cuCtxPushCurrent");
}

ContextScope::~ContextScope() {
  CUcontext ignored = nullptr;
  driver().cuCtxPopCurrent(&ignored);
}

}  // namespace unimem::gpu::detail
