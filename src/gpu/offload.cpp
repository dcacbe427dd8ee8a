// src/gpu/offload.cpp — gpu::OffloadPool: a SharedGrid of GPU-registered cells, and batched moves.
//
// What this file owns: the pool's construction (a shareable Block sized for
// the SharedGrid's state plus the cells, registered with the GPUs; or an
// attached one, registered in this process), taking and giving cells (the
// SharedGrid's lock-free list; batches all or nothing), and each store/fetch
// call: every argument is checked before anything is enqueued (so bad input
// moves nothing), the (source, destination) pairs are built, and the chosen
// route runs them — offload_kernel.cpp (one launch) or offload_copies.cpp (one
// batch of copies) — followed by an event (offload_flights.cpp) that the
// returned Transfer watches. Checking device addresses is device_ranges.cpp's.
//
// The cells' device addresses: on every system CUDA supports today (unified
// addressing, canUseHostPointerForRegisteredMem) a registered cell's device
// address is its host address; where it is not, Block::device_pointer
// translates per cell.
#include "unimem/offload.hpp"

#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "gpu/device_ranges.hpp"
#include "gpu/driver.hpp"
#include "gpu/offload_copies.hpp"
#include "gpu/offload_flights.hpp"
#include "gpu/offload_kernel.hpp"
#include "shared_grid_header.hpp"

namespace unimem::gpu {

namespace detail {
namespace {

std::string hex(std::uintptr_t v) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(v));
  return text;
}

// Keeps `grid` mapped and registered until the process ends (never destroyed:
// not even by static destructors at exit, while DMA may still run).
void keep_for_the_process(SharedGrid grid) noexcept {
  static std::mutex lock;
  static auto* kept = new std::vector<SharedGrid>();  // NOLINT: never freed, on purpose
  try {
    std::lock_guard hold(lock);
    kept->push_back(std::move(grid));
  } catch (...) {                           // no memory for the list: leak the grid's object itself
    (void)new SharedGrid(std::move(grid));  // NOLINT: never freed, on purpose
  }
}

}  // namespace

struct OffloadState {
  OffloadState(SharedGrid g, int dev, OffloadRoute option) : grid(std::move(g)), device(dev), route_option(option) {
    const Block& b = grid.block();
    cells = grid.cells();
    cell_size = grid.cell_size();
    first_cell = b.data() + grid.offset_of(0);
    read_only = b.read_only();
    route = option != OffloadRoute::automatic      ? option
            : cell_size < kAutomaticRouteThreshold ? OffloadRoute::kernel
                                                   : OffloadRoute::copies;
    if (device != kNoDevice) {
      uva = b.device_pointer(device, first_cell) == first_cell;
      batched = has_batched_copies();
      // Everything a move needs from the driver, made now: a failure shows
      // here, not in the first move, and no move pays for it.
      ContextScope context(device);
      if (route == OffloadRoute::kernel) load_block_copy(device);
      flights = std::make_unique<Flights>(device, route == OffloadRoute::copies);  // copies: bridge stream
    }
  }

  // Checks every argument, then enqueues the moves (see OffloadPool::store).
  // `cell_at(i)` returns the host address of the i-th cell named, or throws.
  template <class CellAt>
  Transfer move(bool store, std::span<const std::uintptr_t> device_blocks, std::size_t block_bytes, std::size_t n,
                CellAt cell_at, void* stream);

  // Refuses a stream that is capturing a CUDA graph (or, for the legacy
  // default stream, whose context has a blocking stream capturing): the
  // graph would keep this call's block list (a slab reused after the call)
  // and cells, and the copies route cannot be captured. Context current.
  void refuse_capturing(CUstream stream, const char* what) const {
    const Driver& d = driver();
    if (d.cuStreamIsCapturing == nullptr) return;  // a driver without stream capture
    int status = kCaptureStatusNone;
    const CUresult r = d.cuStreamIsCapturing(stream, &status);
    if (r == kErrorCaptureImplicit || (r == 0 && status != kCaptureStatusNone)) {
      refuse(
          std::string("the stream given to a ") + what +
          (r == kErrorCaptureImplicit ? " is the legacy default stream, while a blocking stream of its context" : "") +
          " is capturing a CUDA graph: a move cannot be captured (a graph would replay this call's block list "
          "and cells); move blocks outside the capture");
    }
    check(r, "cuStreamIsCapturing (the stream given to an offload " + std::string(what) + ")");
  }

  [[noreturn]] void refuse(const std::string& why) const {
    throw Error(Errc::invalid_argument, 0, "unimem: OffloadPool: " + why + "; nothing was moved");
  }

  // The host address of cell `index` (below cells).
  std::byte* host_cell(std::uint32_t index) const noexcept { return first_cell + std::size_t{index} * cell_size; }

  // The host address of `cell`, the i-th named; refuses an empty or foreign one.
  const std::byte* checked(const SharedCell& cell, std::size_t i) const {
    if (!cell) refuse("cell " + std::to_string(i) + " is empty (given back, moved from, or never taken)");
    const std::byte* p = cell.data();
    // As integers: another pool's cell may lie anywhere (below: wraps, so out of range too).
    const std::uintptr_t offset = reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(first_cell);
    if (offset >= cells * cell_size || offset != std::size_t{cell.index()} * cell_size) {
      refuse("cell " + std::to_string(i) + " belongs to another pool");
    }
    return p;
  }
  // The host address of cell `index`, the i-th named; refuses one out of range.
  const std::byte* checked(std::uint32_t index, std::size_t i) const {
    if (index >= cells) {
      refuse("cell index " + std::to_string(index) + " (at " + std::to_string(i) + ") is not below the pool's " +
             std::to_string(cells) + " blocks");
    }
    return host_cell(index);
  }

  SharedGrid grid;
  int device;
  OffloadRoute route_option;  // as asked (route())
  OffloadRoute route{};       // as resolved: kernel or copies
  std::size_t cells = 0;
  std::size_t cell_size = 0;
  std::byte* first_cell = nullptr;
  bool read_only = false;
  bool uva = true;
  bool batched = false;
  std::unique_ptr<Flights> flights;  // null without a device; destroyed (waiting) before the grid

  // Waits for this process's moves. Where one is not known to be done (the
  // driver could not say), the pool's memory may still be under DMA: the
  // grid (its Block, mapping and registration) is kept for the process.
  ~OffloadState() {
    if (flights != nullptr && !flights->drain()) keep_for_the_process(std::move(grid));
  }
  OffloadState(const OffloadState&) = delete;
  OffloadState& operator=(const OffloadState&) = delete;
};

template <class CellAt>
Transfer OffloadState::move(bool store, std::span<const std::uintptr_t> device_blocks, std::size_t block_bytes,
                            std::size_t n, CellAt cell_at, void* stream) {
  const char* what = store ? "store" : "fetch";
  if (grid.forked()) {
    refuse(std::string(what) +
           " in a fork() child of the process that made this pool object: its CUDA state is the "
           "parent's (attach the pool by its id in this process)");
  }
  if (device_blocks.size() != n) {
    refuse(std::string(what) + " of " + std::to_string(n) + " cells to " + std::to_string(device_blocks.size()) +
           " device blocks: the lists differ in length");
  }
  if (block_bytes != cell_size) {
    refuse(std::string(what) + " of device blocks of " + std::to_string(block_bytes) +
           " bytes: this pool's blocks are " + std::to_string(cell_size) + " bytes");
  }
  if (store && read_only) refuse("store into a pool mapped read-only in this process");
  std::vector<BlockPair> pairs(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::byte* host = cell_at(i);
    const auto cell = reinterpret_cast<CUdeviceptr>(uva ? host : grid.block().device_pointer(device, host));
    const std::uintptr_t address = device_blocks[i];
    if (address % 16 != 0) {
      refuse("device block " + std::to_string(i) + " at " + hex(address) + " is not 16-byte aligned");
    }
    if (address == 0 || address + block_bytes < address) {
      refuse("device block " + std::to_string(i) + " at " + hex(address) + " is not an address");
    }
    pairs[i] = store ? BlockPair{address, cell} : BlockPair{cell, address};
  }
  if (device == kNoDevice) {
    refuse(std::string("this process's pool has no device (kNoDevice): attach the pool with a device to ") + what);
  }

  ContextScope context(device);
  // Queries and waits below (reaping finished flights, a failure path's
  // synchronize, registering a new slab) would fail, and end the capture,
  // while another thread captures a graph in global mode.
  RelaxedCapture relaxed;
  auto cu_stream = static_cast<CUstream>(stream);
  // nullptr, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD: the default streams of
  // the current context (the device's primary context, pushed above).
  if (!is_default_stream(stream)) {
    CUcontext owner = nullptr;
    check(driver().cuStreamGetCtx(cu_stream, &owner),
          "cuStreamGetCtx (the stream given to an offload " + std::string(what) + ")");
    if (owner != primary_context(device)) {
      refuse(std::string("the stream given to a ") + what + " belongs to another context than device " +
             std::to_string(device) + "'s primary context (the one the CUDA runtime uses)");
    }
  }
  refuse_capturing(cu_stream, what);
  if (n == 0) return {};
  DeviceRanges ranges(device, store ? DeviceRanges::Use::read : DeviceRanges::Use::write);
  for (std::size_t i = 0; i < n; ++i) ranges.require(device_blocks[i], block_bytes, i, "device block");

  // cuMemcpyBatchAsync refuses the legacy default stream (nullptr,
  // CU_STREAM_LEGACY; the per-thread one it takes): the copies run on the
  // pool's stream between the caller's stream and back (events both ways).
  const bool kernel = route == OffloadRoute::kernel;
  const bool bridge = !kernel && is_legacy_stream(stream);
  Flights::Ticket ticket = flights->begin(kernel ? n * sizeof(BlockPair) : 0, bridge, n, n * block_bytes, what);
  // From here on, a ticket's parts go back only once nothing of the call is in flight.
  CUstream run_on = cu_stream;
  bool enqueued = false;  // something of the call may be in flight on run_on
  try {
    if (bridge) {
      run_on = flights->own_stream();
      check(driver().cuEventRecord(ticket.entry, cu_stream), "cuEventRecord (the caller's default stream)");
      check(driver().cuStreamWaitEvent(run_on, ticket.entry, 0), "cuStreamWaitEvent (the offload pool's stream)");
    }
    if (kernel) {
      std::memcpy(ticket.slab->memory.data(), pairs.data(), n * sizeof(BlockPair));
      launch_block_copy(device, run_on, ticket.slab->device_address, n, block_bytes);
    } else {
      enqueued = true;  // earlier batches of the call may be enqueued when a later one fails
      enqueue_block_copies(run_on, pairs, block_bytes);
    }
  } catch (...) {
    // Out of flight before the throw; where the synchronize cannot say so,
    // the slab and the pool's memory are kept for the process.
    if (enqueued) {
      flights->withdraw(ticket, run_on);
    } else {
      flights->cancel(ticket);
    }
    throw;
  }
  std::shared_ptr<Flight> flight = flights->finish(ticket, run_on);  // on failure: withdraws, then throws
  if (bridge) {
    if (const CUresult r = driver().cuStreamWaitEvent(cu_stream, flight->event, 0); r != 0) {
      // Done before the throw where the driver can say so: the caller's
      // stream needs no wait. The flight stays pending either way (its slab,
      // none here, and the pool's memory wait for its event).
      (void)driver().cuStreamSynchronize(run_on);
      check(r, "cuStreamWaitEvent (the caller's default stream, for the offload " + std::string(what) + ")");
    }
  }
  return Transfer(std::move(flight));
}

}  // namespace detail

namespace {

[[noreturn]] void bad(const std::string& why) { throw Error(Errc::invalid_argument, 0, "unimem: OffloadPool: " + why); }

// Where the SharedGrid's cells start in its Block (src/shared_grid.cpp's layout).
std::size_t state_bytes(std::size_t cells) { return SharedGrid::state_bytes(cells); }

void require_device(int device) {
  if (device == kNoDevice) return;
  if (device < 0) bad("device " + std::to_string(device) + " is neither a device ordinal nor kNoDevice");
  (void)detail::primary_context(device);  // no driver, no device, no such device: throws
}

}  // namespace

const char* to_string(OffloadRoute route) noexcept {
  switch (route) {
    case OffloadRoute::automatic:
      return "automatic";
    case OffloadRoute::kernel:
      return "kernel";
    case OffloadRoute::copies:
      return "copies";
  }
  return "unknown";
}

// ---- Transfer ----------------------------------------------------------------

Transfer::Transfer() noexcept = default;
Transfer::Transfer(std::shared_ptr<detail::Flight> flight) noexcept : flight_(std::move(flight)) {}
Transfer::Transfer(const Transfer&) noexcept = default;
Transfer& Transfer::operator=(const Transfer&) noexcept = default;
Transfer::Transfer(Transfer&&) noexcept = default;
Transfer& Transfer::operator=(Transfer&&) noexcept = default;
Transfer::~Transfer() = default;

bool Transfer::ready() const {
  return flight_ == nullptr || flight_->done();  // a fork() child is refused before any CUDA call
}

void Transfer::wait() const {
  if (flight_ != nullptr) flight_->wait();
}

std::size_t Transfer::blocks() const noexcept { return flight_ ? flight_->blocks : 0; }
std::size_t Transfer::bytes() const noexcept { return flight_ ? flight_->bytes : 0; }

// ---- OffloadPool ---------------------------------------------------------------

OffloadPool::OffloadPool(std::unique_ptr<detail::OffloadState> state) noexcept : state_(std::move(state)) {}
OffloadPool::OffloadPool(OffloadPool&& other) noexcept = default;
OffloadPool& OffloadPool::operator=(OffloadPool&& other) noexcept = default;
OffloadPool::~OffloadPool() = default;

OffloadPool OffloadPool::create(std::size_t block_bytes, std::size_t blocks, int device,
                                const OffloadOptions& options) {
  if (block_bytes == 0 || block_bytes % kCellAlign != 0) {
    bad("block size " + std::to_string(block_bytes) + " is not a non-zero multiple of 64 bytes");
  }
  if (blocks == 0 || blocks >= 0xffffffffu) {
    bad("block count " + std::to_string(blocks) + " is not in [1, 2^32 - 1)");
  }
  std::size_t bytes = 0;
  if (__builtin_mul_overflow(block_bytes, blocks, &bytes) ||
      __builtin_add_overflow(bytes, state_bytes(blocks), &bytes)) {
    bad(std::to_string(blocks) + " blocks of " + std::to_string(block_bytes) + " bytes overflow the address space");
  }
  require_device(device);  // before the memory: a bad device costs nothing
  BlockOptions o;
  o.pinning = options.pinning;
  o.visibility = device == kNoDevice ? Visibility::host : Visibility::gpus;
  o.huge_pages = options.huge_pages;
  o.warm_threads = options.warm_threads;
  SharedGrid grid = SharedGrid::create(Block::open(bytes, o), block_bytes, blocks);
  return OffloadPool(std::make_unique<detail::OffloadState>(std::move(grid), device, options.route));
}

OffloadPool OffloadPool::attach(Block block, int device, const OffloadOptions& options) {
  require_device(device);
  if (block.empty()) throw Error(Errc::not_a_block, 0, "unimem: OffloadPool::attach: the Block is empty");
  // Registered before the header is checked (SharedGrid::attach takes the
  // Block); a Block that is not a pool's is let go, registration and all.
  if (device != kNoDevice && !block.gpu_visible()) block.make_gpu_visible(options.warm_threads);
  SharedGrid grid = SharedGrid::attach(std::move(block));
  return OffloadPool(std::make_unique<detail::OffloadState>(std::move(grid), device, options.route));
}

OffloadPool OffloadPool::attach(const BlockId& id, int device, const OffloadOptions& options) {
  require_device(device);  // before mapping
  BlockOptions o;
  o.pinning = options.pinning;
  o.warm_threads = options.warm_threads;
  return attach(Block::attach(id, o), device, options);
}

SharedCell OffloadPool::take() noexcept { return state_ ? state_->grid.take() : SharedCell(); }

TakeStatus OffloadPool::take(std::span<SharedCell> out) noexcept {
  if (out.empty()) return TakeStatus::ok;
  if (!state_ || out.size() > state_->cells) return TakeStatus::invalid_size;
  for (const SharedCell& c : out) {
    if (c) return TakeStatus::invalid_size;
  }
  if (state_->read_only) return TakeStatus::read_only;
  if (state_->grid.forked()) return TakeStatus::forked;
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = state_->grid.take();
    if (!out[i]) {
      for (std::size_t k = 0; k < i; ++k) out[k].reset();  // back to the shared list
      return TakeStatus::full;
    }
  }
  return TakeStatus::ok;
}

GiveStatus OffloadPool::give(SharedCell&& cell) noexcept {
  return state_ ? state_->grid.give(std::move(cell)) : GiveStatus::foreign_cell;
}

namespace {

[[noreturn]] void moved_from() {
  throw Error(Errc::invalid_argument, 0, "unimem: OffloadPool: this pool was moved from; nothing was moved");
}

}  // namespace

Transfer OffloadPool::store(std::span<const std::uintptr_t> device_blocks, std::size_t block_bytes,
                            std::span<const SharedCell> cells, void* stream) {
  if (!state_) moved_from();
  auto at = [&](std::size_t i) { return state_->checked(cells[i], i); };
  return state_->move(true, device_blocks, block_bytes, cells.size(), at, stream);
}

Transfer OffloadPool::store(std::span<const std::uintptr_t> device_blocks, std::size_t block_bytes,
                            std::span<const std::uint32_t> cell_indices, void* stream) {
  if (!state_) moved_from();
  auto at = [&](std::size_t i) { return state_->checked(cell_indices[i], i); };
  return state_->move(true, device_blocks, block_bytes, cell_indices.size(), at, stream);
}

Transfer OffloadPool::fetch(std::span<const SharedCell> cells, std::span<const std::uintptr_t> device_blocks,
                            std::size_t block_bytes, void* stream) {
  if (!state_) moved_from();
  auto at = [&](std::size_t i) { return state_->checked(cells[i], i); };
  return state_->move(false, device_blocks, block_bytes, cells.size(), at, stream);
}

Transfer OffloadPool::fetch(std::span<const std::uint32_t> cell_indices, std::span<const std::uintptr_t> device_blocks,
                            std::size_t block_bytes, void* stream) {
  if (!state_) moved_from();
  auto at = [&](std::size_t i) { return state_->checked(cell_indices[i], i); };
  return state_->move(false, device_blocks, block_bytes, cell_indices.size(), at, stream);
}

std::span<std::byte> OffloadPool::cell(std::uint32_t index) const noexcept {
  if (!state_ || index >= state_->cells) return {};
  return {state_->host_cell(index), state_->cell_size};
}

std::size_t OffloadPool::block_bytes() const noexcept { return state_ ? state_->cell_size : 0; }
std::size_t OffloadPool::blocks() const noexcept { return state_ ? state_->cells : 0; }
int OffloadPool::device() const noexcept { return state_ ? state_->device : kNoDevice; }
OffloadRoute OffloadPool::route() const noexcept { return state_ ? state_->route_option : OffloadOptions{}.route; }
OffloadRoute OffloadPool::route_taken() const noexcept { return state_ ? state_->route : OffloadRoute::kernel; }
bool OffloadPool::batched_copies() const noexcept { return state_ && state_->batched; }
const Block& OffloadPool::host_block() const noexcept {
  return state_ ? state_->grid.block() : unimem::detail::empty_block();
}

}  // namespace unimem::gpu
