// src/gpu/file_to_device.cpp — file ranges into GPU memory, reading overlapped with DMA.
//
// A ring of `slots` pinned, registered staging pieces: piece i is filled into
// slot i % slots while the copy engine moves earlier pieces to the device
// (cuMemcpyHtoDAsync from registered memory runs at the PCIe rate). Filling a
// piece is either a parallel memcpy out of the page cache (when the file is
// cached: the kernel's copy into user memory is the bottleneck of read(), so
// several threads share it), or an O_DIRECT read_file (when it is not).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "copy_crew.hpp"
#include "gpu/driver.hpp"
#include "unimem/gpu.hpp"

namespace unimem::gpu {
namespace {

struct Piece {
  std::uint64_t file_offset;
  std::uintptr_t device_address;
  std::size_t bytes;
};

// Merges ranges adjacent in the file and on the device, then cuts them into pieces.
std::vector<Piece> plan(std::span<const DeviceSegment> segments, std::size_t piece_bytes) {
  std::vector<Piece> merged;
  for (const DeviceSegment& s : segments) {
    if (s.bytes == 0) continue;
    if (!merged.empty() && merged.back().file_offset + merged.back().bytes == s.file_offset &&
        merged.back().device_address + merged.back().bytes == s.device_address) {
      merged.back().bytes += s.bytes;
    } else {
      merged.push_back({s.file_offset, s.device_address, s.bytes});
    }
  }
  std::vector<Piece> pieces;
  for (const Piece& m : merged) {
    for (std::size_t done = 0; done < m.bytes; done += piece_bytes) {
      pieces.push_back({m.file_offset + done, m.device_address + done, std::min(piece_bytes, m.bytes - done)});
    }
  }
  return pieces;
}

}  // namespace

ReadReport copy_file_to_device(const std::string& path, std::span<const DeviceSegment> segments, int device,
                               const CopyOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const detail::Driver& d = detail::driver();
  if (options.staging != nullptr && !options.staging->gpu_visible()) {
    throw Error(Errc::invalid_argument, 0, "unimem: copy_file_to_device: the staging Block is not GPU-visible");
  }
  const unsigned slots = std::max(1u, options.slots);
  std::size_t piece = std::max<std::size_t>(options.piece_bytes / 4096 * 4096, 4096);
  std::optional<Block> own_staging;
  const Block* staging = options.staging;
  if (staging == nullptr) {
    BlockOptions o;
    o.visibility = Visibility::gpus;
    o.pinning = Pinning::unpinned;  // the registration pins it
    own_staging.emplace(Block::open(piece * slots, o));
    staging = &*own_staging;
  }
  piece = std::min(piece, staging->size() / slots / 4096 * 4096);
  if (piece == 0) throw Error(Errc::invalid_argument, 0, "unimem: copy_file_to_device: the staging Block is too small");

  const std::vector<Piece> pieces = plan(segments, piece);
  ReadReport report;
  std::uint64_t lo = ~std::uint64_t{0}, hi = 0;
  for (const Piece& p : pieces) {
    report.bytes += p.bytes;
    lo = std::min(lo, p.file_offset);
    hi = std::max(hi, p.file_offset + p.bytes);
  }
  if (pieces.empty()) return report;
  const std::uint64_t size = file_size(path);
  if (hi > size) throw Error(Errc::invalid_argument, 0, "unimem: copy_file_to_device: a range lies outside " + path);

  // A cached file is copied out of the page cache; otherwise read from the disk.
  const bool cached = page_cache_fraction(path, lo, hi) >= 0.9;
  std::optional<Block> file;
  std::optional<unimem::detail::CopyCrew> crew;
  if (cached) {
    BlockOptions o;
    o.pinning = Pinning::unpinned;
    file.emplace(Block::map_file(path, o));
    crew.emplace(options.copy_threads ? options.copy_threads
                                      : std::min(16u, std::max(1u, std::thread::hardware_concurrency())));
    report.path = ReadPath::pread_buffered;
    report.buffered_bytes = report.bytes;
    report.fallback_reason = "the file is in the page cache: copied out of it by several threads";
  }

  detail::ContextScope context(device);
  detail::CUstream stream = nullptr;
  detail::check(d.cuStreamCreate(&stream, detail::kStreamNonBlocking), "cuStreamCreate");
  std::vector<detail::CUevent> events(slots, nullptr);
  struct Cleanup {
    const detail::Driver& d;
    detail::CUstream& stream;
    std::vector<detail::CUevent>& events;
    ~Cleanup() {
      if (stream) d.cuStreamSynchronize(stream);
      for (auto e : events) {
        if (e) d.cuEventDestroy(e);
      }
      if (stream) d.cuStreamDestroy(stream);
    }
  } cleanup{d, stream, events};
  for (auto& e : events) detail::check(d.cuEventCreate(&e, detail::kEventDisableTiming), "cuEventCreate");

  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const Piece& p = pieces[i];
    std::byte* slot = staging->data() + (i % slots) * piece;
    if (i >= slots) detail::check(d.cuEventSynchronize(events[i % slots]), "cuEventSynchronize");
    if (cached) {
      crew->copy(slot, file->data() + p.file_offset, p.bytes);
    } else {
      const ReadReport r = read_file(path, p.file_offset, {slot, p.bytes}, options.read);
      report.buffered_bytes += r.buffered_bytes;
      report.path = r.path;
      if (report.fallback_reason.empty()) report.fallback_reason = r.fallback_reason;
    }
    detail::check(d.cuMemcpyHtoDAsync(p.device_address, slot, p.bytes, stream), "cuMemcpyHtoDAsync");
    detail::check(d.cuEventRecord(events[i % slots], stream), "cuEventRecord");
  }
  detail::check(d.cuStreamSynchronize(stream), "cuStreamSynchronize");
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace unimem::gpu
