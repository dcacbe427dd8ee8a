// src/build_info.cpp — build_info(): the version, the compiler, what the
// build compiled in (io_uring) and what the machine offers (CUDA driver).
//
// Portable: the io_uring half is the platform's (platform/io_uring_status.hpp),
// the CUDA half the run-time driver loader's (gpu::available()).
#include "unimem/build_info.hpp"

#include "platform/io_uring_status.hpp"
#include "unimem/error.hpp"
#include "unimem/gpu.hpp"
#include "unimem/version.hpp"

namespace unimem {

namespace {

std::string compiler() {
#if defined(__clang__)
  return "Clang " __clang_version__;
#elif defined(__GNUC__)
  return "GCC " __VERSION__;
#else
  return "unknown compiler";
#endif
}

}  // namespace

BuildInfo build_info() {
  BuildInfo b;
  b.version = UNIMEM_VERSION_STRING;
  b.io_uring = detail::io_uring_built();
  b.io_uring_status = detail::io_uring_status();
  b.compiler = compiler();
  b.cuda_driver = gpu::available();
  if (b.cuda_driver) {
    try {
      b.cuda_driver_version = gpu::driver_version();
      b.gpu_count = static_cast<int>(gpu::devices().size());
    } catch (const Error& e) {
      b.cuda_driver = false;
      b.cuda_driver_version = 0;
      b.gpu_count = 0;
      b.cuda_status = e.what();
    }
  } else {
    b.cuda_status = gpu::unavailable_reason();
  }
  return b;
}

}  // namespace unimem
