// src/platform/linux/region.cpp — Linux regions: memfd + mmap(MAP_SHARED) + mlock2.
//
// A non-shareable Block (BlockOptions::shareable = false) is private anonymous
// memory instead: no descriptor, but it can get transparent huge pages where
// shmem cannot (shmem_enabled is often 'never'), which halves the time to
// back and pin it.
//
// Why these calls:
//   * memfd_create gives an anonymous shmem object with a file descriptor:
//     other processes can map it (SCM_RIGHTS, fork, /proc/<pid>/fd) and the
//     storage stack can read into it, with no name left in any file system.
//   * The size is sealed (F_SEAL_SHRINK | F_SEAL_GROW) so no process that
//     shares the descriptor can truncate the pages under our mapping, which
//     would turn our accesses into SIGBUS.
//   * mlock2(MLOCK_ONFAULT) pins lazily: the call itself is O(1) and checks
//     RLIMIT_MEMLOCK for the whole range up front, then each page is locked
//     when first touched. Plain mlock would fault every page in, in one thread.
//   * With huge pages asked for, private memory is mapped on a huge-page
//     boundary (the kernel aligns shmem itself, anonymous memory only for
//     some lengths since 6.7): a huge page is one aligned window inside the
//     mapping, so a 3 MiB Block at mmap's address got one huge page or none,
//     and a first load into it faulted 4 KiB pages for the rest (dev VM, 3
//     MB read into fresh memory: 0.72-2.86 ms there, 0.37-0.50 aligned and
//     rounded up to whole huge pages, which Block::open does).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "format.hpp"
#include "platform/linux/errc.hpp"
#include "platform/linux/open_file.hpp"
#include "platform/region.hpp"

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif

namespace unimem::platform {
namespace {

using detail::format_bytes;

[[noreturn]] void fail(Errc code, int err, const std::string& what) {
  std::string message = "unimem: " + what;
  if (err != 0) message += " (" + detail::errno_text(err) + ")";
  throw Error(code, err, message);
}

[[noreturn]] void fail_pin(int err, std::size_t bytes) {
  rlimit limit{};
  ::getrlimit(RLIMIT_MEMLOCK, &limit);
  const bool limited = limit.rlim_cur != RLIM_INFINITY;
  if ((err == ENOMEM || err == EPERM) && limited) {
    const std::string cur = format_bytes(static_cast<std::size_t>(limit.rlim_cur));
    const std::string max = limit.rlim_max == RLIM_INFINITY ? std::string("unlimited")
                                                            : format_bytes(static_cast<std::size_t>(limit.rlim_max));
    fail(Errc::memlock_limit, err,
         "cannot pin a Block of " + format_bytes(bytes) + ": RLIMIT_MEMLOCK is " + cur + " (hard limit " + max +
             ") and this process already has " + format_bytes(locked_bytes()) +
             " locked. Raise the limit (`ulimit -l unlimited` in the shell, "
             "`memlock` in /etc/security/limits.conf, LimitMEMLOCK=infinity for a systemd "
             "service, --ulimit memlock=-1 for docker), or open the Block with "
             "Pinning::unpinned");
  }
  fail(err == ENOMEM ? Errc::out_of_memory : Errc::system, err,
       "cannot pin a Block of " + format_bytes(bytes) + " with mlock2");
}

// Refuses requests the machine can never satisfy, so they fail here with a
// clear message instead of at some later page fault.
void check_capacity(std::size_t bytes, bool pinned) {
  struct sysinfo info {};
  if (::sysinfo(&info) != 0) return;  // unknown: let the kernel decide
  const std::size_t ram = static_cast<std::size_t>(info.totalram) * info.mem_unit;
  const std::size_t swap = static_cast<std::size_t>(info.totalswap) * info.mem_unit;
  const std::size_t limit = pinned ? ram : ram + swap;
  if (bytes > limit) {
    fail(Errc::out_of_memory, 0,
         "cannot open a Block of " + format_bytes(bytes) + ": the machine has " + format_bytes(ram) + " of RAM" +
             (pinned ? "" : " plus " + format_bytes(swap) + " of swap") + ". Open a smaller Block");
  }
}

// Gives `region` a sealed memfd of region.size bytes, and its inode as id.
void create_memfd(detail::Region& region) {
  const std::size_t bytes = region.size;
  region.handle = ::memfd_create("unimem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (region.handle < 0) {
    const int err = errno;
    fail(Errc::system, err,
         "memfd_create failed while opening a Block of " + format_bytes(bytes) +
             (err == EMFILE || err == ENFILE ? "; too many open files" : ""));
  }
  if (::ftruncate(region.handle, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    fail(err == EFBIG || err == EINVAL || err == ENOSPC ? Errc::out_of_memory : Errc::system, err,
         "cannot size a memfd to " + format_bytes(bytes));
  }
  if (::fcntl(region.handle, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    fail(Errc::system, errno, "cannot seal the size of a Block's memfd");
  }
  struct stat st {};
  if (::fstat(region.handle, &st) != 0) fail(Errc::system, errno, "fstat of a Block's memfd failed");
  region.object = static_cast<std::uint64_t>(st.st_ino);
}

}  // namespace

std::size_t locked_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmLck:") {
      std::size_t kib = 0;
      status >> kib;
      return kib * 1024;
    }
    status.ignore(4096, '\n');
  }
  return 0;
}

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

// Unmaps and closes whatever of `region` exists if a later step throws.
struct RegionGuard {
  detail::Region& region;
  bool armed = true;
  ~RegionGuard() {
    if (armed) unmap_region(region);
  }
};

// Private anonymous memory of `bytes` at a multiple of `align` (a power of
// two above the page size): maps align - page more, then gives back the
// unaligned head and the rest of the tail. Never MAP_FIXED: a failed
// MAP_FIXED can leave a hole in the range on kernels before 6.12, which
// another thread's mmap may take and our cleanup would then unmap.
// nullptr where the larger mapping is refused; the caller maps plainly.
void* map_private_aligned(std::size_t bytes, std::size_t align, int prot) noexcept {
  const std::size_t extra = align - page_size();
  if (bytes > SIZE_MAX - extra) return nullptr;
  void* m = ::mmap(nullptr, bytes + extra, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  const std::size_t misalign = reinterpret_cast<std::uintptr_t>(m) & (align - 1);
  const std::size_t head = misalign == 0 ? 0 : align - misalign;
  std::byte* const base = static_cast<std::byte*>(m) + head;
  if (head != 0) ::munmap(m, head);
  if (extra > head) ::munmap(base + bytes, extra - head);
  return base;
}

// Maps region.handle (or anonymous memory when it is -1) and applies the
// options' pinning and huge pages. region.size must be set.
void map_and_pin(detail::Region& region, const BlockOptions& options) {
  const std::size_t bytes = region.size;
  const int flags = region.handle >= 0 ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS;
  const int prot = options.read_only ? PROT_READ : PROT_READ | PROT_WRITE;
  // Shareable (shmem) mappings need nothing here: the kernel aligns them
  // itself wherever shmem gets huge pages (shmem_get_unmapped_area).
  const std::size_t unit = options.huge_pages && region.handle < 0 ? huge_page_unit(false) : 0;
  void* base = unit != 0 && bytes >= unit ? map_private_aligned(bytes, unit, prot) : nullptr;
  if (base == nullptr) base = ::mmap(nullptr, bytes, prot, flags, static_cast<int>(region.handle), 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    fail(err == ENOMEM ? Errc::out_of_memory : Errc::system, err,
         "cannot map a Block of " + format_bytes(bytes) + " (address space exhausted or map count limit)");
  }
  region.base = static_cast<std::byte*>(base);
  region.read_only = options.read_only;
  if (options.pinning == Pinning::pinned) {
    if (::mlock2(region.base, bytes, MLOCK_ONFAULT) != 0) fail_pin(errno, bytes);
    region.pinned = true;
  }
  if (options.huge_pages) advise_huge_pages(region.base, bytes);
}

int inheritable_duplicate(int handle) {
  const int fd = ::fcntl(handle, F_DUPFD, 0);  // F_DUPFD leaves close-on-exec off
  if (fd < 0) {
    const int err = errno;
    fail(errc_of(err), err, "cannot duplicate a Block's descriptor");
  }
  return fd;
}

detail::Region map_region(std::size_t bytes, const BlockOptions& options) {
  if (options.read_only) {
    fail(Errc::invalid_argument, 0, "a new Block cannot be read-only (BlockOptions::read_only is for attaching)");
  }
  check_capacity(bytes, options.pinning == Pinning::pinned);
  detail::Region region;
  region.size = bytes;
  RegionGuard guard{region};
  if (options.shareable) create_memfd(region);
  map_and_pin(region, options);
  guard.armed = false;
  return region;
}

detail::Region adopt_region(int fd, std::uint64_t expected_object, const BlockOptions& options) {
  detail::Region region;
  region.handle = fd;
  RegionGuard guard{region};
  if (fd < 0) fail(Errc::invalid_argument, 0, "adopting descriptor " + std::to_string(fd) + ": not a descriptor");
  // A unimem Block is a memfd named "unimem" whose size is sealed.
  char link[64] = {};
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(path.c_str(), link, sizeof link - 1);
  const int seals = ::fcntl(fd, F_GET_SEALS);
  struct stat st {};
  if (n < 0 || std::strncmp(link, "/memfd:unimem", 13) != 0 || seals < 0 ||
      (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW) || ::fstat(fd, &st) != 0 ||
      st.st_size <= 0 || static_cast<std::size_t>(st.st_size) % page_size() != 0) {
    fail(Errc::not_a_block, 0,
         "descriptor " + std::to_string(fd) + " (" + (n > 0 ? std::string(link, static_cast<std::size_t>(n)) : "?") +
             ") is not a unimem Block: expected a size-sealed memfd named 'unimem'");
  }
  region.object = static_cast<std::uint64_t>(st.st_ino);
  if (expected_object != 0 && region.object != expected_object) {
    fail(Errc::not_found, 0,
         "stale Block id: the descriptor now names object " + std::to_string(region.object) + ", not " +
             std::to_string(expected_object) + " (the Block was closed and the descriptor reused)");
  }
  region.size = static_cast<std::size_t>(st.st_size);
  map_and_pin(region, options);
  guard.armed = false;
  return region;
}

detail::Region map_file_region(const std::string& path, const BlockOptions& options) {
  detail::Region region;
  // Only a regular file is opened: a FIFO would block the open forever.
  const OpenedFile file = open_regular_file(path.c_str(), O_RDONLY);
  if (!file.regular) {
    fail(Errc::invalid_argument, 0,
         path + " is not a regular file (it is " + file_kind(file.st.st_mode) + "): nothing to map");
  }
  if (file.fd < 0) {
    const int err = file.err;
    fail(errc_of(err), err, "cannot open " + path + " to map it");
  }
  region.handle = file.fd;
  RegionGuard guard{region};
  const struct stat& st = file.st;
  if (st.st_size <= 0) fail(Errc::invalid_argument, 0, path + " is empty: nothing to map");
  const std::size_t page = page_size();
  region.size = (static_cast<std::size_t>(st.st_size) + page - 1) / page * page;
  BlockOptions read_only = options;
  read_only.read_only = true;
  map_and_pin(region, read_only);
  guard.armed = false;
  return region;
}

void unmap_region(detail::Region& region) noexcept {
  if (region.base != nullptr) {
    // munmap drops the lock too; no separate munlock needed.
    ::munmap(region.base, region.size);
  }
  if (region.handle >= 0) ::close(region.handle);
  region = detail::Region{};
}

}  // namespace unimem::platform
