// src/format.hpp — human-readable sizes and errno text for messages and stat().
#pragma once

#include <cstddef>
#include <string>

namespace unimem::detail {

// "512 B", "4.0 KiB", "16.0 MiB", "1.5 GiB"... Never throws except std::bad_alloc.
std::string format_bytes(std::size_t bytes);

// One line of a stat() report: "weights    12.0 MiB /   16.0 MiB  ( 75.0%)<note>\n".
std::string format_usage_line(const char* name, std::size_t used, std::size_t total, const char* note = "");

// The text of errno value `err`, e.g. "No such file or directory". Thread-safe,
// unlike std::strerror, whose buffer another thread's call may overwrite while
// this thread formats its message: every error message of the library (and the
// tool) goes through here. Never throws except std::bad_alloc.
std::string errno_text(int err);

}  // namespace unimem::detail
