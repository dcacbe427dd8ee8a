// src/gpu/loader_probe.hpp — a test seam in gpu::Loader::load.
//
// Internal (not installed): the GPU tests use it to change a file between two
// chunks of one load (truncate it), which is how they check that a file that
// shrinks while it loads gives an error, not SIGBUS; the loader benchmark uses
// it to see where a staged load's time goes (--trace). Outside those no probe
// is set, and the cost is one relaxed load per cached chunk and per load.
#pragma once

#include <cstddef>

namespace unimem::gpu::detail {

struct LoaderProbe {
  virtual ~LoaderProbe() = default;
  // Called before a cached chunk is registered or staged: by the loading
  // thread, or by the staging worker that reaches it first.
  virtual void before_chunk(std::size_t /*chunk*/) {}
  // Called by staging worker `worker` after each slice it staged: the
  // seconds it waited for its slot's previous copy, read the slice, and
  // queued the slice's copies. Must not throw.
  virtual void staged_slice(std::size_t /*worker*/, double /*wait_s*/, double /*read_s*/, double /*queue_s*/) noexcept {
  }
  // Called by the loading thread inside the timed parts of a reload's
  // registration probe (part 0: the first, short registration; part 1: the
  // longer one); a test that sleeps here makes registering look fast (0) or
  // slow (1). Must not throw.
  virtual void timing_registration(int /*part*/) noexcept {}
  // Called by the loading thread as a load passes its first steps: "mapped"
  // (the file), "crew ready" (its threads, made if new, before they ask which
  // chunks are cached), "classified" (its chunks), "crew" (before staging);
  // gpu::load_safetensors adds "headers" (every header read) and "allocated"
  // (the device memory taken) before its loads.
  virtual void step(const char* /*what*/) noexcept {}
  // Called as the staging workers are set going (on the loading thread, or
  // the thread that runs them beside registrations).
  virtual void workers_starting() noexcept {}
  // Called by staging worker `worker` when it has made its slots, streams
  // and events (on its first slice): the seconds that took, in all and in
  // its parts (streams and events; backing the slots; registering them).
  virtual void worker_made(std::size_t /*worker*/, double /*seconds*/, double /*streams_s*/, double /*backing_s*/,
                           double /*registering_s*/) noexcept {}
};

// Installs `probe` for every Loader (nullptr removes it); it must outlive the
// loads it sees. Never throws.
void set_loader_probe(LoaderProbe* probe) noexcept;
// The probe installed now, or nullptr. Never throws.
LoaderProbe* loader_probe() noexcept;
// Calls the probe, if any. Throws what it throws.
void loader_probe_before(std::size_t chunk);
// Calls the probe's step, if any. Never throws.
void loader_probe_step(const char* what) noexcept;

}  // namespace unimem::gpu::detail
