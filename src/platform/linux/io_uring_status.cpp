// src/platform/linux/io_uring_status.cpp — the io_uring probe behind
// build_info(): whether liburing was compiled in, and whether this kernel,
// under this process's seccomp filter and sysctls, sets up a ring.
//
// Apart from read.cpp this is the only file that includes <liburing.h>, and
// only in builds that found it, so the tool and the Python module need no
// liburing headers of their own.
#include "platform/io_uring_status.hpp"

#if UNIMEM_HAVE_IO_URING
#include <liburing.h>

#include "format.hpp"
#endif

namespace unimem::detail {

bool io_uring_built() noexcept {
#if UNIMEM_HAVE_IO_URING
  return true;
#else
  return false;
#endif
}

std::string io_uring_status() {
#if UNIMEM_HAVE_IO_URING
  io_uring ring;
  const int err = io_uring_queue_init(4, &ring, 0);
  if (err != 0) return "unavailable (" + errno_text(-err) + ")";
  io_uring_queue_exit(&ring);
  return "available";
#else
  return kNoIoUringBuilt;
#endif
}

}  // namespace unimem::detail
