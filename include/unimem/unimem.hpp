// unimem/unimem.hpp — one piece of memory for every compute unit.
//
// Layers, each on the one below:
//   Block   pinned, shareable pages at a stable address      <unimem/block.hpp>
//   Tape    lock-free bump allocator over a Block            <unimem/tape.hpp>
//   Grid    lock-free pool of fixed-size cells over a Block  <unimem/grid.hpp>
//   Layout  weights / scratch / history Tapes for inference  <unimem/layout.hpp>
// Sharing: Blocks, Tapes and Grids across processes           <unimem/share.hpp>
// Files: read_file (io_uring + O_DIRECT), safetensors          <unimem/file.hpp>, <unimem/safetensors.hpp>
// GPU visibility: what the CUDA driver offers               <unimem/gpu.hpp>
// KV-cache offload: GPU blocks to shared host cells and back <unimem/offload.hpp>
// Errors are reported by one exception type, unimem::Error  <unimem/error.hpp>
// Linux: a Block as a file descriptor (sockets, exec)       <unimem/linux.hpp>
#pragma once

#include "unimem/block.hpp"
#include "unimem/build_info.hpp"
#include "unimem/error.hpp"
#include "unimem/file.hpp"
#include "unimem/gpu.hpp"
#include "unimem/grid.hpp"
#include "unimem/layout.hpp"
#include "unimem/offload.hpp"
#include "unimem/safetensors.hpp"
#include "unimem/share.hpp"
#include "unimem/tape.hpp"
#include "unimem/version.hpp"
#if defined(__linux__)
#include "unimem/linux.hpp"
#endif
