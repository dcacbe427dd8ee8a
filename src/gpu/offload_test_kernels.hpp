// src/gpu/offload_test_kernels.hpp — CUDA-runtime helpers for the offload pool's GPU tests.
#pragma once

#include <string>

namespace unimem::offload_test {

// Makes `stream` (a cudaStream_t) fail `ms` milliseconds from now: a host
// function that sleeps, then a kernel that traps. Work enqueued after this
// call and before then is accepted, and then never runs. The failure is
// sticky: the process's context is lost, so only a child process calls this.
// Returns "" or the CUDA error.
std::string fail_stream_later(void* stream, unsigned ms);

// Holds `stream` for `ms` milliseconds (a host function that sleeps): work
// enqueued after it waits. Returns "" or the CUDA error.
std::string delay_stream(void* stream, unsigned ms);

}  // namespace unimem::offload_test
