// src/gpu/registration.cpp — fast, chunked, parallel host registration.
//
// cuMemHostRegister pins every page of the range; on an untouched mapping it
// faults them in itself, in one thread, as slowly as cudaHostAlloc. So Block
// backs the pages first with several threads (Block::back_pages), and they
// are registered here in as few calls as the driver allows: one per kMaxChunk
// (64 GiB). Fewer registrations matter beyond speed: an async copy
// from host memory must lie within a single registration, so a Block below
// 64 GiB is one registration and any copy from it works.
//
// Registration is portable (all contexts) and device-mapped. On current
// systems (UVA, canUseHostPointerForRegisteredMem) a device sees the pages at
// the host's address; where it does not, the device address of every chunk is
// recorded per device and device_pointer() translates.
#include "gpu/registration.hpp"

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>

#include "format.hpp"
#include "parallel.hpp"
#include "unimem/error.hpp"

namespace unimem::detail {

namespace {
constexpr std::size_t kGrain = std::size_t{2} << 20;  // slices keep 2 MiB runs whole
}  // namespace

using gpu::detail::check;
using gpu::detail::ContextScope;
using gpu::detail::CUdeviceptr;
using gpu::detail::driver;

void GpuRegistration::require_driver() { driver(); }

std::unique_ptr<GpuRegistration> GpuRegistration::create(std::byte* base, std::size_t bytes, bool read_only) {
  const gpu::detail::Driver& d = driver();  // throws when there is no driver or device
  std::unique_ptr<GpuRegistration> r(new GpuRegistration);
  r->device_count_ = d.device_count;
  std::mutex lock;  // guards r->chunks_ while workers add to it

  // Then register as few ranges as possible: a copy (cudaMemcpy*) must lie
  // within one registration, and the driver serialises registrations anyway.
  // On error, the destructor of r unregisters whatever chunks were added.
  const std::size_t chunks = (bytes + kMaxChunk - 1) / kMaxChunk;
  for_each_slice(bytes, static_cast<unsigned>(chunks), kGrain, kMaxChunk, [&](std::size_t begin, std::size_t end) {
    std::byte* host = base + begin;
    const std::size_t n = end - begin;
    ContextScope context(0);  // portable: any device's context registers for all
    // Registering is refused (and ends the capture) while another thread
    // captures a CUDA graph in global mode; this thread may be a worker.
    gpu::detail::RelaxedCapture relaxed;
    const unsigned flags = gpu::detail::kHostRegisterPortable | gpu::detail::kHostRegisterDeviceMap |
                           (read_only ? gpu::detail::kHostRegisterReadOnly : 0u);
    check(d.cuMemHostRegister(host, n, flags),
          "registering " + format_bytes(n) + " of a Block with CUDA (cuMemHostRegister)");
    std::lock_guard<std::mutex> hold(lock);
    r->chunks_.push_back({host, n, {}});
  });

  std::sort(r->chunks_.begin(), r->chunks_.end(), [](const Chunk& a, const Chunk& b) { return a.host < b.host; });
  for (int ordinal = 0; ordinal < r->device_count_; ++ordinal) {
    ContextScope context(ordinal);
    for (Chunk& c : r->chunks_) {
      CUdeviceptr p = 0;
      check(d.cuMemHostGetDevicePointer(&p, c.host, 0),
            "mapping a Block into device " + std::to_string(ordinal) + " (cuMemHostGetDevicePointer)");
      c.device.push_back(p);
    }
  }
  return r;
}

GpuRegistration::~GpuRegistration() {
  if (chunks_.empty()) return;
  if (forked_.forked()) return;             // a fork() child: the parent's registration, not to touch
  const gpu::detail::Driver& d = driver();  // cannot throw: chunks exist, so the driver loaded
  try {
    ContextScope context(0);
    gpu::detail::RelaxedCapture relaxed;  // unregistering is refused during another thread's global capture
    for (Chunk& c : chunks_) d.cuMemHostUnregister(c.host);
  } catch (...) {
    // The context could not be made current (e.g. after a device reset):
    // the registrations went with it.
  }
}

void* GpuRegistration::device_pointer(int ordinal, const void* host) const noexcept {
  if (ordinal < 0 || ordinal >= device_count_) return nullptr;
  const auto* h = static_cast<const std::byte*>(host);
  auto it = std::upper_bound(chunks_.begin(), chunks_.end(), h,
                             [](const std::byte* p, const Chunk& c) { return p < c.host; });
  if (it == chunks_.begin()) return nullptr;
  const Chunk& c = *--it;
  if (h >= c.host + c.bytes || c.device.size() <= static_cast<std::size_t>(ordinal)) return nullptr;
  // CUDA hands device addresses out as integers (CUdeviceptr).
  const CUdeviceptr device = c.device[static_cast<std::size_t>(ordinal)] + static_cast<CUdeviceptr>(h - c.host);
  return reinterpret_cast<void*>(device);  // NOLINT(performance-no-int-to-ptr)
}

}  // namespace unimem::detail
