// src/remote/ucx.hpp — the few UCP pieces both sides of a remote pool use.
//
// Owns: turning a UCX status into a unimem::Error (a peer that is gone is
// Errc::disconnected, anything else Errc::system with the call's name), and
// RAII holders for a UCP context and worker, made the same way on both
// sides (RMA, plus wakeup for an exporter that sleeps between requests).
#pragma once

#include <ucp/api/ucp.h>

#include <chrono>
#include <string>

#include "unimem/error.hpp"

namespace unimem::remote::detail {

// True for the statuses with which UCX reports a peer that went away (or an
// endpoint closed under an operation).
bool peer_is_gone(ucs_status_t status) noexcept;

// The Error for `status` returned by `call` (e.g. "ucp_get_nbx").
Error error_of(const std::string& call, ucs_status_t status);
[[noreturn]] inline void fail(const std::string& call, ucs_status_t status) { throw error_of(call, status); }
inline void check(const std::string& call, ucs_status_t status) {
  if (status != UCS_OK) fail(call, status);
}

class Context {
 public:
  // wakeup: the worker can sleep (ucp_worker_arm/wait). keepalive: UCX's
  // interval, unless UCX_KEEPALIVE_INTERVAL is set (0: UCX's default).
  Context(bool wakeup, std::chrono::milliseconds keepalive);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ucp_context_h get() const noexcept { return context_; }
  // Forgets the context without cleaning it up (a fork() child's copy of the
  // parent's). Never throws.
  void abandon() noexcept { context_ = nullptr; }

 private:
  ucp_context_h context_ = nullptr;
};

class Worker {
 public:
  // UCS_THREAD_MODE_SERIALIZED: callers serialise (a lock, or one thread).
  explicit Worker(const Context& context);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ucp_worker_h get() const noexcept { return worker_; }
  // Forgets the worker without destroying it (a fork() child's copy of the
  // parent's). Never throws.
  void abandon() noexcept { worker_ = nullptr; }

 private:
  ucp_worker_h worker_ = nullptr;
};

}  // namespace unimem::remote::detail
