// src/gpu/offload_flights.cpp — events, slabs and the pool's stream (see offload_flights.hpp).
#include "gpu/offload_flights.hpp"

#include <algorithm>
#include <new>
#include <string>

#include "unimem/error.hpp"

namespace unimem::gpu::detail {
namespace {

constexpr std::size_t kMinSlab = std::size_t{64} << 10;  // 4096 pairs

[[noreturn]] void forked_child(const char* what) {
  throw Error(Errc::invalid_argument, 0,
              std::string("unimem: OffloadPool: ") + what +
                  " in a fork() child: its CUDA work and handles are the parent's (attach the pool in this process)");
}

}  // namespace

EventPool::EventPool(int device) noexcept : device_(device) {}

bool EventPool::forked() const noexcept { return forked_.forked(); }

EventPool::~EventPool() {
  if (forked()) {
    // The parent's handles, and a list another thread may have been changing
    // at the fork: neither is touched.
    new (&free_) std::vector<CUevent>();  // the old buffer is let go, not freed
    return;
  }
  if (free_.empty()) return;
  try {
    ContextScope context(device_);
    for (CUevent e : free_) driver().cuEventDestroy(e);
  } catch (...) {  // the context is gone (driver unloading): so are its events
  }
}

CUevent EventPool::take() {
  if (forked()) forked_child("taking an event");  // before the lock (see the header)
  {
    std::lock_guard hold(lock_);
    if (!free_.empty()) {
      CUevent e = free_.back();
      free_.pop_back();
      return e;
    }
  }
  CUevent e = nullptr;
  check(driver().cuEventCreate(&e, kEventDisableTiming), "cuEventCreate");
  return e;
}

void EventPool::give(CUevent event) noexcept {
  if (forked()) return;  // the parent's event: let go; the lock may be held for good
  try {
    std::lock_guard hold(lock_);
    free_.push_back(event);
  } catch (...) {  // no memory for the list: let the event go instead
    if (!forked()) driver().cuEventDestroy(event);
  }
}

Flight::~Flight() { events->give(event); }

std::string Flight::describe() const {
  return std::string("the offload ") + what + " of " + std::to_string(blocks) + " blocks (on its stream)";
}

bool Flight::done() const {
  if (events->forked()) forked_child("asking a Transfer whether it is done");  // before any CUDA call
  ContextScope context(events->device());
  RelaxedCapture relaxed;  // a query in global mode would fail, and end another thread's capture
  const CUresult r = driver().cuEventQuery(event);
  if (r == 0) return true;
  if (context_lost(r)) check(r, describe());
  return false;  // still running, or the driver could not say: not known to be done
}

void Flight::wait() const {
  if (events->forked()) forked_child("waiting for a Transfer");  // before any CUDA call
  ContextScope context(events->device());
  RelaxedCapture relaxed;
  const CUresult r = driver().cuEventSynchronize(event);
  if (r == 0) return;
  if (context_lost(r)) check(r, describe());
  check(r, "waiting for " + describe() +
               " (not known to be done: its blocks may still be moving; keep its cells and device blocks until "
               "ready() says true)");
}

Flights::Flights(int device, bool own_stream) : device_(device), events_(std::make_shared<EventPool>(device)) {
  if (own_stream) (void)this->own_stream();
}

Flights::~Flights() {
  if (events_->forked()) {
    // The parent's stream, events and registered slabs, in lists another
    // thread may have been changing at the fork: releasing them would call
    // CUDA on handles of another process's context, and walking the lists
    // could meet them half-changed. The lists' buffers are let go unread
    // (the child's copy of the memory goes at exit or exec).
    new (&pending_) std::vector<Pending>();
    new (&free_) std::vector<std::unique_ptr<Slab>>();
    return;
  }
  (void)drain();  // the slabs of flights not known to be done are kept for the process
  try {
    ContextScope context(device_);
    free_.clear();                                        // slabs unregister and unmap
    if (own_ != nullptr) driver().cuStreamDestroy(own_);  // what still runs on it finishes first (CUDA's rule)
  } catch (...) {                                         // no context: nothing of it runs any more
  }
}

bool Flights::drain() noexcept {
  // In a fork() child nothing of this process is in flight: the flights are
  // the parent's, in its context and its own mapping of the memory. Checked
  // before the lock, which the fork may have copied held.
  if (events_->forked()) return true;
  std::lock_guard hold(lock_);
  try {
    ContextScope context(device_);
    RelaxedCapture relaxed;
    for (Pending& p : pending_) {
      const CUresult r = driver().cuEventSynchronize(p.flight->event);
      if (r == 0 || context_lost(r)) {  // done, or its context is lost and nothing of it runs any more
        if (p.slab != nullptr) keep_slab_locked(std::move(p.slab));
      } else {                   // not known to be done: its slab may still be read; never freed
        (void)p.slab.release();  // NOLINT(bugprone-unused-return-value)
        unsettled_ = true;
      }
    }
  } catch (...) {  // the context cannot be made current: nothing of it runs any more
    for (Pending& p : pending_) {
      if (p.slab != nullptr) keep_slab_locked(std::move(p.slab));
    }
  }
  pending_.clear();
  return !unsettled_;
}

CUstream Flights::own_stream() {
  std::lock_guard hold(lock_);
  if (own_ == nullptr) check(driver().cuStreamCreate(&own_, kStreamNonBlocking), "cuStreamCreate");
  return own_;
}

void Flights::keep_slab_locked(std::unique_ptr<Slab> slab) noexcept {
  try {
    free_.push_back(std::move(slab));
  } catch (...) {  // no memory for the list: the slab goes (nothing uses it)
  }
}

void Flights::reap_locked() noexcept {
  if (pending_.empty()) return;
  RelaxedCapture relaxed;  // a query in global mode would fail, and end another thread's capture
  std::size_t kept = 0;
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    Pending& p = pending_[i];
    const CUresult r = driver().cuEventQuery(p.flight->event);
    // Only success says done; a lost context says nothing of it runs any
    // more. Not ready, or any other failure (the driver could not say, e.g.
    // a capture error): kept, its slab not reused.
    if (r != 0 && !context_lost(r)) {
      if (kept != i) pending_[kept] = std::move(p);
      ++kept;
      continue;
    }
    if (p.slab != nullptr) keep_slab_locked(std::move(p.slab));
    p.flight.reset();
  }
  pending_.resize(kept);  // shrinks only: keeps the capacity reserved for tickets
}

std::unique_ptr<Slab> Flights::take_slab(std::size_t bytes) {
  {
    std::lock_guard hold(lock_);
    reap_locked();
    // The smallest free slab that fits.
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if ((*it)->capacity >= bytes && (best == free_.end() || (*it)->capacity < (*best)->capacity)) best = it;
    }
    if (best != free_.end()) {
      std::unique_ptr<Slab> s = std::move(*best);
      free_.erase(best);
      return s;
    }
  }
  std::size_t size = kMinSlab;
  while (size < bytes) size *= 2;
  BlockOptions o;
  o.shareable = false;
  o.pinning = Pinning::unpinned;  // registration pins it
  o.visibility = Visibility::gpus;
  auto s = std::make_unique<Slab>();
  s->memory = Block::open(size, o);
  s->capacity = s->memory.size();
  s->device_address = reinterpret_cast<CUdeviceptr>(s->memory.device_pointer(device_));
  return s;
}

Flights::Ticket Flights::begin(std::size_t slab_bytes, bool bridge, std::size_t blocks, std::size_t bytes,
                               const char* what) {
  if (events_->forked()) forked_child("starting a move");  // before the lock (see the header)
  Ticket t;
  if (slab_bytes != 0) t.slab = take_slab(slab_bytes);
  try {
    CUevent e = events_->take();
    try {
      t.flight = std::make_shared<Flight>(events_, e, blocks, bytes, what);
    } catch (...) {
      events_->give(e);
      throw;
    }
    if (bridge) t.entry = events_->take();
    std::lock_guard hold(lock_);
    reap_locked();
    pending_.reserve(pending_.size() + reserved_ + 1);
    ++reserved_;
  } catch (...) {
    if (t.entry != nullptr) events_->give(t.entry);
    t.flight.reset();
    if (t.slab != nullptr) {
      std::lock_guard hold(lock_);
      keep_slab_locked(std::move(t.slab));
    }
    throw;
  }
  return t;
}

void Flights::cancel(Ticket& ticket) noexcept {
  if (ticket.entry != nullptr) events_->give(ticket.entry);
  ticket.entry = nullptr;
  ticket.flight.reset();  // its event goes back (never recorded, or recorded and done)
  std::lock_guard hold(lock_);
  --reserved_;
  if (ticket.slab != nullptr) keep_slab_locked(std::move(ticket.slab));
}

void Flights::withdraw(Ticket& ticket, CUstream stream) noexcept {
  CUresult r = 0;
  {
    RelaxedCapture relaxed;
    r = driver().cuStreamSynchronize(stream);
  }
  if (r == 0 || context_lost(r)) {  // nothing of the call is in flight: its parts may go back
    cancel(ticket);
    return;
  }
  // Not known to be over: the slab may still be read. Everything else goes
  // back (events may be reused while a recorded instance is pending); the
  // slab is kept for the rest of the process, and so is the pool's memory.
  if (ticket.entry != nullptr) events_->give(ticket.entry);
  ticket.entry = nullptr;
  ticket.flight.reset();
  (void)ticket.slab.release();  // NOLINT(bugprone-unused-return-value)
  std::lock_guard hold(lock_);
  --reserved_;
  unsettled_ = true;
}

std::shared_ptr<Flight> Flights::finish(Ticket& ticket, CUstream stream) {
  if (CUresult r = driver().cuEventRecord(ticket.flight->event, stream); r != 0) {
    const char* what = ticket.flight->what;  // a literal: outlives the flight
    withdraw(ticket, stream);
    check(r, std::string("cuEventRecord (the end of an offload ") + what + ")");
  }
  if (ticket.entry != nullptr) {  // the caller's stream's wait for it is enqueued: free to reuse
    events_->give(ticket.entry);
    ticket.entry = nullptr;
  }
  std::lock_guard hold(lock_);
  --reserved_;
  pending_.push_back({ticket.flight, std::move(ticket.slab)});  // within the reserved capacity: no throw
  return std::move(ticket.flight);
}

}  // namespace unimem::gpu::detail
