// src/shared_magic.hpp — the magic word that opens a shared allocator's
// header in its Block (SharedTape, SharedGrid).
//
// The creator writes every other field first and publishes the magic last
// with a release store; an attacher reads it with an acquire load, so a
// matching magic means the fields written before it are visible. (Another
// process may still change them later: attachers validate a copy.)
#pragma once

#include <atomic>
#include <cstdint>

namespace unimem::detail {

// The 8 characters as the little-endian word they are stored as.
constexpr std::uint64_t magic_word(const char (&text)[9]) {
  std::uint64_t w = 0;
  for (int i = 7; i >= 0; --i) w = (w << 8) | static_cast<unsigned char>(text[i]);
  return w;
}

inline void publish_magic(std::uint64_t& field, std::uint64_t magic) noexcept {
  std::atomic_ref<std::uint64_t>(field).store(magic, std::memory_order_release);
}

inline std::uint64_t read_magic(std::uint64_t& field) noexcept {
  return std::atomic_ref<std::uint64_t>(field).load(std::memory_order_acquire);
}

}  // namespace unimem::detail
