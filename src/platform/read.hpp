// src/platform/read.hpp — what a platform brings to FileReader: opening a file and carrying out reads.
//
// FileReader has a portable half and a platform half. src/file.cpp decides:
// the small-read shortcut, whether a range is cached enough to skip the
// direct route, which route a read takes, why not the fastest, and the
// report; src/read_plan.cpp cuts a read into chunks. What is left, and what
// this header declares, is carried out by the operating system: opening the
// file through the page cache and around it, asking which of its pages are
// cached, and running a list of chunks either from one thread with many
// reads in flight (the async queue) or on several threads. Linux implements
// it in platform/linux/read.cpp (pread, O_DIRECT, statx, io_uring); another
// platform implements the same class in its own folder (Apple: F_NOCACHE,
// dispatch_io or threads).
//
// Every type here is neutral: sizes, offsets, chunk lists and sentences; the
// file's handles stay inside the executor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "read_plan.hpp"
#include "unimem/file.hpp"

namespace unimem::platform {

// Reports bytes done and the total as reads complete (may be empty).
using ReadProgress = std::function<void(std::uint64_t done, std::uint64_t total)>;

// One regular file open for reading, with its direct (page-cache bypassing)
// route and its async queue set up when asked and kept. Not thread-safe: one
// call at a time (FileReader holds its lock around every read). Not copyable
// or movable (FileReader holds it behind a pointer).
class ReadExecutor {
 public:
  // Opens `path` through the page cache, only if it is a regular file (a
  // FIFO without a writer cannot block the open). Throws Error(not_found,
  // permission_denied, system), Error(invalid_argument) for a file that is
  // not regular (nothing stays open then).
  explicit ReadExecutor(const std::string& path);
  ~ReadExecutor();
  ReadExecutor(const ReadExecutor&) = delete;
  ReadExecutor& operator=(const ReadExecutor&) = delete;

  // The file's size when it was opened. Never throws.
  std::uint64_t size() const noexcept;

  // The fraction of the file's pages in [begin, end) that are in the page
  // cache, in [0, 1]; 0 when the platform will not say. No I/O. Throws only
  // std::bad_alloc.
  double cached_fraction(std::uint64_t begin, std::uint64_t end) const;

  // Sets up the direct route (a second handle that bypasses the page cache)
  // and learns the alignment it needs. Returns "" when it is ready, else why
  // it is not (the platform's words: the file system refuses it, the file was
  // replaced since it was opened...). Call once. Throws only std::bad_alloc.
  std::string open_direct();
  // The alignment of offsets, lengths and addresses that direct chunks must
  // meet; meaningful once open_direct() returned "". Never throws.
  std::size_t direct_align() const noexcept;

  // Sets up the async queue with room for `queue_depth` reads in flight.
  // Returns "" when it is ready, else why not (not built in, refused by the
  // kernel). Throws only std::bad_alloc.
  std::string open_async(unsigned queue_depth);
  // Whether the async queue is set up. A read that left the queue unusable
  // (a refused submit) drops it: then this is false again and open_async may
  // be called anew. Never throws.
  bool has_async() const noexcept;

  // Reads one segment through the page cache in the calling thread. Throws
  // Error(system) on an I/O error or when the file ended early.
  void read_buffered(const ReadSegment& segment) const;

  // Runs the chunks on the async queue (has_async() must be true); direct
  // chunks take the direct route (open_direct() must have returned ""). A
  // short read's rest goes through the page cache. `progress` is called on
  // this thread as reads complete. Throws Error(system) on an I/O error or
  // when the file ended early, or what `progress` throws; on return or throw,
  // no read is in flight.
  void run_async(std::vector<detail::ReadChunk>& chunks, const ReadProgress& progress, std::uint64_t total);

  // Runs the chunks on `threads` threads (at least 1; fewer where no more can
  // be started), with the calling thread reporting to `progress` when there
  // is one, else reading too. Throws and guarantees as run_async.
  void run_threads(const std::vector<detail::ReadChunk>& chunks, unsigned threads, const ReadProgress& progress,
                   std::uint64_t total);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The size of the file at `path`, of whatever type, without opening it.
// Throws Error(not_found, permission_denied, system).
std::uint64_t size_at(const std::string& path);

}  // namespace unimem::platform
