// src/parallel.hpp — splitting a byte range across threads.
//
// Faulting pages in and registering them with a GPU both run at a few GB/s
// per thread, so large Blocks are cut into slices worked on in parallel.
// Slices are multiples of `grain` (except the last), so that no huge-page-
// sized run is split across threads.
#pragma once

#include <cstddef>
#include <functional>

namespace unimem::detail {

// The thread count used for `bytes` when the caller asks for 0: one thread
// per 4 MiB, at most the hardware's. Never throws.
unsigned default_threads(std::size_t bytes) noexcept;

// Calls work(begin, end) for consecutive slices covering [0, bytes), on up to
// `threads` threads (0: default_threads), each slice at most `max_slice`
// bytes. Returns when all calls have returned. If calls throw, rethrows the
// first exception after every thread has finished. Runs slices inline when no
// thread can be started.
void for_each_slice(std::size_t bytes, unsigned threads, std::size_t grain, std::size_t max_slice,
                    const std::function<void(std::size_t begin, std::size_t end)>& work);

}  // namespace unimem::detail
