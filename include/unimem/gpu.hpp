// unimem/gpu.hpp — what the CUDA driver offers this process.
//
// unimem loads the CUDA driver (libcuda.so.1) at run time, on first use: the
// library builds and runs without CUDA, and only the functions below and
// GPU visibility of Blocks (Block::make_gpu_visible, Visibility::gpus) need
// it. Set UNIMEM_CUDA_DRIVER to load another library instead.
//
// Thread safety: every function here may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "unimem/block.hpp"
#include "unimem/error.hpp"
#include "unimem/file.hpp"

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

// A range of a file and the device memory it goes to.
struct DeviceSegment {
  std::uint64_t file_offset = 0;
  std::uintptr_t device_address = 0;  // e.g. from cudaMalloc, on the chosen device
  std::size_t bytes = 0;
};

struct CopyOptions {
  std::size_t piece_bytes = std::size_t{64} << 20;  // one staging slot
  unsigned slots = 4;                               // pieces in flight
  unsigned copy_threads = 0;                        // for cached files; 0: the cores, at most 16
  // A GPU-visible Block to stage through (kept by the caller across calls:
  // setting one up costs a registration). When null, one is made for the call.
  const Block* staging = nullptr;
  ReadOptions read;  // for files not in the page cache
};

// Copies ranges of the file at `path` into the memory of GPU `device`,
// overlapping the reading with the copies: pieces go through a ring of pinned,
// registered staging slots. A file in the page cache is copied out of it by
// several threads; one that is not is read with read_file (O_DIRECT). Returns
// when the data is on the device. Adjacent ranges (in the file and on the
// device) are merged into larger copies. Throws Error(no_cuda_driver,
// no_cuda_device, cuda), Error(invalid_argument) for a staging Block that is
// not GPU-visible, and read_file's errors.
ReadReport copy_file_to_device(const std::string& path, std::span<const DeviceSegment> segments, int device = 0,
                               const CopyOptions& options = {});

}  // namespace unimem::gpu
