// unimem/file.hpp — storage straight into Blocks.
//
// read_file() moves bytes from a file into memory you own (a Block, a Tape
// allocation) at the disk's speed: O_DIRECT reads, aligned to what the file
// system asks for, many in flight through io_uring. Where that cannot work it
// falls back on its own, and says which path it took and why. Paths are
// named by what they do, not by the platform's call that does it:
//   direct_async      the page cache bypassed, many reads in flight from one
//                     thread (Linux: io_uring + O_DIRECT)
//   buffered_async    the same through the page cache (O_DIRECT refused, e.g. tmpfs)
//   direct_threads    the page cache bypassed, reads on several threads
//                     (Linux: pread + O_DIRECT, where io_uring is unavailable
//                     or not built in: a build without liburing, see build_info.hpp)
//   buffered_threads  reads on several threads through the page cache
// Pieces that O_DIRECT cannot take (unaligned head and tail of a segment, or a
// destination whose alignment does not match the file offset's) are read
// through the page cache; the report counts them. A file that is already in
// the page cache (90% of its pages, by mincore) is read from there: O_DIRECT
// would bypass the cache and go to the disk, many times slower.
//
// Block::map_file (block.hpp) maps a file read-only instead: for files already
// in the page cache, nothing is copied at all.
//
// Thread safety: read_file may run on several threads at once; the segments'
// destinations must not overlap and must stay valid until it returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "unimem/error.hpp"

namespace unimem {

enum class ReadPath {
  direct_async,
  buffered_async,
  direct_threads,
  buffered_threads,
  page_cache_registered,  // to a GPU: the page cache registered in place, DMA straight from it (gpu::Loader)
};

// "direct_async", ... Never throws.
const char* to_string(ReadPath path) noexcept;

// One piece of a file and where it goes.
struct ReadSegment {
  std::uint64_t file_offset = 0;
  std::byte* dest = nullptr;
  std::size_t bytes = 0;
};

struct ReadOptions {
  unsigned queue_depth = 32;                       // reads in flight (io_uring)
  std::size_t chunk_bytes = std::size_t{1} << 20;  // the size of one read; at most 1 GiB
  // pread route's threads; 0: queue_depth (at most 64) when O_DIRECT reads
  // are among the chunks (they wait on the device), else the cores, at most 16.
  unsigned threads = 0;
  bool direct = true;    // try O_DIRECT (unless the file is cached)
  bool io_uring = true;  // try io_uring (where built in)
  // Reads of at most this many bytes in all skip io_uring, threads and
  // O_DIRECT: one pread per piece in the calling thread, through the page
  // cache (their setup costs more than such a read). 0: never.
  std::size_t small_read_bytes = std::size_t{4} << 20;
  // Called on the calling thread as reads complete, with bytes done and the
  // total; keep it cheap. May be empty.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
};

struct ReadReport {
  std::uint64_t bytes = 0;           // all bytes read
  std::uint64_t buffered_bytes = 0;  // of which through the page cache (unaligned pieces, fallbacks)
  ReadPath path = ReadPath::buffered_threads;
  double seconds = 0;
  std::string fallback_reason;  // why not direct_async; empty when it was
};

// A file opened and probed once for many reads: its descriptors (page cache
// and O_DIRECT), the file system's direct-I/O alignment and one io_uring are
// set up on first need and kept, so the 64 MiB pieces of a long load do not
// each reopen the file and make a ring. read_file() is one FileReader read.
// The file's size is taken when it is opened.
//
// Thread safety: one read at a time per FileReader (others wait); separate
// FileReaders are independent.
class FileReader {
 public:
  // Opens `path` for reading. Throws Error:
  //   not_found          no such file
  //   permission_denied  the file cannot be opened for reading
  //   invalid_argument   not a regular file (nothing is opened then, so a
  //                      FIFO without a writer cannot block), or
  //                      options.chunk_bytes is above 1 GiB
  //   system             other open failures
  explicit FileReader(const std::string& path, const ReadOptions& options = {});
  ~FileReader();
  FileReader(FileReader&&) noexcept;
  FileReader& operator=(FileReader&&) noexcept;
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  // Reads every segment. Throws Error:
  //   invalid_argument   a segment lies outside the file or has a null destination
  //   system             an I/O error, or the file ended early (it shrank while
  //                      read); every read already started has completed when
  //                      it throws, and the reader stays usable
  ReadReport read(std::span<const ReadSegment> segments);
  // As above, reporting to `progress` (may be empty: no reports) instead of
  // the ReadOptions' callback: a caller that reads a header first and then
  // the data reports only the data, with one total from the first report on.
  ReadReport read(std::span<const ReadSegment> segments,
                  const std::function<void(std::uint64_t done, std::uint64_t total)>& progress);
  // Reads dest.size() bytes from `offset` into `dest`.
  ReadReport read(std::uint64_t offset, std::span<std::byte> dest);

  std::uint64_t size() const noexcept;  // when opened
  const std::string& path() const noexcept;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Reads every segment of the file at `path`. Throws Error:
//   not_found          no such file
//   permission_denied  the file cannot be opened for reading
//   invalid_argument   not a regular file (a FIFO, directory, device...; nothing
//                      is opened then, so a FIFO without a writer cannot block),
//                      a segment lies outside the file or has a null destination,
//                      or options.chunk_bytes is above 1 GiB
//   system             an I/O error, or the file ended early (it shrank while read);
//                      every read already started has completed when it throws
ReadReport read_file(const std::string& path, std::span<const ReadSegment> segments, const ReadOptions& options = {});

// Reads dest.size() bytes from `offset` of the file into `dest`.
ReadReport read_file(const std::string& path, std::uint64_t offset, std::span<std::byte> dest,
                     const ReadOptions& options = {});

// The fraction of the pages of bytes [begin, end) of the file at `path` that
// are in the page cache, by mincore (no I/O). Throws Error(not_found,
// permission_denied, system), Error(invalid_argument) for a non-regular file.
double page_cache_fraction(const std::string& path, std::uint64_t begin, std::uint64_t end);

// The size of the file at `path`. Throws Error(not_found, permission_denied, system).
std::uint64_t file_size(const std::string& path);

}  // namespace unimem
