// src/platform/files.hpp — what the GPU loader asks the platform about files.
//
// The loader (src/gpu/loader.cpp) plans routes and keeps registrations; it
// needs to know whether a file is still the one it registered and which of
// its pages are in the page cache. Linux answers in platform/linux/files.cpp
// (stat, cachestat, mincore); another platform answers here without touching the loader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace unimem::platform {

// What identifies a file's contents well enough to keep its registration:
// the same object (device, inode), size, and modification and change times.
// Limit: a rewrite within one tick of the kernel's file clock (a few ms) that
// keeps the size is not seen.
struct FileIdentity {
  std::uint64_t device = 0;
  std::uint64_t inode = 0;
  std::uint64_t size = 0;
  std::int64_t modified_ns = 0;
  std::int64_t changed_ns = 0;  // ctime: unlike mtime, no one can set it back
  friend bool operator==(const FileIdentity&, const FileIdentity&) = default;
};

// Throws Error(not_found, permission_denied), Error(invalid_argument) for a
// file that is not a regular file. Never opens the file (a FIFO cannot block).
FileIdentity file_identity(const std::string& path);

// Checks that `path` can be loaded as a whole: a regular file (else
// Error(invalid_argument) naming what it is: a FIFO, a directory, ...) whose
// size is what reading it gives (else Error(invalid_argument): a /proc or
// /sys file reports 0 bytes and has some). `who` starts the messages.
// Throws Error(not_found, permission_denied, system) as stat does. Never
// blocks on a FIFO.
void check_loadable_file(const std::string& path, const std::string& who);

// A regular file open for reading; closed when destroyed. Move-only.
class ReadableFile {
 public:
  // Opens `path` (never blocking on a FIFO) and checks that it is still the
  // file `expected` describes. Throws Error(not_found, permission_denied,
  // system), Error(invalid_argument) for a file that is not regular or no
  // longer `expected`.
  ReadableFile(const std::string& path, const FileIdentity& expected);
  ReadableFile(ReadableFile&& other) noexcept;
  ReadableFile& operator=(ReadableFile&&) = delete;
  ReadableFile(const ReadableFile&) = delete;
  ReadableFile& operator=(const ReadableFile&) = delete;
  ~ReadableFile();

  // Reads n bytes at `offset` into dest through the page cache. 0 on
  // success, else the errno of the failure, -1 when the file ended first (it
  // shrank). Never throws; any number of threads may read at once. Unlike a
  // copy out of the file's mapping, a file truncated meanwhile gives an error
  // here, not SIGBUS.
  int read_at(std::byte* dest, std::size_t n, std::uint64_t offset) const noexcept;

  // Asks the kernel to drop the file's cached pages in [offset, offset +
  // bytes) (clean pages no process maps). Advice: 0, or the errno of a
  // refusal. Never throws.
  int drop_cached(std::uint64_t offset, std::uint64_t bytes) const noexcept;
  // The fraction of [offset, offset + bytes) in the page cache, in [0, 1],
  // asked of the file itself (no mapping needed, and cheaper than
  // resident_fraction below where the kernel answers); negative when the
  // kernel will not say (then ask resident_fraction). Never throws; any
  // number of threads may ask at once.
  double cached_fraction(std::uint64_t offset, std::uint64_t bytes) const noexcept;

 private:
  int fd_ = -1;
};

// The fraction of [p, p + bytes), part of a file mapping, whose pages are in
// memory (the page cache), in [0, 1]; 0 when the kernel will not say. Never throws.
double resident_fraction(const std::byte* p, std::size_t bytes) noexcept;

}  // namespace unimem::platform
