// unimem/block.hpp — Block: pinned, shareable pages at a stable address.
//
// A Block is the unit every other layer stands on. It owns one region of
// memory that
//   * stays at the same virtual address for its whole life (never moves,
//     never grows), so a pointer into it can be handed to any device;
//   * is backed by a shareable object (Linux: a memfd; Apple: an IOSurface),
//     so other processes and devices can map the very same physical pages;
//   * is pinned (Linux: mlock) by default, so the pages never go to swap and
//     a device may address them directly.
//
// Pages are backed lazily by default: opening is a few system calls and costs
// the same for 16 MiB as for 16 GiB; each page is zeroed and pinned on first
// touch. Backing::warm faults every page in up front, with several threads for
// large Blocks, so the first pass over the data runs at memory speed.
//
// GPU visibility: a Block opened with Visibility::gpus, or made visible later
// with make_gpu_visible(), is registered with every CUDA device (portable,
// device-mapped host memory). Kernels then read and write its pages over the
// bus, in place; on current systems at the very address the CPU uses (see
// device_pointer). The registration is undone before the pages are unmapped.
//
// Thread safety: every const member function may be called from any number of
// threads at once. The memory itself is plain memory: concurrent access to the
// same bytes needs the caller's synchronisation. Moving, assigning,
// destroying or make_gpu_visible() must not race with any other use of the
// Block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "unimem/error.hpp"

namespace unimem {

// Names a Block so that another process of the same user can attach to it
// (Block::attach) while the process that handed out the id keeps the Block
// open: where the Block is held (`process`, and that process's `handle` for
// it) and which object it is (`object`), which attach checks so that a stale
// id (handle closed or reused) is refused. What the fields mean on Linux:
// <unimem/linux.hpp>. No name is created anywhere: when the last process
// holding the Block exits (SIGKILL included), it is gone. A
// default-constructed BlockId (object 0) names nothing.
struct BlockId {
  std::int32_t process = 0;
  std::int32_t handle = -1;
  std::uint64_t object = 0;

  explicit operator bool() const noexcept { return object != 0; }
  friend bool operator==(const BlockId&, const BlockId&) = default;

  // "unimem:<process>:<handle>:<object>", for argv, environment variables, files.
  std::string to_string() const;
  // Parses to_string()'s form. Throws Error(invalid_argument) on anything else.
  static BlockId parse(std::string_view text);
};

enum class Backing {
  lazy,  // pages are backed (and pinned) on first touch; opening is O(1)
  warm,  // every page is backed before open() returns
};

enum class Pinning {
  pinned,    // pages are locked in RAM; fails with Errc::memlock_limit past RLIMIT_MEMLOCK
  unpinned,  // pages may be swapped out; no memlock limit applies
};

enum class Visibility {
  host,  // CPU only (other processes can still map the pages)
  gpus,  // also registered with every CUDA device: kernels read and write it in place
};

struct BlockOptions {
  Backing backing = Backing::lazy;
  Pinning pinning = Pinning::pinned;
  // Visibility::gpus implies every page is backed at open (Backing::warm).
  Visibility visibility = Visibility::host;
  // Shareable Blocks are backed by an object other processes can map (Linux:
  // a memfd). false gives process-private memory: id() is empty,
  // but transparent huge pages become available where shmem gets none.
  bool shareable = true;
  // Ask the kernel for transparent huge pages: fewer faults, faster backing
  // and GPU registration (though on a VM whose host takes free memory back,
  // faulting huge pages in again can cost more than base pages: see
  // huge_pages_pay_off_for_loads()). Linux gives shareable (memfd) pages
  // huge pages only where /sys/kernel/mm/transparent_hugepage/shmem_enabled
  // allows, private pages where .../enabled allows; huge_page_bytes() tells
  // what was obtained.
  // Where they are allowed, open() aligns a Block of at least one huge page
  // to them and rounds its size up (see open()).
  bool huge_pages = false;
  // Threads used to back pages (Backing::warm, Visibility::gpus). 0 picks from
  // the size and the machine: one thread per 4 MiB, at most one per core.
  unsigned warm_threads = 0;
  // For attach/adopt/receive only: map the pages read-only, so that this
  // process cannot change them (a write faults). open() refuses it.
  bool read_only = false;
};

namespace detail {
class GpuRegistration;
struct BlockAccess;

// The platform's description of one mapped region. Internal: fields may change.
struct Region {
  std::byte* base = nullptr;
  std::size_t size = 0;
  // The platform's handle of the shareable object, wide enough for a
  // descriptor or a pointer (Linux: the memfd); -1: none (a private Block).
  std::intptr_t handle = -1;
  std::uint64_t object = 0;  // what BlockId::object names
  bool pinned = false;
  bool read_only = false;
};
}  // namespace detail

class Block;
namespace detail {
// One empty Block, for accessors of moved-from objects. Never throws.
const Block& empty_block() noexcept;
}  // namespace detail

class Block {
 public:
  // Opens a Block of at least `bytes` bytes, rounded up to the page size;
  // size() reports the real size. The memory reads as zeros. With
  // options.huge_pages, where the system gives this kind of memory huge
  // pages, a Block of at least one huge page (2 MiB on x86-64) starts on a
  // huge-page boundary and is rounded up to whole huge pages, so that every
  // page of it can be huge: at most 2 MiB more, or an eighth of the size
  // where huge pages are larger. Where mapping or pinning that much more is
  // refused (RLIMIT_MEMLOCK, more than the machine has), it keeps the
  // page-rounded size.
  // Throws Error:
  //   invalid_argument  bytes == 0, or rounding up overflows
  //   out_of_memory     larger than the machine can back (or pin), or no address space
  //   memlock_limit     pinning refused by RLIMIT_MEMLOCK (message names the limit
  //                     and how to raise it); open with Pinning::unpinned to skip pinning
  //   system            the memfd/mmap call failed for another reason (sys_errno() says why)
  //   and, for Visibility::gpus, what make_gpu_visible() throws.
  // On any error nothing stays allocated, mapped, registered or open.
  static Block open(std::size_t bytes, const BlockOptions& options = {});

  // Maps the Block another process named with id(). `options` apply to this
  // process's mapping (pinning, read_only, visibility, backing). Throws Error:
  //   invalid_argument   the id names nothing (object 0, bad process or handle)
  //   not_found          no such process or descriptor, or the descriptor now
  //                      names another object (a stale id)
  //   permission_denied  the Block belongs to another user
  //   not_a_block        the descriptor is not a unimem Block (a socket, a
  //                      directory or a FIFO included: only a regular file is
  //                      ever opened, so attaching never blocks)
  //   and what open() throws for mapping, pinning and GPU visibility.
  static Block attach(const BlockId& id, const BlockOptions& options = {});

  // Maps the file at `path` read-only: the page cache's own pages, nothing
  // copied. size() is the file size rounded up to the page size (bytes past
  // the end read as zero); id() is empty (a file is not a shareable Block).
  // `options` apply as for open(): pinning locks the file's pages, Backing::warm
  // reads them all in now, Visibility::gpus registers them read-only with
  // every GPU. Throws Error(not_found, permission_denied), Error(invalid_argument)
  // for an empty or non-regular file (which is never opened: a FIFO cannot block
  // it), and what open() throws.
  static Block map_file(const std::string& path, const BlockOptions& options = {});

  // An empty Block: data() == nullptr, size() == 0. What a moved-from Block is.
  Block() noexcept;
  Block(Block&& other) noexcept;
  Block& operator=(Block&& other) noexcept;
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  // Unpins, unmaps and closes everything. Never throws.
  ~Block();

  // The first byte; page-aligned. Stable for the Block's lifetime.
  std::byte* data() const noexcept { return region_.base; }
  // In bytes, a multiple of page_size().
  std::size_t size() const noexcept { return region_.size; }
  bool empty() const noexcept { return region_.size == 0; }
  bool pinned() const noexcept { return region_.pinned; }

  // Views of the whole Block. 16-bit float formats (f16, bf16) are raw uint16_t.
  std::span<std::byte> bytes() const noexcept { return {region_.base, region_.size}; }
  std::span<const float> as_f32() const noexcept { return view<const float>(); }
  std::span<float> as_f32_mut() const noexcept { return view<float>(); }
  std::span<const std::uint16_t> as_u16() const noexcept { return view<const std::uint16_t>(); }
  std::span<std::uint16_t> as_u16_mut() const noexcept { return view<std::uint16_t>(); }

  // Names the Block for Block::attach in another process (see BlockId); an
  // empty id for a Block that is not shareable. The platform's own handles
  // (Linux: the memfd, a duplicate for a child, sending over a socket) are in
  // the platform's header, <unimem/linux.hpp>. Never throws.
  BlockId id() const noexcept;
  // True when this process mapped the pages read-only (BlockOptions::read_only).
  bool read_only() const noexcept { return region_.read_only; }

  // Registers the Block with every CUDA device, backing all its pages first
  // (with options-like `threads`; 0 picks from the size). Does nothing if the
  // Block is already visible. Throws Error:
  //   invalid_argument  the Block is empty
  //   no_cuda_driver    libcuda.so.1 cannot be loaded (the Block stays host-only and usable)
  //   no_cuda_device    the driver sees no device
  //   cuda              registration failed (the message names the CUDA error)
  //   out_of_memory     the pages cannot be backed
  // On error the Block is unchanged: nothing stays registered.
  void make_gpu_visible(unsigned threads = 0);

  bool gpu_visible() const noexcept { return gpu_ != nullptr; }
  // Number of CUDA devices that see the Block: all of them once visible, else 0.
  int gpu_count() const noexcept;
  // Where device `ordinal` sees the byte at `host` (a pointer into this Block):
  // equal to `host` wherever gpu::Device::host_pointer_is_device_pointer.
  // nullptr when the Block is not GPU-visible, `host` is outside it, or there
  // is no such device. Never throws.
  void* device_pointer(int ordinal, const void* host) const noexcept;
  void* device_pointer(int ordinal) const noexcept { return device_pointer(ordinal, data()); }

  // Bytes of the Block currently backed by huge pages. Reads /proc; not for hot paths.
  std::size_t huge_page_bytes() const;

  // True when `p` points into this Block.
  bool contains(const void* p) const noexcept {
    auto* b = static_cast<const std::byte*>(p);
    return region_.base != nullptr && b >= region_.base && b < region_.base + region_.size;
  }

  // The platform's page size: the granularity of size().
  static std::size_t page_size() noexcept;

 private:
  friend struct detail::BlockAccess;  // the platform's entry points (src/block_access.hpp)
  explicit Block(const detail::Region& region) noexcept;
  // Backing and GPU visibility as `options` ask, after mapping.
  void finish_open(const BlockOptions& options);
  // Faults every page in with `threads` threads (0: chosen from the size).
  void back_pages(unsigned threads);
  void release() noexcept;

  template <class T>
  std::span<T> view() const noexcept {
    return {reinterpret_cast<T*>(region_.base), region_.size / sizeof(T)};
  }

  detail::Region region_;
  std::unique_ptr<detail::GpuRegistration> gpu_;  // null while host-only
};

// Whether to ask for huge pages (BlockOptions::huge_pages) for a Block that
// is written in full right after it is opened, such as a file loaded into
// it: true where that kind of memory (private, or shareable) gets huge pages
// here and free memory is not handed back to a VM host. Where it is (a
// virtio balloon reporting free pages), faulting huge pages in costs several
// times what base pages cost; elsewhere they back memory faster
// (docs/BENCHMARKS.md, "CPU loads by page size"). Python's CPU loads and
// `unimem load` follow it. Reads the system's settings once. Never throws.
bool huge_pages_pay_off_for_loads(bool shareable = false) noexcept;

}  // namespace unimem
