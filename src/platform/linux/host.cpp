// src/platform/linux/host.cpp — the boot id, the pid namespace and pidfds
// (src/platform/host.hpp).
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <utility>

#include "format.hpp"
#include "platform/host.hpp"
#include "platform/linux/errc.hpp"
#include "unimem/error.hpp"

namespace unimem::platform {
namespace {

// The boot id's 32 hex digits (its text has dashes between groups), or zeros.
std::array<std::uint8_t, 16> read_boot_id() noexcept {
  std::array<std::uint8_t, 16> out{};
  std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "re");
  if (f == nullptr) return out;
  char text[64] = {};
  const bool read = std::fgets(text, sizeof text, f) != nullptr;
  std::fclose(f);
  if (!read) return out;
  std::array<std::uint8_t, 16> parsed{};
  std::size_t digits = 0;
  for (const char* c = text; *c != '\0' && *c != '\n'; ++c) {
    if (*c == '-') continue;
    int v = -1;
    if (*c >= '0' && *c <= '9') v = *c - '0';
    if (*c >= 'a' && *c <= 'f') v = *c - 'a' + 10;
    if (v < 0 || digits >= 32) return out;
    parsed[digits / 2] = static_cast<std::uint8_t>(parsed[digits / 2] << 4 | v);
    ++digits;
  }
  return digits == 32 ? parsed : out;
}

HostIdentity read_identity() noexcept {
  HostIdentity id;
  // /proc must be this pid namespace's (not a parent's, after unshare -p
  // without remounting it): then pids in it and pidfd_open agree.
  char self[32] = {};
  const ssize_t n = ::readlink("/proc/self", self, sizeof self - 1);
  if (n <= 0 || std::to_string(::getpid()) != std::string(self, static_cast<std::size_t>(n))) return {};
  struct stat ns {};
  if (::stat("/proc/self/ns/pid", &ns) != 0) return {};
  id.boot = read_boot_id();
  id.pid_namespace = static_cast<std::uint64_t>(ns.st_ino);
  return id.known() ? id : HostIdentity{};
}

}  // namespace

bool HostIdentity::known() const noexcept {
  if (pid_namespace == 0) return false;
  for (std::uint8_t b : boot) {
    if (b != 0) return true;
  }
  return false;
}

// Read at every call, not cached: a child of fork() or clone() may live in
// another pid namespace than the process that made a cache.
HostIdentity host_identity() noexcept { return read_identity(); }

ProcessWatch::ProcessWatch(std::int32_t pid) : pid_(pid) {
  if (pid <= 0) throw Error(Errc::invalid_argument, 0, "unimem: no process " + std::to_string(pid) + " to watch");
#ifdef SYS_pidfd_open
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    fd_ = static_cast<int>(fd);
    return;
  }
  const int e = errno;
  // ENOSYS: a kernel before 5.3; EPERM: a seccomp filter that predates it.
  if (e != ENOSYS && e != EPERM) {
    throw Error(errc_of(e), e, "unimem: cannot watch process " + std::to_string(pid) + ": " + detail::errno_text(e));
  }
#endif
  if (::kill(pid, 0) != 0 && errno == ESRCH) {
    throw Error(Errc::not_found, ESRCH, "unimem: no process " + std::to_string(pid));
  }
}

ProcessWatch::ProcessWatch(ProcessWatch&& other) noexcept
    : pid_(std::exchange(other.pid_, 0)), fd_(std::exchange(other.fd_, -1)) {}

ProcessWatch& ProcessWatch::operator=(ProcessWatch&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    pid_ = std::exchange(other.pid_, 0);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

ProcessWatch::~ProcessWatch() {
  if (fd_ >= 0) ::close(fd_);
}

bool ProcessWatch::alive() const noexcept {
  if (fd_ >= 0) {
    // A pidfd polls readable once its process has exited.
    pollfd p{fd_, POLLIN, 0};
    int n;
    while ((n = ::poll(&p, 1, 0)) < 0 && errno == EINTR) {
    }
    return n <= 0;  // a failed poll (ENOMEM) says nothing of the process: alive until shown otherwise
  }
  if (pid_ <= 0) return false;
  return ::kill(pid_, 0) == 0 || errno == EPERM;
}

}  // namespace unimem::platform
