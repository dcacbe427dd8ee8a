// src/format.cpp — binary-unit formatting and errno text shared by error messages and stat().
#include "format.hpp"

#include <cstdio>
#include <cstring>

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

namespace {
// strerror_r comes in two flavours: GNU (returns the text, which may or may not
// be `buf`) and XSI (returns 0 and fills `buf`). Overloading on the return type
// picks the right reading for whichever the C library declares.
[[maybe_unused]] const char* strerror_result(const char* text, const char*) { return text; }
[[maybe_unused]] const char* strerror_result(int status, const char* buf) { return status == 0 ? buf : nullptr; }
}  // namespace

std::string errno_text(int err) {
  char buf[256] = {};
  const char* text = strerror_result(::strerror_r(err, buf, sizeof buf), buf);
  if (text == nullptr || *text == '\0') return "error " + std::to_string(err);
  return text;
}

}  // namespace unimem::detail
