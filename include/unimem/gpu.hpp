// unimem/gpu.hpp — what the CUDA driver offers this process.
//
// unimem loads the CUDA driver (libcuda.so.1) at run time, on first use: the
// library builds and runs without CUDA, and only the functions below and
// GPU visibility of Blocks (Block::make_gpu_visible, Visibility::gpus) need
// it. Set UNIMEM_CUDA_DRIVER to load another library instead.
//
// Thread safety: every function here may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "unimem/block.hpp"
#include "unimem/error.hpp"
#include "unimem/file.hpp"
#include "unimem/safetensors.hpp"

namespace unimem::gpu {

struct Device {
  int ordinal = 0;
  std::string name;
  // Kernels on this device use host pointers of registered memory as they are
  // (canUseHostPointerForRegisteredMem); otherwise use Block::device_pointer.
  bool host_pointer_is_device_pointer = false;
  bool host_register_supported = false;
};

// True when a CUDA driver is loaded and sees at least one device. Never throws.
bool available() noexcept;

// Why available() is false, as a sentence; empty when it is true. Never throws
// except std::bad_alloc.
std::string unavailable_reason();

// The driver's CUDA version, e.g. 13000 for 13.0.
// Throws Error(no_cuda_driver) or Error(no_cuda_device).
int driver_version();

// The devices the driver sees, by ordinal.
// Throws Error(no_cuda_driver), Error(no_cuda_device) or Error(cuda).
std::vector<Device> devices();

// A range of a file and the device memory it goes to; or, with rows > 1, a
// strided rectangle: `rows` rows of `bytes` each, file_pitch apart in the file
// and device_pitch apart on the device (a column slice of a row-major matrix
// for tensor parallelism: bytes = the slice's width, file_pitch = the
// matrix's row).
struct DeviceSegment {
  std::uint64_t file_offset = 0;
  std::uintptr_t device_address = 0;  // e.g. from cudaMalloc, on `device`
  std::size_t bytes = 0;              // of the range, or of each row
  std::size_t rows = 1;
  std::uint64_t file_pitch = 0;  // with rows > 1: at least bytes
  std::size_t device_pitch = 0;  // with rows > 1: at least bytes
  int device = -1;               // one of the Loader's devices; -1: its first
};

// When a Loader registers a file's page-cache pages with CUDA in place, so
// that copies run straight from the page cache (every load after that moves
// at the link rate, DMA alone). Registering costs time on the load that does
// it, most on files whose page cache holds 4 KiB pages; staging (worker
// threads copying the page cache into pinned slots of their own, each slot's
// copy queued as soon as it is full) runs near the link rate from the first
// load. So by default a file is staged on its first load and registered from
// its second on, where registering it runs near staging's rate: the first
// reload after a staged load of at least 256 MiB times registering 16 MiB
// of the file (twice, then lets it go) against the rate that staging
// reached, and a file that registers at less than 0.8x that (typically one
// whose page cache holds 4 KiB folios: 0.2-0.4x, measured), whose
// registration the driver refuses, or whose whole chunks then register
// below 0.8x (the load stops registering after the first such chunk and
// stages the rest) stays staged, on that load and every later one, for as
// long as the Loader keeps the file (until release(), the file changes, or
// 64 other files were loaded since). The load that timed it gives both
// rates in ReadReport's fallback_reason. While a file has no staging rate
// (its loads so far were smaller, or read from the disk), a reload of at
// least 256 MiB is staged, and sets one; a smaller reload registers
// untimed. docs/BENCHMARKS.md has the figures.
enum class PageCacheRegistration {
  always,     // from the first load
  on_reload,  // from a file's second load by the same Loader on, where fast enough (the default)
  never,      // always stage
};

struct CopyOptions {
  // Where the file is in the page cache: register it in place, or copy it
  // into pinned staging with a crew of threads. See PageCacheRegistration.
  PageCacheRegistration register_page_cache = PageCacheRegistration::on_reload;
  // When registering (above), also stage cached data at the same time: the
  // staging workers take slices from the end of the file while the loading
  // thread registers chunks from the start, each taking the next when it is
  // free. Off by default: the driver holds every call behind a registration,
  // and the workers starved (measured slower than either route alone;
  // docs/BENCHMARKS.md, "First loads on the H200").
  bool both_routes = false;
  // Several devices: a file range more than one of them wants (a replicated
  // tensor) crosses the host's links once in all, not once per device. It is
  // dealt out in 4 MiB granules, round-robin over the devices that want it;
  // each device receives its granules over its own link and copies them to
  // the others over peer access (NVLink), on the same stream, so the devices
  // together read the file at up to N links' rate. Needs peer access between
  // every pair of the Loader's devices (enabled for the process, and left
  // enabled); where a pair lacks it, every device's copy comes from the host
  // and ReadReport::fallback_reason says why (it also says how many bytes
  // went GPU to GPU). Strided rectangles (columns splits) always come from
  // the host. Destinations must be memory every device may write: cuMemAlloc
  // / cudaMalloc memory, or a cuMemMap mapping whose access (cuMemSetAccess)
  // includes the other devices. Off by default: not yet measured on a
  // machine with several GPUs (issue #26).
  bool peer_exchange = false;
  // The granularity of routes and registrations, and one slot of the ring
  // that files not in the page cache are read into (at most 1 GiB; shrunk
  // to fit a caller's staging Block).
  std::size_t chunk_bytes = std::size_t{64} << 20;
  unsigned slots = 4;         // ring slots in flight
  unsigned copy_threads = 0;  // staging workers for cached files; 0: the cores, at most 16
  // A GPU-visible Block to stage through (kept by the caller across calls:
  // setting one up costs a registration). When null, one is made for the call.
  const Block* staging = nullptr;
  ReadOptions read;  // for files not in the page cache
};

// What one Loader::load call reports and does besides copying.
struct LoadOptions {
  // Told how far the load is: bytes of the file read and queued for copying
  // so far, out of `total` (the file bytes the segments cover, the same in
  // every call), at most about every 1% (and 64 MiB), then once with done ==
  // total when every byte is on the devices. Called from the loading thread
  // or a staging worker, never two calls at once; it must not call into the
  // same Loader (its load holds it: a deadlock). What it throws, load()
  // throws (after draining its copies; workers finishing their slice may
  // call it once more meanwhile). Empty: no reports; an empty load makes none.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
  // After the load, asks the kernel to drop the pages of the file that the
  // load read from the page cache (posix_fadvise POSIX_FADV_DONTNEED), for a
  // process that loads a model once and wants the memory back. Such a load
  // stages cached data (it registers nothing in place), and the Loader
  // forgets the file: its registrations kept from earlier loads (under any
  // path naming the same file) are released first, since pinned pages cannot
  // be dropped. Another Loader's registrations of the file keep theirs.
  bool drop_page_cache = false;
};

// Moves ranges of files into the memory of one GPU or several, keeping between loads
// what is costly to set up: streams and events, the staging workers and their
// pinned slots, the ring for files not in the page cache, and the
// registrations of page-cache ranges (so loading the same file again pays
// nothing to register).
//
// Routes, chosen per 64 MiB chunk of the file: a chunk in the page cache (>=
// 90%, by mincore) is staged by the workers (each reads 4 MiB slices into
// pinned slots of its own and queues their copies on its own streams) or,
// when CopyOptions::register_page_cache says so, registered with CUDA in
// place, read-only, and copied straight from the page cache (with
// CopyOptions::both_routes, the workers also stage from the file's end
// meanwhile). A load of at most 64 MiB of cached data before any worker
// exists registers it (the workers' slots cost more to make). A chunk not in
// the page cache is read with read_file (O_DIRECT where allowed) into the
// staging ring. Every fill overlaps earlier copies. A chunk whose
// registration the driver refuses is staged.
//
// Registrations pin the file's page-cache pages until release(), the file
// changes or goes away (its identity: inode, size, mtime, ctime; checked at
// every load for every file kept), 64 other files were loaded since, or the
// Loader is destroyed. release() also forgets how often each file was loaded.
// A file that shrinks while it loads: Error(system, "ended early") (staged
// chunks are read with pread, never copied out of the mapping, which would
// raise SIGBUS past the new end); chunks registered before it shrank hold
// their pages until the next load sees the file changed.
// Several devices: one Loader registers each chunk once (PORTABLE, so every
// device's copy engine reads it) and copies to all devices at once, each on
// its own streams: a model replicated or split across GPUs reads the page
// cache once.
// Thread safety: one load() at a time per Loader (others wait); separate
// Loaders are independent unless they share CopyOptions::staging, which must
// then not be used by two loads at once, and must outlive them.
class Loader {
 public:
  // Throws Error(no_cuda_driver, no_cuda_device, cuda) and Error(invalid_argument)
  // for a device that does not exist (or is named twice, or none is).
  explicit Loader(int device = 0, const CopyOptions& options = {});
  explicit Loader(std::span<const int> devices, const CopyOptions& options = {});
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Copies each segment's file range to its device address; returns when all
  // of it is on the devices. Adjacent ranges (in the file and on the device)
  // merge into larger copies; a rectangle goes by strided copies
  // (cuMemcpy2DAsync) straight from the registered page cache or a staging
  // slot. Throws Error(invalid_argument) also for a segment whose device is
  // not the Loader's or whose rows overlap. ReadReport::path is page_cache_registered when
  // any chunk went in place (buffered_bytes counts those bytes), else the
  // read path of the staged chunks. Throws Error(invalid_argument) for a range
  // outside the file, Error(cuda) for a copy the driver refuses (e.g. a bad
  // device address), and read_file's errors. On a throw nothing is in flight.
  // `options`: progress reports and dropping the file's cached pages (see
  // LoadOptions).
  ReadReport load(const std::string& path, std::span<const DeviceSegment> segments, const LoadOptions& options = {});

  // Unregisters every cached page-cache range. Never throws.
  void release() noexcept;
  // Bytes of page cache registered and kept for later loads.
  std::size_t registered_bytes() const noexcept;
  int device() const noexcept;  // the first of devices()
  std::span<const int> devices() const noexcept;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// One load with a Loader made for the call (nothing stays registered
// afterwards): copies ranges of the file at `path` into the memory of GPU
// `device`. Throws what Loader and Loader::load
// throw, and Error(invalid_argument) for a staging Block that is not
// GPU-visible.
ReadReport copy_file_to_device(const std::string& path, std::span<const DeviceSegment> segments, int device = 0,
                               const CopyOptions& options = {});

// Device memory that unimem allocated (cuMemAlloc in the device's primary
// context, which the CUDA runtime shares); freed when destroyed. Move-only.
class DeviceMemory {
 public:
  DeviceMemory() noexcept = default;
  // Throws Error(out_of_memory) when the device has no room (the message says
  // how much was asked for), Error(cuda) for other refusals, and what
  // driver loading throws.
  DeviceMemory(int device, std::size_t bytes);
  DeviceMemory(DeviceMemory&& other) noexcept;
  DeviceMemory& operator=(DeviceMemory&& other) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory();

  std::uintptr_t address() const noexcept { return address_; }
  std::size_t size() const noexcept { return size_; }
  int device() const noexcept { return device_; }

 private:
  void release() noexcept;
  std::uintptr_t address_ = 0;
  std::size_t size_ = 0;
  int device_ = 0;
};

// How load_safetensors places a tensor across a Loader's devices.
enum class Split : std::uint8_t {
  replicate,  // every device holds the whole tensor
  rows,       // dimension 0 is cut into one part per device (device i of the
              // Loader's order gets part i): contiguous in the file
  columns,    // the last dimension is cut likewise: strided copies
};
// Parts of a dimension of n split k ways: part i is [i*n/k, (i+1)*n/k). n
// must be a multiple of k (tensor parallelism needs equal parts):
// load_safetensors throws Error(invalid_argument) naming the tensor
// otherwise, before it allocates anything. A tensor of rank 0 is always
// replicated; for rank 1, rows and columns are the same cut.

struct TensorLoadOptions {
  // Floating-point tensors (F32, F16, BF16) arrive in this dtype, converted on
  // the GPU as they load (round to nearest even); other tensors as stored.
  // Empty: every tensor as stored. Converting needs scratch device memory the
  // size of the converted tensors' stored bytes until the call returns.
  std::optional<DType> dtype;
  // Per tensor, for a Loader of several devices. Empty: replicate.
  std::function<Split(const TensorInfo&)> split;
  // Bytes of tensor data loaded so far, out of every file's (the same total
  // from the first call; a sharded model counts all its files), as
  // LoadOptions::progress reports them.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
  // Drops every file's pages from the page cache after its load (see
  // LoadOptions::drop_page_cache).
  bool drop_page_cache = false;
};

// A tensor (or one device's part of it) in device memory.
struct DeviceTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::uint64_t> shape;  // of this part
  std::uintptr_t address = 0;        // on the device, 256-byte aligned
  std::uint64_t bytes = 0;
  std::string file;  // the safetensors file it came from
  Split split = Split::replicate;
  std::uint64_t part_begin = 0;  // where this part starts along the split dimension
};

// What load_safetensors returns: every tensor and the device memory that
// holds them. Move-only.
class DeviceTensors {
 public:
  // The tensor called `name`, or nullptr. Never throws.
  const DeviceTensor* find(std::string_view name) const noexcept;
  // The tensor called `name`. Throws Error(not_found).
  const DeviceTensor& at(std::string_view name) const;
  std::span<const DeviceTensor> tensors() const noexcept { return tensors_; }
  const DeviceMemory& memory() const noexcept { return memory_; }
  // What the loads did, one report per file.
  std::span<const ReadReport> reports() const noexcept { return reports_; }

 private:
  friend std::vector<DeviceTensors> load_safetensors(const std::string& path, Loader& loader,
                                                     const TensorLoadOptions& options);
  DeviceMemory memory_;
  std::vector<DeviceTensor> tensors_;  // sorted by name
  std::vector<ReadReport> reports_;
};

// Loads a safetensors model into one device allocation on the loader's
// device, every tensor at 256-byte alignment. `path` is a .safetensors file,
// or a sharded model's index (model.safetensors.index.json, as Hugging Face
// ships them): its "weight_map" names the file of every tensor, relative to
// the index's folder, and every tensor it names is loaded. Throws
// Error(not_found) for a missing file or a tensor the index names that its
// file lacks, Error(bad_format) for a malformed index or header (or a tensor
// two shards both hold), Error(out_of_memory) when the device has no room,
// and what Loader::load throws. On a throw nothing stays allocated. The
// Loader must have one device (Error(invalid_argument) otherwise).
DeviceTensors load_safetensors(const std::string& path, Loader& loader);

// The same onto every device of the Loader at once, each tensor replicated or
// split as options.split says, converted to options.dtype on the GPU: one
// DeviceTensors per device, in the Loader's order. Every file is read (and
// registered) once for all devices. Also throws Error(invalid_argument) when
// options.dtype is not F32, F16 or BF16, or a split does not divide (see
// Split), before any device memory is taken.
std::vector<DeviceTensors> load_safetensors(const std::string& path, Loader& loader, const TensorLoadOptions& options);

}  // namespace unimem::gpu
