// src/platform/linux/open_file.hpp — opening a path only if it is a regular file.
//
// open() on a FIFO blocks until the other end opens it (forever when nobody
// does), and on a device it runs the driver's open. So the type is checked
// before opening (stat, which opens nothing), and the open itself carries
// O_NONBLOCK, which makes a FIFO swapped in after the stat open at once
// instead of hanging; fstat on the descriptor then decides. O_NONBLOCK is
// cleared again on success: regular files ignore it for read(), but io_uring
// honours it (a read that would wait fails with EAGAIN instead).
//
// Used by read_file, page_cache_fraction, Block::map_file and Block::attach
// (whose /proc/<pid>/fd/<fd> paths name sockets, pipes and directories too).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace unimem::platform {

struct OpenedFile {
  int fd = -1;          // >= 0: a regular file, open with the asked flags
  int err = 0;          // when fd < 0 and regular: the errno of stat or open
  bool regular = true;  // false: the path names something else (st_mode says what)
  struct stat st {};
};

// Opens `path` with `flags` (O_CLOEXEC is added) if it is a regular file.
// Never blocks on a FIFO, never opens anything else. Never throws.
inline OpenedFile open_regular_file(const char* path, int flags) noexcept {
  OpenedFile f;
  if (::stat(path, &f.st) != 0) {
    f.err = errno;
    return f;
  }
  if (!S_ISREG(f.st.st_mode)) {
    f.regular = false;
    return f;
  }
  const int fd = ::open(path, flags | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    f.err = errno;
    return f;
  }
  if (::fstat(fd, &f.st) != 0) {
    f.err = errno;
    ::close(fd);
    return f;
  }
  if (!S_ISREG(f.st.st_mode)) {  // replaced between stat and open
    f.regular = false;
    ::close(fd);
    return f;
  }
  if ((flags & O_NONBLOCK) == 0) {
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
      f.err = errno;
      ::close(fd);
      return f;
    }
  }
  f.fd = fd;
  return f;
}

// What a non-regular st_mode is, for messages: "a directory", "a FIFO"...
inline const char* file_kind(mode_t mode) noexcept {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISREG(mode)) return "a regular file";
  return "of an unknown type";
}

}  // namespace unimem::platform
