// src/platform/linux/errc.hpp — the one place an errno becomes an Errc.
//
// Every failed system call the library reports says what it means for the
// caller in the same words: a path or process that names nothing is
// not_found, a refusal is permission_denied, the rest is system (with the
// errno kept in the Error).
#pragma once

#include <cerrno>

#include "unimem/error.hpp"

namespace unimem::platform {

// ENOENT, ENOTDIR and ESRCH (a process that has gone): not_found; EACCES and
// EPERM: permission_denied; anything else: system. Never throws.
constexpr Errc errc_of(int err) noexcept {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
    case ESRCH:
      return Errc::not_found;
    case EACCES:
    case EPERM:
      return Errc::permission_denied;
    default:
      return Errc::system;
  }
}

}  // namespace unimem::platform
