// src/platform/linux/attach.cpp — opening another process's Block by id.
//
// A BlockId is (pid, fd, inode). /proc/<pid>/fd/<fd> reopens that process's
// memfd: the kernel allows it to the same user only (a ptrace "read" check,
// which Yama's ptrace_scope=1 does not restrict, unlike pidfd_getfd's
// "attach" check), so other users are refused without any naming scheme of
// ours, and nothing is left in any file system when the processes exit. The
// inode, checked by adopt_region, catches a descriptor number reused for
// something else after the Block was closed.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "platform/region.hpp"

namespace unimem::platform {

int current_pid() noexcept { return static_cast<int>(::getpid()); }

int open_by_id(const BlockId& id, bool read_only) {
  if (!id || id.pid <= 0 || id.fd < 0) {
    throw Error(Errc::invalid_argument, 0, "unimem: Block::attach: '" + id.to_string() + "' names no Block");
  }
  const std::string path = "/proc/" + std::to_string(id.pid) + "/fd/" + std::to_string(id.fd);
  const int fd = ::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd >= 0) return fd;
  const int err = errno;
  if (err == EACCES || err == EPERM) {
    throw Error(Errc::permission_denied, err,
                "unimem: cannot attach Block " + id.to_string() +
                    ": permission denied (it belongs to another user, or its process is not dumpable)");
  }
  if (err == ENOENT || err == ESRCH) {
    throw Error(Errc::not_found, err,
                "unimem: no Block " + id.to_string() + ": process " + std::to_string(id.pid) +
                    " has exited or closed descriptor " + std::to_string(id.fd) + " (a stale id?)");
  }
  throw Error(Errc::system, err, "unimem: cannot open " + path + ": " + std::strerror(err));
}

}  // namespace unimem::platform
