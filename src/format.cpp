// src/format.cpp — binary-unit formatting shared by error messages and stat().
#include "format.hpp"

#include <cstdio>

namespace unimem::detail {

std::string format_bytes(std::size_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  return text;
}

std::string format_usage_line(const char* name, std::size_t used, std::size_t total, const char* note) {
  char line[160];
  std::snprintf(line, sizeof line, "%-8s %10s / %10s  (%5.1f%%)%s\n", name, format_bytes(used).c_str(),
                format_bytes(total).c_str(), total ? 100.0 * double(used) / double(total) : 0.0, note);
  return line;
}

}  // namespace unimem::detail
