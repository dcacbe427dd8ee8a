// src/platform/linux/library.cpp — open_library and library_symbol with
// dlopen and dlsym (platform/library.hpp).
#include "platform/library.hpp"

#include <dlfcn.h>

namespace unimem::platform {

void* open_library(const std::string& name) noexcept { return ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL); }

void* library_symbol(void* library, const char* symbol) noexcept { return ::dlsym(library, symbol); }

std::string library_error() {
  const char* why = ::dlerror();  // NOLINT(concurrency-mt-unsafe): glibc keeps it per thread
  return why != nullptr ? why : "unknown error";
}

}  // namespace unimem::platform
