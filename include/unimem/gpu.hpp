// unimem/gpu.hpp — what the CUDA driver offers this process.
//
// unimem loads the CUDA driver (libcuda.so.1) at run time, on first use: the
// library builds and runs without CUDA, and only the functions below and
// GPU visibility of Blocks (Block::make_gpu_visible, Visibility::gpus) need
// it. Set UNIMEM_CUDA_DRIVER to load another library instead.
//
// Thread safety: every function here may be called from any thread.
#pragma once

#include <string>
#include <vector>

#include "unimem/error.hpp"

namespace unimem::gpu {

struct Device {
  int ordinal = 0;
  std::string name;
  // Kernels on this device use host pointers of registered memory as they are
  // (canUseHostPointerForRegisteredMem); otherwise use Block::device_pointer.
  bool host_pointer_is_device_pointer = false;
  bool host_register_supported = false;
};

// True when a CUDA driver is loaded and sees at least one device. Never throws.
bool available() noexcept;

// Why available() is false, as a sentence; empty when it is true. Never throws
// except std::bad_alloc.
std::string unavailable_reason();

// The driver's CUDA version, e.g. 13000 for 13.0.
// Throws Error(no_cuda_driver) or Error(no_cuda_device).
int driver_version();

// The devices the driver sees, by ordinal.
// Throws Error(no_cuda_driver), Error(no_cuda_device) or Error(cuda).
std::vector<Device> devices();

}  // namespace unimem::gpu
