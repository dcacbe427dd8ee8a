// src/read_plan.cpp — cutting reads into direct and page-cache chunks (see read_plan.hpp).
#include "read_plan.hpp"

#include <algorithm>

namespace unimem::detail {

std::uint64_t check_segments(std::span<const ReadSegment> segments, std::uint64_t file_size, const std::string& what) {
  std::uint64_t total = 0;
  for (const ReadSegment& s : segments) {
    if (s.bytes != 0 && s.dest == nullptr)
      throw Error(Errc::invalid_argument, 0, "unimem: " + what + ": a segment has no destination");
    if (s.file_offset > file_size || s.bytes > file_size - s.file_offset) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: " + what + ": bytes [" + std::to_string(s.file_offset) + ", " +
                      std::to_string(s.file_offset + s.bytes) + ") lie outside the file (" + std::to_string(file_size) +
                      " bytes)");
    }
    total += s.bytes;
  }
  return total;
}

void segment_span(std::span<const ReadSegment> segments, std::uint64_t file_size, std::uint64_t& begin,
                  std::uint64_t& end) noexcept {
  begin = file_size;
  end = 0;
  for (const ReadSegment& s : segments) {
    if (s.bytes == 0 || s.file_offset >= file_size) continue;
    begin = std::min(begin, s.file_offset);
    end = std::max(end, std::min<std::uint64_t>(file_size, s.file_offset + s.bytes));
  }
  if (end < begin) end = begin;
}

std::vector<ReadChunk> plan_reads(std::span<const ReadSegment> segments, bool direct, std::size_t align,
                                  std::size_t chunk_bytes, std::uint64_t& buffered_bytes) {
  std::vector<ReadChunk> chunks;
  auto add = [&](bool is_direct, std::uint64_t off, std::byte* dest, std::uint64_t n) {
    if (!is_direct) buffered_bytes += n;
    for (std::uint64_t done = 0; done < n; done += chunk_bytes) {
      chunks.push_back({is_direct, off + done, dest + done,
                        static_cast<std::size_t>(std::min<std::uint64_t>(chunk_bytes, n - done))});
    }
  };
  for (const ReadSegment& s : segments) {
    if (s.bytes == 0) continue;
    const auto dest = reinterpret_cast<std::uintptr_t>(s.dest);
    // The direct body: the first aligned offset whose destination is aligned too.
    const std::uint64_t body_begin = (s.file_offset + align - 1) / align * align;
    const std::uint64_t body_end = (s.file_offset + s.bytes) / align * align;
    if (!direct || (dest - s.file_offset) % align != 0 || body_begin >= body_end) {
      add(false, s.file_offset, s.dest, s.bytes);
      continue;
    }
    add(false, s.file_offset, s.dest, body_begin - s.file_offset);
    add(true, body_begin, s.dest + (body_begin - s.file_offset), body_end - body_begin);
    add(false, body_end, s.dest + (body_end - s.file_offset), s.file_offset + s.bytes - body_end);
  }
  return chunks;
}

}  // namespace unimem::detail
