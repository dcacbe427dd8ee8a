// src/remote/remote_pool.cpp — remote::RemotePool: batched one-sided gets and puts of an export's cells.
//
// What this file owns: connecting to an exporter from its descriptor (an
// endpoint to its worker with UCX peer failure handling, the remote keys
// unpacked, one probe read so that a dead or unreachable exporter shows at
// connect), and every get/put call: arguments are checked before anything is
// sent, the cells are sorted by remote index and runs adjacent both remotely
// and locally become one operation, and a RemoteTransfer follows the call's
// rounds (generations before, bytes, generations after; or the puts and a
// flush, since a put's own completion only frees its source).
//
// Same host: where the descriptor says the exporter runs on this host and
// its Block can be attached here, connect() takes that route instead
// (src/remote/same_host.cpp) and opens no UCX endpoint at all: each call
// checks that the exporter still stands, copies its cells itself, and
// returns a transfer that is already done (or failed).
//
// Progress: the reader has no thread of its own. Whoever asks a transfer
// whether it is done (ready, wait) progresses the worker, under the state's
// lock; UCX runs the completion callbacks inside that, so every field an
// operation shares with its callback is guarded by the lock. An operation
// whose transfer was dropped stays in the state's list until UCX is done
// with its buffers.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <thread>

#include "remote/descriptor.hpp"
#include "remote/same_host.hpp"
#include "remote/ucx.hpp"
#include "unimem/remote.hpp"

namespace unimem::remote {
namespace detail {

struct RemoteState {
  // With `local`, the same-host route: no UCX context, worker or endpoint.
  RemoteState(Descriptor d, const RemoteOptions& options, std::unique_ptr<SameHostLink> local_link)
      : descriptor(std::move(d)), keepalive(options.keepalive), local(std::move(local_link)) {
    if (!local) {
      context.emplace(false, options.keepalive);
      worker.emplace(*context);
    }
  }
  ~RemoteState();
  RemoteState(const RemoteState&) = delete;
  RemoteState& operator=(const RemoteState&) = delete;

  // Progresses the worker until it has nothing to do right now, and drops
  // finished operations from `flying`. Lock held.
  void progress_locked();
  // The error for the connection's failure. Lock held; failure != UCS_OK.
  Error failure_error() const { return error_of("the connection to the exporter", failure); }
  // Starts `op` (planned for this state): its first round is issued, and it
  // is kept in `flying` until UCX is done with it. Throws Error(disconnected)
  // when the connection failed earlier.
  static RemoteTransfer start(const std::shared_ptr<RemoteState>& state, std::shared_ptr<RemoteOperation> op);
  // How long a drain (destruction) waits before closing the endpoint by force.
  std::chrono::milliseconds drain_limit() const { return 4 * keepalive + std::chrono::seconds(2); }

  Descriptor descriptor;
  std::chrono::milliseconds keepalive;
  std::unique_ptr<SameHostLink> local;  // the same-host route, or null (UCX)
  std::string why_not_local;            // what kept it from the same-host route
  std::mutex lock;
  std::optional<Context> context;  // UCX route only
  std::optional<Worker> worker;
  ucp_ep_h ep = nullptr;
  ucp_rkey_h cells_rkey = nullptr;
  ucp_rkey_h generations_rkey = nullptr;
  ucs_status_t failure = UCS_OK;                       // set by the endpoint's error callback
  std::list<std::shared_ptr<RemoteOperation>> flying;  // issued, not yet done with by UCX
};

// One get or put call, in rounds. Fields below `lock` are the state's lock's.
struct RemoteOperation {
  struct Run {
    std::uint64_t remote;
    std::byte* local;
    std::size_t bytes;
  };
  enum class Round : std::uint8_t { generations_before, bytes, generations_after, done };

  RemoteState* state = nullptr;  // outlives the operation: it holds it while UCX does (flying)
  bool put = false;
  bool check = false;
  std::size_t cells = 0;
  std::size_t bytes = 0;
  std::vector<Run> data;              // the merged runs of bytes
  std::vector<Run> generation_runs;   // into `before`; the after round reads into `after` at the same offsets
  std::vector<std::size_t> order;     // positions sorted by remote index
  std::vector<std::uint64_t> before;  // generations by sorted position
  std::vector<std::uint64_t> after;

  // lock:
  Round round = Round::bytes;
  std::size_t outstanding = 0;
  ucs_status_t status = UCS_OK;
  std::optional<Error> local_failure;  // the same-host route's (set before the transfer is handed out)

  bool finished() const noexcept { return outstanding == 0 && (round == Round::done || status != UCS_OK); }
  // Issues rounds while the previous one is complete. Lock held.
  void advance();
  // Starts one operation per run; `after`: the generation runs into `after`.
  void issue(const std::vector<Run>& runs, bool generations, bool after_round = false);
  static void completed(void* request, ucs_status_t status, void* self) noexcept;
};

void RemoteOperation::completed(void* request, ucs_status_t status, void* self) noexcept {
  auto* op = static_cast<RemoteOperation*>(self);
  if (status != UCS_OK && op->status == UCS_OK) op->status = status;
  --op->outstanding;
  ucp_request_free(request);
}

void RemoteOperation::issue(const std::vector<Run>& runs, bool generations, bool after_round) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &RemoteOperation::completed;
  param.user_data = this;
  ucp_rkey_h rkey = generations ? state->generations_rkey : state->cells_rkey;
  const std::ptrdiff_t shift =
      after_round ? reinterpret_cast<std::byte*>(after.data()) - reinterpret_cast<std::byte*>(before.data()) : 0;
  auto started = [&](ucs_status_ptr_t r) {
    if (r == nullptr) return true;  // completed at once
    if (UCS_PTR_IS_ERR(r)) {
      if (status == UCS_OK) status = UCS_PTR_STATUS(r);
      return false;
    }
    ++outstanding;
    return true;
  };
  for (const Run& run : runs) {
    std::byte* local = run.local + shift;
    const ucs_status_ptr_t r = put ? ucp_put_nbx(state->ep, local, run.bytes, run.remote, rkey, &param)
                                   : ucp_get_nbx(state->ep, local, run.bytes, run.remote, rkey, &param);
    if (!started(r)) return;
  }
  // A put is complete at the remote end only once the endpoint is flushed.
  if (put) (void)started(ucp_ep_flush_nbx(state->ep, &param));
}

void RemoteOperation::advance() {
  while (outstanding == 0 && status == UCS_OK && round != Round::done) {
    switch (round) {
      case Round::generations_before:
        round = Round::bytes;
        issue(data, false);
        break;
      case Round::bytes:
        round = check ? Round::generations_after : Round::done;
        if (check) issue(generation_runs, true, true);
        break;
      case Round::generations_after:
        round = Round::done;
        break;
      case Round::done:
        break;
    }
  }
}

void RemoteState::progress_locked() {
  if (!worker) return;  // the same-host route: nothing ever flies
  while (ucp_worker_progress(worker->get()) != 0) {
  }
  for (auto it = flying.begin(); it != flying.end();) {
    (*it)->advance();
    it = (*it)->finished() ? flying.erase(it) : std::next(it);
  }
}

RemoteState::~RemoteState() {
  // Operations still in flight write (gets) or read (puts) the callers'
  // memory: let UCX finish with them, for as long as a live peer needs and
  // a dead one takes to be noticed; then close by force, which ends them.
  const auto deadline = std::chrono::steady_clock::now() + drain_limit();
  while (!flying.empty() && failure == UCS_OK && std::chrono::steady_clock::now() < deadline) progress_locked();
  if (cells_rkey != nullptr) ucp_rkey_destroy(cells_rkey);
  if (generations_rkey != nullptr) ucp_rkey_destroy(generations_rkey);
  if (ep != nullptr) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    const ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &param);
    if (UCS_PTR_IS_PTR(r)) {
      while (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_worker_progress(worker->get());
      ucp_request_free(r);
    }
  }
  // Force-closing completed whatever was left (with errors): the callbacks
  // have run, so nothing refers to the operations any more.
  progress_locked();
}

namespace {

void on_endpoint_error(void* self, ucp_ep_h, ucs_status_t status) {
  auto* state = static_cast<RemoteState*>(self);  // called inside progress, under the state's lock
  if (state->failure == UCS_OK) state->failure = status == UCS_OK ? UCS_ERR_CONNECTION_RESET : status;
}

[[noreturn]] void bad(const std::string& why) {
  throw Error(Errc::invalid_argument, 0, "unimem: RemotePool: " + why + "; nothing was sent");
}

}  // namespace
}  // namespace detail

// ---- RemoteTransfer --------------------------------------------------------------

RemoteTransfer::RemoteTransfer() noexcept = default;
RemoteTransfer::RemoteTransfer(std::shared_ptr<detail::RemoteState> state,
                               std::shared_ptr<detail::RemoteOperation> op) noexcept
    : state_(std::move(state)), op_(std::move(op)) {}
RemoteTransfer::RemoteTransfer(const RemoteTransfer&) noexcept = default;
RemoteTransfer& RemoteTransfer::operator=(const RemoteTransfer&) noexcept = default;
RemoteTransfer::RemoteTransfer(RemoteTransfer&&) noexcept = default;
RemoteTransfer& RemoteTransfer::operator=(RemoteTransfer&&) noexcept = default;
RemoteTransfer::~RemoteTransfer() = default;

bool RemoteTransfer::ready() const {
  if (!op_) return true;
  detail::RemoteState& s = *op_->state;
  std::lock_guard hold(s.lock);
  if (op_->local_failure) throw *op_->local_failure;
  if (op_->round != detail::RemoteOperation::Round::done || op_->status != UCS_OK) s.progress_locked();
  if (op_->status != UCS_OK) {
    // Failed: report once UCX is done with the buffers (outstanding == 0);
    // a failed connection ends them within the keepalive time.
    if (op_->outstanding != 0) return false;
    if (s.failure != UCS_OK) throw s.failure_error();
    throw detail::error_of(op_->put ? "a put" : "a get", op_->status);
  }
  if (op_->round == detail::RemoteOperation::Round::done) return true;
  if (s.failure != UCS_OK && op_->outstanding == 0) throw s.failure_error();
  return false;
}

bool RemoteTransfer::wait(std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (unsigned spins = 0;; ++spins) {
    if (ready()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    if (spins % 64 == 63) std::this_thread::yield();  // other waiters may hold the lock
  }
}

void RemoteTransfer::wait() const {
  while (!wait(std::chrono::hours(1))) {
  }
}

std::size_t RemoteTransfer::cells() const noexcept { return op_ ? op_->cells : 0; }
std::size_t RemoteTransfer::bytes() const noexcept { return op_ ? op_->bytes : 0; }
std::size_t RemoteTransfer::operations() const noexcept { return op_ ? op_->data.size() : 0; }

std::vector<std::size_t> RemoteTransfer::changed() const {
  wait();
  std::vector<std::size_t> out;
  if (!op_ || !op_->check) return out;
  for (std::size_t k = 0; k < op_->order.size(); ++k) {
    if (op_->before[k] != op_->after[k]) out.push_back(op_->order[k]);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::uint64_t> RemoteTransfer::generations() const {
  wait();
  std::vector<std::uint64_t> out;
  if (!op_ || !op_->check) return out;
  out.resize(op_->order.size());
  for (std::size_t k = 0; k < op_->order.size(); ++k) out[op_->order[k]] = op_->before[k];
  return out;
}

// ---- RemotePool ------------------------------------------------------------------

RemotePool::RemotePool(std::shared_ptr<detail::RemoteState> state) noexcept : state_(std::move(state)) {}
RemotePool::RemotePool(RemotePool&&) noexcept = default;
RemotePool& RemotePool::operator=(RemotePool&&) noexcept = default;
RemotePool::~RemotePool() = default;

RemotePool RemotePool::connect(std::span<const std::byte> descriptor, const RemoteOptions& options) {
  detail::Descriptor d = detail::parse(descriptor);  // bad_format before anything else
  std::string why_not_local = "RemoteOptions::same_host is off";
  std::unique_ptr<detail::SameHostLink> local;
  if (options.same_host) local = detail::SameHostLink::open(d, why_not_local);
  const bool debug =
      std::getenv("UNIMEM_REMOTE_DEBUG") != nullptr;  // NOLINT(concurrency-mt-unsafe): as UCX's own reads
  if (local) {
    if (debug) std::fprintf(stderr, "unimem: RemotePool: same-host route (the exporter's Block attached)\n");
    return RemotePool(std::make_shared<detail::RemoteState>(std::move(d), options, std::move(local)));
  }
  auto state = std::make_shared<detail::RemoteState>(std::move(d), options, nullptr);
  detail::RemoteState& s = *state;
  s.why_not_local = std::move(why_not_local);
  std::lock_guard hold(s.lock);
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  params.address = reinterpret_cast<const ucp_address_t*>(s.descriptor.worker_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  if (options.detect_peer_failure) {
    params.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = &detail::on_endpoint_error;
    params.err_handler.arg = &s;
  }
  const ucs_status_t created = ucp_ep_create(s.worker->get(), &params, &s.ep);
  if (created == UCS_ERR_UNREACHABLE) {
    // UCX found no lane that both ends have and that reports a peer's
    // failure; shared memory alone does not (UCX 1.13-1.16): tcp beside it does.
    throw Error(Errc::system, 0,
                "unimem: RemotePool::connect: UCX has no transport to the exporter that can report a peer's "
                "failure (ucp_ep_create: " +
                    std::string(ucs_status_string(created)) +
                    "); shared memory alone cannot: allow tcp beside it (e.g. UCX_TLS=sm,tcp), connect with "
                    "RemoteOptions::detect_peer_failure off, or check that both ends share a transport");
  }
  detail::check("ucp_ep_create", created);
  detail::check("ucp_ep_rkey_unpack (the cells' key)",
                ucp_ep_rkey_unpack(s.ep, s.descriptor.cells_rkey.data(), &s.cells_rkey));
  if (s.descriptor.has_generations()) {
    detail::check("ucp_ep_rkey_unpack (the generations' key)",
                  ucp_ep_rkey_unpack(s.ep, s.descriptor.generations_rkey.data(), &s.generations_rkey));
  }
  // One small read proves the exporter is there and the key works.
  std::uint64_t probe = 0;
  ucp_request_param_t param{};
  const ucs_status_ptr_t r =
      s.descriptor.has_generations()
          ? ucp_get_nbx(s.ep, &probe, sizeof probe, s.descriptor.generations_address, s.generations_rkey, &param)
          : ucp_get_nbx(s.ep, &probe, 1, s.descriptor.cells_address, s.cells_rkey, &param);
  if (UCS_PTR_IS_ERR(r)) detail::fail("ucp_get_nbx (the connection's probe)", UCS_PTR_STATUS(r));
  if (r != nullptr) {
    const auto deadline = std::chrono::steady_clock::now() + s.drain_limit();
    ucs_status_t status;
    while ((status = ucp_request_check_status(r)) == UCS_INPROGRESS && std::chrono::steady_clock::now() < deadline) {
      ucp_worker_progress(s.worker->get());
    }
    if (status == UCS_INPROGRESS) {
      ucp_request_cancel(s.worker->get(), r);
      while ((status = ucp_request_check_status(r)) == UCS_INPROGRESS) ucp_worker_progress(s.worker->get());
      ucp_request_free(r);
      throw Error(Errc::disconnected, 0, "unimem: RemotePool::connect: the exporter did not answer");
    }
    ucp_request_free(r);
    if (status != UCS_OK) detail::fail("the connection's probe read", status);
  }
  if (s.failure != UCS_OK) throw s.failure_error();
  // A diagnostic: which UCX lanes (transports) carry this connection. ucp_config_read
  // reads the environment here too, as it does: callers do not change it meanwhile.
  if (debug) {
    std::fprintf(stderr, "unimem: RemotePool: UCX route (not the same-host one: %s)\n", s.why_not_local.c_str());
    ucp_ep_print_info(s.ep, stderr);
  }
  return RemotePool(std::move(state));
}

namespace {

// Builds the operation of a call: checks, sorts, merges. `local_at(i)` is
// the local address of the i-th cell named (or throws).
template <class LocalAt>
std::shared_ptr<detail::RemoteOperation> plan(const std::shared_ptr<detail::RemoteState>& state, bool put,
                                              std::span<const std::uint32_t> remote, std::size_t locals,
                                              LocalAt local_at, bool check) {
  const char* what = put ? "put" : "get";
  if (!state) detail::bad(std::string(what) + " on a moved-from RemotePool");
  const detail::Descriptor& d = state->descriptor;
  if (remote.size() != locals) {
    detail::bad(std::string(what) + " of " + std::to_string(remote.size()) + " remote cells and " +
                std::to_string(locals) + " local ones: the lists differ in length");
  }
  if (put && d.read_only) detail::bad("put through a read-only export");
  if (check && !d.has_generations()) {
    detail::bad("a generation check on an export without generations (a Block's, not a SharedGrid's)");
  }
  auto op = std::make_shared<detail::RemoteOperation>();
  op->state = state.get();
  op->put = put;
  op->check = check;
  op->cells = remote.size();
  op->bytes = remote.size() * d.cell_size;
  std::vector<std::byte*> local(remote.size());
  for (std::size_t i = 0; i < remote.size(); ++i) {
    if (remote[i] >= d.cells) {
      detail::bad("remote cell " + std::to_string(remote[i]) + " (at " + std::to_string(i) +
                  ") is not below the export's " + std::to_string(d.cells) + " cells");
    }
    local[i] = local_at(i);
    if (local[i] == nullptr) detail::bad("local cell " + std::to_string(i) + " is null");
  }
  if (check) {
    op->before.assign(remote.size(), 0);
    op->after.assign(remote.size(), 0);
  }
  op->order.resize(remote.size());
  std::iota(op->order.begin(), op->order.end(), std::size_t{0});
  std::stable_sort(op->order.begin(), op->order.end(),
                   [&](std::size_t a, std::size_t b) { return remote[a] < remote[b]; });
  const std::size_t size = d.cell_size;
  for (std::size_t k = 0; k < op->order.size(); ++k) {
    const std::size_t i = op->order[k];
    const std::uint64_t address = d.cells_address + std::uint64_t{remote[i]} * size;
    detail::RemoteOperation::Run* last = op->data.empty() ? nullptr : &op->data.back();
    if (last != nullptr && last->remote + last->bytes == address && last->local + last->bytes == local[i]) {
      last->bytes += size;
    } else {
      op->data.push_back({address, local[i], size});
    }
    if (check) {  // generation runs: consecutive remote indices, into before/after by sorted position
      const std::uint64_t g = d.generations_address + std::uint64_t{remote[i]} * 8;
      detail::RemoteOperation::Run* run = op->generation_runs.empty() ? nullptr : &op->generation_runs.back();
      if (run != nullptr && run->remote + run->bytes == g) {
        run->bytes += 8;
      } else {
        op->generation_runs.push_back({g, reinterpret_cast<std::byte*>(op->before.data() + k), 8});
      }
    }
  }
  return op;
}

// The same-host route: the whole call, here and now. Throws
// Error(disconnected) when the exporter is gone before it starts; the
// transfer fails with it when the exporting process died while the bytes
// moved (a get's bytes may be stale then: its pages outlive it here). An
// Exporter destroyed meanwhile waits for the call (src/remote/beacon.hpp).
void run_locally(detail::RemoteState& s, detail::RemoteOperation& op) {
  detail::SameHostLink& link = *s.local;
  const std::uint64_t remote_base = s.descriptor.cells_address;
  std::vector<detail::SameHostLink::Copy> copies;
  copies.reserve(op.data.size());
  for (const auto& run : op.data) {
    std::byte* there = link.cells() + (run.remote - remote_base);
    copies.push_back(op.put ? detail::SameHostLink::Copy{there, run.local, run.bytes}
                            : detail::SameHostLink::Copy{run.local, there, run.bytes});
  }
  // Generations as a seqlock reader reads them: before (acquire), the bytes,
  // then a fence and after.
  auto read_generations = [&](std::vector<std::uint64_t>& into) {
    const std::uint64_t generations_base = s.descriptor.generations_address;
    for (const auto& run : op.generation_runs) {
      const std::uint64_t* from = link.generations() + (run.remote - generations_base) / 8;
      // A run reads into `before` from its sorted position; `after` alike.
      const auto first = static_cast<std::size_t>(reinterpret_cast<std::uint64_t*>(run.local) - op.before.data());
      for (std::size_t k = 0; k < run.bytes / 8; ++k) into[first + k] = __atomic_load_n(from + k, __ATOMIC_ACQUIRE);
    }
  };
  {
    const detail::SameHostLink::Call call(link);  // throws disconnected
    if (op.check) read_generations(op.before);
    detail::SameHostLink::copy(copies);
    if (op.check) {
#if !defined(__SANITIZE_THREAD__)
      std::atomic_thread_fence(std::memory_order_acquire);
#else  // GCC's ThreadSanitizer refuses fences: x86 keeps loads in order, this keeps the compiler from moving them
      std::atomic_signal_fence(std::memory_order_acquire);
#endif
      read_generations(op.after);
    }
  }
  if (!link.exporter_alive()) {
    op.local_failure = Error(Errc::disconnected, 0, "unimem: RemotePool: the exporting process exited during the call");
  }
  op.round = detail::RemoteOperation::Round::done;
}

}  // namespace

RemoteTransfer detail::RemoteState::start(const std::shared_ptr<RemoteState>& state,
                                          std::shared_ptr<RemoteOperation> op) {
  RemoteState& s = *state;
  if (s.local) {
    if (op->cells == 0) {
      op->round = detail::RemoteOperation::Round::done;  // moves nothing: done, whatever became of the exporter
    } else {
      run_locally(s, *op);
    }
    return RemoteTransfer(state, std::move(op));
  }
  std::lock_guard hold(s.lock);
  if (s.failure != UCS_OK) throw s.failure_error();
  if (op->cells == 0) {
    op->round = detail::RemoteOperation::Round::done;
    return RemoteTransfer(state, std::move(op));
  }
  if (op->check) {
    op->round = detail::RemoteOperation::Round::generations_before;
    op->issue(op->generation_runs, true);
  } else {
    op->round = detail::RemoteOperation::Round::bytes;
    op->issue(op->data, false);
  }
  op->advance();
  if (!op->finished()) s.flying.push_back(op);
  return RemoteTransfer(state, std::move(op));
}

RemoteTransfer RemotePool::get(std::span<const std::uint32_t> remote_cells, std::span<std::byte* const> local,
                               const GetOptions& options) {
  auto op = plan(
      state_, false, remote_cells, local.size(), [&](std::size_t i) { return local[i]; }, options.check_generations);
  return detail::RemoteState::start(state_, std::move(op));
}

RemoteTransfer RemotePool::put(std::span<const std::uint32_t> remote_cells, std::span<const std::byte* const> local) {
  auto op = plan(
      state_, true, remote_cells, local.size(), [&](std::size_t i) { return const_cast<std::byte*>(local[i]); }, false);
  return detail::RemoteState::start(state_, std::move(op));
}

namespace {

template <class Cells>
auto cell_pointers(const Cells& cells, std::size_t cell_size, const char* what) {
  return [&cells, cell_size, what](std::size_t i) {
    if (!cells[i]) detail::bad(std::string(what) + ": local cell " + std::to_string(i) + " is empty");
    if (cells[i].size() != cell_size) {
      detail::bad(std::string(what) + ": local cell " + std::to_string(i) + " holds " +
                  std::to_string(cells[i].size()) + " bytes, the export's cells " + std::to_string(cell_size));
    }
    return cells[i].data();
  };
}

}  // namespace

RemoteTransfer RemotePool::get(std::span<const std::uint32_t> remote_cells, std::span<const SharedCell> local,
                               const GetOptions& options) {
  auto op = plan(state_, false, remote_cells, local.size(), cell_pointers(local, cell_size(), "get"),
                 options.check_generations);
  return detail::RemoteState::start(state_, std::move(op));
}

RemoteTransfer RemotePool::put(std::span<const std::uint32_t> remote_cells, std::span<const SharedCell> local) {
  auto op = plan(state_, true, remote_cells, local.size(), cell_pointers(local, cell_size(), "put"), false);
  return detail::RemoteState::start(state_, std::move(op));
}

std::size_t RemotePool::cells() const noexcept { return state_ ? state_->descriptor.cells : 0; }
std::size_t RemotePool::cell_size() const noexcept { return state_ ? state_->descriptor.cell_size : 0; }
bool RemotePool::read_only() const noexcept { return state_ && state_->descriptor.read_only; }
bool RemotePool::has_generations() const noexcept { return state_ && state_->descriptor.has_generations(); }
std::uint64_t RemotePool::generation() const noexcept { return state_ ? state_->descriptor.generation : 0; }
Route RemotePool::route() const noexcept { return state_ && state_->local ? Route::same_host : Route::ucx; }

}  // namespace unimem::remote
