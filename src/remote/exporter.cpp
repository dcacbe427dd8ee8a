// src/remote/exporter.cpp — remote::Exporter: a Block's cells mapped with UCX once, and their descriptor.
//
// What this file owns: the exporter's UCP context and worker, mapping the
// cells (remote-read only, or read and write) and the generations (always
// remote-read only, on their own pages so the rights can differ), packing
// the remote keys and the worker address into a descriptor
// (src/remote/descriptor.cpp), and who progresses the worker
// (src/remote/progress.cpp, or the caller). Only the cells and the
// generations are mapped: a writable export never lets a peer write the
// grid's header or free list.
//
// Same host: where the exported Block is shareable, the descriptor also says
// where to attach it by id (Block::attach) and names a one-page beacon Block
// that says whether this export still stands, so that a reader on this host
// copies cells itself instead of through UCX (src/remote/remote_pool.cpp);
// destroying the Exporter waits for those copying (src/remote/beacon.hpp).
// That gives a reader nothing the kernel does not already let it take:
// attaching by id needs the same user and the rights to open
// /proc/<pid>/fd, which are the rights to read this process's memory.
#include <atomic>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "platform/host.hpp"
#include "remote/beacon.hpp"
#include "remote/descriptor.hpp"
#include "remote/progress.hpp"
#include "remote/ucx.hpp"
#include "shared_grid_header.hpp"
#include "unimem/detail/fork_watch.hpp"
#include "unimem/remote.hpp"

namespace unimem::remote {

namespace {

[[noreturn]] void bad(const std::string& why) {
  throw Error(Errc::invalid_argument, 0, "unimem: remote::Exporter::create: " + why);
}

// Where the cells (and their generations) are, and how many.
struct Region {
  std::byte* cells = nullptr;
  std::size_t cell_size = 0;
  std::size_t count = 0;
  std::byte* generations = nullptr;  // nullptr: none
  const Block* block = nullptr;      // holds cells and generations
};

ucp_mem_h map(ucp_context_h context, void* address, std::size_t length, bool writable) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_PROT;
  params.address = address;
  params.length = length;
  // Rights for the transport (the NIC where there is one), not for this
  // process: read-only memory is registered without any write right.
  params.prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_REMOTE_READ |
                (writable ? UCP_MEM_MAP_PROT_LOCAL_WRITE | UCP_MEM_MAP_PROT_REMOTE_WRITE : 0);
  ucp_mem_h memh = nullptr;
  detail::check("ucp_mem_map", ucp_mem_map(context, &params, &memh));
  return memh;
}

std::vector<std::byte> packed_rkey(ucp_context_h context, ucp_mem_h memh) {
  void* buffer = nullptr;
  std::size_t size = 0;
  detail::check("ucp_rkey_pack", ucp_rkey_pack(context, memh, &buffer, &size));
  const auto* b = static_cast<const std::byte*>(buffer);
  std::vector<std::byte> out(b, b + size);
  ucp_rkey_buffer_release(buffer);
  return out;
}

// The same-host section for `region`, with `beacon` made for it; none where
// the Block is not shareable, the host cannot be named, or the beacon cannot
// be made (then readers take UCX, as from another host).
std::optional<detail::SameHost> same_host_section(const Region& region, std::uint64_t generation,
                                                  std::optional<Block>& beacon) {
  const platform::HostIdentity host = platform::host_identity();
  const BlockId id = region.block->id();
  if (!host.known() || !id) return std::nullopt;
  try {
    BlockOptions o;
    o.pinning = Pinning::unpinned;
    beacon = Block::open(Block::page_size(), o);
  } catch (const Error&) {
    return std::nullopt;
  }
  const std::uint64_t magic = detail::kBeaconMagic;
  std::memcpy(beacon->data() + detail::BeaconWords::kMagic, &magic, sizeof magic);
  detail::BeaconWords::at(*beacon, detail::BeaconWords::kLive).store(generation, std::memory_order_release);
  const BlockId beacon_id = beacon->id();
  detail::SameHost h;
  h.boot = host.boot;
  h.pid_namespace = host.pid_namespace;
  h.pid = id.process;
  h.block_fd = id.handle;
  h.block_object = id.object;
  h.block_bytes = region.block->size();
  h.cells_offset = static_cast<std::uint64_t>(region.cells - region.block->data());
  h.generations_offset =
      region.generations != nullptr ? static_cast<std::uint64_t>(region.generations - region.block->data()) : 0;
  h.beacon_fd = beacon_id.handle;
  h.beacon_object = beacon_id.object;
  return h;
}

std::uint64_t fresh_generation() {
  std::random_device random;
  std::uint64_t g = 0;
  while (g == 0) g = (std::uint64_t{random()} << 32) ^ random();
  return g;
}

}  // namespace

struct Exporter::State {
  State(const Region& region, const ExportOptions& options)
      : context(false, std::chrono::milliseconds(0)), worker(context) {
    const std::size_t bytes = region.cell_size * region.count;
    cells_memh = map(context.get(), region.cells, bytes, !options.read_only);
    if (region.generations != nullptr) {
      generations_memh = map(context.get(), region.generations, region.count * sizeof(std::uint64_t), false);
    }
    detail::Descriptor d;
    d.read_only = options.read_only;
    d.generation = fresh_generation();
    d.cells_address = reinterpret_cast<std::uintptr_t>(region.cells);
    d.cell_size = region.cell_size;
    d.cells = region.count;
    d.generations_address = reinterpret_cast<std::uintptr_t>(region.generations);
    ucp_address_t* address = nullptr;
    std::size_t address_bytes = 0;
    detail::check("ucp_worker_get_address", ucp_worker_get_address(worker.get(), &address, &address_bytes));
    const auto* a = reinterpret_cast<const std::byte*>(address);
    d.worker_address.assign(a, a + address_bytes);
    ucp_worker_release_address(worker.get(), address);
    d.cells_rkey = packed_rkey(context.get(), cells_memh);
    if (generations_memh != nullptr) d.generations_rkey = packed_rkey(context.get(), generations_memh);
    d.same_host = same_host_section(region, d.generation, beacon);
    descriptor = detail::serialize(d);
    generation = d.generation;
    read_only = options.read_only;
    cells = region.count;
    cell_size = region.cell_size;
    if (options.progress == Progress::thread) thread = std::make_unique<detail::ProgressThread>(worker.get());
  }

  ~State() {
    if (forked.forked()) {
      // A fork() child's copy: the UCX objects and the progress thread are
      // the parent's (the thread does not even exist here), and so is the
      // beacon. Let go of them untouched, as the Loader does its CUDA handles.
      (void)thread.release();
      worker.abandon();
      context.abandon();
      return;
    }
    close_beacon();
    thread.reset();  // the worker is this thread's again
    if (generations_memh != nullptr) (void)ucp_mem_unmap(context.get(), generations_memh);
    if (cells_memh != nullptr) (void)ucp_mem_unmap(context.get(), cells_memh);
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Same-host readers: no call starts from now on, and those copying finish
  // first (src/remote/beacon.hpp).
  void close_beacon() noexcept {
    if (!beacon) return;
    using Words = detail::BeaconWords;
    Words::at(*beacon, Words::kLive).store(0, std::memory_order_seq_cst);
    const auto deadline = std::chrono::steady_clock::now() + detail::kBeaconDrainLimit;
    while (Words::at(*beacon, Words::kCalls).load(std::memory_order_seq_cst) != 0 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  unimem::detail::ForkedFlag forked;
  detail::Context context;
  detail::Worker worker;
  ucp_mem_h cells_memh = nullptr;
  ucp_mem_h generations_memh = nullptr;
  std::vector<std::byte> descriptor;
  std::uint64_t generation = 0;
  bool read_only = false;
  std::size_t cells = 0;
  std::size_t cell_size = 0;
  std::unique_ptr<detail::ProgressThread> thread;  // null with Progress::caller
  std::optional<Block> beacon;                     // none without a same-host section
};

Exporter::Exporter(std::unique_ptr<State> state) noexcept : state_(std::move(state)) {}
Exporter::Exporter(Exporter&&) noexcept = default;
Exporter& Exporter::operator=(Exporter&&) noexcept = default;
Exporter::~Exporter() = default;

namespace {

Exporter::State* make_state(const Region& region, const ExportOptions& options) {
  if (!options.read_only && region.block->read_only()) {
    bad("a writable export of memory mapped read-only in this process (export it with read_only)");
  }
  return new Exporter::State(region, options);
}

}  // namespace

Exporter Exporter::create(const SharedGrid& grid, const ExportOptions& options) {
  if (grid.cells() == 0) bad("the SharedGrid is moved-from");
  const Block& block = grid.block();
  Region r{block.data() + grid.offset_of(0), grid.cell_size(), grid.cells(), block.data() + grid.generations_offset(),
           &block};
  return Exporter(std::unique_ptr<State>(make_state(r, options)));
}

Exporter Exporter::create(const gpu::OffloadPool& pool, const ExportOptions& options) {
  if (pool.blocks() == 0) bad("the OffloadPool is moved-from");
  const Block& block = pool.host_block();
  // The pool's Block is a SharedGrid's (src/shared_grid_header.hpp), laid out
  // for its cell count.
  const auto at = unimem::detail::shared_grid_offsets(pool.blocks(), Block::page_size());
  Region r{pool.cell(0).data(), pool.block_bytes(), pool.blocks(), block.data() + at.generations, &block};
  if (r.cells != block.data() + at.data) bad("the OffloadPool's Block is not laid out as a SharedGrid's");
  return Exporter(std::unique_ptr<State>(make_state(r, options)));
}

Exporter Exporter::create(const Block& block, std::size_t offset, std::size_t cell_size, std::size_t cells,
                          const ExportOptions& options) {
  if (block.empty()) bad("the Block is empty");
  if (cell_size == 0 || cells == 0 || cells >= 0xffffffffu) {
    bad("cell size " + std::to_string(cell_size) + " and count " + std::to_string(cells) +
        " (both non-zero, fewer than 2^32 - 1 cells)");
  }
  std::size_t bytes = 0, end = 0;
  if (__builtin_mul_overflow(cell_size, cells, &bytes) || __builtin_add_overflow(offset, bytes, &end) ||
      end > block.size()) {
    bad(std::to_string(cells) + " cells of " + std::to_string(cell_size) + " bytes from offset " +
        std::to_string(offset) + " do not fit in the Block's " + std::to_string(block.size()) + " bytes");
  }
  Region r{block.data() + offset, cell_size, cells, nullptr, &block};
  return Exporter(std::unique_ptr<State>(make_state(r, options)));
}

std::vector<std::byte> Exporter::descriptor() const {
  if (!state_) throw Error(Errc::invalid_argument, 0, "unimem: remote::Exporter: moved-from");
  return state_->descriptor;
}

std::uint64_t Exporter::generation() const noexcept { return state_ ? state_->generation : 0; }
bool Exporter::read_only() const noexcept { return state_ && state_->read_only; }
std::size_t Exporter::cells() const noexcept { return state_ ? state_->cells : 0; }
std::size_t Exporter::cell_size() const noexcept { return state_ ? state_->cell_size : 0; }

std::size_t Exporter::progress() {
  if (!state_) throw Error(Errc::invalid_argument, 0, "unimem: remote::Exporter: moved-from");
  if (state_->thread) return 0;
  std::size_t events = 0;
  while (unsigned n = ucp_worker_progress(state_->worker.get())) events += n;
  return events;
}

}  // namespace unimem::remote
