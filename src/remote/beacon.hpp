// src/remote/beacon.hpp — the page an Exporter shares with same-host readers.
//
// A reader on the exporter's host copies cells itself (src/remote/same_host.cpp),
// so the Exporter cannot stop it the way unmapping memory from UCX stops a
// network peer. The beacon, a one-page Block of the Exporter's, carries the
// handshake instead: the reader counts itself in (`calls`), then checks that
// the export stands (`live` holds the export's generation), copies, and counts
// itself out; the Exporter's destructor clears `live`, then waits for `calls`
// to reach zero. Both sides use sequentially consistent operations, so either
// the reader sees `live` cleared and copies nothing, or the destructor sees
// the reader counted in and waits for it: no put lands after ~Exporter
// returns (unless a reader stalls past kBeaconDrainLimit, e.g. one killed
// mid-call, whose count never drops).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "unimem/block.hpp"

namespace unimem::remote::detail {

inline constexpr std::uint64_t kBeaconMagic = 0x3142'4e4f'4341'4542ull;  // "BEACONB1", little-endian
inline constexpr std::chrono::milliseconds kBeaconDrainLimit{2000};

// The beacon's words, at fixed offsets of its Block (any process's mapping).
struct BeaconWords {
  static constexpr std::size_t kMagic = 0;   // kBeaconMagic, written once before the descriptor exists
  static constexpr std::size_t kLive = 8;    // the export's generation while it stands, 0 after
  static constexpr std::size_t kCalls = 16;  // same-host calls copying now

  static std::atomic_ref<std::uint64_t> at(const Block& beacon, std::size_t offset) noexcept {
    return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(beacon.data() + offset));
  }
};

}  // namespace unimem::remote::detail
