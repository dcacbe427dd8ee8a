// src/platform/linux/read.cpp — FileReader's executors on Linux: io_uring, pread, O_DIRECT, statx.
//
// The portable half (src/file.cpp) decides which route a read takes and
// reports it; this file carries routes out (platform/read.hpp). The file is
// opened once through the page cache. open_direct probes the file system's
// direct-I/O alignment (statx STATX_DIOALIGN where the kernel reports it,
// 4 KiB otherwise) and opens the path a second time with O_DIRECT;
// open_async makes the io_uring. run_async keeps queue_depth chunks in
// flight on the ring; run_threads runs pread on threads over the same list
// (where io_uring cannot be set up: old kernel, seccomp, io_uring_disabled).
// Short reads are resubmitted for the rest; a read of 0 bytes means the file
// shrank, which is an error.
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
// stays usable. The pread route joins its threads before it throws, for the
// same reason.
//
// Paths are opened only when they name a regular file (open_file.hpp): a FIFO
// would block the open forever.
//
// io_uring is compiled in only where the build found liburing
// (UNIMEM_HAVE_IO_URING, CMake's UNIMEM_IO_URING): without it open_async
// says so, and every read takes the pread route.
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
#include "platform/read.hpp"
#include "platform/read_probe.hpp"

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
double cached_fraction_of(int fd, std::uint64_t begin, std::uint64_t end) {
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
                  const platform::ReadProgress& progress, std::uint64_t total) {
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
    if (progress && error < 0 && !thrown) {
      try {
        progress(done, total);
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
void pread_segment(const std::string& path, int fd, const ReadSegment& s) {
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

void run_pread(const std::string& path, Descriptors f, const std::vector<Chunk>& chunks, unsigned threads,
               const platform::ReadProgress& progress, std::uint64_t total) {
  threads = std::max(threads, 1u);
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
  const unsigned readers = progress ? threads : threads - 1;
  std::vector<std::thread> pool;
  pool.reserve(readers);
  try {
    for (unsigned t = 0; t < readers; ++t) pool.emplace_back(worker);
  } catch (...) {
    // No more threads (RLIMIT_NPROC, a pids limit): read with those that started.
  }
  std::exception_ptr reporting;  // from the progress callback
  if (progress && !pool.empty()) {
    try {
      // Reported as reads complete, as the ring does: a (0, total) before any
      // byte arrived would follow a loader's earlier read (Safetensors::load
      // reads the header first) and make the count go backwards.
      std::uint64_t reported = 0;
      while (next.load() < chunks.size()) {
        if (const std::uint64_t d = done.load(); d != reported) {
          progress(d, total);
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
  if (progress) progress(done.load(), total);
}

}  // namespace

namespace platform {

struct ReadExecutor::State {
  std::string path;
  OpenedFile file;  // through the page cache
  int direct = -1;  // O_DIRECT, once open_direct() succeeded
  std::size_t align = 4096;
  bool has_ring = false;
#if UNIMEM_HAVE_IO_URING
  io_uring ring{};
#endif
  unsigned depth = 0;

  ~State() {
#if UNIMEM_HAVE_IO_URING
    if (has_ring) io_uring_queue_exit(&ring);
#endif
    if (direct >= 0) ::close(direct);
    if (file.fd >= 0) ::close(file.fd);
  }

  // After a read on the ring: a ring holding entries the kernel never took
  // (a refused submit) is dropped, so that they are never submitted.
#if UNIMEM_HAVE_IO_URING
  void drop_ring_if_dirty() noexcept {
    if (!has_ring || io_uring_sq_ready(&ring) == 0) return;
    io_uring_queue_exit(&ring);
    ring = io_uring{};
    has_ring = false;  // the next read that wants a ring makes a new one
  }
#endif
};

ReadExecutor::ReadExecutor(const std::string& path) : state_(std::make_unique<State>()) {
  state_->path = path;
  state_->file = open_regular(path, O_RDONLY);
}

ReadExecutor::~ReadExecutor() = default;

std::uint64_t ReadExecutor::size() const noexcept { return static_cast<std::uint64_t>(state_->file.st.st_size); }

double ReadExecutor::cached_fraction(std::uint64_t begin, std::uint64_t end) const {
  return cached_fraction_of(state_->file.fd, begin, end);
}

std::string ReadExecutor::open_direct() {
  State& st = *state_;
#ifdef STATX_DIOALIGN
  struct statx sx {};
  if (::statx(st.file.fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
    if (sx.stx_dio_mem_align == 0) return "the file system does not support O_DIRECT for this file";
    st.align = std::max<std::size_t>({sx.stx_dio_mem_align, sx.stx_dio_offset_align, 512});
  }
#endif
  // A second open of the path: it must still name the same file.
  const OpenedFile d = open_regular_file(st.path.c_str(), O_RDONLY | O_DIRECT);
  if (d.fd >= 0 && (d.st.st_dev != st.file.st.st_dev || d.st.st_ino != st.file.st.st_ino)) {
    ::close(d.fd);
    return "the file was replaced after it was opened";
  }
  if (d.fd >= 0) {
    st.direct = d.fd;
    return "";
  }
  if (!d.regular) return "the file was replaced after it was opened";
  return "O_DIRECT refused (" + errno_text(d.err) + ")";
}

std::size_t ReadExecutor::direct_align() const noexcept { return state_->align; }

std::string ReadExecutor::open_async([[maybe_unused]] unsigned queue_depth) {
#if !UNIMEM_HAVE_IO_URING
  return detail::kNoIoUringBuilt;
#else
  State& st = *state_;
  st.depth = std::clamp(queue_depth, 1u, 4096u);
  if (const int err = io_uring_queue_init(st.depth, &st.ring, 0); err < 0) {
    return "io_uring unavailable (" + errno_text(-err) + ")";
  }
  st.has_ring = true;
  if (detail::read_ring_probe) ++detail::read_ring_probe->rings_made;
  return "";
#endif
}

bool ReadExecutor::has_async() const noexcept { return state_->has_ring; }

void ReadExecutor::read_buffered(const ReadSegment& segment) const {
  pread_segment(state_->path, state_->file.fd, segment);
}

void ReadExecutor::run_async([[maybe_unused]] std::vector<detail::ReadChunk>& chunks,
                             [[maybe_unused]] const ReadProgress& progress, [[maybe_unused]] std::uint64_t total) {
#if UNIMEM_HAVE_IO_URING
  State& st = *state_;
  struct Clean {
    State& st;
    ~Clean() { st.drop_ring_if_dirty(); }
  } clean{st};
  run_io_uring(st.path, st.ring, st.depth, Descriptors{st.file.fd, st.direct}, chunks, progress, total);
#endif
}

void ReadExecutor::run_threads(const std::vector<detail::ReadChunk>& chunks, unsigned threads,
                               const ReadProgress& progress, std::uint64_t total) {
  run_pread(state_->path, Descriptors{state_->file.fd, state_->direct}, chunks, threads, progress, total);
}

std::uint64_t size_at(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail_open(path, errno);
  return static_cast<std::uint64_t>(st.st_size);
}

}  // namespace platform
}  // namespace unimem
