// src/gpu/device_ranges.hpp — is [address, address + bytes) inside one device allocation of device d?
//
// The offload pool checks every device block a caller names before it moves
// anything: a wrong address would otherwise surface as a fault in the middle
// of a kernel, which takes the whole CUDA context of the process down. The
// driver knows each allocation's range (cuPointerGetAttributes: memory type,
// device ordinal, range start and size, in one call); asking it per block
// would cost more than moving a small block, so a DeviceRanges remembers the
// allocations it has seen and asks once per allocation (a KV cache is one
// large allocation: one question per call).
//
// Memory mapped with cuMemMap (the virtual memory management API: PyTorch's
// expandable segments, vLLM's cuMem allocator) reports the whole reserved
// address range as its range, unmapped holes included, so the driver is also
// asked for the mapping the address lies in (CU_POINTER_ATTRIBUTE_MAPPED,
// MAPPING_BASE_ADDR, MAPPING_SIZE) and the range kept is the allocation's
// range cut to that mapping. A block that straddles two adjacent mappings is
// therefore refused, although both are mapped: safe, and a KV cache's blocks
// do not straddle the chunks an allocator maps. Where the driver refuses the
// mapping attributes, the allocation's range alone is used.
//
// Two more things make an allocation of the right device unusable by the
// pool's work, which runs in the device's primary context: memory mapped
// with cuMemMap that this device was not given access to (cuMemSetAccess:
// none, or read-only where the move writes the block) and memory allocated in
// another context of the device (cuCtxCreate's; the runtime and PyTorch use
// the primary one). The driver is asked for the current context's access
// (CU_POINTER_ATTRIBUTE_ACCESS_FLAGS: a store reads the device blocks and
// needs read access, a fetch writes them and needs read and write) and for
// the allocation's context (CU_POINTER_ATTRIBUTE_CONTEXT; none for cuMemMap'ped
// memory, which belongs to no context). Where the driver refuses either
// attribute, that check is left out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace unimem::gpu::detail {

// For one call: not thread-safe; the device's context must be current.
class DeviceRanges {
 public:
  // What the moves do to the device blocks: a store reads them, a fetch writes them.
  enum class Use : unsigned char { read, write };
  DeviceRanges(int device, Use use) noexcept : device_(device), use_(use) {}

  // Returns when [address, address + bytes) lies inside one device
  // allocation of the device. Throws Error(invalid_argument) naming `what`
  // and `index` (e.g. "device block 7") and why not: memory CUDA does not
  // know, host memory, another device's memory, memory of another context,
  // reserved address space with no memory mapped, memory the device may not
  // access as the move needs, or a range running past its allocation or
  // mapping. Throws Error(cuda) when the driver fails to answer.
  void require(std::uintptr_t address, std::size_t bytes, std::size_t index, const char* what);

 private:
  struct Range {
    std::uintptr_t begin;
    std::uintptr_t end;
  };
  int device_;
  Use use_;
  std::vector<Range> known_;  // allocations of the device seen by this check
  std::size_t last_ = 0;      // where the previous block was found
};

}  // namespace unimem::gpu::detail
