// src/gpu/exchange_plan.hpp — which copies a Loader with
// CopyOptions::peer_exchange issues for one range of a file.
//
// Several devices may want the same file bytes (a replicated tensor). The
// range is cut at every wanted part's edge and every `granule` of the file;
// each interval goes from the host to one of the parts that want it (its
// owner: the granule's index modulo how many parts want the interval, so
// the granules are dealt round-robin over the devices), then from the
// owner's memory to every other part that wants it. Kept apart from the
// driver calls so that a machine without GPUs tests that every wanted byte
// is written once, and crosses the host's links once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace unimem::gpu::detail {

// The part [begin, end) of the file that part `part` (the caller's index: a
// piece of one device) wants.
struct WantedRange {
  std::uint64_t begin, end;
  std::size_t part;
};

// One copy of [begin, end) of the file into part `to`: from the host, or
// from part `from` (which an earlier copy of the plan filled, on the same
// stream as this one).
struct ExchangeCopy {
  std::uint64_t begin, end;
  std::size_t to;
  std::size_t from;  // == to for a copy from the host
  bool from_host() const noexcept { return from == to; }
};

// The copies for `wanted` (ranges may overlap in any way, one part may
// appear once), in issue order: each interval's host copy, then its copies
// from that owner. Requires granule > 0 and begin < end for every range.
// Never throws but std::bad_alloc.
std::vector<ExchangeCopy> plan_exchange(std::span<const WantedRange> wanted, std::uint64_t granule);

}  // namespace unimem::gpu::detail
