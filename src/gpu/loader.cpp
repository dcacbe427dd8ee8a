// src/gpu/loader.cpp — file ranges into GPU memory at the link rate (gpu::Loader).
//
// A load cuts the file into chunks (64 MiB, CopyOptions::chunk_bytes) and
// picks a route per chunk:
//   * registered (by an earlier load): copied straight from the page cache,
//     cuMemcpyHtoDAsync from registered memory at the link rate;
//   * in the page cache, staged: the staging workers (the crew's threads)
//     each take the next 4 MiB slice, pread it into one of two pinned slots
//     of their own and queue its copy on their own stream, so no worker
//     waits for another and the copy engine always has work (measured on the
//     H200 machine: 16 workers 0.9x the link on a first load, where a crew
//     filling one shared 64 MiB slot at a time reached 0.4x);
//   * in the page cache, registered in place when the policy says so
//     (PageCacheRegistration: by default from a file's second load on, or
//     for a small first load): the chunk of a read-only mapping is
//     registered, then copied like the first kind. The driver serializes
//     registrations, so this thread registers chunk after chunk (with
//     CopyOptions::both_routes, from the front of the file while the
//     workers stage slices from the back; they meet where their rates put
//     the line);
//   * not in the page cache: a FileReader (O_DIRECT where allowed, one per
//     load) reads it into a ring of pinned slots on a thread of its own.
// Registrations stay with the Loader, keyed by the file's identity (device,
// inode, size, mtime, ctime), so a reload is DMA alone. Events guard slot reuse. A
// load ends with every stream synchronized, also when it throws: nothing
// stays in flight.
//
// Loader::load runs named steps: merge (segments into pieces), plan_chunks
// (which chunks the pieces touch), State::classify (registered, cached, not
// cached), then a Run: copy_registered; stage_uncached on a thread of its
// own; register_chunks on the loading thread and run_workers on the crew
// (stage); every copy through State::copy_parts.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "copy_crew.hpp"
#include "format.hpp"
#include "gpu/driver.hpp"
#include "gpu/exchange_plan.hpp"
#include "gpu/loader_probe.hpp"
#include "load_progress.hpp"
#include "platform/files.hpp"
#include "platform/region.hpp"
#include "unimem/detail/fork_watch.hpp"
#include "unimem/gpu.hpp"

namespace unimem::gpu {
namespace detail {
namespace {
std::atomic<LoaderProbe*> installed_probe{nullptr};
}  // namespace
void set_loader_probe(LoaderProbe* probe) noexcept { installed_probe.store(probe); }
LoaderProbe* loader_probe() noexcept { return installed_probe.load(std::memory_order_relaxed); }
void loader_probe_before(std::size_t chunk) {
  if (LoaderProbe* p = loader_probe()) p->before_chunk(chunk);
}
void loader_probe_step(const char* what) noexcept {
  if (LoaderProbe* p = loader_probe()) p->step(what);
}
}  // namespace detail

namespace {

using detail::check;
using detail::CUevent;
using detail::CUstream;

// Cached data up to this much, in a load before any staging worker exists,
// is registered in place rather than staged (see Loader::load).
constexpr std::uint64_t kSmallLoad = std::uint64_t{64} << 20;
// Loads of more chunks than this ask which are cached with the copy crew.
constexpr std::size_t kParallelClassify = 4;
// A staged load of at least this much sets the rate registering must beat
// (smaller loads time mostly their setup).
constexpr std::uint64_t kRateSample = std::uint64_t{256} << 20;
// A reload keeps registering a file where its registration runs at least at
// this fraction of the rate staging reached on it: that load then costs at
// most 1/0.8 of a staged one and every later load is DMA alone (1.0x the
// link against staging's ~0.9x), so it pays for itself within a few loads.
// A page cache of 4 KiB folios registers at 0.2-0.4x (measured): staged.
constexpr double kRegisterAtLeast = 0.8;

// A copy: one range, or a strided rectangle of `rows` rows (a slice of a
// row-major matrix), into device memory of the Loader's device `device_index`.
struct Piece {
  std::uint64_t file_offset;
  std::uintptr_t device_address;
  std::size_t width;  // bytes per row
  std::size_t rows;
  std::uint64_t file_pitch;
  std::size_t device_pitch;
  std::size_t device_index;  // index into Loader::State::device_streams
  // One past the last file byte it reads.
  std::uint64_t end() const { return file_offset + (rows - 1) * file_pitch + width; }
};

// Checks the segments and merges ranges adjacent in the file and on the
// device; a rectangle whose rows touch becomes one range.
std::vector<Piece> merge(std::span<const DeviceSegment> segments, std::span<const int> devices) {
  std::vector<Piece> merged;
  for (const DeviceSegment& s : segments) {
    if (s.bytes == 0 || s.rows == 0) continue;
    const int device = s.device < 0 ? devices.front() : s.device;
    const auto device_index =
        static_cast<std::size_t>(std::find(devices.begin(), devices.end(), device) - devices.begin());
    if (device_index == devices.size()) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: gpu::Loader: a segment is for device " + std::to_string(device) +
                      ", which is not one of the Loader's");
    }
    Piece p{s.file_offset, s.device_address, s.bytes, s.rows, s.file_pitch, s.device_pitch, device_index};
    if (p.rows > 1 && (p.file_pitch < p.width || p.device_pitch < p.width)) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: gpu::Loader: a segment's rows overlap (file_pitch " + std::to_string(p.file_pitch) +
                      " or device_pitch " + std::to_string(p.device_pitch) + " below its " + std::to_string(p.width) +
                      " bytes per row)");
    }
    // Where the rectangle ends, in the file and on the device, unless that overflows.
    auto end_of = [&](std::uint64_t start, std::uint64_t pitch, std::uint64_t& end) {
      return !__builtin_mul_overflow(std::uint64_t{p.rows - 1}, pitch, &end) &&
             !__builtin_add_overflow(end, start, &end) && !__builtin_add_overflow(end, std::uint64_t{p.width}, &end);
    };
    std::uint64_t file_end = 0, device_end = 0;
    if (!end_of(p.file_offset, p.file_pitch, file_end) || !end_of(p.device_address, p.device_pitch, device_end)) {
      throw Error(Errc::invalid_argument, 0, "unimem: gpu::Loader: a segment's range overflows");
    }
    if (p.rows > 1 && p.file_pitch == p.width && p.device_pitch == p.width) {
      p.width *= p.rows;  // rows back to back on both sides: one range
      p.rows = 1;
    }
    if (!merged.empty()) {
      Piece& last = merged.back();
      if (last.rows == 1 && p.rows == 1 && last.device_index == p.device_index &&
          last.file_offset + last.width == p.file_offset && last.device_address + last.width == p.device_address) {
        last.width += p.width;
        continue;
      }
    }
    merged.push_back(p);
  }
  return merged;
}

// What a load did, for ReadReport::fallback_reason.
std::string describe(std::size_t in_place, std::size_t newly_registered, std::size_t staged, ReadPath staged_path) {
  using unimem::detail::format_bytes;
  std::string s = format_bytes(in_place) + " straight from the page cache, registered in place (chunks of " +
                  format_bytes(newly_registered) + " newly registered)";
  if (staged != 0) s += "; " + format_bytes(staged) + " staged (" + to_string(staged_path) + ")";
  return s;
}

// One file mapped read-only, registered chunk by chunk as loads need it.
struct MappedFile {
  enum class Chunk : std::uint8_t { unregistered, registered, refused };

  MappedFile(std::string p, const platform::FileIdentity& id, std::size_t chunk_bytes)
      : path(std::move(p)), identity(id), chunk(chunk_bytes), reader(path, id) {
    BlockOptions o;
    o.pinning = Pinning::unpinned;  // registration pins what it registers
    map = Block::map_file(path, o);
    // Replaced between the caller's stat and the mapping? Then the mapping may
    // be another file than `id` describes: refuse rather than mix them.
    if (platform::file_identity(path) != id || map.size() < id.size) {
      throw Error(Errc::invalid_argument, 0, "unimem: gpu::Loader: " + path + " changed while it was being opened");
    }
    chunks.assign((id.size + chunk - 1) / chunk, Chunk::unregistered);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  // Unregisters before `map` unmaps.
  ~MappedFile() { unregister_all(); }

  std::size_t chunk_length(std::size_t k) const { return std::min(chunk, map.size() - k * chunk); }

  // The fraction of [offset, offset + bytes) in the page cache: asked of the
  // file (cachestat), else of the mapping (mincore). Never throws.
  double cached_fraction(std::uint64_t offset, std::uint64_t bytes) const noexcept {
    const double cached = reader.cached_fraction(offset, bytes);
    return cached >= 0 ? cached : platform::resident_fraction(map.data() + offset, static_cast<std::size_t>(bytes));
  }

  // Registers chunk k (under the caller's context); false when the driver refuses.
  bool register_chunk(std::size_t k) {
    if (chunks[k] != Chunk::unregistered) return chunks[k] == Chunk::registered;
    const detail::Driver& d = detail::driver();
    const unsigned flags = detail::kHostRegisterPortable | detail::kHostRegisterReadOnly;
    if (d.cuMemHostRegister(map.data() + k * chunk, chunk_length(k), flags) != 0) {
      chunks[k] = Chunk::refused;
      return false;
    }
    chunks[k] = Chunk::registered;
    registered_bytes += chunk_length(k);
    return true;
  }

  // Times registering `bytes` (page-aligned, at least kMinProbeBytes, all
  // in the page cache) at `offset` and lets them go again: two registrations,
  // of a quarter and the next three quarters, whose difference in time is
  // the rate (the driver's cost per call cancels), twice, keeping the slower
  // rate: a verdict of "fast" needs both to agree (a thread preempted in the
  // short part reads as fast). Costs the time of registering `bytes` twice
  // (16 MiB at 8 GB/s on a page cache of 4 KiB folios: 4 ms), where timing a
  // whole 64 MiB chunk cost 8 ms there, measured. A refusal reads as slow
  // (-1: the file stays staged, by the workers); a difference lost in the
  // clock's noise, as fast (infinity). Under the caller's context.
  static constexpr std::size_t kProbeBytes = std::size_t{16} << 20;
  static constexpr std::size_t kMinProbeBytes = std::size_t{1} << 20;
  void time_registration(std::uint64_t offset, std::size_t bytes) {
    const detail::Driver& d = detail::driver();
    const unsigned flags = detail::kHostRegisterPortable | detail::kHostRegisterReadOnly;
    const std::size_t first = bytes / 4 / Block::page_size() * Block::page_size();
    std::byte* const a = map.data() + offset;
    std::byte* const b = a + first;
    using Clock = std::chrono::steady_clock;
    double slowest = std::numeric_limits<double>::infinity();
    for (int sample = 0; sample < 2; ++sample) {
      const auto t0 = Clock::now();
      if (detail::LoaderProbe* p = detail::loader_probe()) p->timing_registration(0);
      const bool ok_a = d.cuMemHostRegister(a, first, flags) == 0;
      const auto t1 = Clock::now();
      if (detail::LoaderProbe* p = detail::loader_probe()) p->timing_registration(1);
      const bool ok_b = d.cuMemHostRegister(b, bytes - first, flags) == 0;
      const auto t2 = Clock::now();
      if (ok_a) d.cuMemHostUnregister(a);
      if (ok_b) d.cuMemHostUnregister(b);
      if (!ok_a || !ok_b) {
        registration_rate = -1;
        return;
      }
      const double extra = std::chrono::duration<double>((t2 - t1) - (t1 - t0)).count();
      if (extra > 0) slowest = std::min(slowest, static_cast<double>(bytes - 2 * first) / extra);
    }
    registration_rate = slowest;
  }

  void unregister_all() noexcept {
    if (registered_bytes == 0) return;
    const detail::Driver& d = detail::driver();
    for (std::size_t k = 0; k < chunks.size(); ++k) {
      if (chunks[k] == Chunk::registered) d.cuMemHostUnregister(map.data() + k * chunk);
      chunks[k] = Chunk::unregistered;
    }
    registered_bytes = 0;
  }

  std::string path;
  platform::FileIdentity identity;
  std::size_t chunk;
  platform::ReadableFile reader;  // staged copies of cached chunks read through it
  Block map;
  std::vector<Chunk> chunks;
  std::size_t registered_bytes = 0;
  unsigned loads = 0;  // completed loads of this file (the on_reload policy)
  // What loads of this file measured, for the on_reload policy (bytes/s):
  // the rate the workers staged it at (0 before a large enough staged load),
  // and the rate registering it runs at (0 before time_registration; -1
  // where the driver refused).
  double staged_rate = 0;
  double registration_rate = 0;
  std::uint64_t last_use = 0;  // when a load last asked for it (State::clock)
};

// The bytes the pieces ask for. Throws Error(invalid_argument) for a piece
// that reaches past the end of `path` (`file_size` bytes).
std::uint64_t checked_bytes(const std::vector<Piece>& pieces, std::uint64_t file_size, const std::string& path) {
  std::uint64_t bytes = 0;
  for (const Piece& p : pieces) {
    bytes += static_cast<std::uint64_t>(p.width) * p.rows;
    if (p.end() > file_size) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: gpu::Loader: bytes " + std::to_string(p.file_offset) + ".." + std::to_string(p.end()) +
                      " lie outside " + path + " (" + std::to_string(file_size) + " bytes)");
    }
  }
  return bytes;
}

// Which pieces touch a chunk, and the part [lo, hi) of the chunk they need.
struct Need {
  std::size_t chunk;
  std::uint64_t lo, hi;
  std::vector<std::size_t> pieces;
};

// Plans a load: the chunks of `chunk_bytes` (of `chunks` in a file of
// `file_size` bytes) that the pieces touch, in file order.
std::vector<Need> plan_chunks(const std::vector<Piece>& pieces, std::size_t chunk_bytes, std::size_t chunks,
                              std::uint64_t file_size) {
  std::vector<Need> needs;
  std::vector<std::vector<std::size_t>> by_chunk(chunks);
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const std::size_t first = pieces[i].file_offset / chunk_bytes;
    const std::size_t last = (pieces[i].end() - 1) / chunk_bytes;
    for (std::size_t k = first; k <= last; ++k) by_chunk[k].push_back(i);
  }
  for (std::size_t k = 0; k < by_chunk.size(); ++k) {
    if (by_chunk[k].empty()) continue;
    const std::uint64_t begin = k * chunk_bytes, end = std::min<std::uint64_t>(begin + chunk_bytes, file_size);
    Need n{k, end, begin, std::move(by_chunk[k])};
    for (std::size_t i : n.pieces) {
      n.lo = std::min<std::uint64_t>(n.lo, std::max<std::uint64_t>(begin, pieces[i].file_offset));
      n.hi = std::max<std::uint64_t>(n.hi, std::min<std::uint64_t>(end, pieces[i].end()));
    }
    needs.push_back(std::move(n));
  }
  return needs;
}

// The chunks of a load by kind (indices into its needs): registered by an
// earlier load (DMA only), cached (register in place, or stage), not cached
// (stage through FileReader).
struct ChunkKinds {
  std::vector<std::size_t> registered, cached, uncached;
};

}  // namespace

struct Loader::State {
  // What each of the Loader's devices copies on.
  struct DeviceStreams {
    int device;
    CUstream stream = nullptr;          // copies from registered page cache
    CUstream staging_stream = nullptr;  // copies from the staging slots
    std::vector<CUevent> events;        // one per staging slot
  };
  std::vector<int> devices;
  std::vector<DeviceStreams> device_streams;  // one per device, in the same order
  CopyOptions options;
  // CopyOptions::peer_exchange asked for and possible (every pair of devices
  // has peer access, now enabled); else why not, for the report.
  bool exchange = false;
  std::string exchange_off;
  mutable std::atomic<std::uint64_t> exchanged{0};  // bytes peer-copied by this load, for its report
  std::size_t chunk;                                // registration chunk and staging slot size
  std::mutex lock;                                  // one load at a time
  // Set in a fork() child: the streams, events and registrations are the
  // parent's, and `lock` may have been copied held.
  unimem::detail::ForkedFlag forked;
  std::optional<Block> own_staging;  // made on the first staged chunk
  const Block* staging = nullptr;
  std::optional<unimem::detail::CopyCrew> crew;  // copies cached chunks into the staging ring
  std::vector<std::unique_ptr<MappedFile>> files;

  // The staging workers, one per crew thread: each reads its next slice of
  // a cached range into one of its own two pinned slots and queues that
  // slot's copies on its own stream per device, so no worker waits for
  // another (measured on the H200 machine, 16 such workers reach 0.9x the
  // link on a first load; a crew filling one shared 64 MiB slot at a time,
  // 0.4x). Every worker's slots lie in one private huge-page mapping, made
  // unbacked; each worker backs and registers its own part on its first
  // slice, all workers at once, so on a first load that setup overlaps the
  // other workers' reads. (Backing and registering the whole mapping before
  // any worker started took 20-38 ms there; a Block per worker, 1.6-2.4 ms
  // each; a bare registration of 8 MiB, 0.2 ms.)
  static constexpr std::size_t kWorkerSlots = 2;
  static constexpr std::size_t kWorkerSlotBytes = std::size_t{4} << 20;
  static constexpr std::size_t kWorkerBytes = kWorkerSlots * kWorkerSlotBytes;
  struct Worker {
    std::byte* slots = nullptr;     // its part of worker_memory, once backed and registered
    std::vector<CUstream> streams;  // per device
    std::vector<CUevent> events;    // [slot * devices + device index]: the slot's last copies
  };
  std::vector<Worker> workers;         // one per crew thread once a load staged cached data
  std::optional<Block> worker_memory;  // kWorkerBytes per worker; outlives their registrations

  bool any_worker_made() const noexcept {
    return std::any_of(workers.begin(), workers.end(), [](const Worker& w) { return w.slots != nullptr; });
  }

  void ensure_workers() {
    ensure_crew();
    if (!workers.empty()) return;
    BlockOptions o;
    o.pinning = Pinning::unpinned;  // registration pins each part
    o.shareable = false;            // private huge pages: fast to back and register
    o.huge_pages = true;
    worker_memory.emplace(Block::open(crew->threads() * kWorkerBytes, o));
    // A fork() child never stages through it: not copied into children
    // (pinned pages would be copied eagerly, or leave the parent's DMA
    // reading pages the child's copy-on-write moved).
    (void)platform::advise_no_fork_copy(worker_memory->data(), worker_memory->size());
    workers.resize(crew->threads());
  }

  // Makes worker `index`'s slots, streams and events, on that worker's
  // thread. Returns the seconds each part took. Throws Error(cuda) and
  // Error(out_of_memory), leaving the worker as it was (unmade).
  struct WorkerTimes {
    double streams = 0, backing = 0, registering = 0;
    double total() const noexcept { return streams + backing + registering; }
  };
  WorkerTimes make_worker(std::size_t index) {
    using Clock = std::chrono::steady_clock;
    auto since = [](Clock::time_point& t) {
      const auto now = Clock::now();
      const double s = std::chrono::duration<double>(now - t).count();
      t = now;
      return s;
    };
    WorkerTimes times;
    auto t = Clock::now();
    Worker& w = workers[index];
    try {
      const detail::Driver& d = detail::driver();
      w.events.assign(kWorkerSlots * device_streams.size(), nullptr);  // first: destroy_worker reads events per stream
      w.streams.assign(device_streams.size(), nullptr);
      for (std::size_t l = 0; l < device_streams.size(); ++l) {
        detail::ContextScope context(device_streams[l].device);
        check(d.cuStreamCreate(&w.streams[l], detail::kStreamNonBlocking), "cuStreamCreate");
        for (std::size_t k = 0; k < kWorkerSlots; ++k) {
          check(d.cuEventCreate(&w.events[k * device_streams.size() + l], detail::kEventDisableTiming),
                "cuEventCreate");
        }
      }
      times.streams = since(t);
      std::byte* const part = worker_memory->data() + index * kWorkerBytes;
      // Backed first: the driver would fault the pages in itself, holding
      // every other thread's calls meanwhile.
      platform::populate(part, kWorkerBytes);
      times.backing = since(t);
      detail::ContextScope context(device_streams.front().device);  // portable: every device's copies may use it
      check(d.cuMemHostRegister(part, kWorkerBytes, detail::kHostRegisterPortable | detail::kHostRegisterDeviceMap),
            "cuMemHostRegister (staging slots)");
      times.registering = since(t);
      w.slots = part;
    } catch (...) {
      destroy_worker(w);
      throw;
    }
    return times;
  }

  void destroy_worker(Worker& w) noexcept {
    const detail::Driver& d = detail::driver();
    for (std::size_t l = 0; l < w.streams.size() && l < device_streams.size(); ++l) {
      try {
        detail::ContextScope context(device_streams[l].device);
        for (std::size_t k = 0; k < kWorkerSlots; ++k) {
          if (CUevent e = w.events[k * device_streams.size() + l]) d.cuEventDestroy(e);
        }
        if (w.streams[l]) d.cuStreamDestroy(w.streams[l]);
      } catch (...) {  // no context: nothing more can be released
      }
    }
    if (w.slots != nullptr && !device_streams.empty()) {
      try {
        detail::ContextScope context(device_streams.front().device);
        d.cuMemHostUnregister(w.slots);
      } catch (...) {
      }
    }
    w = Worker{};
  }
  void destroy_workers(std::vector<Worker>& list) noexcept {
    for (Worker& w : list) destroy_worker(w);
    list.clear();
  }

  void ensure_crew() {
    if (!crew) {
      crew.emplace(options.copy_threads ? options.copy_threads
                                        : std::min(16u, std::max(1u, std::thread::hardware_concurrency())));
    }
  }

  // The mapping of `path` as `id` describes it, made if needed. Files that
  // changed or went away since they were mapped are dropped first (their
  // registrations pin pages nobody can load again), and beyond kMaxFiles the
  // least recently loaded, so a long-lived Loader does not hoard descriptors
  // and pinned memory.
  static constexpr std::size_t kMaxFiles = 64;
  MappedFile& mapped(const std::string& path, const platform::FileIdentity& id) {
    std::erase_if(files, [&](const std::unique_ptr<MappedFile>& f) {
      if (f->path == path) return f->identity != id;
      try {
        return platform::file_identity(f->path) != f->identity;
      } catch (const Error&) {
        return true;  // gone, or no longer a regular file
      }
    });
    ++clock;
    for (auto& f : files) {
      if (f->path == path) {
        f->last_use = clock;
        return *f;
      }
    }
    if (files.size() >= kMaxFiles) {
      files.erase(std::min_element(files.begin(), files.end(),
                                   [](const auto& a, const auto& b) { return a->last_use < b->last_use; }));
    }
    files.push_back(std::make_unique<MappedFile>(path, id, chunk));
    files.back()->last_use = clock;
    return *files.back();
  }
  std::uint64_t clock = 0;  // counts mapped() calls, for last_use

  void destroy_device_streams() noexcept {
    destroy_workers(workers);
    const detail::Driver& d = detail::driver();
    for (DeviceStreams& dev : device_streams) {
      try {
        detail::ContextScope context(dev.device);
        for (auto e : dev.events) {
          if (e) d.cuEventDestroy(e);
        }
        if (dev.stream) d.cuStreamDestroy(dev.stream);
        if (dev.staging_stream) d.cuStreamDestroy(dev.staging_stream);
      } catch (...) {  // no context: nothing more can be released
      }
    }
    device_streams.clear();
  }

  // The staging ring and the copy crew, made on the first load that stages.
  void ensure_staging() {
    if (staging == nullptr) {
      BlockOptions o;
      o.visibility = Visibility::gpus;
      o.pinning = Pinning::unpinned;  // the registration pins it
      // Private huge pages, backed by several threads before registration:
      // the ring is made during a first load, so its setup is on that
      // load's path (registering lazy 4 KiB pages faults them in one thread).
      o.shareable = false;
      o.huge_pages = true;
      o.backing = Backing::warm;
      own_staging.emplace(Block::open(chunk * options.slots, o));
      (void)platform::advise_no_fork_copy(own_staging->data(), own_staging->size());  // as worker_memory
      staging = &*own_staging;
    }
    ensure_crew();
  }

  // Enables peer access between every pair of devices for
  // CopyOptions::peer_exchange; returns "" when done, else why not.
  std::string enable_peer_access() const {
    const detail::Driver& d = detail::driver();
    if (d.cuDeviceCanAccessPeer == nullptr || d.cuCtxEnablePeerAccess == nullptr) {
      return "this CUDA driver lacks peer access";
    }
    for (int a : devices) {
      for (int b : devices) {
        if (a == b) continue;
        detail::CUdevice da = 0, db = 0;
        int can = 0;
        check(d.cuDeviceGet(&da, a), "cuDeviceGet");
        check(d.cuDeviceGet(&db, b), "cuDeviceGet");
        check(d.cuDeviceCanAccessPeer(&can, da, db), "cuDeviceCanAccessPeer");
        if (!can) return "device " + std::to_string(a) + " cannot read device " + std::to_string(b) + "'s memory";
      }
    }
    for (int a : devices) {
      detail::ContextScope context(a);
      for (int b : devices) {
        if (a == b) continue;
        const detail::CUresult r = d.cuCtxEnablePeerAccess(detail::primary_context(b), 0);
        if (r != 0 && r != detail::kErrorPeerAccessAlreadyEnabled) {
          return "enabling device " + std::to_string(a) + "'s access to device " + std::to_string(b) +
                 " failed: " + detail::error_name(r);
        }
      }
    }
    return "";
  }

  // With exchange: the parts of `need`'s pieces in [begin, end), copied as
  // plan_exchange says (each interval from `source` to one device that wants
  // it, then from there to the others), all on the owner's stream, so each
  // peer copy follows the host copy it reads. Strided pieces go to `rest`,
  // for the host route.
  static constexpr std::uint64_t kExchangeGranule = std::uint64_t{4} << 20;
  template <class Source>
  void exchange_parts(const detail::Driver& d, const std::vector<Piece>& pieces, const Need& need, std::uint64_t begin,
                      std::uint64_t end, const CUstream* streams, std::vector<char>* used, Source&& source,
                      std::vector<std::size_t>& rest) const {
    std::vector<detail::WantedRange> wanted;
    for (std::size_t i : need.pieces) {
      const Piece& p = pieces[i];
      if (p.rows != 1) {
        rest.push_back(i);
        continue;
      }
      const std::uint64_t b = std::max<std::uint64_t>(begin, p.file_offset);
      const std::uint64_t e = std::min<std::uint64_t>(end, p.file_offset + p.width);
      if (b < e) wanted.push_back({b, e, i});
    }
    for (const detail::ExchangeCopy& c : detail::plan_exchange(wanted, kExchangeGranule)) {
      const Piece& to = pieces[c.to];
      const Piece& from = pieces[c.from];
      const DeviceStreams& dev = device_streams[from.device_index];
      const CUstream stream = streams != nullptr ? streams[from.device_index] : dev.stream;
      std::optional<detail::ContextScope> other;  // the caller's context is the first device's
      if (from.device_index != 0) other.emplace(dev.device);
      const detail::CUdeviceptr dst = to.device_address + (c.begin - to.file_offset);
      if (c.from_host()) {
        check(d.cuMemcpyHtoDAsync(dst, source(c.begin), c.end - c.begin, stream),
              "cuMemcpyHtoDAsync (a copy to device " + std::to_string(dev.device) + ")");
        if (used) (*used)[from.device_index] = 1;
      } else {
        check(d.cuMemcpyAsync(dst, from.device_address + (c.begin - from.file_offset), c.end - c.begin, stream),
              "cuMemcpyAsync (device " + std::to_string(dev.device) + " to device " +
                  std::to_string(device_streams[to.device_index].device) + ")");
        exchanged.fetch_add(c.end - c.begin, std::memory_order_relaxed);
      }
    }
  }

  struct Run;  // one load's staging and registration (below)

  // Sorts a load's chunks by kind. Asking the kernel which pages are cached
  // costs about 30 ms per 4 GiB of 4 KiB folios with mincore (it looks each
  // page up; cachestat, asked first, walks the page cache once: about 2x
  // faster), so a large load asks with the crew's threads, all at once,
  // before the workers start.
  ChunkKinds classify(const MappedFile& file, const std::vector<Need>& needs) {
    std::vector<char> resident(needs.size(), 0);
    auto classify_range = [&](std::size_t begin, std::size_t end) {
      for (std::size_t n = begin; n < end; ++n) {
        const Need& need = needs[n];
        if (file.chunks[need.chunk] == MappedFile::Chunk::registered) continue;
        resident[n] = file.cached_fraction(need.lo, need.hi - need.lo) >= 0.9;
      }
      return 0;
    };
    if (crew || needs.size() > kParallelClassify) {
      ensure_crew();
      detail::loader_probe_step("crew ready");
      (void)crew->run(needs.size(), classify_range);
    } else {
      classify_range(0, needs.size());
    }
    ChunkKinds kinds;
    for (std::size_t n = 0; n < needs.size(); ++n) {
      if (file.chunks[needs[n].chunk] == MappedFile::Chunk::registered) {
        kinds.registered.push_back(n);
      } else {
        (resident[n] ? kinds.cached : kinds.uncached).push_back(n);
      }
    }
    return kinds;
  }

  // Copies the part of every piece of `need` that lies in [begin, end) of the
  // file from `source(offset)`, on each piece's device: on streams[device
  // index] when given (and marks that device in `used`), else on its
  // DeviceStreams' stream. Called under the first device's context.
  template <class Source>
  void copy_parts(const detail::Driver& d, const std::vector<Piece>& pieces, const Need& need, std::uint64_t begin,
                  std::uint64_t end, const CUstream* streams, std::vector<char>* used, Source&& source) const {
    std::vector<std::size_t> host_route;  // with exchange: the pieces it leaves to the host route
    if (exchange) exchange_parts(d, pieces, need, begin, end, streams, used, source, host_route);
    for (std::size_t i : exchange ? host_route : need.pieces) {
      const Piece& p = pieces[i];
      const DeviceStreams& dev = device_streams[p.device_index];
      const CUstream stream = streams != nullptr ? streams[p.device_index] : dev.stream;
      std::optional<detail::ContextScope> other;  // the caller's context is the first device's
      if (p.device_index != 0) other.emplace(dev.device);
      const std::string what = "a copy to device " + std::to_string(dev.device);
      // One range: [b, e) of row r, wherever the row meets [begin, end).
      auto copy_row_part = [&](std::uint64_t r) {
        const std::uint64_t row = p.file_offset + r * p.file_pitch;
        const std::uint64_t b = std::max<std::uint64_t>(begin, row);
        const std::uint64_t e = std::min<std::uint64_t>(end, row + p.width);
        if (b >= e) return;
        check(d.cuMemcpyHtoDAsync(p.device_address + r * p.device_pitch + (b - row), source(b), e - b, stream),
              "cuMemcpyHtoDAsync (" + what + ")");
        if (used) (*used)[p.device_index] = 1;
      };
      if (p.rows == 1) {
        copy_row_part(0);
        continue;
      }
      // Rows wholly inside [begin, end) in one strided copy, and at most one
      // cut row at either edge.
      const std::uint64_t full_first =
          begin <= p.file_offset ? 0 : (begin - p.file_offset + p.file_pitch - 1) / p.file_pitch;
      const std::uint64_t full_end =
          end < p.file_offset + p.width
              ? 0
              : std::min<std::uint64_t>(p.rows, (end - p.file_offset - p.width) / p.file_pitch + 1);
      if (full_first < full_end) {
        detail::Memcpy2D c;
        c.srcMemoryType = detail::kMemoryTypeHost;
        c.srcHost = source(p.file_offset + full_first * p.file_pitch);
        c.srcPitch = p.file_pitch;
        c.dstMemoryType = detail::kMemoryTypeDevice;
        c.dstDevice = p.device_address + full_first * p.device_pitch;
        c.dstPitch = p.device_pitch;
        c.WidthInBytes = p.width;
        c.Height = full_end - full_first;
        check(d.cuMemcpy2DAsync(&c, stream), "cuMemcpy2DAsync (" + what + ")");
        if (used) (*used)[p.device_index] = 1;
      }
      if (full_first > 0) copy_row_part(full_first - 1);
      if (full_end < p.rows && full_end + 1 != full_first) copy_row_part(full_end);
    }
  }
};

Loader::Loader(int device, const CopyOptions& options) : Loader(std::span<const int>(&device, 1), options) {}

Loader::Loader(std::span<const int> devices, const CopyOptions& options) : state_(std::make_unique<State>()) {
  const detail::Driver& d = detail::driver();
  if (devices.empty()) throw Error(Errc::invalid_argument, 0, "unimem: gpu::Loader: no device given");
  for (std::size_t i = 0; i < devices.size(); ++i) {
    if (devices[i] < 0 || devices[i] >= d.device_count) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: gpu::Loader: there is no CUDA device " + std::to_string(devices[i]) + " (the driver sees " +
                      std::to_string(d.device_count) + ")");
    }
    if (std::find(devices.begin(), devices.begin() + static_cast<std::ptrdiff_t>(i), devices[i]) !=
        devices.begin() + static_cast<std::ptrdiff_t>(i)) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: gpu::Loader: device " + std::to_string(devices[i]) + " is named twice");
    }
  }
  State& s = *state_;
  s.devices.assign(devices.begin(), devices.end());
  s.options = options;
  s.options.slots = std::max(1u, options.slots);
  const std::size_t page = Block::page_size();
  if (options.chunk_bytes > (std::size_t{1} << 30) || options.slots > 64) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: gpu::Loader: chunk_bytes above 1 GiB or more than 64 slots (" +
                    std::to_string(options.chunk_bytes) + " x " + std::to_string(options.slots) + ")");
  }
  s.chunk = std::max<std::size_t>(options.chunk_bytes / page * page, page);
  if (options.staging != nullptr) {
    if (!options.staging->gpu_visible()) {
      throw Error(Errc::invalid_argument, 0, "unimem: gpu::Loader: the staging Block is not GPU-visible");
    }
    s.chunk = std::min(s.chunk, options.staging->size() / s.options.slots / page * page);
    if (s.chunk == 0) throw Error(Errc::invalid_argument, 0, "unimem: gpu::Loader: the staging Block is too small");
    s.staging = options.staging;
  }
  try {
    for (int device : s.devices) {
      detail::ContextScope context(device);
      State::DeviceStreams& dev = s.device_streams.emplace_back();
      dev.device = device;
      dev.events.assign(s.options.slots, nullptr);
      check(d.cuStreamCreate(&dev.stream, detail::kStreamNonBlocking), "cuStreamCreate");
      check(d.cuStreamCreate(&dev.staging_stream, detail::kStreamNonBlocking), "cuStreamCreate");
      for (auto& e : dev.events) check(d.cuEventCreate(&e, detail::kEventDisableTiming), "cuEventCreate");
    }
    if (options.peer_exchange && s.devices.size() > 1) {
      s.exchange_off = s.enable_peer_access();
      s.exchange = s.exchange_off.empty();
    }
  } catch (...) {
    s.destroy_device_streams();
    throw;
  }
}

Loader::~Loader() {
  if (!state_) return;
  if (state_->forked.forked()) {  // nothing of the parent's is released here (see State::forked)
    (void)state_.release();       // NOLINT(bugprone-unused-return-value): let go, on purpose
    return;
  }
  State& s = *state_;
  try {
    detail::ContextScope context(s.devices.front());
    s.files.clear();  // unregisters
  } catch (...) {     // no context: nothing more can be released
  }
  s.destroy_device_streams();
}

void Loader::release() noexcept {
  if (state_->forked.forked()) return;
  std::lock_guard hold(state_->lock);
  try {
    detail::ContextScope context(state_->devices.front());
    state_->files.clear();
  } catch (...) {
  }
}

std::size_t Loader::registered_bytes() const noexcept {
  if (state_->forked.forked()) return 0;  // the lock may have been copied held (see State::forked)
  std::lock_guard hold(state_->lock);
  std::size_t n = 0;
  for (const auto& f : state_->files) n += f->registered_bytes;
  return n;
}

int Loader::device() const noexcept { return state_->devices.front(); }

std::span<const int> Loader::devices() const noexcept { return state_->devices; }

// One load's staging and registration, once its chunks are planned and
// classified: what the loading thread, the stager thread and the crew's
// workers share while the load runs, and the step each of them runs.
struct Loader::State::Run {
  State& s;
  const detail::Driver& d;
  const std::string& path;
  MappedFile& file;
  const std::vector<Piece>& pieces;
  const std::vector<Need>& needs;
  const std::vector<std::size_t>& cached;  // indices into needs
  unimem::detail::LoadProgress& progress;

  Run(State& state, const detail::Driver& driver, const std::string& file_path, MappedFile& mapped,
      const std::vector<Piece>& load_pieces, const std::vector<Need>& load_needs,
      const std::vector<std::size_t>& cached_needs, unimem::detail::LoadProgress& load_progress)
      : s(state),
        d(driver),
        path(file_path),
        file(mapped),
        pieces(load_pieces),
        needs(load_needs),
        cached(cached_needs),
        progress(load_progress) {
    cut_slices();  // before any thread can claim
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  std::atomic<bool> stop{false};
  std::atomic<std::size_t> in_place{0}, newly_registered{0}, staged{0}, staged_buffered{0};
  ReadPath staged_path = ReadPath::direct_async;
  std::string staged_reason;
  std::optional<FileReader> reader;  // for chunks not in the page cache

  // Cached chunks registered in place by the loading thread (chunk by chunk
  // from the front of the file) while the workers stage slices from the
  // back; without registration the workers take every slice in file order.
  // Set by load() before it starts any thread.
  bool register_cached = false;
  struct Slice {
    std::size_t need;
    std::uint64_t begin, end;
  };
  std::vector<Slice> slices;  // the cached chunks' ranges cut into worker slots, in file order
  std::vector<std::size_t> first_slice = std::vector<std::size_t>(1, 0);  // of cached[i]: .. first_slice[i + 1]
  std::mutex claims;
  std::size_t front = 0;       // cached[front] is the next chunk to register
  std::size_t back = 0;        // slices[.. back) are unclaimed
  std::size_t next_slice = 0;  // without registration the workers take slices in file order
  std::atomic<std::uint64_t> worker_bytes{0};
  // > 0: register_chunks stops registering, once it has registered a chunk's
  // worth, when its registrations run below this rate (bytes/s), and sets
  // stopped_registering. Set by load() before it starts any thread.
  double registration_bar = 0;
  bool stopped_registering = false;
  std::mutex errors;
  std::exception_ptr staging_error;
  double workers_made_ms = -1;  // the longest a worker took to make its slots and streams in this load

  template <class Source>
  void copy_parts(const Need& need, std::uint64_t begin, std::uint64_t end, const CUstream* streams,
                  std::vector<char>* used, Source&& source) {
    s.copy_parts(d, pieces, need, begin, end, streams, used, source);
  }

  // Chunks an earlier load registered: DMA only, whatever the policy.
  void copy_registered(const std::vector<std::size_t>& registered) {
    for (std::size_t n : registered) {
      copy_parts(needs[n], needs[n].lo, needs[n].hi, nullptr, nullptr,
                 [&](std::uint64_t off) { return file.map.data() + off; });
      in_place += needs[n].hi - needs[n].lo;
      progress.add(needs[n].hi - needs[n].lo);
    }
  }

  // One chunk through the staging ring: read (pread for a cached chunk the
  // driver refused to register, FileReader for one not cached) into the
  // ring's next slot, then copied to every device that needs it.
  void stage(const Need& need, bool is_cached, std::size_t& uses) {
    const Block& ring = *s.staging;
    const std::size_t slot = uses++ % s.options.slots;
    // Always wait (a slot never recorded returns at once): after a staging
    // thread, this thread's first uses of the ring may find its copies running.
    for (const State::DeviceStreams& dev : s.device_streams)
      check(d.cuEventSynchronize(dev.events[slot]), "cuEventSynchronize");
    std::byte* dest = ring.data() + slot * s.chunk;
    const std::size_t n = static_cast<std::size_t>(need.hi - need.lo);
    if (is_cached) {
      // A chunk the driver refused to register: pread by this thread (the
      // crew may be staging meanwhile), not a copy out of the mapping: a file
      // truncated meanwhile is then an error, not SIGBUS.
      if (const int err = file.reader.read_at(dest, n, need.lo); err != 0) {
        throw Error(Errc::system, err > 0 ? err : 0,
                    "unimem: gpu::Loader: " + path +
                        (err > 0 ? " could not be read: " + unimem::detail::errno_text(err)
                                 : " ended early (it shrank while it was loaded)"));
      }
      staged_path = ReadPath::buffered_threads;
      staged_reason = "in the page cache, its registration refused: copied out of it into pinned staging";
      staged_buffered += n;
    } else {
      if (!reader) reader.emplace(path, s.options.read);  // opened once per load
      const ReadReport r = reader->read(need.lo, {dest, n});
      staged_path = r.path;
      if (staged_reason.empty()) staged_reason = r.fallback_reason;
      staged_buffered += r.buffered_bytes;
    }
    std::vector<char> used(s.device_streams.size(), 0);
    std::vector<CUstream> staging_streams;
    for (const State::DeviceStreams& dev : s.device_streams) staging_streams.push_back(dev.staging_stream);
    copy_parts(need, need.lo, need.hi, staging_streams.data(), &used,
               [&](std::uint64_t off) { return dest + (off - need.lo); });
    for (std::size_t l = 0; l < s.device_streams.size(); ++l) {
      if (used[l])
        check(d.cuEventRecord(s.device_streams[l].events[slot], s.device_streams[l].staging_stream), "cuEventRecord");
    }
    staged += n;
    progress.add(n);
  }

  // Cuts the cached chunks into worker slices. From the constructor: the
  // claims below read them.
  // Slices end on multiples of their size in the file, so that with peer
  // exchange (4 MiB granules) a slice goes whole to one device.
  void cut_slices() {
    static_assert(State::kWorkerSlotBytes == State::kExchangeGranule);
    for (std::size_t n : cached) {
      for (std::uint64_t b = needs[n].lo, e; b < needs[n].hi; b = e) {
        e = std::min<std::uint64_t>((b / State::kWorkerSlotBytes + 1) * State::kWorkerSlotBytes, needs[n].hi);
        slices.push_back({n, b, e});
      }
      first_slice.push_back(slices.size());
    }
    back = slices.size();
  }

  std::optional<std::size_t> claim_chunk() {  // a whole chunk no worker touched
    std::lock_guard hold(claims);
    if (front == cached.size() || first_slice[front + 1] > back) return std::nullopt;
    return cached[front++];
  }

  std::optional<Slice> claim_slice() {
    std::lock_guard hold(claims);
    if (!register_cached) return next_slice < slices.size() ? std::optional<Slice>(slices[next_slice++]) : std::nullopt;
    if (back == first_slice[front]) return std::nullopt;
    return slices[--back];
  }

  void fail_staging() {
    std::lock_guard hold(errors);
    if (!staging_error) staging_error = std::current_exception();
    stop = true;
  }

  // The workers' part: every crew thread takes slices until none is left.
  void run_workers() {
    try {
      s.ensure_workers();
    } catch (...) {
      fail_staging();
      return;
    }
    const std::size_t device_streams = s.device_streams.size();
    if (detail::LoaderProbe* probe = detail::loader_probe()) probe->workers_starting();
    (void)s.crew->run(s.crew->threads(), [&](std::size_t w, std::size_t) {
      try {
        detail::ContextScope worker_context(s.devices.front());
        State::Worker& mine = s.workers[w];
        detail::LoaderProbe* const probe = detail::loader_probe();  // timed only when one is set
        using Clock = std::chrono::steady_clock;
        Clock::time_point began, waited, read;
        std::vector<char> used(device_streams);
        for (std::size_t use = 0; !stop; ++use) {
          const std::optional<Slice> slice = claim_slice();
          if (!slice) break;
          // Made on the worker's first slice, not before: a worker with none costs nothing.
          if (mine.slots == nullptr) {
            const State::WorkerTimes times = s.make_worker(w);
            const double made = times.total();
            if (probe) probe->worker_made(w, made, times.streams, times.backing, times.registering);
            std::lock_guard hold(errors);
            workers_made_ms = std::max(workers_made_ms, made * 1e3);
          }
          std::byte* const slots = mine.slots;
          const std::size_t k = use % State::kWorkerSlots;
          if (probe) began = Clock::now();
          for (std::size_t l = 0; l < device_streams; ++l) {
            check(d.cuEventSynchronize(mine.events[k * device_streams + l]), "cuEventSynchronize");
          }
          if (probe) waited = Clock::now();
          const Need& need = needs[slice->need];
          if (slice->begin == need.lo || slice->end == need.hi) detail::loader_probe_before(need.chunk);
          std::byte* const dest = slots + k * State::kWorkerSlotBytes;
          const auto n = static_cast<std::size_t>(slice->end - slice->begin);
          // pread, not a copy out of the mapping: a file truncated meanwhile
          // is then an error, not SIGBUS.
          if (const int err = file.reader.read_at(dest, n, slice->begin); err != 0) {
            throw Error(Errc::system, err > 0 ? err : 0,
                        "unimem: gpu::Loader: " + path +
                            (err > 0 ? " could not be read: " + unimem::detail::errno_text(err)
                                     : " ended early (it shrank while it was loaded)"));
          }
          if (probe) read = Clock::now();
          std::fill(used.begin(), used.end(), 0);
          copy_parts(need, slice->begin, slice->end, mine.streams.data(), &used,
                     [&](std::uint64_t off) { return dest + (off - slice->begin); });
          for (std::size_t l = 0; l < device_streams; ++l) {
            if (used[l]) check(d.cuEventRecord(mine.events[k * device_streams + l], mine.streams[l]), "cuEventRecord");
          }
          worker_bytes += n;
          progress.add(n);
          if (probe) {
            using Seconds = std::chrono::duration<double>;
            probe->staged_slice(w, Seconds(waited - began).count(), Seconds(read - waited).count(),
                                Seconds(Clock::now() - read).count());
          }
        }
      } catch (...) {
        fail_staging();
      }
      return 0;
    });
  }

  // The disk's chunks, through the staging ring (on a thread of its own).
  void stage_uncached(const std::vector<std::size_t>& uncached) {
    try {
      detail::ContextScope worker_context(s.devices.front());
      s.ensure_staging();
      std::size_t uses = 0;
      for (std::size_t n : uncached) {
        if (stop) return;
        stage(needs[n], false, uses);
      }
    } catch (...) {
      fail_staging();
    }
  }

  // The loading thread's part when registering: claims whole chunks from the
  // front and registers them in place, staging those the driver refuses.
  void register_chunks(std::optional<std::thread>& stager) {
    std::size_t uses = 0;      // ring slots for chunks the driver refuses to register
    double registering_s = 0;  // this load's registrations, for registration_bar
    std::size_t registered_now = 0;
    while (!stop) {
      const std::optional<std::size_t> n = claim_chunk();
      if (!n) break;
      const Need& need = needs[*n];
      const auto began = std::chrono::steady_clock::now();  // the probe's time counts: the tests slow it so
      detail::loader_probe_before(need.chunk);
      if (!file.register_chunk(need.chunk)) {
        if (stager) stager->join();  // the ring is the stager's until it is done
        stager.reset();
        if (stop) break;
        s.ensure_staging();
        stage(need, true, uses);
        continue;
      }
      registering_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
      registered_now += file.chunk_length(need.chunk);
      newly_registered += file.chunk_length(need.chunk);
      copy_parts(need, need.lo, need.hi, nullptr, nullptr, [&](std::uint64_t off) { return file.map.data() + off; });
      in_place += need.hi - need.lo;
      progress.add(need.hi - need.lo);
      // Whole chunks registering slower than the bar, although the trial
      // passed (16 MiB at the file's start need not be like the rest): stop;
      // the workers stage what is left, and later loads stage the file.
      if (registration_bar > 0 && registered_now >= s.chunk &&
          static_cast<double>(registered_now) / registering_s < registration_bar) {
        file.registration_rate = static_cast<double>(registered_now) / registering_s;
        stopped_registering = true;
        return;
      }
    }
  }

  // After every thread is joined: what the workers staged, in the counts and the reason.
  void count_workers() {
    if (worker_bytes == 0) return;
    staged += worker_bytes;
    staged_buffered += worker_bytes;
    staged_path = ReadPath::buffered_threads;
    staged_reason = "in the page cache: copied out of it by " + std::to_string(s.workers.size()) +
                    " threads, each into pinned slots of its own";
    if (workers_made_ms >= 0) {
      char made[64];
      std::snprintf(made, sizeof made, " (made by this load, each worker its own, in at most %.1f ms)",
                    workers_made_ms);
      staged_reason += made;
    }
  }
};

namespace {
// Times registering part of `file` (MappedFile::time_registration) inside a
// cached range the load asks for: page-aligned, wholly in the page cache
// (a page read from the disk inside the timing would time the disk), at
// most kProbeBytes. Returns whether it timed (false: no such range).
bool time_registration_in(MappedFile& file, const std::vector<Need>& needs, const std::vector<std::size_t>& cached) {
  const std::uint64_t page = Block::page_size();
  for (std::size_t n : cached) {
    const Need& need = needs[n];
    if (file.chunks[need.chunk] != MappedFile::Chunk::unregistered) continue;
    const std::uint64_t begin = (need.lo + page - 1) / page * page;
    const std::uint64_t end = std::min<std::uint64_t>(need.hi / page * page, begin + MappedFile::kProbeBytes);
    if (end <= begin || end - begin < MappedFile::kMinProbeBytes) continue;
    if (file.cached_fraction(begin, end - begin) < 1.0) continue;
    file.time_registration(begin, static_cast<std::size_t>(end - begin));
    return true;
  }
  return false;
}
}  // namespace

ReadReport Loader::load(const std::string& path, std::span<const DeviceSegment> segments, const LoadOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  State& s = *state_;
  if (s.forked.forked()) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: gpu::Loader::load in a fork() child of the process that made the Loader: its streams and "
                "registrations are the parent's (make a Loader in this process)");
  }
  std::lock_guard hold(s.lock);
  const detail::Driver& d = detail::driver();
  s.exchanged = 0;  // an earlier load that threw may have left a count

  const std::vector<Piece> pieces = merge(segments, s.devices);
  ReadReport report;
  if (pieces.empty()) return report;
  const platform::FileIdentity id = platform::file_identity(path);
  report.bytes = checked_bytes(pieces, id.size, path);

  // Registrations are made under the first device's context, PORTABLE: every
  // context may copy from them.
  detail::ContextScope context(s.devices.front());
  MappedFile& file = s.mapped(path, id);
  detail::loader_probe_step("mapped");
  const std::vector<Need> needs = plan_chunks(pieces, s.chunk, file.chunks.size(), id.size);
  const ChunkKinds kinds = s.classify(file, needs);
  detail::loader_probe_step("classified");
  const std::vector<std::size_t>& registered = kinds.registered;
  const std::vector<std::size_t>& cached = kinds.cached;
  const std::vector<std::size_t>& uncached = kinds.uncached;

  std::uint64_t needed = 0;
  for (const Need& need : needs) needed += need.hi - need.lo;
  unimem::detail::LoadProgress progress(options.progress, needed);

  // Whatever happens below, every stream is drained before this returns.
  struct Drain {
    const detail::Driver& d;
    std::vector<State::DeviceStreams>& device_streams;
    std::vector<State::Worker>& workers;
    ~Drain() {
      for (const State::DeviceStreams& dev : device_streams) {
        d.cuStreamSynchronize(dev.stream);
        d.cuStreamSynchronize(dev.staging_stream);
      }
      for (const State::Worker& w : workers) {
        for (CUstream stream : w.streams) d.cuStreamSynchronize(stream);
      }
    }
  } drain{d, s.device_streams, s.workers};

  // Declared between `drain` and `join`: on any throw the threads are joined
  // first, then the run (its FileReader) goes, then the streams are drained.
  State::Run run(s, d, path, file, pieces, needs, cached, progress);
  run.copy_registered(registered);

  // Cached chunks: registered in place by this thread (chunk by chunk from
  // the front of the file) where the policy says so, and staged by the
  // workers (slice by slice from the back), both at once by default; the two
  // meet where their rates on this machine and file put the line. A load of
  // little cached data before any worker exists registers it: making the
  // workers' slots would cost more than it saves.
  std::uint64_t cached_bytes = 0;
  for (std::size_t n : cached) cached_bytes += needs[n].hi - needs[n].lo;
  const PageCacheRegistration policy = s.options.register_page_cache;
  const bool small = !s.any_worker_made() && cached_bytes <= kSmallLoad && policy != PageCacheRegistration::never;
  // On a reload, registering must run near the rate staging reached on the
  // file (kRegisterAtLeast): it is timed once per file (time_registration_in;
  // a page cache of 4 KiB folios registers at a fifth to a third of that
  // rate, large folios near it), and below the bar the file stays staged;
  // register_chunks then times every chunk against the same bar. A large
  // load with no staging rate yet (the file's first load came from the
  // disk, or was small) is staged, and sets one.
  bool reloading = policy == PageCacheRegistration::on_reload && file.loads != 0 && !options.drop_page_cache;
  if (reloading && !small && file.staged_rate == 0 && cached_bytes >= kRateSample) reloading = false;
  bool timed_now = false;
  if (reloading && !small && file.staged_rate > 0 && file.registration_rate == 0) {
    timed_now = time_registration_in(file, needs, cached);
  }
  const double bar = kRegisterAtLeast * file.staged_rate;  // 0 while the file has no staging rate
  if (reloading && file.registration_rate != 0 && file.registration_rate < bar) reloading = false;
  // Pages registered (pinned) could not be dropped afterwards.
  run.register_cached = !options.drop_page_cache && (small || policy == PageCacheRegistration::always || reloading);
  if (reloading && !small) run.registration_bar = bar;
  const bool workers_stage = !cached.empty() && (!run.register_cached || (s.options.both_routes && !small));

  // The disk's chunks, through the staging ring on a thread of their own
  // (FileReader: O_DIRECT where allowed), while the page cache's move.
  if (workers_stage || !uncached.empty() || run.registration_bar > 0) {
    s.ensure_crew();  // here: the threads below would race to make it
    detail::loader_probe_step("crew");
  }
  std::optional<std::thread> stager, staffing;
  if (!uncached.empty()) stager.emplace([&] { run.stage_uncached(uncached); });
  struct Join {
    std::optional<std::thread>& a;
    std::optional<std::thread>& b;
    std::atomic<bool>& stop;
    ~Join() {
      for (auto* t : {&a, &b}) {
        if (*t && (*t)->joinable()) {
          stop = true;
          (*t)->join();
        }
      }
    }
  } join{stager, staffing, run.stop};
  const auto staging_began = std::chrono::steady_clock::now();
  if (!run.register_cached) {
    if (workers_stage) run.run_workers();  // this thread is one of them
  } else {
    if (workers_stage) staffing.emplace([&] { run.run_workers(); });
    run.register_chunks(stager);
    // Registering proved slower: the workers stage what it left (from the
    // back, as beside registrations), this thread one of them.
    if (run.stopped_registering && !workers_stage && !run.stop) run.run_workers();
  }
  for (auto* t : {&stager, &staffing}) {
    if (*t) (*t)->join();
    t->reset();
  }
  if (run.staging_error) std::rethrow_exception(run.staging_error);
  run.count_workers();
  for (const State::Worker& w : s.workers) {
    for (CUstream stream : w.streams) check(d.cuStreamSynchronize(stream), "cuStreamSynchronize");
  }
  for (const State::DeviceStreams& dev : s.device_streams) {
    check(d.cuStreamSynchronize(dev.stream), "cuStreamSynchronize");
    check(d.cuStreamSynchronize(dev.staging_stream), "cuStreamSynchronize");
  }
  progress.finish();
  ++file.loads;
  if (!run.register_cached && uncached.empty() && run.worker_bytes >= kRateSample) {
    // Net of making the workers (on a first load they start over up to
    // 16 ms: half of that, the mean worker's wait, is taken off): the rate
    // of the route, which a reload compares with.
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - staging_began).count();
    const double net = std::max(seconds - std::max(run.workers_made_ms, 0.0) / 2e3, seconds / 2);
    file.staged_rate = std::max(file.staged_rate, static_cast<double>(run.worker_bytes) / net);
  }
  if (options.drop_page_cache) {
    // Released and unmapped first: the kernel drops no page that is pinned
    // or mapped. Advice only: a refusal changes nothing loaded.
    platform::ReadableFile reader = std::move(file.reader);
    // Every mapping of the same file goes, under whatever path it was loaded
    // (`file`, and run.file, dangle from here: nothing below may use them).
    std::erase_if(s.files, [&](const std::unique_ptr<MappedFile>& f) {
      return f->identity.device == id.device && f->identity.inode == id.inode;
    });
    for (const Need& need : needs) (void)reader.drop_cached(need.lo, need.hi - need.lo);
  }

  report.buffered_bytes = std::min<std::uint64_t>(report.bytes, run.in_place + run.staged_buffered);
  report.path = run.in_place != 0 ? ReadPath::page_cache_registered : run.staged_path;
  if (run.in_place != 0) {
    report.fallback_reason = describe(run.in_place, run.newly_registered, run.staged, run.staged_path);
  } else {
    report.fallback_reason = run.staged_reason;
  }
  auto add_reason = [&](const std::string& why) {
    report.fallback_reason += (report.fallback_reason.empty() ? "" : "; ") + why;
  };
  if (timed_now) {
    char rate[64], why[240];
    if (std::isinf(file.registration_rate)) {
      std::snprintf(rate, sizeof rate, "too fast to tell from the driver's cost per call");
    } else if (file.registration_rate < 0) {
      std::snprintf(rate, sizeof rate, "refused by the driver");
    } else {
      std::snprintf(rate, sizeof rate, "%.3g GB/s", file.registration_rate / 1e9);
    }
    std::snprintf(why, sizeof why, "registering this file timed at %s, against the %.1f GB/s staging reached on it: %s",
                  rate, file.staged_rate / 1e9,
                  run.register_cached && !run.stopped_registering ? "registered, for DMA alone from the next load on"
                                                                  : "staged, as later loads of it will be");
    add_reason(why);
  }
  if (run.stopped_registering) {
    char why[200];
    std::snprintf(why, sizeof why,
                  "its chunks registered at %.3g GB/s, below %.0f%% of the %.1f GB/s staging reached on it: the "
                  "rest staged, as later loads of it will be",
                  file.registration_rate / 1e9, kRegisterAtLeast * 100, file.staged_rate / 1e9);
    add_reason(why);
  }
  if (!s.exchange_off.empty()) add_reason("no peer exchange: " + s.exchange_off);
  if (const std::uint64_t x = s.exchanged.exchange(0); x != 0) {
    add_reason("peer exchange: " + unimem::detail::format_bytes(x) + " copied GPU to GPU");
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

ReadReport copy_file_to_device(const std::string& path, std::span<const DeviceSegment> segments, int device,
                               const CopyOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  Loader loader(device, options);
  ReadReport r = loader.load(path, segments);
  loader.release();  // nothing stays registered after the call: count it
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace unimem::gpu
