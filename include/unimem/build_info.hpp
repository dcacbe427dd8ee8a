// unimem/build_info.hpp — what this build of unimem has compiled in, and what
// the machine offers it at run time.
//
// One call answers "which unimem is this?": `unimem info`, the Python
// package's unimem.build_info() and bug reports all print it. The version is
// the CMake project version, the one place it is defined.
#pragma once

#include <string>

namespace unimem {

struct BuildInfo {
  std::string version;  // "0.1.0": the CMake project version (UNIMEM_VERSION_STRING)
  // Whether file reads can go through io_uring: the library was compiled with
  // liburing (CMake option UNIMEM_IO_URING). Without it every read takes the
  // threaded pread route (O_DIRECT where the file system allows), and
  // ReadReport::fallback_reason says so.
  bool io_uring = false;
  // At run time: "available"; "unavailable (<errno text>)" where the kernel
  // refuses a ring (old kernel, seccomp, io_uring_disabled); or, without
  // io_uring compiled in, a sentence that says so.
  std::string io_uring_status;
  bool cuda_driver = false;     // a CUDA driver loaded and sees a device (gpu::available())
  int cuda_driver_version = 0;  // the driver's CUDA version, e.g. 13000 for 13.0; 0 without one
  int gpu_count = 0;            // devices the driver sees; 0 without one
  std::string cuda_status;      // "" when cuda_driver, else gpu::unavailable_reason()
  std::string compiler;         // what compiled the library, e.g. "GCC 12.2.0" or "Clang 14.0.6"
};

// Describes this build and probes the machine: loads the CUDA driver if
// nothing did yet (as gpu::available() does) and sets up and frees a small
// io_uring. Thread-safe. Throws nothing but std::bad_alloc: a driver that
// fails is reported in cuda_status, not thrown.
BuildInfo build_info();

}  // namespace unimem
