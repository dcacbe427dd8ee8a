// src/remote/descriptor.hpp — the bytes an Exporter hands to readers.
//
// Format version 2 (parse() also reads version 1: the same without flag bit 2
// and its section), every integer little-endian:
//     0  magic "unimemR1"                      8 bytes
//     8  version (2)                           u32
//    12  flags: bit 0 read-only, bit 1 generations, bit 2 same-host
//        section; others must be 0             u32
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
//        then, with flag bit 2, the same-host section (kSameHostBytes):
//     +0  boot id                              16 bytes
//    +16  pid namespace (non-zero)             u64
//    +24  exporter's pid (> 0)                 i32
//    +28  the Block's descriptor there (>= 0)  i32
//    +32  the Block's object (non-zero)        u64
//    +40  the Block's size                     u64
//    +48  cells' offset in the Block           u64
//    +56  generations' offset in the Block (8-aligned; 0 without)      u64
//    +64  the beacon Block's descriptor (>= 0) i32
//    +68  reserved (0)                         u32
//    +72  the beacon Block's object (non-zero) u64
//   end  FNV-1a 64 of every byte before it     u64
// parse() checks each of these and that the address ranges do not wrap, that
// the cells (and generations) lie inside the Block, and that the total is
// exactly the sum. The checksum catches corruption and
// truncation in transit, not forgery (it is not a MAC): a descriptor is a
// capability handed over a channel the caller trusts (DESIGN.md).
//
// The same-host section lets a reader on the exporter's host (same boot id
// and pid namespace) map the Block by id (Block::attach) and copy cells
// itself; the beacon is a one-page Block by which the Exporter and those
// readers agree on when the export stands (src/remote/beacon.hpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "unimem/remote.hpp"

namespace unimem::remote::detail {

inline constexpr std::size_t kDescriptorFixedBytes = 72;
inline constexpr std::size_t kMaxDescriptorBlob = std::size_t{64} * 1024;
inline constexpr std::size_t kSameHostBytes = 80;

// Where an export's Block is, for a reader on the same host.
struct SameHost {
  std::array<std::uint8_t, 16> boot{};
  std::uint64_t pid_namespace = 0;
  std::int32_t pid = 0;
  std::int32_t block_fd = -1;
  std::uint64_t block_object = 0;
  std::uint64_t block_bytes = 0;
  std::uint64_t cells_offset = 0;
  std::uint64_t generations_offset = 0;  // 0 without generations
  std::int32_t beacon_fd = -1;
  std::uint64_t beacon_object = 0;
};

struct Descriptor {
  std::uint32_t version = kDescriptorVersion;
  bool read_only = false;
  std::uint64_t generation = 0;
  std::uint64_t cells_address = 0;
  std::uint64_t cell_size = 0;
  std::uint64_t cells = 0;
  std::uint64_t generations_address = 0;  // 0 without generations
  std::vector<std::byte> worker_address;
  std::vector<std::byte> cells_rkey;
  std::vector<std::byte> generations_rkey;  // empty without generations
  std::optional<SameHost> same_host;        // none: the export is reachable over UCX only

  bool has_generations() const noexcept { return generations_address != 0; }
};

// The bytes of `d`. Throws Error(invalid_argument) when `d` breaks the
// format's rules (what parse() would refuse).
std::vector<std::byte> serialize(const Descriptor& d);
// The descriptor in `bytes`. Throws Error(bad_format), naming the field,
// for anything that is not a version-1 or version-2 descriptor as described above.
Descriptor parse(std::span<const std::byte> bytes);

// FNV-1a, 64 bits (the trailing checksum).
std::uint64_t fnv1a64(std::span<const std::byte> bytes) noexcept;

}  // namespace unimem::remote::detail
