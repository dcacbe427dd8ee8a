// src/platform/linux/descriptors.cpp — a Block as a file descriptor (<unimem/linux.hpp>).
//
// The memfd behind a shareable Block, a duplicate of it that a child keeps
// across exec, and a Block made from a descriptor. Linux-only API, so it
// lives with the platform; the sockets that carry descriptors are
// socket.cpp's.
#include "block_access.hpp"
#include "platform/region.hpp"
#include "unimem/linux.hpp"

namespace unimem {

int block_descriptor(const Block& block) noexcept { return static_cast<int>(detail::BlockAccess::handle(block)); }

int inheritable_descriptor(const Block& block) {
  const int fd = block_descriptor(block);
  if (fd < 0) throw Error(Errc::invalid_argument, 0, "unimem: a non-shareable Block has no handle to inherit");
  return platform::inheritable_duplicate(fd);
}

Block adopt_block(int fd, const BlockOptions& options) {
  return detail::BlockAccess::open(platform::adopt_region(fd, 0, options), options);
}

}  // namespace unimem
