// unimem/error.hpp — the one exception type unimem throws.
//
// Operations that acquire resources or do I/O throw: opening a Block,
// building a Tape, Grid or Layout, reading files, loading to GPUs, offload
// moves and waits, parsing ids and headers (each header's contracts say
// which). Hot paths (Tape::take, Grid::take/give, clear) never throw: they
// report failure through their return value instead.
#pragma once

#include <stdexcept>
#include <string>

namespace unimem {

// What went wrong, in terms a caller can act on.
enum class Errc {
  invalid_argument = 1,  // zero or overflowing size, bad alignment, bad cell size...
  out_of_memory,         // the machine cannot back the request (RAM, address space)
  memlock_limit,         // pinning refused by RLIMIT_MEMLOCK; the message says how to raise it
  system,                // an operating-system call failed; sys_errno() says which error
  unsupported,           // the platform or build lacks the feature
  no_cuda_driver,        // GPU visibility asked for, but the CUDA driver cannot be loaded
  no_cuda_device,        // the CUDA driver is there but sees no device
  cuda,                  // a CUDA driver call failed; the message names the call and the CUDA error
  not_found,             // no Block by that id (process gone, descriptor closed or reused)
  permission_denied,     // the Block belongs to another user
  not_a_block,           // a descriptor or header that is not (this kind of) unimem Block
  disconnected,          // the peer closed the socket before a Block arrived
  bad_format,            // a file that does not follow its format (the message says where)
};

// Returns a stable lowercase name for `code`, e.g. "memlock_limit". Never throws.
const char* to_string(Errc code) noexcept;

namespace detail {
// `text` with every byte that is not part of a well-formed UTF-8 sequence
// written as "\xNN". Throws only std::bad_alloc.
std::string valid_utf8(const std::string& text);
}  // namespace detail

// Thrown by every unimem operation that can fail outside a hot path.
// what() is a full sentence: what happened, and what to do about it.
class Error : public std::runtime_error {
 public:
  // `message` is kept as valid UTF-8: bytes that are not (a file's raw
  // header bytes quoted, say) become "\xNN", so every binding can decode it.
  Error(Errc code, int sys_errno, const std::string& message)
      : std::runtime_error(detail::valid_utf8(message)), code_(code), sys_errno_(sys_errno) {}

  Errc code() const noexcept { return code_; }
  // The errno of the failing system call, or 0 when no system call failed.
  int sys_errno() const noexcept { return sys_errno_; }

 private:
  Errc code_;
  int sys_errno_;
};

}  // namespace unimem
