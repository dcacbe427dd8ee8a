// src/platform/linux/files.cpp — file identity (stat) and page-cache
// residency of a mapping (mincore), for the GPU loader.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "format.hpp"
#include "platform/files.hpp"
#include "unimem/error.hpp"

namespace unimem::platform {

FileIdentity file_identity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int e = errno;
    const Errc code = e == ENOENT || e == ENOTDIR ? Errc::not_found
                      : e == EACCES || e == EPERM ? Errc::permission_denied
                                                  : Errc::system;
    throw Error(code, e, "unimem: cannot stat " + path + ": " + detail::errno_text(e));
  }
  if (!S_ISREG(st.st_mode)) throw Error(Errc::invalid_argument, 0, "unimem: " + path + " is not a regular file");
  return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
          static_cast<std::uint64_t>(st.st_size),
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec,
          static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec};
}

double resident_fraction(const std::byte* p, std::size_t bytes) noexcept {
  if (bytes == 0) return 1.0;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(p) / page * page;
  const std::size_t span = reinterpret_cast<std::uintptr_t>(p) + bytes - begin;
  try {
    std::vector<unsigned char> vec((span + page - 1) / page);
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the page-aligned start of p's page
    if (::mincore(reinterpret_cast<void*>(begin), span, vec.data()) != 0) return 0.0;
    std::size_t in = 0;
    for (unsigned char v : vec) in += v & 1u;
    return static_cast<double>(in) / static_cast<double>(vec.size());
  } catch (...) {  // std::bad_alloc
    return 0.0;
  }
}

}  // namespace unimem::platform
