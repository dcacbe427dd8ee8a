// examples/share_directory.hpp — what the producer tells consumers about its weights.
#pragma once

#include <cstddef>
#include <cstdint>

namespace example {

inline constexpr std::uint64_t kMagic = 0x756e696d656d5731;  // "unimemW1"

struct Directory {
  std::uint64_t magic;
  std::size_t offset;  // of the tensor, from the Block's start (the same in every process)
  std::size_t count;   // floats
  double checksum;
};

}  // namespace example
