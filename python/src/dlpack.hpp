// python/src/dlpack.hpp — the DLPack ABI (https://dmlc.github.io/dlpack/), as
// the binding needs it.
//
// DLPack is a C ABI: these layouts are fixed by the standard (v1.1 for the
// versioned struct and the fp8 type codes), and every consumer (PyTorch,
// NumPy, CuPy, JAX) reads them. Debian ships dlpack.h only at 0.6, which has
// neither, so the structs are declared here, named as the standard names them.
#pragma once

#include <cstdint>

namespace unimem::python::dlpack {

struct DLPackVersion {
  std::uint32_t major;
  std::uint32_t minor;
};
inline constexpr DLPackVersion kVersion{1, 1};

enum DLDeviceType : std::int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3 };

struct DLDevice {
  DLDeviceType device_type;
  std::int32_t device_id;
};

enum DLDataTypeCode : std::uint8_t {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLBfloat = 4,
  kDLBool = 6,
  kDLFloat8_e4m3fn = 10,
  kDLFloat8_e5m2 = 12,
};

struct DLDataType {
  std::uint8_t code;
  std::uint8_t bits;
  std::uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  std::int32_t ndim;
  DLDataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // null: compact, row-major
  std::uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

inline constexpr std::uint64_t kFlagReadOnly = 1u << 0;

struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  std::uint64_t flags;
  DLTensor dl_tensor;
};

}  // namespace unimem::python::dlpack
