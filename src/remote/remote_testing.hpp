// src/remote/remote_testing.hpp — what remote_test.cpp and its helper process share (never in the library).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace unimem::remote::testing {

// Word j of cell `cell` for `seed`: distinct across cells, words and seeds.
inline std::uint64_t word(std::size_t cell, std::size_t j, std::uint64_t seed) {
  return ((std::uint64_t{cell} << 32) | j) ^ (seed * 0x9E3779B97F4A7C15ull);
}

inline void fill(std::span<std::byte> bytes, std::size_t cell, std::uint64_t seed) {
  for (std::size_t j = 0; j < bytes.size() / 8; ++j) {
    const std::uint64_t w = word(cell, j, seed);
    std::memcpy(bytes.data() + j * 8, &w, 8);
  }
}

inline bool holds(std::span<const std::byte> bytes, std::size_t cell, std::uint64_t seed) {
  for (std::size_t j = 0; j < bytes.size() / 8; ++j) {
    std::uint64_t w;
    std::memcpy(&w, bytes.data() + j * 8, 8);
    if (w != word(cell, j, seed)) return false;
  }
  return true;
}

inline std::string to_hex(std::span<const std::byte> bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (std::byte b : bytes) {
    out.push_back(digits[std::to_integer<unsigned>(b) >> 4]);
    out.push_back(digits[std::to_integer<unsigned>(b) & 15]);
  }
  return out;
}

inline std::vector<std::byte> from_hex(const std::string& text) {
  std::vector<std::byte> out;
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (std::size_t i = 0; i + 1 < text.size(); i += 2) {
    out.push_back(static_cast<std::byte>(nibble(text[i]) * 16 + nibble(text[i + 1])));
  }
  return out;
}

}  // namespace unimem::remote::testing
