// src/remote/descriptor.hpp — the bytes an Exporter hands to readers.
//
// Format version 1, every integer little-endian:
//     0  magic "unimemR1"                      8 bytes
//     8  version (1)                           u32
//    12  flags: bit 0 read-only, bit 1 generations; others must be 0   u32
//    16  generation (the export's, random)     u64
//    24  cells_address (cell 0 in the exporter's address space)        u64
//    32  cell_size (non-zero)                  u64
//    40  cells (in [1, 2^32 - 1))              u64
//    48  generations_address (0 without)       u64
//    56  worker address bytes (1..64 KiB)      u32
//    60  cells rkey bytes (1..64 KiB)          u32
//    64  generations rkey bytes (0 without, else 1..64 KiB)   u32
//    68  reserved (0)                          u32
//    72  worker address, cells rkey, generations rkey
//   end  FNV-1a 64 of every byte before it     u64
// parse() checks each of these and that the address ranges do not wrap, and
// that the total is exactly the sum. The checksum catches corruption and
// truncation in transit, not forgery (it is not a MAC): a descriptor is a
// capability handed over a channel the caller trusts (DESIGN.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "unimem/remote.hpp"

namespace unimem::remote::detail {

inline constexpr std::size_t kDescriptorFixedBytes = 72;
inline constexpr std::size_t kMaxDescriptorBlob = std::size_t{64} * 1024;

struct Descriptor {
  std::uint32_t version = 1;
  bool read_only = false;
  std::uint64_t generation = 0;
  std::uint64_t cells_address = 0;
  std::uint64_t cell_size = 0;
  std::uint64_t cells = 0;
  std::uint64_t generations_address = 0;  // 0 without generations
  std::vector<std::byte> worker_address;
  std::vector<std::byte> cells_rkey;
  std::vector<std::byte> generations_rkey;  // empty without generations

  bool has_generations() const noexcept { return generations_address != 0; }
};

// The bytes of `d`. Throws Error(invalid_argument) when `d` breaks the
// format's rules (what parse() would refuse).
std::vector<std::byte> serialize(const Descriptor& d);
// The descriptor in `bytes`. Throws Error(bad_format), naming the field,
// for anything that is not a version-1 descriptor as described above.
Descriptor parse(std::span<const std::byte> bytes);

// FNV-1a, 64 bits (the trailing checksum).
std::uint64_t fnv1a64(std::span<const std::byte> bytes) noexcept;

}  // namespace unimem::remote::detail
