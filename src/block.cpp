// src/block.cpp — Block: size validation, ownership, backing and GPU visibility.
//
// The platform (src/platform/) creates and maps the pages; the GPU module
// (src/gpu/) registers them. Block sequences the two and guarantees the
// teardown order: unregister, then unmap and close.
#include "unimem/block.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <utility>

#include "gpu/registration.hpp"
#include "parallel.hpp"
#include "platform/region.hpp"

namespace unimem {

namespace {
// Padding to whole huge pages always allowed; more only up to an eighth of the size.
constexpr std::size_t kMaxHugePagePadding = std::size_t{2} << 20;
}  // namespace

std::size_t Block::page_size() noexcept { return platform::page_size(); }

const Block& detail::empty_block() noexcept {
  static const Block none;
  return none;
}

Block Block::open(std::size_t bytes, const BlockOptions& options) {
  if (bytes == 0) {
    throw Error(Errc::invalid_argument, 0, "unimem: Block::open(0): a Block needs at least one byte");
  }
  const std::size_t page = platform::page_size();
  if (bytes > std::numeric_limits<std::size_t>::max() - (page - 1)) {
    throw Error(
        Errc::invalid_argument, 0,
        "unimem: Block::open(" + std::to_string(bytes) + "): the size overflows when rounded up to the page size");
  }
  const std::size_t rounded = (bytes + page - 1) / page * page;
  // Whole huge pages: the last, partial window of a Block would otherwise
  // fault 4 KiB pages (the demo's 3 MB weights: a third of them). The
  // padding is capped where huge pages are large (arm64 with 64 KiB pages:
  // 512 MiB) at an eighth of the size.
  std::size_t size = rounded;
  const std::size_t unit = options.huge_pages ? platform::huge_page_unit(options.shareable) : 0;
  if (unit != 0 && rounded >= unit && rounded <= std::numeric_limits<std::size_t>::max() - (unit - 1)) {
    const std::size_t whole = (rounded + unit - 1) / unit * unit;
    if (whole - rounded <= std::max(kMaxHugePagePadding, rounded / 8)) size = whole;
  }
  detail::Region region;
  try {
    region = platform::map_region(size, options);
  } catch (const Error& e) {
    // The padding must not be why mapping or pinning fails: `rounded` may
    // still fit under the memlock limit, or in the machine.
    if (size == rounded || (e.code() != Errc::memlock_limit && e.code() != Errc::out_of_memory)) throw;
    region = platform::map_region(rounded, options);
  }
  Block block(region);  // released on any throw below
  block.finish_open(options);
  return block;
}

Block Block::attach(const BlockId& id, const BlockOptions& options) {
  Block block(platform::adopt_region(platform::open_by_id(id, options.read_only), id.object, options));
  block.finish_open(options);
  return block;
}

Block Block::map_file(const std::string& path, const BlockOptions& options) {
  Block block(platform::map_file_region(path, options));  // mapped read-only
  block.finish_open(options);
  return block;
}

void Block::finish_open(const BlockOptions& options) {
  if (options.visibility == Visibility::gpus) {
    make_gpu_visible(options.warm_threads);  // backs every page before it registers
  } else if (options.backing == Backing::warm) {
    back_pages(options.warm_threads);
  }
}

void Block::back_pages(unsigned threads) {
  std::byte* base = region_.base;
  const bool writable = !region_.read_only;
  detail::for_each_slice(
      region_.size, threads, std::size_t{2} << 20, SIZE_MAX,
      [=](std::size_t begin, std::size_t end) { platform::populate(base + begin, end - begin, writable); });
}

BlockId Block::id() const noexcept {
  if (region_.object == 0) return {};
  return {platform::current_pid(), static_cast<std::int32_t>(region_.handle), region_.object};
}

Block::Block() noexcept = default;

Block::Block(const detail::Region& region) noexcept : region_(region) {}

Block::Block(Block&& other) noexcept
    : region_(std::exchange(other.region_, detail::Region{})), gpu_(std::move(other.gpu_)) {}

Block& Block::operator=(Block&& other) noexcept {
  if (this != &other) {
    release();
    region_ = std::exchange(other.region_, detail::Region{});
    gpu_ = std::move(other.gpu_);
  }
  return *this;
}

Block::~Block() { release(); }

void Block::release() noexcept {
  gpu_.reset();  // devices stop seeing the pages before they go away
  platform::unmap_region(region_);
}

void Block::make_gpu_visible(unsigned threads) {
  if (gpu_) return;
  if (empty()) throw Error(Errc::invalid_argument, 0, "unimem: an empty Block cannot be made GPU-visible");
  detail::GpuRegistration::require_driver();  // before spending time on the pages
  // Registering untouched pages would make the driver fault them in itself,
  // in one thread: back them first, with several.
  back_pages(threads);
  gpu_ = detail::GpuRegistration::create(region_.base, region_.size, region_.read_only);
}

int Block::gpu_count() const noexcept { return gpu_ ? gpu_->device_count() : 0; }

void* Block::device_pointer(int ordinal, const void* host) const noexcept {
  return gpu_ && contains(host) ? gpu_->device_pointer(ordinal, host) : nullptr;
}

std::size_t Block::huge_page_bytes() const {
  return empty() ? 0 : platform::huge_page_bytes(region_.base, region_.size);
}

bool huge_pages_pay_off_for_loads(bool shareable) noexcept {
  static const bool returns = platform::free_memory_returns_to_host("/sys/bus/virtio/devices");
  return !returns && platform::huge_page_unit(shareable) != 0;
}

}  // namespace unimem
