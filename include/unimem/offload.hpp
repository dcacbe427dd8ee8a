// unimem/offload.hpp — a KV-cache offload pool: GPU blocks to shared host cells and back.
//
// Inference servers move KV-cache blocks (0.5-2 MiB each, contiguous) out of
// GPU memory into a host pool when a conversation goes idle, and back when it
// returns. An OffloadPool is that host pool: a SharedGrid (unimem/share.hpp)
// of `blocks` cells of `block_bytes` each, living in one shareable Block that
// is registered with the GPU, so that
//   * several processes (a cache server, the engines) take and give cells of
//     one pool, lock-free; a process that dies loses only the cells it held;
//   * each process registers its own mapping with its own GPU and moves many
//     blocks per call, asynchronously, on a stream it names: store (device
//     blocks into cells) and fetch (cells into device blocks).
//
// Two routes move the blocks (OffloadOptions::route), both one call per
// batch: `kernel`, one gather/scatter kernel whose threads load and store 16
// bytes at a time across the bus (the cells are device-addressable because
// they are registered; one thread block per multiprocessor, so a store and a
// fetch, or a move and compute, run side by side), and `copies`, the copy
// engines, one cuMemcpyBatchAsync per batch (a cuMemcpyAsync per block on
// drivers before CUDA 12.8). The default, `automatic`, takes the one that
// measured faster for the pool's block size: the kernel below
// kAutomaticRouteThreshold (small blocks cost the copy engines per block),
// the copies at or above it (they reach the link rate there, and a store and
// a fetch at once use both directions of the link). route_taken() says
// which; the figures are in docs/BENCHMARKS.md.
// bench/offload_benchmark.cu measures all three against the pinned
// cudaMemcpy ceiling and against a cudaMemcpyAsync per block.
//
// Ownership of cells: a store or fetch never takes or gives back a cell; the
// cells named stay with whoever holds them. Cells may be named by SharedCell
// (checked: empty cells and cells of another pool are refused) or by index
// (for cells another process holds, e.g. blocks a cache server assigned;
// only the range is checked, and the caller vouches that the cell stays held
// while it moves). A cell must not be given back, and a device block not
// reused, before its Transfer is done: the move runs after the call returns.
//
// Thread safety: every member function may be called from any number of
// threads at once (take/give lock-free; store/fetch serialise only their
// bookkeeping), except moving, assigning and destroying a pool, which must not
// race with any other use of it. A Transfer may be queried and waited for
// from any thread.
//
// fork(): a child inherits the pool object, but not the parent's CUDA
// context. There, store and fetch throw Error(invalid_argument) (as take()
// refuses: SharedGrid's fork rule), a Transfer's ready() and wait() throw
// Error(invalid_argument), all before any CUDA call, and destroying the pool
// calls no CUDA: its events, stream, block lists and the Block's
// registration are the parent's, and stay. A child
// that moves blocks attaches the pool by id after exec (CUDA's rule: a
// process that used CUDA before fork() must exec before the child does).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "unimem/block.hpp"
#include "unimem/error.hpp"
#include "unimem/grid.hpp"
#include "unimem/share.hpp"
#include "unimem/tape.hpp"

namespace unimem::gpu {

// As the `device` of OffloadPool::create/attach: this process uses no GPU
// (e.g. a cache server that owns the pool and hands cells to engines). Its
// pool takes and gives cells; store and fetch throw.
inline constexpr int kNoDevice = -1;

enum class OffloadRoute : std::uint8_t {
  automatic,  // kernel for blocks below kAutomaticRouteThreshold, copies at or above it
  kernel,     // one gather/scatter kernel per call (hand-written PTX, 16-byte loads and stores)
  copies,     // the copy engines: cuMemcpyBatchAsync per call (cuMemcpyAsync per block before CUDA 12.8)
};

// The block size from which OffloadRoute::automatic takes the copy engines
// (512 KiB): where they overtook the kernel in the offload benchmark
// (docs/BENCHMARKS.md, "KV-cache offload").
inline constexpr std::size_t kAutomaticRouteThreshold = std::size_t{512} * 1024;

// Returns "automatic", "kernel" or "copies". Never throws.
const char* to_string(OffloadRoute route) noexcept;

struct OffloadOptions {
  // How this process's store() and fetch() move blocks; automatic picks by
  // the pool's block size (see kAutomaticRouteThreshold), once per pool.
  OffloadRoute route = OffloadRoute::automatic;
  // For create(): the pool's Block. Registering with the GPU pins the pages
  // (the driver's pin, outside RLIMIT_MEMLOCK), so mlock is not needed on top;
  // Pinning::pinned adds it (and RLIMIT_MEMLOCK applies).
  Pinning pinning = Pinning::unpinned;
  // For create(): ask for transparent huge pages (shareable memory gets them
  // only where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows).
  bool huge_pages = false;
  // Threads that back the pages before registration (create, attach); 0
  // picks from the size.
  unsigned warm_threads = 0;
};

namespace detail {
struct Flight;
struct OffloadState;
}  // namespace detail

// One store or fetch: done when the work it enqueued on its stream is.
// Copyable (copies watch the same work); a default-constructed Transfer (and
// what a call with no blocks returns) is done. It may outlive its pool.
class Transfer {
 public:
  Transfer() noexcept;
  Transfer(const Transfer&) noexcept;
  Transfer& operator=(const Transfer&) noexcept;
  Transfer(Transfer&&) noexcept;
  Transfer& operator=(Transfer&&) noexcept;
  ~Transfer();

  // True once every block of the call has moved; false while they move, and
  // also when the driver cannot say (then the moves are treated as still
  // running: ask again). Never blocks. Throws Error(cuda) when the stream
  // failed (see wait()). Queries and waits run in CUDA's relaxed capture
  // mode, so they work (and end no capture) while another thread captures a
  // CUDA graph in global mode, as PyTorch does.
  bool ready() const;
  // Blocks until every block of the call has moved. Throws Error(cuda) when
  // the stream failed before or while running the moves (an earlier failure
  // of a caller's stream included); the message names the call and the CUDA
  // error. A CUDA failure on a stream usually leaves the whole context of the
  // device unusable for this process (CUDA's rule), so every later call fails;
  // then nothing of the call runs any more. Where the driver fails the wait
  // for another reason, it throws Error(cuda) saying the moves are "not known
  // to be done": they may still run, so keep the cells and device blocks
  // until ready() returns true.
  void wait() const;

  // What the call moved: blocks and bytes (blocks x block bytes).
  std::size_t blocks() const noexcept;
  std::size_t bytes() const noexcept;

 private:
  friend struct detail::OffloadState;
  explicit Transfer(std::shared_ptr<detail::Flight> flight) noexcept;
  std::shared_ptr<detail::Flight> flight_;
};

class OffloadPool {
 public:
  // A fresh pool of `blocks` cells of `block_bytes` (a non-zero multiple of
  // 64) in a new shareable Block (the cells start one or more pages in: the
  // SharedGrid's state comes first; every cell is 64-byte aligned), registered
  // with the GPUs unless device is kNoDevice. The process that creates it
  // hands out pool.host_block().id() (or the Block over a socket) to the others.
  // Throws Error(invalid_argument) for bad sizes (0, not a multiple of 64,
  // 2^32 - 1 blocks or more, an overflowing total) or a device that does not
  // exist, and what Block::open throws (out_of_memory, memlock_limit with
  // Pinning::pinned, no_cuda_driver, no_cuda_device, cuda).
  static OffloadPool create(std::size_t block_bytes, std::size_t blocks, int device = 0,
                            const OffloadOptions& options = {});
  // The pool another process created, in `block` (from Block::attach, or
  // adopt_block or receive_block of unimem/linux.hpp): registers this process's mapping with
  // the GPUs (unless device is kNoDevice or the Block is GPU-visible already).
  // Throws Error(not_a_block) when the Block is not a pool's,
  // Error(invalid_argument) for a device that does not exist, and what
  // Block::make_gpu_visible throws. A Block attached read-only gives a pool
  // that fetches but neither takes nor stores.
  static OffloadPool attach(Block block, int device = 0, const OffloadOptions& options = {});
  // The same for the pool another process names by `id` (pool.host_block().id()):
  // maps it with options.pinning (unpinned by default: registration pins, and
  // RLIMIT_MEMLOCK, often 8 MiB, would refuse a large pool mapped pinned).
  // Throws what Block::attach throws, and what the overload above throws.
  static OffloadPool attach(const BlockId& id, int device = 0, const OffloadOptions& options = {});

  // A moved-from pool takes nothing (take() is empty; take(span) says
  // invalid_size; give() says foreign_cell) and its store/fetch throw
  // Error(invalid_argument).
  OffloadPool(OffloadPool&& other) noexcept;
  OffloadPool& operator=(OffloadPool&& other) noexcept;
  OffloadPool(const OffloadPool&) = delete;
  OffloadPool& operator=(const OffloadPool&) = delete;
  // Waits for this process's moves still in flight (their memory must stay
  // mapped until they are done), then lets go of the Block; cells still out
  // keep it mapped until they go back (SharedGrid). Where the driver cannot
  // say that a move is done (a failed wait that is not a lost context), the
  // Block stays mapped and registered for the rest of the process (a leak,
  // not memory freed under DMA). Never throws.
  ~OffloadPool();

  // A free cell, or an empty SharedCell when every cell is out (or the pool
  // is read-only here, or this is a fork() child: see SharedGrid). Lock-free
  // across processes; never throws.
  SharedCell take() noexcept;
  // All or nothing: fills every element of `out` with a free cell and returns
  // TakeStatus::ok, or takes nothing and returns
  //   full          fewer cells are free (those it took meanwhile went back:
  //                 other takers may have found the pool emptier for a moment)
  //   invalid_size  out.size() exceeds blocks(), or an element of `out` holds
  //                 a cell already (it is left as it was)
  //   read_only     the Block is mapped read-only in this process
  //   forked        this is a fork() child of the process that made the pool object
  // An empty `out` returns ok. Lock-free; never throws.
  TakeStatus take(std::span<SharedCell> out) noexcept;
  // Returns `cell` early (as SharedGrid::give: ok, empty_cell, foreign_cell).
  GiveStatus give(SharedCell&& cell) noexcept;

  // Copies device block i (block_bytes at device_blocks[i]) into cells[i],
  // for every i, asynchronously on `stream`: a CUstream (cudaStream_t) of
  // this pool's device's primary context, the one the CUDA runtime and
  // PyTorch use, passed as a pointer. nullptr (as CU_STREAM_LEGACY, 0x1) is
  // that context's legacy default stream, PyTorch's default stream (handle
  // 0); CU_STREAM_PER_THREAD (0x2) the calling thread's default stream, as
  // everywhere in CUDA. The moves start after the work enqueued before on
  // that stream, work enqueued on it afterwards starts after them, and the
  // call returns without waiting for them: the Transfer says when they are
  // done. Enqueued as one kernel launch or one batch of copies
  // (route_taken()); on the legacy default stream (nullptr,
  // CU_STREAM_LEGACY) the copies route, which the driver does not let run
  // there, runs the batch on a stream of the pool's between two events (the
  // legacy stream waits for it, and it for the legacy stream), so the order
  // is the same; CU_STREAM_PER_THREAD takes the batch directly.
  // The stream must not be capturing a CUDA graph: a move is not capturable
  // (a graph would replay this call's block list, whose memory the pool
  // reuses, and its cells; the copies route cannot be captured at all).
  // Throws Error(invalid_argument), enqueueing nothing, when
  //   * device_blocks and cells differ in length;
  //   * block_bytes is not this pool's block_bytes();
  //   * a cell is empty or belongs to another pool (by SharedCell), or an
  //     index is not below blocks() (by index);
  //   * a device address is not 16-byte aligned, or [address, address +
  //     block_bytes) does not lie inside one device allocation (or cuMemMap
  //     mapping) of this pool's device, made in its primary context (asked of
  //     the driver once per allocation), or the device lacks the access the
  //     move needs there (cuMemMap'ped memory: cuMemSetAccess; a store reads
  //     the device blocks, a fetch writes them);
  //   * `stream` belongs to another context, or is capturing a CUDA graph
  //     (cuStreamIsCapturing; for the legacy default stream also while a
  //     blocking stream of its context captures, when the driver forbids
  //     using it) (both checked also when no blocks are named);
  //   * the pool has no device here (kNoDevice), is moved-from, or (store
  //     only) is mapped read-only;
  //   * this is a fork() child of the process that made the pool object;
  // and Error(cuda) when the driver refuses the launch, the copies or the
  // events around them (then nothing of this call is still in flight: the
  // call synchronizes the stream before it throws where some of it was
  // enqueued; some blocks may have moved; where the driver cannot say that
  // the synchronize finished the work, the pool keeps its memory, and that
  // call's, for the rest of the process rather than free it under DMA). A
  // failure while the moves run is reported by the Transfer (wait(),
  // ready()). A CUDA failure is sticky for
  // the context (CUDA's rule): after one, a store or fetch either throws
  // Error(cuda) at once, with nothing in flight, or (where the driver still
  // accepts the work) returns a Transfer whose wait() throws Error(cuda).
  // After any failure the cells are unchanged in ownership: still the
  // caller's, to store into again or give back; their contents (a store) or
  // the device blocks' (a fetch) are unspecified.
  // Naming one cell twice in a store, or overlapping device blocks in a fetch,
  // leaves one of the writes there; which is unspecified (not checked).
  Transfer store(std::span<const std::uintptr_t> device_blocks, std::size_t block_bytes,
                 std::span<const SharedCell> cells, void* stream = nullptr);
  Transfer store(std::span<const std::uintptr_t> device_blocks, std::size_t block_bytes,
                 std::span<const std::uint32_t> cell_indices, void* stream = nullptr);
  // Copies cells[i] into device block i, for every i; as store() otherwise
  // (the same checks and errors; fetching is allowed from a read-only pool).
  Transfer fetch(std::span<const SharedCell> cells, std::span<const std::uintptr_t> device_blocks,
                 std::size_t block_bytes, void* stream = nullptr);
  Transfer fetch(std::span<const std::uint32_t> cell_indices, std::span<const std::uintptr_t> device_blocks,
                 std::size_t block_bytes, void* stream = nullptr);

  // The bytes of cell `index` in this process's mapping (the CPU may read and
  // write them; no ordering with moves in flight); empty when index is not
  // below blocks(). Never throws.
  std::span<std::byte> cell(std::uint32_t index) const noexcept;

  std::size_t block_bytes() const noexcept;  // 0 for a moved-from pool
  std::size_t blocks() const noexcept;       // cells in the pool (taken or not)
  int device() const noexcept;               // kNoDevice when this process moves nothing
  // The route asked for (OffloadOptions::route; automatic for a moved-from pool).
  OffloadRoute route() const noexcept;
  // The route this pool's moves take: kernel or copies, automatic resolved
  // by block_bytes() (kernel for a moved-from pool).
  OffloadRoute route_taken() const noexcept;
  // True when the copies route enqueues one cuMemcpyBatchAsync per call
  // (driver 12.8 or later); false: one cuMemcpyAsync per block, or no device.
  bool batched_copies() const noexcept;
  // The host memory behind the pool (the SharedGrid's Block; not to be
  // confused with blocks(), the KV blocks it holds): share it with
  // host_block().id(), or as a descriptor (unimem/linux.hpp).
  const Block& host_block() const noexcept;

 private:
  explicit OffloadPool(std::unique_ptr<detail::OffloadState> state) noexcept;
  std::unique_ptr<detail::OffloadState> state_;
};

}  // namespace unimem::gpu
