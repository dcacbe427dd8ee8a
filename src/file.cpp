// src/file.cpp — FileReader and read_file: which route a read takes, and the report.
//
// The portable half of file reading (file.hpp). It owns the reader's state
// (what was set up on first need and kept, and why something could not be),
// the small-read shortcut, the page-cache rule (a range 90% cached is read
// through the cache: the direct route would go to the disk, many times
// slower), the choice between the async queue and threads and of the
// threads' count, the fallback reasons and the report. read_plan.cpp cuts a
// read into chunks; the platform's executor (platform/read.hpp; Linux:
// platform/linux/read.cpp) opens the file and carries the chunks out. So
// every platform takes the same decisions and reports them in the same form;
// only the words of its refusals are its own.
#include <algorithm>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "platform/read.hpp"
#include "read_plan.hpp"
#include "unimem/file.hpp"

namespace unimem {

const char* to_string(ReadPath path) noexcept {
  switch (path) {
    case ReadPath::direct_async:
      return "direct_async";
    case ReadPath::buffered_async:
      return "buffered_async";
    case ReadPath::direct_threads:
      return "direct_threads";
    case ReadPath::buffered_threads:
      return "buffered_threads";
    case ReadPath::page_cache_registered:
      return "page_cache_registered";
  }
  return "unknown";
}

namespace {

// The threads of the threaded route. A thread in a direct read waits on the
// device, not on a core: keep as many reads in flight as the async queue
// would (queue_depth), or a machine with few cores leaves the disk idle (2
// cores, a cold file: 0.55x the ring's rate). Buffered reads are copies from
// the page cache: a thread per core. Never more threads than chunks.
unsigned reading_threads(const ReadOptions& o, const std::vector<detail::ReadChunk>& chunks, bool any_direct) {
  const unsigned threads = o.threads    ? o.threads
                           : any_direct ? std::clamp(o.queue_depth, 1u, 64u)
                                        : std::min(16u, std::max(1u, std::thread::hardware_concurrency()));
  return static_cast<unsigned>(std::min<std::size_t>(threads, std::max<std::size_t>(1, chunks.size())));
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

double page_cache_fraction(const std::string& path, std::uint64_t begin, std::uint64_t end) {
  const platform::ReadExecutor file(path);
  return file.cached_fraction(begin, end);
}

std::uint64_t file_size(const std::string& path) { return platform::size_at(path); }

struct FileReader::State {
  std::string path;
  ReadOptions options;
  std::mutex lock;  // one read at a time
  std::unique_ptr<platform::ReadExecutor> file;
  // The direct route: set up on the first read that wants it.
  bool direct_probed = false;
  bool direct = false;
  std::string no_direct;  // why direct is false
  // The async queue: set up on the first read that wants it, and again after
  // a read dropped it (has_async() false while no_async is empty).
  std::string no_async;  // why the platform refused it; then never asked again
};

FileReader::FileReader(const std::string& path, const ReadOptions& options) : state_(std::make_unique<State>()) {
  if (options.chunk_bytes > detail::kMaxReadChunk) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: read_file: ReadOptions::chunk_bytes is " + std::to_string(options.chunk_bytes) +
                    "; it must be at most 1 GiB (" + std::to_string(detail::kMaxReadChunk) + ")");
  }
  state_->path = path;
  state_->options = options;
  state_->file = std::make_unique<platform::ReadExecutor>(path);
}

FileReader::~FileReader() = default;
FileReader::FileReader(FileReader&&) noexcept = default;
FileReader& FileReader::operator=(FileReader&&) noexcept = default;

std::uint64_t FileReader::size() const noexcept { return state_->file->size(); }
const std::string& FileReader::path() const noexcept { return state_->path; }

ReadReport FileReader::read(std::span<const ReadSegment> segments) {
  return read(segments, state_->options.progress);  // options never change after construction
}

ReadReport FileReader::read(std::span<const ReadSegment> segments,
                            const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const auto start = std::chrono::steady_clock::now();
  State& st = *state_;
  std::lock_guard hold(st.lock);
  platform::ReadExecutor& file = *st.file;
  ReadOptions options = st.options;
  options.progress = progress;
  ReadReport report;
  report.bytes = detail::check_segments(segments, size(), "read_file of " + st.path);
  // Small reads: a ring, a crew of threads and O_DIRECT alignment cost more
  // to set up than the read itself (a 3 MiB safetensors file: 6.6 ms through
  // them, 0.7 ms with read()). Read them in this thread through the cache.
  if (report.bytes <= options.small_read_bytes && !options.progress) {
    for (const ReadSegment& s : segments) file.read_buffered(s);
    report.buffered_bytes = report.bytes;
    report.path = ReadPath::buffered_threads;
    report.fallback_reason =
        "a small read (ReadOptions::small_read_bytes): pread through the page cache in the calling thread";
    report.seconds = seconds_since(start);
    return report;
  }
  // Direct, unless not asked for or the range is in the page cache (O_DIRECT
  // would bypass the cache and go to the disk, many times slower).
  std::string why;
  bool direct = false;
  if (!options.direct) {
    why = "O_DIRECT not asked for";
  } else {
    std::uint64_t lo = 0, hi = 0;
    detail::segment_span(segments, size(), lo, hi);
    if (const double cached = file.cached_fraction(lo, hi); cached >= 0.9) {
      why = "the file is in the page cache (" + std::to_string(static_cast<int>(cached * 100)) +
            "%): read from there, not the disk";
    } else {
      if (!st.direct_probed) {
        st.direct_probed = true;
        st.no_direct = file.open_direct();
        st.direct = st.no_direct.empty();
      }
      direct = st.direct;
      why = st.no_direct;
    }
  }
  const std::size_t chunk = std::max<std::size_t>(options.chunk_bytes / 4096 * 4096, 4096);
  std::vector<detail::ReadChunk> chunks =
      detail::plan_reads(segments, direct, file.direct_align(), chunk, report.buffered_bytes);
  const bool any_direct =
      std::any_of(chunks.begin(), chunks.end(), [](const detail::ReadChunk& c) { return c.direct; });
  if (direct && !any_direct && report.bytes != 0) why = "no piece is aligned for O_DIRECT";

  bool async = false;
  if (options.io_uring) {
    if (!file.has_async() && st.no_async.empty()) st.no_async = file.open_async(options.queue_depth);
    async = file.has_async();
    if (async) {
      file.run_async(chunks, options.progress, report.bytes);
    } else {
      why = why.empty() ? st.no_async : st.no_async + "; " + why;
    }
  } else {
    why = why.empty() ? "io_uring not asked for" : "io_uring not asked for; " + why;
  }
  if (!async) file.run_threads(chunks, reading_threads(options, chunks, any_direct), options.progress, report.bytes);
  report.path = async ? (any_direct ? ReadPath::direct_async : ReadPath::buffered_async)
                      : (any_direct ? ReadPath::direct_threads : ReadPath::buffered_threads);
  report.fallback_reason = report.path == ReadPath::direct_async ? "" : why;
  report.seconds = seconds_since(start);
  return report;
}

ReadReport FileReader::read(std::uint64_t offset, std::span<std::byte> dest) {
  const ReadSegment segment{offset, dest.data(), dest.size()};
  return read(std::span<const ReadSegment>(&segment, 1));
}

ReadReport read_file(const std::string& path, std::span<const ReadSegment> segments, const ReadOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  FileReader reader(path, options);
  ReadReport r = reader.read(segments);
  r.seconds = seconds_since(start);
  return r;
}

ReadReport read_file(const std::string& path, std::uint64_t offset, std::span<std::byte> dest,
                     const ReadOptions& options) {
  const ReadSegment segment{offset, dest.data(), dest.size()};
  return read_file(path, std::span<const ReadSegment>(&segment, 1), options);
}

}  // namespace unimem
