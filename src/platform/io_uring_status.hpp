// src/platform/io_uring_status.hpp — whether this build reads files through
// io_uring, and whether the kernel lets it.
//
// Internal: build_info.cpp and read.cpp share the sentence that says io_uring
// was not compiled in, so `unimem info` and ReadReport::fallback_reason agree.
#pragma once

#include <string>

namespace unimem::detail {

// True when the library was compiled with liburing (UNIMEM_HAVE_IO_URING).
bool io_uring_built() noexcept;

// Why a read took the pread route in a build without liburing.
inline constexpr const char* kNoIoUringBuilt =
    "io_uring not built in (unimem was compiled without liburing, UNIMEM_IO_URING): pread on threads";

// "available", "unavailable (<errno text>)" when the kernel refuses a ring,
// or kNoIoUringBuilt. Sets up and frees a 4-entry ring. Throws only
// std::bad_alloc.
std::string io_uring_status();

}  // namespace unimem::detail
