// src/testing.hpp — helpers shared by the unit tests (never part of the library).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>

#include "platform/region.hpp"

namespace unimem::testing {

// Bytes this process has locked (VmLck).
inline std::size_t locked_bytes() { return platform::locked_bytes(); }

inline bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

// True when some mapping of this process covers `address`.
inline bool is_mapped(const void* address) {
  std::ifstream maps("/proc/self/maps");
  const auto a = reinterpret_cast<std::uintptr_t>(address);
  std::string line;
  while (std::getline(maps, line)) {
    std::uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) == 2 && a >= lo && a < hi) return true;
  }
  return false;
}

// Pages of [p, p + bytes) that are resident, by mincore.
inline std::size_t resident_pages(const void* p, std::size_t bytes, std::size_t page) {
  const std::size_t pages = (bytes + page - 1) / page;
  std::string vec(pages, '\0');
  if (::mincore(const_cast<void*>(p), bytes, reinterpret_cast<unsigned char*>(vec.data())) != 0) return 0;
  std::size_t n = 0;
  for (char c : vec) n += (c & 1);
  return n;
}

// Mappings in this process whose name mentions "memfd:unimem".
inline int unimem_mappings() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) n += line.find("memfd:unimem") != std::string::npos;
  return n;
}

// The code of the unimem::Error that `f` throws, or Errc{} when it throws none.
template <class F>
Errc error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return Errc{};
}

// The code, errno and message of the unimem::Error `f` throws (all empty
// when it throws none).
struct Thrown {
  Errc code{};
  int sys_errno = 0;
  std::string message;
};
template <class F>
Thrown thrown_by(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return {e.code(), e.sys_errno(), e.what()};
  }
  return {};
}

// Runs `body` in a forked child; returns its exit status (or 128 + signal):
// 98 when body threw a unimem::Error (printed), 99 when it threw nothing
// but never returned a code.
inline int in_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (const Error& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      code = 98;
    }
    std::_Exit(code);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs `body` (returning an exit code) in a forked child that SIGALRM ends
// after `seconds`, so a call that blocks forever fails the test instead of
// hanging it. Returns the child's exit code, 98 when body threw, or 128 + the
// signal that ended it (128 + SIGALRM = 142: it hung).
template <class F>
int exit_code_within(unsigned seconds, F&& body) {
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::alarm(seconds);
    int code = 98;
    try {
      code = body();
    } catch (...) {
    }
    std::_Exit(code);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace unimem::testing
