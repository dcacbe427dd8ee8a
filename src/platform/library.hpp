// src/platform/library.hpp — loading a shared library at run time.
//
// The CUDA driver is loaded when first needed (src/gpu/driver.cpp), so unimem
// builds and runs where there is none. Linux answers in
// platform/linux/library.cpp (dlopen); another platform answers here
// without touching the driver table.
#pragma once

#include <string>

namespace unimem::platform {

// Loads the shared library `name` (a file name the platform's loader
// searches for, or a path), its symbols resolved now and kept out of the
// global namespace. Returns nullptr on failure (library_error() says why).
// The handle is never closed. Never throws.
void* open_library(const std::string& name) noexcept;

// The address of `symbol` in a library open_library returned, or nullptr
// (library_error() says why). Never throws.
void* library_symbol(void* library, const char* symbol) noexcept;

// Why this thread's last failed call above failed; "unknown error" when the
// platform does not say. Call it once per failure (Linux: reading dlerror
// clears it). Throws std::bad_alloc only.
std::string library_error();

}  // namespace unimem::platform
