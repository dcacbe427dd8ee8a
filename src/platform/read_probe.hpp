// src/platform/read_probe.hpp — a test seam in read_file's io_uring path.
//
// Internal (not installed, not in include/unimem/): the unit tests use it to
// make one completion or one submit fail in the middle of a batch and to count what was
// handed to the kernel and what came back, which is how they check that an
// error never leaves a read in flight. Outside the tests no probe is set, and
// the cost is one thread-local load per read_file call.
#pragma once

#include <cstddef>

namespace unimem::detail {

struct ReadRingProbe {
  // The completion with this number (1-based, counted over the call) reports
  // -fail_errno instead of its real result; 0: none does.
  std::size_t fail_completion = 0;
  int fail_errno = 5;  // EIO
  // Reads the kernel accepted (io_uring_submit's count) and completions reaped.
  std::size_t submitted = 0;
  std::size_t reaped = 0;
  std::size_t rings_made = 0;  // io_uring instances set up
  // The submit with this number (1-based, counted over the probe's life)
  // fails with -fail_submit_errno without entering the kernel, as
  // io_uring_submit_and_wait does when the kernel is short of memory
  // (EAGAIN, ENOMEM): the prepared reads stay in the submission queue.
  // 0: none fails.
  std::size_t fail_submit = 0;
  int fail_submit_errno = 11;  // EAGAIN
  std::size_t submits = 0;     // submit calls made
};

// Installs `probe` for the read_file calls of the calling thread (nullptr
// removes it). The probe must outlive those calls. Never throws.
void set_read_ring_probe(ReadRingProbe* probe) noexcept;

}  // namespace unimem::detail
