// src/platform/linux/read.cpp — FileReader on Linux: io_uring + O_DIRECT, with fallbacks.
//
// A FileReader opens the file once, through the page cache. The first read
// that wants O_DIRECT probes the file system's direct-I/O alignment (statx
// STATX_DIOALIGN where the kernel reports it, 4 KiB otherwise) and opens the
// path a second time with O_DIRECT; the first read that wants io_uring makes
// the ring. All of it is kept for later reads. read_plan.cpp cuts each read
// into chunks: this file keeps queue_depth of them in flight with io_uring,
// or, where io_uring cannot be set up (old kernel, seccomp,
// io_uring_disabled), runs pread on threads over the same list. Short reads
// are resubmitted for the rest; a read of 0 bytes means the file shrank,
// which is an error.
//
// A submit the kernel refuses (EAGAIN, ENOMEM) leaves the reads it was
// given in the submission queue, where no API takes them back: the next
// submit would hand the kernel reads into this call's destinations (freed by
// then) with indices into this call's chunk list. So a ring left with
// unsubmitted entries is torn down after the call (once nothing is owed) and
// the next read makes a new one.
//
// An error never leaves a read in flight: the kernel writes into the
// destinations until a read completes, and io_uring_queue_exit only unmaps the
// ring (the kernel finishes the requests in the background), while the caller
// may free the destinations as soon as we throw (Safetensors::load gives them
// back to its Tape). So on any error the loop stops submitting, reaps every
// completion still owed, and only then throws; the ring is then empty and
// stays usable. The pread fallback joins its threads before it throws, for the
// same reason.
//
// Paths are opened only when they name a regular file (open_file.hpp): a FIFO
// would block the open forever.
//
// io_uring is compiled in only where the build found liburing
// (UNIMEM_HAVE_IO_URING, CMake's UNIMEM_IO_URING): without it every read takes
// the pread route, and the report says why.
#include <fcntl.h>
#if UNIMEM_HAVE_IO_URING
#include <liburing.h>
#endif
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "format.hpp"
#include "platform/io_uring_status.hpp"
#include "platform/linux/errc.hpp"
#include "platform/linux/open_file.hpp"
#include "platform/read_probe.hpp"
#include "read_plan.hpp"
#include "unimem/file.hpp"

namespace unimem {
namespace detail {
namespace {
thread_local ReadRingProbe* read_ring_probe = nullptr;
}  // namespace
void set_read_ring_probe(ReadRingProbe* probe) noexcept { read_ring_probe = probe; }
}  // namespace detail

namespace {

using detail::errno_text;

using Chunk = detail::ReadChunk;

[[noreturn]] void fail_open(const std::string& path, int err) {
  throw Error(platform::errc_of(err), err, "unimem: cannot open " + path + " for reading: " + errno_text(err));
}

// Opens `path` with `flags` if it is a regular file; throws otherwise.
platform::OpenedFile open_regular(const std::string& path, int flags) {
  platform::OpenedFile f = platform::open_regular_file(path.c_str(), flags);
  if (!f.regular) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: " + path + " is not a regular file (it is " + platform::file_kind(f.st.st_mode) +
                    "); unimem reads regular files only");
  }
  if (f.fd < 0) fail_open(path, f.err);
  return f;
}

// The fraction of the pages of [begin, end) of the file in the page cache
// (mincore over a read-only mapping of just that range: no I/O, a byte per
// page). O_DIRECT would bypass them and go to the disk, so a cached range is
// read through the cache instead.
double cached_fraction(int fd, std::uint64_t begin, std::uint64_t end) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  begin = begin / page * page;
  if (end <= begin) return 0;
  const std::size_t bytes = static_cast<std::size_t>(end - begin);
  void* m = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(begin));
  if (m == MAP_FAILED) return 0;
  std::vector<unsigned char> resident((bytes + page - 1) / page);
  double fraction = 0;
  if (::mincore(m, bytes, resident.data()) == 0) {
    std::size_t n = 0;
    for (unsigned char r : resident) n += r & 1;
    fraction = static_cast<double>(n) / static_cast<double>(resident.size());
  }
  ::munmap(m, bytes);
  return fraction;
}

[[noreturn]] void fail_read(const std::string& path, int err, std::uint64_t offset) {
  if (err == 0) {
    throw Error(Errc::system, 0,
                "unimem: " + path + " ended early at byte " + std::to_string(offset) + " (did it shrink?)");
  }
  throw Error(Errc::system, err,
              "unimem: reading " + path + " at byte " + std::to_string(offset) + " failed: " + errno_text(err));
}

// The descriptors a read uses.
struct Descriptors {
  int buffered;
  int direct;
};

#if UNIMEM_HAVE_IO_URING
// Runs the chunks on `ring` (of `depth` entries); on return nothing is in flight.
void run_io_uring(const std::string& path, io_uring& ring, unsigned depth, Descriptors f, std::vector<Chunk>& chunks,
                  const ReadOptions& o, std::uint64_t total) {
  detail::ReadRingProbe* const probe = detail::read_ring_probe;

  std::vector<std::size_t> pending;  // chunk indices still to submit (resubmits go last)
  pending.reserve(chunks.size());
  for (std::size_t i = chunks.size(); i-- > 0;) pending.push_back(i);
  // Reads prepared and not reaped. After a failed submit some of them may
  // still sit in the submission queue, where the kernel never saw them:
  // owed() counts only those the kernel took.
  unsigned inflight = 0;
  auto owed = [&] { return inflight - io_uring_sq_ready(&ring); };
  std::uint64_t done = 0;
  // The first error; once set, nothing more is submitted and the loop only
  // reaps what the kernel still owes.
  int error = -1;  // errno, 0 for "ended early"; -1: none
  std::uint64_t error_offset = 0;
  std::exception_ptr thrown;  // from the progress callback
  auto fail = [&](int err, std::uint64_t offset) {
    if (error < 0 && !thrown) {
      error = err;
      error_offset = offset;
    }
  };
  while (true) {
    const bool stopping = error >= 0 || thrown;
    if (!stopping) {
      while (inflight < depth && !pending.empty()) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        if (sqe == nullptr) break;
        const std::size_t i = pending.back();
        pending.pop_back();
        const Chunk& c = chunks[i];
        io_uring_prep_read(sqe, c.direct ? f.direct : f.buffered, c.dest, static_cast<unsigned>(c.bytes), c.offset);
        // A buffered read of cached data would otherwise be copied inline, one
        // at a time, by this thread: hand it to the kernel's workers instead.
        if (!c.direct) io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
        io_uring_sqe_set_data64(sqe, i);
        ++inflight;
      }
      if (inflight == 0) break;  // everything read
      int n = 0;
      if (probe && ++probe->submits == probe->fail_submit) {
        n = -probe->fail_submit_errno;
      } else {
        n = io_uring_submit_and_wait(&ring, 1);
      }
      if (n > 0 && probe) probe->submitted += static_cast<std::size_t>(n);
      if (n < 0 && n != -EINTR) fail(-n, 0);
    } else {
      if (owed() == 0) break;
      io_uring_cqe* cqe;
      if (const int err = io_uring_wait_cqe(&ring, &cqe); err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY) {
        // Cannot happen with a valid ring. Throwing would let the caller free
        // memory the kernel is still writing: stopping is the only safe way out.
        std::fprintf(stderr, "unimem: read_file cannot wait for %u reads of %s still in flight (%s); aborting\n",
                     owed(), path.c_str(), errno_text(-err).c_str());
        std::abort();
      }
    }
    io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      --inflight;
      if (probe) ++probe->reaped;
      if (error >= 0 || thrown) continue;  // stopping: only count what comes back
      const std::size_t i = io_uring_cqe_get_data64(cqe);
      Chunk& c = chunks[i];
      int res = cqe->res;
      if (probe && probe->reaped == probe->fail_completion) res = -probe->fail_errno;
      if (res == -EAGAIN || res == -EINTR) {
        pending.push_back(i);
        continue;
      }
      if (res <= 0) {
        fail(-res, c.offset);  // 0: the file ended early
        continue;
      }
      const auto n = static_cast<std::size_t>(res);
      done += n;
      if (n < c.bytes) {  // short read: the rest goes through the page cache
        c.direct = false;
        c.offset += n;
        c.dest += n;
        c.bytes -= n;
        pending.push_back(i);
      }
    }
    io_uring_cq_advance(&ring, seen);
    if (o.progress && error < 0 && !thrown) {
      try {
        o.progress(done, total);
      } catch (...) {
        thrown = std::current_exception();
      }
    }
  }
  if (thrown) std::rethrow_exception(thrown);
  if (error >= 0) fail_read(path, error, error_offset);
}
#endif  // UNIMEM_HAVE_IO_URING

// Reads one segment through the page cache with pread, in this thread.
void read_buffered(const std::string& path, int fd, const ReadSegment& s) {
  std::byte* dest = s.dest;
  std::uint64_t offset = s.file_offset;
  for (std::size_t left = s.bytes; left != 0;) {
    const ssize_t n = ::pread(fd, dest, left, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_read(path, errno, offset);
    if (n == 0) fail_read(path, 0, offset);  // the file shrank
    dest += n;
    offset += static_cast<std::uint64_t>(n);
    left -= static_cast<std::size_t>(n);
  }
}

void run_pread(const std::string& path, Descriptors f, const std::vector<Chunk>& chunks, const ReadOptions& o,
               std::uint64_t total) {
  // A thread in an O_DIRECT read waits on the device, not on a core: keep as
  // many reads in flight as the ring would (queue_depth), or a machine with
  // few cores leaves the disk idle (2 cores, a cold file: 0.55x the ring's
  // rate). Buffered reads are copies from the page cache: a thread per core.
  const bool any_direct = std::any_of(chunks.begin(), chunks.end(), [](const Chunk& c) { return c.direct; });
  unsigned threads = o.threads    ? o.threads
                     : any_direct ? std::clamp(o.queue_depth, 1u, 64u)
                                  : std::min(16u, std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<unsigned>(std::min<std::size_t>(threads, std::max<std::size_t>(1, chunks.size())));
  std::atomic<std::size_t> next{0};
  std::atomic<std::uint64_t> done{0};
  std::mutex error_lock;
  std::exception_ptr error;
  auto worker = [&] {
    try {
      for (std::size_t i; (i = next.fetch_add(1)) < chunks.size();) {
        Chunk c = chunks[i];
        while (c.bytes != 0) {
          const ssize_t n = ::pread(c.direct ? f.direct : f.buffered, c.dest, c.bytes, static_cast<off_t>(c.offset));
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) fail_read(path, errno, c.offset);
          if (n == 0) fail_read(path, 0, c.offset);
          c.direct = false;  // any rest of a short read goes through the page cache
          c.offset += static_cast<std::uint64_t>(n);
          c.dest += n;
          c.bytes -= static_cast<std::size_t>(n);
          done.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
        }
      }
    } catch (...) {
      std::lock_guard<std::mutex> hold(error_lock);
      if (!error) error = std::current_exception();
      next.store(chunks.size());
    }
  };
  // With a progress callback the calling thread reports while the others read.
  const unsigned readers = o.progress ? threads : threads - 1;
  std::vector<std::thread> pool;
  pool.reserve(readers);
  try {
    for (unsigned t = 0; t < readers; ++t) pool.emplace_back(worker);
  } catch (...) {
    // No more threads (RLIMIT_NPROC, a pids limit): read with those that started.
  }
  std::exception_ptr reporting;  // from the progress callback
  if (o.progress && !pool.empty()) {
    try {
      // Reported as reads complete, as the ring does: a (0, total) before any
      // byte arrived would follow a loader's earlier read (Safetensors::load
      // reads the header first) and make the count go backwards.
      std::uint64_t reported = 0;
      while (next.load() < chunks.size()) {
        if (const std::uint64_t d = done.load(); d != reported) {
          o.progress(d, total);
          reported = d;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    } catch (...) {
      reporting = std::current_exception();
      next.store(chunks.size());  // the readers stop after their current chunk
    }
  } else {
    worker();
  }
  for (auto& t : pool) t.join();  // no read is in flight past this line
  if (error) std::rethrow_exception(error);
  if (reporting) std::rethrow_exception(reporting);
  if (o.progress) o.progress(done.load(), total);
}

}  // namespace

double page_cache_fraction(const std::string& path, std::uint64_t begin, std::uint64_t end) {
  const int fd = open_regular(path, O_RDONLY).fd;
  const double f = cached_fraction(fd, begin, end);
  ::close(fd);
  return f;
}

std::uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail_open(path, errno);
  return static_cast<std::uint64_t>(st.st_size);
}

struct FileReader::State {
  std::string path;
  ReadOptions options;
  std::mutex lock;            // one read at a time
  platform::OpenedFile file;  // through the page cache
  // O_DIRECT: probed and opened on the first read that wants it.
  bool direct_probed = false;
  int direct = -1;
  std::size_t align = 4096;  // for offsets and addresses alike
  std::string no_direct;     // why direct is -1
  // io_uring: made on the first read that wants it.
  bool ring_tried = false;
  bool has_ring = false;
#if UNIMEM_HAVE_IO_URING
  io_uring ring{};
#endif
  unsigned depth = 0;
  std::string no_ring;  // why has_ring is false

  ~State() {
#if UNIMEM_HAVE_IO_URING
    if (has_ring) io_uring_queue_exit(&ring);
#endif
    if (direct >= 0) ::close(direct);
    if (file.fd >= 0) ::close(file.fd);
  }

  void probe_direct() {
    direct_probed = true;
#ifdef STATX_DIOALIGN
    struct statx sx {};
    if (::statx(file.fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
      if (sx.stx_dio_mem_align == 0) {
        no_direct = "the file system does not support O_DIRECT for this file";
        return;
      }
      align = std::max<std::size_t>({sx.stx_dio_mem_align, sx.stx_dio_offset_align, 512});
    }
#endif
    // A second open of the path: it must still name the same file.
    const platform::OpenedFile d = platform::open_regular_file(path.c_str(), O_RDONLY | O_DIRECT);
    if (d.fd >= 0 && (d.st.st_dev != file.st.st_dev || d.st.st_ino != file.st.st_ino)) {
      ::close(d.fd);
      no_direct = "the file was replaced after it was opened";
    } else if (d.fd >= 0) {
      direct = d.fd;
    } else if (!d.regular) {
      no_direct = "the file was replaced after it was opened";
    } else {
      no_direct = "O_DIRECT refused (" + errno_text(d.err) + ")";
    }
  }

  // After a read on the ring: a ring holding entries the kernel never took
  // (a refused submit) is dropped, so that they are never submitted.
#if UNIMEM_HAVE_IO_URING
  void drop_ring_if_dirty() noexcept {
    if (!has_ring || io_uring_sq_ready(&ring) == 0) return;
    io_uring_queue_exit(&ring);
    ring = io_uring{};
    has_ring = false;
    ring_tried = false;  // the next read that wants a ring makes a new one
  }
#endif

  void make_ring() {
    ring_tried = true;
#if !UNIMEM_HAVE_IO_URING
    no_ring = detail::kNoIoUringBuilt;
#else
    depth = std::clamp(options.queue_depth, 1u, 4096u);
    if (const int err = io_uring_queue_init(depth, &ring, 0); err < 0) {
      no_ring = "io_uring unavailable (" + errno_text(-err) + ")";
      return;
    }
    has_ring = true;
    if (detail::read_ring_probe) ++detail::read_ring_probe->rings_made;
#endif
  }
};

FileReader::FileReader(const std::string& path, const ReadOptions& options) : state_(std::make_unique<State>()) {
  if (options.chunk_bytes > detail::kMaxReadChunk) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: read_file: ReadOptions::chunk_bytes is " + std::to_string(options.chunk_bytes) +
                    "; it must be at most 1 GiB (" + std::to_string(detail::kMaxReadChunk) + ")");
  }
  state_->path = path;
  state_->options = options;
  state_->file = open_regular(path, O_RDONLY);
}

FileReader::~FileReader() = default;
FileReader::FileReader(FileReader&&) noexcept = default;
FileReader& FileReader::operator=(FileReader&&) noexcept = default;

std::uint64_t FileReader::size() const noexcept { return static_cast<std::uint64_t>(state_->file.st.st_size); }
const std::string& FileReader::path() const noexcept { return state_->path; }

ReadReport FileReader::read(std::span<const ReadSegment> segments) {
  return read(segments, state_->options.progress);  // options never change after construction
}

ReadReport FileReader::read(std::span<const ReadSegment> segments,
                            const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const auto start = std::chrono::steady_clock::now();
  State& st = *state_;
  std::lock_guard hold(st.lock);
  ReadOptions options = st.options;
  options.progress = progress;
  const std::string& path = st.path;
  ReadReport report;
  report.bytes = detail::check_segments(segments, size(), "read_file of " + path);
  const Descriptors fds{st.file.fd, -1};
  // Small reads: a ring, a crew of threads and O_DIRECT alignment cost more
  // to set up than the read itself (a 3 MiB safetensors file: 6.6 ms through
  // them, 0.7 ms with read()). Read them in this thread through the cache.
  if (report.bytes <= options.small_read_bytes && !options.progress) {
    for (const ReadSegment& s : segments) read_buffered(path, fds.buffered, s);
    report.buffered_bytes = report.bytes;
    report.path = ReadPath::buffered_threads;
    report.fallback_reason =
        "a small read (ReadOptions::small_read_bytes): pread through the page cache in the calling thread";
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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
    if (const double cached = cached_fraction(fds.buffered, lo, hi); cached >= 0.9) {
      why = "the file is in the page cache (" + std::to_string(static_cast<int>(cached * 100)) +
            "%): read from there, not the disk";
    } else {
      if (!st.direct_probed) st.probe_direct();
      direct = st.direct >= 0;
      why = st.no_direct;
    }
  }
  const std::size_t chunk = std::max<std::size_t>(options.chunk_bytes / 4096 * 4096, 4096);
  std::vector<Chunk> chunks = detail::plan_reads(segments, direct, st.align, chunk, report.buffered_bytes);
  const bool any_direct = std::any_of(chunks.begin(), chunks.end(), [](const Chunk& c) { return c.direct; });
  if (direct && !any_direct && report.bytes != 0) why = "no piece is aligned for O_DIRECT";
  const Descriptors with_direct{fds.buffered, st.direct};

  bool ring = false;
  if (options.io_uring) {
    if (!st.ring_tried) st.make_ring();
    ring = st.has_ring;
    if (ring) {
#if UNIMEM_HAVE_IO_URING
      struct Clean {
        State& st;
        ~Clean() { st.drop_ring_if_dirty(); }
      } clean{st};
      run_io_uring(path, st.ring, st.depth, with_direct, chunks, options, report.bytes);
#endif
    } else {
      why = why.empty() ? st.no_ring : st.no_ring + "; " + why;
    }
  } else {
    why = why.empty() ? "io_uring not asked for" : "io_uring not asked for; " + why;
  }
  if (!ring) run_pread(path, with_direct, chunks, options, report.bytes);
  report.path = ring ? (any_direct ? ReadPath::direct_async : ReadPath::buffered_async)
                     : (any_direct ? ReadPath::direct_threads : ReadPath::buffered_threads);
  report.fallback_reason = report.path == ReadPath::direct_async ? "" : why;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

ReadReport read_file(const std::string& path, std::uint64_t offset, std::span<std::byte> dest,
                     const ReadOptions& options) {
  const ReadSegment segment{offset, dest.data(), dest.size()};
  return read_file(path, std::span<const ReadSegment>(&segment, 1), options);
}

}  // namespace unimem
