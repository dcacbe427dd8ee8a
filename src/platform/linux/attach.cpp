// src/platform/linux/attach.cpp — opening another process's Block by id.
//
// A BlockId is (pid, fd, inode). /proc/<pid>/fd/<fd> reopens that process's
// memfd: the kernel allows it to the same user only (a ptrace "read" check,
// which Yama's ptrace_scope=1 does not restrict, unlike pidfd_getfd's
// "attach" check), so other users are refused without any naming scheme of
// ours, and nothing is left in any file system when the processes exit. The
// inode, checked by adopt_region, catches a descriptor number reused for
// something else after the Block was closed.
//
// The descriptor may name anything. Only a regular file (which a memfd is) is
// opened: opening a FIFO read-only would block until some writer appeared,
// and a socket, directory or device is no Block either; they all give
// not_a_block, as adopt_region does for a regular file that is not a Block.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "format.hpp"
#include "platform/linux/errc.hpp"
#include "platform/linux/open_file.hpp"
#include "platform/region.hpp"

namespace unimem::platform {

int current_pid() noexcept { return static_cast<int>(::getpid()); }

int open_by_id(const BlockId& id, bool read_only) {
  if (!id || id.process <= 0 || id.handle < 0) {
    throw Error(Errc::invalid_argument, 0, "unimem: Block::attach: '" + id.to_string() + "' names no Block");
  }
  const std::string path = "/proc/" + std::to_string(id.process) + "/fd/" + std::to_string(id.handle);
  const OpenedFile file = open_regular_file(path.c_str(), read_only ? O_RDONLY : O_RDWR);
  if (file.fd >= 0) return file.fd;
  const int err = file.err;
  // ENXIO: a socket (which cannot be opened through /proc); EISDIR: a
  // directory opened for writing. Both only when it changed after the stat.
  if (!file.regular || err == ENXIO || err == EISDIR) {
    const char* kind = !file.regular ? file_kind(file.st.st_mode) : err == ENXIO ? "a socket" : "a directory";
    throw Error(Errc::not_a_block, file.regular ? err : 0,
                "unimem: " + id.to_string() + " is not a unimem Block: the descriptor is not a regular file (it is " +
                    kind + ")");
  }
  const Errc code = errc_of(err);
  if (code == Errc::permission_denied) {
    throw Error(Errc::permission_denied, err,
                "unimem: cannot attach Block " + id.to_string() +
                    ": permission denied (it belongs to another user, or its process is not dumpable)");
  }
  if (code == Errc::not_found) {
    throw Error(Errc::not_found, err,
                "unimem: no Block " + id.to_string() + ": process " + std::to_string(id.process) +
                    " has exited or closed descriptor " + std::to_string(id.handle) + " (a stale id?)");
  }
  throw Error(Errc::system, err, "unimem: cannot open " + path + ": " + detail::errno_text(err));
}

}  // namespace unimem::platform
