// src/read_plan.hpp — how a read is cut up, apart from how it is carried out.
//
// FileReader (file.hpp) is three parts. This one is platform-neutral: it
// checks the caller's segments against the file and cuts them into chunks,
// each read either directly (bypassing the page cache: its offset, length and
// destination meet the file system's alignment) or through the page cache.
// src/file.cpp decides the route and reports it; the platform's executor
// (platform/read.hpp; Linux: platform/linux/read.cpp with O_DIRECT, io_uring
// and pread; an Apple port would bring F_NOCACHE and dispatch_io) opens and
// probes the file and runs the chunks. Keeping the plan here means every
// platform splits unaligned heads and tails the same way, and the rules are
// tested once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "unimem/file.hpp"

namespace unimem::detail {

// One read the platform carries out.
struct ReadChunk {
  bool direct;  // bypass the page cache
  std::uint64_t offset;
  std::byte* dest;
  std::size_t bytes;
};

// One read moves at most 2 GiB - 4 KiB on Linux, and io_uring takes a 32-bit
// length: larger chunks would be truncated or cut short.
inline constexpr std::size_t kMaxReadChunk = std::size_t{1} << 30;

// The bytes the segments ask for. Throws Error(invalid_argument) for a
// segment without a destination or outside a file of `file_size` bytes
// (`what` names the caller and file in the message).
std::uint64_t check_segments(std::span<const ReadSegment> segments, std::uint64_t file_size, const std::string& what);

// The smallest [begin, end) of the file that holds every segment's bytes
// (begin == end when none has bytes). Never throws.
void segment_span(std::span<const ReadSegment> segments, std::uint64_t file_size, std::uint64_t& begin,
                  std::uint64_t& end) noexcept;

// Cuts the segments into reads of at most chunk_bytes. With `direct`, each
// segment's body that meets `align` (file offset and destination address
// alike) is read directly and its unaligned head and tail through the page
// cache; `buffered_bytes` grows by what goes through the page cache.
std::vector<ReadChunk> plan_reads(std::span<const ReadSegment> segments, bool direct, std::size_t align,
                                  std::size_t chunk_bytes, std::uint64_t& buffered_bytes);

}  // namespace unimem::detail
