// src/gpu/offload_flights.hpp — what an offload pool has in flight, and when it may reuse it.
//
// A store or fetch returns before its blocks move. Until they have, two
// things must stay put: the list of (source, destination) pairs the kernel
// route reads from GPU-visible host memory ("slabs"), and the pool's memory
// itself. So every call records an event after its work ("a flight"), the
// pool keeps each flight with the slab it uses, and a later call reuses a
// slab only once cuEventQuery says its flight is done: checking never blocks,
// and a slab is made only when none is free (the number of slabs follows
// the calls in flight, not the calls made). Destroying the Flights waits for
// every flight: the pool's memory must outlive the DMA into it.
//
// "Done" is CUDA_SUCCESS from cuEventQuery / cuEventSynchronize /
// cuStreamSynchronize, or an error after which the context is lost
// (context_lost(): a trap, an illegal address; nothing of the context runs
// any more). Any other answer (not ready, or the driver could not say, e.g.
// a stream-capture error) leaves the work in flight: its slab is not reused,
// and where it must be let go (a destructor, a failed call) it is kept for
// the rest of the process instead (a leak, never a use after free), and the
// pool is told (drain() returns false) so that it keeps its memory too.
// Every query and wait runs in the relaxed capture mode (RelaxedCapture):
// while another thread captures a CUDA graph in global mode (PyTorch's
// default), the default mode would make them fail and end that capture.
//
// Everything a call needs to stay in flight (its event, its slab, a slot in
// the list of pending flights) is taken BEFORE it enqueues anything (begin():
// it may throw, and then nothing runs); once work is enqueued, nothing is
// given back before that work has finished: finish() records the event and
// cannot fail otherwise, and where recording fails it synchronizes the stream
// first.
//
// A Flight is shared by the pool and the Transfer handles returned to the
// caller, so a Transfer can outlive its pool; its event goes back to an event
// pool (shared likewise) when the last of them lets go.
//
// fork(): the child inherits copies of these objects, whose CUDA handles
// belong to the parent's context, and whose locks another thread of the
// parent may have held at the fork (the child's copies stay locked for
// good). In the child (told by the library's fork handling, ForkWatch),
// nothing here calls CUDA or takes a lock: destructors let the handles,
// slabs and lists go unreleased, and a Flight's done()/wait() throw
// Error(invalid_argument).
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gpu/driver.hpp"
#include "unimem/block.hpp"
#include "unimem/detail/fork_watch.hpp"

namespace unimem::gpu::detail {

// Events of one device's primary context, made on demand and reused.
// Thread-safe.
class EventPool {
 public:
  explicit EventPool(int device) noexcept;
  EventPool(const EventPool&) = delete;
  EventPool& operator=(const EventPool&) = delete;
  // Destroys every event (not in a fork() child: see above). Never throws.
  ~EventPool();
  // A free event (timing disabled). The device's context must be current.
  // Throws Error(cuda).
  CUevent take();
  // Never throws.
  void give(CUevent event) noexcept;
  int device() const noexcept { return device_; }
  // True in a fork() child of the process that made this pool.
  bool forked() const noexcept;

 private:
  int device_;
  unimem::detail::ForkedFlag forked_;  // set in a fork() child, whose copy of lock_ may be held for good
  std::mutex lock_;
  std::vector<CUevent> free_;
};

// One store or fetch: an event recorded after its work.
struct Flight {
  Flight(std::shared_ptr<EventPool> pool, CUevent e, std::size_t n, std::size_t b, const char* w) noexcept
      : events(std::move(pool)), event(e), blocks(n), bytes(b), what(w) {}
  Flight(const Flight&) = delete;
  Flight& operator=(const Flight&) = delete;
  ~Flight();  // gives the event back; never throws

  // True when the work is done; false while it runs, and when the driver
  // could not say. Makes the device's context current itself. Throws
  // Error(cuda) naming the call when the stream failed (the context is lost),
  // Error(invalid_argument) in a fork() child, before any CUDA call.
  // Thread-safe.
  bool done() const;
  // Blocks until done. Throws as done(), and Error(cuda) when the driver
  // fails the wait otherwise (then the work is not known to be done).
  void wait() const;
  // "the offload store of n blocks (on its stream)"
  std::string describe() const;

  std::shared_ptr<EventPool> events;
  CUevent event;
  std::size_t blocks;
  std::size_t bytes;
  const char* what;  // "store" or "fetch"
};

// GPU-visible host memory for a kernel's list of block pairs.
struct Slab {
  Block memory;
  std::size_t capacity = 0;  // bytes usable
  CUdeviceptr device_address = 0;
};

// An offload pool's flights and slabs, in this process. Thread-safe.
class Flights {
 public:
  // With own_stream, makes the pool's own stream now. Device context current.
  // Throws Error(cuda).
  Flights(int device, bool own_stream);
  Flights(const Flights&) = delete;
  Flights& operator=(const Flights&) = delete;
  // drain(), then destroys the stream and the slabs (in a fork() child:
  // neither; the handles are the parent's). Never throws.
  ~Flights();

  // Waits for every flight. True when each is done (see above), or none is
  // this process's (a fork() child); false when some flight, now or of an
  // earlier failed call (withdraw()), is not known to be done: its slab is
  // kept for the process, and the caller must keep the pool's memory mapped
  // too. Never throws.
  bool drain() noexcept;

  // The pool's own stream (non-blocking), made on first use. Device context
  // current. Throws Error(cuda).
  CUstream own_stream();

  // What one call needs to stay in flight, taken before it enqueues anything.
  struct Ticket {
    std::shared_ptr<Flight> flight;  // its event is recorded by finish()
    std::unique_ptr<Slab> slab;      // the kernel's pair list; null for copies
    CUevent entry = nullptr;         // for a bridged call: recorded on the caller's stream
  };
  // A ticket for a call of `blocks` blocks and `bytes` bytes: an event, a slab
  // of at least slab_bytes (none for 0; reused when a finished flight held
  // one, else made: a registered, private Block), an entry event when
  // `bridge`, and a reserved place among the pending flights, so that
  // finish() cannot run out of memory. Device context current. Throws
  // Error(cuda) and what Block::open throws; then nothing is held.
  Ticket begin(std::size_t slab_bytes, bool bridge, std::size_t blocks, std::size_t bytes, const char* what);
  // Gives back what `ticket` holds. Only when nothing of the call is in
  // flight (never enqueued). Never throws.
  void cancel(Ticket& ticket) noexcept;
  // For a call some of whose work may have been enqueued on `stream` and
  // that fails: synchronizes `stream`; when that says the work is done (or
  // the context lost), cancel(); otherwise gives back all but the slab,
  // which is kept for the process, and marks the pool unsettled (drain()).
  // Device context current. Never throws.
  void withdraw(Ticket& ticket, CUstream stream) noexcept;
  // After the call's work was enqueued on `stream`: records the flight's
  // event there and keeps the slab until the event is done. When recording
  // fails, withdraws the ticket (above) and throws Error(cuda). Device
  // context current.
  std::shared_ptr<Flight> finish(Ticket& ticket, CUstream stream);

 private:
  struct Pending {
    std::shared_ptr<Flight> flight;
    std::unique_ptr<Slab> slab;
  };
  // Moves the slabs of finished flights to free_, drops those flights. Lock held.
  void reap_locked() noexcept;
  // A slab of at least `bytes`: a free one, or a new one. Throws.
  std::unique_ptr<Slab> take_slab(std::size_t bytes);
  // Keeps `slab` for reuse. Lock held. Never throws (drops it without memory).
  void keep_slab_locked(std::unique_ptr<Slab> slab) noexcept;

  int device_;
  std::shared_ptr<EventPool> events_;
  std::mutex lock_;
  CUstream own_ = nullptr;
  std::vector<Pending> pending_;  // capacity >= size + reserved_, always
  std::size_t reserved_ = 0;      // places promised to tickets not finished yet
  std::vector<std::unique_ptr<Slab>> free_;
  bool unsettled_ = false;  // some call's work is not known to be done (withdraw(), drain())
};

}  // namespace unimem::gpu::detail
