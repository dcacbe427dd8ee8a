// src/gpu/registration.hpp — a Block's pages registered with every CUDA device.
#pragma once

#include "unimem/detail/fork_watch.hpp"

#include <cstddef>
#include <memory>
#include <vector>

#include "gpu/driver.hpp"

namespace unimem::detail {

// Owns the CUDA host registration of one mapped range. Created by
// Block::make_gpu_visible, destroyed by the Block before it unmaps.
class GpuRegistration {
 public:
  // Registers [base, base + bytes), whose pages the caller has backed, with
  // all devices (portable, device-mapped) in chunks of at most kMaxChunk. A
  // host-to-device copy must not span two chunks (CUDA's rule for registered
  // memory). Throws Error(no_cuda_driver,
  // no_cuda_device, cuda, out_of_memory); on throw nothing stays registered.
  // A read-only mapping is registered read-only (devices may only read it).
  static std::unique_ptr<GpuRegistration> create(std::byte* base, std::size_t bytes, bool read_only);

  // Throws what create() would for a missing driver or device, so that a
  // caller can find out before it prepares the pages. Thread-safe.
  static void require_driver();

  // Unregisters every chunk. Never throws. In a fork() child of the process
  // that registered, does nothing: the registration is the parent's (in its
  // context), and a child of a process that used CUDA must not call CUDA.
  ~GpuRegistration();

  // Where `host` (inside the range) is seen by device `ordinal`, or nullptr
  // when `host` is outside the range or `ordinal` is not a device.
  void* device_pointer(int ordinal, const void* host) const noexcept;
  int device_count() const noexcept { return device_count_; }
  std::size_t chunk_count() const noexcept { return chunks_.size(); }

  // Drivers fail single registrations of 512 GiB or more; stay well below.
  static constexpr std::size_t kMaxChunk = std::size_t{64} << 30;

 private:
  struct Chunk {
    std::byte* host;
    std::size_t bytes;
    std::vector<gpu::detail::CUdeviceptr> device;  // per device ordinal
  };
  GpuRegistration() = default;

  std::vector<Chunk> chunks_;  // sorted by host address
  int device_count_ = 0;
  ForkedFlag forked_;  // set in a fork() child: the registration is the parent's
};

}  // namespace unimem::detail
