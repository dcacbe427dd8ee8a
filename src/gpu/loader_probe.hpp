// src/gpu/loader_probe.hpp — a test seam in gpu::Loader::load.
//
// Internal (not installed): the GPU tests use it to change a file between two
// chunks of one load (truncate it), which is how they check that a file that
// shrinks while it loads gives an error, not SIGBUS. Outside the tests no
// probe is set, and the cost is one relaxed load per cached chunk.
#pragma once

#include <cstddef>

namespace unimem::gpu::detail {

struct LoaderProbe {
  virtual ~LoaderProbe() = default;
  // Called on the loading thread before a cached chunk is registered or staged.
  virtual void before_chunk(std::size_t chunk) = 0;
};

// Installs `probe` for every Loader (nullptr removes it); it must outlive the
// loads it sees. Never throws.
void set_loader_probe(LoaderProbe* probe) noexcept;
// Calls the probe, if any. Throws what it throws.
void loader_probe_before(std::size_t chunk);

}  // namespace unimem::gpu::detail
