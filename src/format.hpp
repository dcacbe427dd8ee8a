// src/format.hpp — human-readable sizes for messages and stat().
#pragma once

#include <cstddef>
#include <string>

namespace unimem::detail {

// "512 B", "4.0 KiB", "16.0 MiB", "1.5 GiB"... Never throws except std::bad_alloc.
std::string format_bytes(std::size_t bytes);

// One line of a stat() report: "weights    12.0 MiB /   16.0 MiB  ( 75.0%)<note>\n".
std::string format_usage_line(const char* name, std::size_t used, std::size_t total, const char* note = "");

}  // namespace unimem::detail
