// unimem/remote.hpp — pool cells read and written by peers on other hosts, over UCX.
//
// A KV cache that outgrows one host is shared the way Mooncake, NIXL and
// LMCache's remote backends share it: the owner registers one large host
// region with an RDMA-capable transport once, hands peers a small descriptor
// (its transport address, a remote key and the layout of the cells), and the
// peers move batches of cells with one-sided reads and writes, which need
// nothing of the owner's CPU on RDMA hardware. Here the region is a
// SharedGrid's Block — in practice an OffloadPool's — and the transport is
// UCX's UCP layer (tcp, shared memory, InfiniBand/RoCE: whatever UCX_TLS
// allows on both sides), not a protocol of unimem's own.
//
// On the exporter's own host a reader takes a shorter way by default
// (RemoteOptions::same_host): it maps the exported Block by id, as
// Block::attach does, and copies the cells itself, at memory speed, where UCX
// would copy them through a shared-memory FIFO on the exporter's CPU.
//
//   owner:   remote::Exporter ex = remote::Exporter::create(pool);   // maps the Block once
//            send(ex.descriptor());                                   // bytes, out of band
//   reader:  remote::RemotePool far = remote::RemotePool::connect(descriptor);
//            far.get(remote_indices, local_cell_pointers).wait();     // then pool.fetch(...) to a GPU
//
// This component (the unimem_remote library, target unimem::remote) is built
// where UCX is found (CMake option UNIMEM_UCX); the core library never links
// UCX. Errors are unimem::Error:
//   bad_format        a descriptor that is truncated, corrupt, forged
//                     inconsistently, of another version, or whose sizes overflow;
//   invalid_argument  a call's arguments (cell indices out of range, lists of
//                     different lengths, a put through a read-only export, a
//                     generation check on an export without generations) —
//                     refused before any network operation;
//   disconnected      the peer is gone (its process died, the connection broke,
//                     its exporter was destroyed) — within about the keepalive
//                     time (RemoteOptions::keepalive) when it dies silently;
//   system            another UCX failure; the message names the call and the status.
//
// Trust: a descriptor is a capability. Whoever holds it may read — and unless
// the export is read-only, write — the exported cells. The Exporter maps only
// the cells (and, read-only, their generations), never the rest of the Block
// or of the process. Where the transport enforces registrations (InfiniBand,
// RoCE: the remote key's bounds and rights are checked by the NIC), that is
// the whole of what a holder can touch. UCX's tcp and shared-memory
// transports do not check remote keys against bounds or rights: there the
// RemotePool's local checks keep honest peers inside the cells, and only peers
// trusted with the process's memory (the same user, ptrace rights for cma)
// should be given descriptors. The same-host route maps the whole exported
// Block (read-only for a read-only export): it is taken only by a reader the
// kernel already lets open the exporter's descriptors (/proc/<pid>/fd: the
// same user, ptrace rights), so it grants nothing more. See docs/DESIGN.md,
// "Remote pools".
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "unimem/block.hpp"
#include "unimem/error.hpp"
#include "unimem/offload.hpp"
#include "unimem/share.hpp"

namespace unimem::remote {

// The descriptor format this unimem writes and reads.
inline constexpr std::uint32_t kDescriptorVersion = 2;

// Who drives the exporter's UCX worker. Some transports need the exporter's
// CPU to serve a read or write (tcp emulates one-sided operations with
// messages; every transport needs it to notice that a reader went away), so
// the worker must be progressed while peers use the export.
enum class Progress : std::uint8_t {
  thread,  // a thread of the Exporter's own: it polls while there is traffic,
           // then naps (up to 1 ms at a time: about 1000 wakeups a second when idle)
  caller,  // the caller calls Exporter::progress() often enough (e.g. from its event loop)
};

struct ExportOptions {
  // Map the cells with remote-read rights only: put() through the descriptor
  // is refused by the RemotePool, and by the NIC where the transport enforces
  // rights (see "Trust" above).
  bool read_only = false;
  Progress progress = Progress::thread;
};

// One export of a Block's cells. Move-only.
//
// Thread safety: descriptor(), read_only(), cells(), cell_size() may be
// called from any thread; progress() from one thread at a time (with
// Progress::caller). Destroying an Exporter must not race with its use.
//
// Lifetime: the exported memory (the SharedGrid's, the OffloadPool's or the
// Block's) must outlive the Exporter. Destroying the Exporter unmaps the
// region from UCX and closes its worker: peers' later operations fail with
// Error(disconnected) (or, on transports that cannot tell, time out).
//
// fork(): the export stays the parent's. A child's copy of an Exporter does
// nothing when destroyed (it touches none of the parent's UCX objects or
// threads, and ends nothing the parent exported); progress() there is
// undefined: export again in the child.
class Exporter {
 public:
  // Exports every cell of `grid`, and its generations (read-only, always),
  // so that RemotePool::get can check them. Throws Error(invalid_argument) for
  // a moved-from grid, or a writable export of a grid mapped read-only here;
  // Error(system) when UCX cannot be initialised or the memory mapped.
  static Exporter create(const SharedGrid& grid, const ExportOptions& options = {});
  // Exports every cell of `pool` (its SharedGrid, as above). Needs no GPU.
  static Exporter create(const gpu::OffloadPool& pool, const ExportOptions& options = {});
  // Exports `cells` cells of `cell_size` bytes starting `offset` bytes into
  // `block` (any Block; no generations: a reader's generation check is
  // refused). Throws Error(invalid_argument) when the cells do not fit in the
  // Block (or a size is 0, or the product overflows), or for a writable
  // export of a read-only Block; UCX failures as above.
  static Exporter create(const Block& block, std::size_t offset, std::size_t cell_size, std::size_t cells,
                         const ExportOptions& options = {});

  Exporter(Exporter&&) noexcept;
  Exporter& operator=(Exporter&&) noexcept;
  Exporter(const Exporter&) = delete;
  Exporter& operator=(const Exporter&) = delete;
  // Stops the progress thread, unmaps the memory from UCX, closes the worker.
  // Never throws.
  ~Exporter();

  // The descriptor to hand to readers (format: src/remote/descriptor.hpp):
  // this worker's address, the remote keys, the cells' layout, read-only or
  // not, and this export's generation. Throws Error(invalid_argument) for a
  // moved-from Exporter.
  std::vector<std::byte> descriptor() const;
  // Fresh for every export (random), so that readers can tell a restarted
  // exporter's descriptor from the one they knew. 0 for a moved-from one.
  std::uint64_t generation() const noexcept;
  bool read_only() const noexcept;
  std::size_t cells() const noexcept;
  std::size_t cell_size() const noexcept;

  // With Progress::caller: progresses the worker until it has nothing more to
  // do right now; returns how many events it handled. With Progress::thread it
  // does nothing and returns 0. Throws Error(invalid_argument) for a moved-from
  // Exporter.
  std::size_t progress();

  struct State;

 private:
  explicit Exporter(std::unique_ptr<State> state) noexcept;
  std::unique_ptr<State> state_;
};

// How a RemotePool reaches its exporter.
enum class Route : std::uint8_t {
  ucx,        // through UCX (another host, or the same-host route refused or turned off)
  same_host,  // the exporter's Block mapped here by id; cells copied with memcpy
};

struct RemoteOptions {
  // Take the same-host route where it can be taken: the descriptor says the
  // exporter runs on this host (same boot, same pid namespace) and its Block
  // can be attached here (the same user). Then no UCX endpoint is made; each
  // call checks that the exporting process lives and the Exporter stands
  // (a dead exporter is noticed at once, where UCX over shared memory alone
  // cannot notice it), copies the cells on the calling thread (with helper
  // threads for calls of 4 MiB and more), and returns a transfer that is
  // already done; destroying the Exporter waits for calls copying. Note that
  // the reader's mapping keeps the exporter's pages alive: after the
  // exporter dies, its Block stays in memory until the RemotePool and its
  // transfers are gone. Off: UCX, as between hosts (e.g. to measure it).
  bool same_host = true;
  // How long a peer may stay silent before its connection is declared dead
  // (UCX keepalive, with UCX's peer failure handling): a transfer to a peer
  // that died without closing its connections fails within about twice this.
  // Where UCX_KEEPALIVE_INTERVAL is set in the environment, that wins.
  std::chrono::milliseconds keepalive{1000};
  // UCX route: ask UCX to report a peer's failure (UCP_ERR_HANDLING_MODE_PEER). UCX then
  // uses only transports that can (tcp, InfiniBand/RoCE): on one host, that
  // moves the bytes over tcp even where shared memory is allowed. Without it,
  // shared memory (UCX_TLS=sm) carries the bytes at memory speed, but UCX
  // cannot notice a dead peer: a read from an exporter that died may still
  // complete (from memory UCX had mapped) or fail, and a transport error may
  // end the process (UCX's rule without error handling). Turn it off only
  // between processes that live and die together (the same job on one host).
  bool detect_peer_failure = true;
};

struct GetOptions {
  // Read the cells' generations before and after the bytes (three rounds:
  // generations, bytes, generations), and report the cells whose generation
  // changed meanwhile: RemoteTransfer::changed(). Needs an export with
  // generations (of a SharedGrid or OffloadPool).
  bool check_generations = false;
};

namespace detail {
struct RemoteState;
struct RemoteOperation;
}  // namespace detail

// One get or put: done when every cell of the call has moved (a put: when
// the bytes are in the remote cells). Copyable (copies watch the same call);
// a default-constructed one, and what a call with no cells returns, is done.
// It may outlive its RemotePool (it keeps the connection open until done).
//
// Thread safety: any member function from any thread; they progress the
// RemotePool's UCX worker under its lock.
class RemoteTransfer {
 public:
  RemoteTransfer() noexcept;
  RemoteTransfer(const RemoteTransfer&) noexcept;
  RemoteTransfer& operator=(const RemoteTransfer&) noexcept;
  RemoteTransfer(RemoteTransfer&&) noexcept;
  RemoteTransfer& operator=(RemoteTransfer&&) noexcept;
  ~RemoteTransfer();

  // Progresses the connection once; true when every cell has moved. Throws
  // Error(disconnected) when the peer is gone, Error(system) for another
  // transport failure (then some cells may have moved, the local cells'
  // contents are unspecified, and they stay the caller's).
  bool ready() const;
  // Blocks until done; throws as ready().
  void wait() const;
  // Blocks until done or `timeout` passes: true when done, false on timeout
  // (the transfer goes on). Throws as ready().
  bool wait(std::chrono::milliseconds timeout) const;

  std::size_t cells() const noexcept;  // what the call named
  std::size_t bytes() const noexcept;  // cells x cell size
  // The UCX operations the call's bytes took: cells adjacent in both the
  // remote pool and local memory go as one (not counting generation reads or a
  // put's flush).
  std::size_t operations() const noexcept;
  // After a get with check_generations is done: the positions (into the
  // call's lists, ascending) of the cells whose generation differed before
  // and after their bytes were read — their bytes must not be used. Empty
  // otherwise. Throws as ready() when not done (it waits).
  std::vector<std::size_t> changed() const;
  // After a get with check_generations is done: each cell's generation as
  // read before its bytes (odd: the cell was held; see
  // SharedGrid::generation), to compare with one the owner announced.
  // Empty otherwise. Throws as changed().
  std::vector<std::uint64_t> generations() const;

 private:
  friend struct detail::RemoteState;
  RemoteTransfer(std::shared_ptr<detail::RemoteState> state, std::shared_ptr<detail::RemoteOperation> op) noexcept;
  std::shared_ptr<detail::RemoteState> state_;  // the connection, kept open while this call may need it
  std::shared_ptr<detail::RemoteOperation> op_;
};

// The cells of an export on another process or host. Move-only.
//
// Thread safety: get, put and the accessors may be called from any number of
// threads at once (the UCX worker is driven under one lock). Moving,
// assigning and destroying must not race with other use.
class RemotePool {
 public:
  // Parses `descriptor` (every field checked: see Error bad_format above)
  // and takes the same-host route where it can (RemoteOptions::same_host),
  // else connects to the exporter's worker over UCX.
  // Throws Error(bad_format) for a bad descriptor, before any network
  // operation; Error(system) when UCX refuses the worker address or the
  // remote keys (e.g. no transport in common); Error(disconnected) when the
  // exporter is unreachable.
  static RemotePool connect(std::span<const std::byte> descriptor, const RemoteOptions& options = {});

  RemotePool(RemotePool&&) noexcept;
  RemotePool& operator=(RemotePool&&) noexcept;
  RemotePool(const RemotePool&) = delete;
  RemotePool& operator=(const RemotePool&) = delete;
  // Lets go of the connection; transfers still in flight keep it until they
  // are done or failed. Never throws.
  ~RemotePool();

  // Reads remote cell remote_cells[i] into the cell_size() bytes at local[i],
  // for every i, in as few operations as adjacency allows (sorted by remote
  // index; runs adjacent both remotely and locally go as one). Over UCX it
  // returns at once; the local bytes are unspecified until the transfer is
  // done. On the same-host route it returns once the bytes are copied, with
  // a transfer that is done, or failed when the exporter went away meanwhile.
  // Throws Error(invalid_argument), with nothing sent, when the lists differ
  // in length, an index is not below cells(), a local pointer is null,
  // check_generations is asked of an export without generations, or the
  // pool is moved-from; Error(disconnected) when the connection failed
  // earlier (connect again) or, on the same-host route, the exporter is gone.
  RemoteTransfer get(std::span<const std::uint32_t> remote_cells, std::span<std::byte* const> local,
                     const GetOptions& options = {});
  // The same into cells of a local SharedGrid (or an OffloadPool's), which
  // must hold cell_size() bytes each (else invalid_argument), as are empty cells.
  RemoteTransfer get(std::span<const std::uint32_t> remote_cells, std::span<const SharedCell> local,
                     const GetOptions& options = {});
  // Writes the cell_size() bytes at local[i] into remote cell
  // remote_cells[i]; done when they are in the remote cells. The local bytes
  // must stay unchanged until then. Throws as get(), and
  // Error(invalid_argument) for a read-only export (before any network
  // operation). Naming one remote cell twice leaves one of the writes there.
  RemoteTransfer put(std::span<const std::uint32_t> remote_cells, std::span<const std::byte* const> local);
  RemoteTransfer put(std::span<const std::uint32_t> remote_cells, std::span<const SharedCell> local);

  std::size_t cells() const noexcept;      // 0 for a moved-from pool
  std::size_t cell_size() const noexcept;  // 0 for a moved-from pool
  bool read_only() const noexcept;
  bool has_generations() const noexcept;
  std::uint64_t generation() const noexcept;  // the export's (Exporter::generation)
  Route route() const noexcept;               // Route::ucx for a moved-from pool

 private:
  explicit RemotePool(std::shared_ptr<detail::RemoteState> state) noexcept;
  std::shared_ptr<detail::RemoteState> state_;
};

}  // namespace unimem::remote
