// src/gpu/driver.hpp — the CUDA driver, loaded at run time.
//
// unimem never links against CUDA: the library must build and run where no
// CUDA is installed. The driver (libcuda.so.1) is opened with dlopen on first
// use, and only the few entry points unimem needs are looked up. Their types
// are declared here, from the driver API's stable ABI, so no CUDA header is
// needed to build. The environment variable UNIMEM_CUDA_DRIVER names another
// library to load instead (tests use a path that does not exist to force the
// "no driver" path on a machine that has one).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace unimem::gpu::detail {

using CUresult = int;
using CUdevice = int;
using CUcontext = struct CUctx_st*;
using CUdeviceptr = unsigned long long;
using CUstream = struct CUstream_st*;
using CUevent = struct CUevent_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;

// CUDA_MEMCPY2D (cuda.h), for strided copies (tensor-parallel slices).
struct Memcpy2D {
  std::size_t srcXInBytes = 0, srcY = 0;
  unsigned srcMemoryType = 0;  // CUmemorytype: 1 host, 2 device
  const void* srcHost = nullptr;
  CUdeviceptr srcDevice = 0;
  void* srcArray = nullptr;
  std::size_t srcPitch = 0;
  std::size_t dstXInBytes = 0, dstY = 0;
  unsigned dstMemoryType = 0;
  void* dstHost = nullptr;
  CUdeviceptr dstDevice = 0;
  void* dstArray = nullptr;
  std::size_t dstPitch = 0;
  std::size_t WidthInBytes = 0, Height = 0;
};
inline constexpr unsigned kMemoryTypeHost = 1;    // CU_MEMORYTYPE_HOST
inline constexpr unsigned kMemoryTypeDevice = 2;  // CU_MEMORYTYPE_DEVICE

inline constexpr unsigned kStreamNonBlocking = 0x1;   // CU_STREAM_NON_BLOCKING
inline constexpr unsigned kEventDisableTiming = 0x2;  // CU_EVENT_DISABLE_TIMING

inline constexpr unsigned kHostRegisterPortable = 0x01;          // CU_MEMHOSTREGISTER_PORTABLE
inline constexpr unsigned kHostRegisterDeviceMap = 0x02;         // CU_MEMHOSTREGISTER_DEVICEMAP
inline constexpr unsigned kHostRegisterReadOnly = 0x08;          // CU_MEMHOSTREGISTER_READ_ONLY
inline constexpr int kAttrUnifiedAddressing = 41;                // CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING
inline constexpr int kAttrHostPointerForRegistered = 91;         // ..._CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM
inline constexpr int kAttrHostRegisterSupported = 99;            // CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED
inline constexpr CUresult kErrorNoDevice = 100;                  // CUDA_ERROR_NO_DEVICE
inline constexpr CUresult kErrorNotReady = 600;                  // CUDA_ERROR_NOT_READY
inline constexpr CUresult kErrorCaptureImplicit = 906;           // CUDA_ERROR_STREAM_CAPTURE_IMPLICIT
inline constexpr CUresult kErrorPeerAccessAlreadyEnabled = 704;  // CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
inline constexpr int kAttrMultiprocessorCount = 16;              // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT

// CUpointer_attribute values (cuPointerGetAttributes), for checking device ranges.
inline constexpr int kPointerMemoryType = 2;     // CU_POINTER_ATTRIBUTE_MEMORY_TYPE (unsigned: CUmemorytype)
inline constexpr int kPointerDeviceOrdinal = 9;  // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL (int)
inline constexpr int kPointerRangeStart = 11;    // CU_POINTER_ATTRIBUTE_RANGE_START_ADDR (CUdeviceptr)
inline constexpr int kPointerRangeSize = 12;     // CU_POINTER_ATTRIBUTE_RANGE_SIZE (size_t)
// For cuMemMap'ped memory (virtual memory management: PyTorch's expandable
// segments, vLLM's cuMem allocator) the range above is the whole reserved
// address range; these say what of it is backed by one mapping.
inline constexpr int kPointerMapped = 13;       // CU_POINTER_ATTRIBUTE_MAPPED (bool)
inline constexpr int kPointerMappingSize = 18;  // CU_POINTER_ATTRIBUTE_MAPPING_SIZE (size_t)
inline constexpr int kPointerMappingBase = 19;  // CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR (void*)
// The context an allocation belongs to (null for cuMemCreate'd memory, which
// belongs to none), and what the current context's device may do with it
// (CUDA_POINTER_ATTRIBUTE_ACCESS_FLAGS: 0 none, 1 read, 3 read and write;
// cuMemMap'ped memory has none until cuMemSetAccess grants it).
inline constexpr int kPointerContext = 1;          // CU_POINTER_ATTRIBUTE_CONTEXT (CUcontext)
inline constexpr int kPointerAccessFlags = 16;     // CU_POINTER_ATTRIBUTE_ACCESS_FLAGS (unsigned)
inline constexpr unsigned kAccessRead = 0x1;       // CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READ
inline constexpr unsigned kAccessReadWrite = 0x3;  // CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE

// Stream capture (CUDA graphs): cuStreamIsCapturing's statuses, and the
// thread's capture mode (cuThreadExchangeStreamCaptureMode).
inline constexpr int kCaptureStatusNone = 0;   // CU_STREAM_CAPTURE_STATUS_NONE (1 active, 2 invalidated)
inline constexpr int kCaptureModeRelaxed = 2;  // CU_STREAM_CAPTURE_MODE_RELAXED

// True for the errors after which the context is lost for the process (CUDA
// documents them as sticky: "the context cannot be used", "the process must
// be terminated"), and for a context destroyed or a driver shutting down:
// nothing of the context runs any more, so work that was in flight in it is
// over (what it did to memory is unspecified).
bool context_lost(CUresult r) noexcept;

// The stream handles that name a context's default streams (cuda.h): 0 and
// CU_STREAM_LEGACY the legacy default stream (the runtime's and PyTorch's
// stream 0), CU_STREAM_PER_THREAD the calling thread's default stream.
inline constexpr std::uintptr_t kStreamLegacy = 0x1;     // CU_STREAM_LEGACY
inline constexpr std::uintptr_t kStreamPerThread = 0x2;  // CU_STREAM_PER_THREAD
// True for nullptr, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD.
inline bool is_default_stream(const void* stream) noexcept {
  const auto v = reinterpret_cast<std::uintptr_t>(stream);
  return v == 0 || v == kStreamLegacy || v == kStreamPerThread;
}
// True for nullptr and CU_STREAM_LEGACY: the legacy default stream.
inline bool is_legacy_stream(const void* stream) noexcept {
  const auto v = reinterpret_cast<std::uintptr_t>(stream);
  return v == 0 || v == kStreamLegacy;
}

// CUmemcpyAttributes (cuda.h, CUDA 12.8+), for cuMemcpyBatchAsync.
struct MemLocation {
  int type = 0;  // CUmemLocationType; 0: none (the hints are ignored for device and pinned memory)
  int id = 0;
};
struct MemcpyAttributes {
  int srcAccessOrder = 0;  // CUmemcpySrcAccessOrder
  MemLocation srcLocHint;
  MemLocation dstLocHint;
  unsigned flags = 0;  // CUmemcpyFlags
};
inline constexpr int kSrcAccessOrderStream = 1;  // CU_MEMCPY_SRC_ACCESS_ORDER_STREAM
static_assert(sizeof(MemLocation) == 8, "CUmemLocation is two ints");
static_assert(sizeof(MemcpyAttributes) == 24, "CUmemcpyAttributes is 24 bytes (cuda.h, CUDA 12.8+)");

struct Driver {
  CUresult (*cuInit)(unsigned flags);
  CUresult (*cuDriverGetVersion)(int* version);
  CUresult (*cuDeviceGetCount)(int* count);
  CUresult (*cuDeviceGet)(CUdevice* device, int ordinal);
  CUresult (*cuDeviceGetName)(char* name, int length, CUdevice device);
  CUresult (*cuDeviceGetAttribute)(int* value, int attribute, CUdevice device);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext* context, CUdevice device);
  CUresult (*cuCtxPushCurrent)(CUcontext context);
  CUresult (*cuCtxPopCurrent)(CUcontext* context);
  CUresult (*cuMemHostRegister)(void* p, std::size_t bytes, unsigned flags);
  CUresult (*cuMemHostUnregister)(void* p);
  CUresult (*cuMemHostGetDevicePointer)(CUdeviceptr* device_pointer, void* p, unsigned flags);
  CUresult (*cuGetErrorName)(CUresult error, const char** name);
  // Streams, events and copies, for gpu::Loader.
  CUresult (*cuStreamCreate)(CUstream* stream, unsigned flags);
  CUresult (*cuStreamDestroy)(CUstream stream);
  CUresult (*cuStreamSynchronize)(CUstream stream);
  CUresult (*cuEventCreate)(CUevent* event, unsigned flags);
  CUresult (*cuEventDestroy)(CUevent event);
  CUresult (*cuEventRecord)(CUevent event, CUstream stream);
  CUresult (*cuEventSynchronize)(CUevent event);
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr dst, const void* src, std::size_t bytes, CUstream stream);
  // Device memory, for gpu::load_safetensors.
  CUresult (*cuMemAlloc)(CUdeviceptr* p, std::size_t bytes);
  CUresult (*cuMemFree)(CUdeviceptr p);
  // Strided copies and the dtype-conversion kernel (gpu/convert.cpp).
  CUresult (*cuMemcpy2DAsync)(const Memcpy2D* copy, CUstream stream);
  CUresult (*cuModuleLoadData)(CUmodule* module, const void* image);
  CUresult (*cuModuleGetFunction)(CUfunction* function, CUmodule module, const char* name);
  CUresult (*cuLaunchKernel)(CUfunction f, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                             unsigned block_y, unsigned block_z, unsigned shared_bytes, CUstream stream, void** params,
                             void** extra);
  // The KV offload pool (gpu/offload*.cpp): copies between any two addresses
  // (unified addressing), completion without blocking, the device and range
  // of a caller's address, the context of a caller's stream, and one stream
  // waiting for another's event (copies bridged off the legacy stream).
  CUresult (*cuMemcpyAsync)(CUdeviceptr dst, CUdeviceptr src, std::size_t bytes, CUstream stream);
  CUresult (*cuEventQuery)(CUevent event);
  CUresult (*cuPointerGetAttributes)(unsigned count, int* attributes, void** data, CUdeviceptr p);
  CUresult (*cuStreamGetCtx)(CUstream stream, CUcontext* context);
  CUresult (*cuStreamWaitEvent)(CUstream stream, CUevent event, unsigned flags);
  // Optional, nullptr where the driver predates them (before CUDA 12.8):
  // many copies in one call. CUDA 13 names the form without failIdx
  // cuMemcpyBatchAsync_v2 (what its header maps cuMemcpyBatchAsync to); the
  // unversioned symbol keeps CUDA 12.8's form, with failIdx.
  CUresult (*cuMemcpyBatchAsync_v2)(CUdeviceptr* dsts, CUdeviceptr* srcs, std::size_t* sizes, std::size_t count,
                                    MemcpyAttributes* attrs, std::size_t* attr_indices, std::size_t attr_count,
                                    CUstream stream);
  CUresult (*cuMemcpyBatchAsync_v1)(CUdeviceptr* dsts, CUdeviceptr* srcs, std::size_t* sizes, std::size_t count,
                                    MemcpyAttributes* attrs, std::size_t* attr_indices, std::size_t attr_count,
                                    std::size_t* fail_index, CUstream stream);
  // Optional, nullptr where the driver predates CUDA graphs' stream capture
  // (CUDA 10.0 and 10.1; without them there is nothing to capture): whether a
  // stream is capturing, and this thread's capture mode.
  CUresult (*cuStreamIsCapturing)(CUstream stream, int* status);
  CUresult (*cuThreadExchangeStreamCaptureMode)(int* mode);
  // Optional (nullptr: no peer exchange), for gpu::Loader's peer exchange:
  // whether one device reads another's memory, and letting the current
  // context do so.
  CUresult (*cuDeviceCanAccessPeer)(int* can, CUdevice device, CUdevice peer);
  CUresult (*cuCtxEnablePeerAccess)(CUcontext peer, unsigned flags);

  int version = 0;       // e.g. 13000 for CUDA 13.0
  int device_count = 0;  // at least 1 once driver() returned
};

// The loaded and initialised driver, with at least one device. Loading is
// tried once per process; the outcome is kept. Thread-safe. Throws
// Error(no_cuda_driver) when the library cannot be loaded or initialised,
// Error(no_cuda_device) when it reports no device.
const Driver& driver();

// Throws Error(cuda) naming `what` and the driver's error when r != 0.
void check(CUresult r, const std::string& what);

// The driver's name for `r` and its number, e.g. "CUDA_ERROR_OUT_OF_MEMORY
// (2)". Throws std::bad_alloc only.
std::string error_name(CUresult r);

// The primary context of `ordinal`, retained for the rest of the process (as
// the CUDA runtime does), so kernels launched through the runtime API see
// everything registered through it. Throws Error(cuda).
CUcontext primary_context(int ordinal);

// Puts this thread in the relaxed stream-capture mode for a scope, and back
// into the mode it was in after (as PyTorch does around its event queries).
// In the default (global) mode, while any thread captures a CUDA graph in
// global mode (PyTorch's default), the driver refuses this thread's
// synchronizing calls (cuEventQuery, cuEventSynchronize,
// cuStreamSynchronize, cuMemHostRegister, ...) with a capture error AND
// invalidates that thread's capture; in the relaxed mode they run. Never
// throws; does nothing where the driver has no capture modes.
class RelaxedCapture {
 public:
  RelaxedCapture() noexcept;
  ~RelaxedCapture();
  RelaxedCapture(const RelaxedCapture&) = delete;
  RelaxedCapture& operator=(const RelaxedCapture&) = delete;

 private:
  int previous_ = kCaptureModeRelaxed;
  bool exchanged_ = false;
};

// Makes a device's primary context current on this thread for a scope.
class ContextScope {
 public:
  explicit ContextScope(int ordinal);  // throws Error(cuda)
  ~ContextScope();
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;
};

}  // namespace unimem::gpu::detail
