// src/platform/region.hpp — the seam between Block and the operating system.
//
// Everything Block needs from a platform is here: create, map, pin and back a
// shareable region, and tear it down. Linux implements it in platform/linux/
// (memfd + mmap + mlock2); Apple Silicon will implement it in platform/apple/
// (IOSurface + lock). A new platform is one new folder and one line in
// CMakeLists.txt; nothing above Block changes.
#pragma once

#include <cstddef>
#include <string>

#include "unimem/block.hpp"

namespace unimem::platform {

// The granularity of a Region's size. Never throws.
std::size_t page_size() noexcept;

// Creates and maps a fresh shareable region of exactly `bytes` bytes, which the
// caller has already validated as non-zero and a multiple of page_size().
// Applies options.pinning and options.huge_pages (with huge pages, a region
// of at least huge_page_unit() bytes starts on a multiple of it, so that its
// aligned windows can each be one huge page); pages stay unbacked (the
// caller populates them for Backing::warm). Throws Error; on throw, nothing
// stays created, mapped or open.
detail::Region map_region(std::size_t bytes, const BlockOptions& options);

// Backs every page of [base, base + bytes), a page-aligned slice of a mapped
// region, mapped writable (or only readable, as a read-only mapping needs),
// without changing its contents. Safe to call on disjoint slices from several
// threads and while other processes write. Throws Error(out_of_memory) when
// the pages cannot be backed.
void populate(std::byte* base, std::size_t bytes, bool for_writing = true);

// Asks the kernel for huge pages over the range. Returns false where it
// refuses outright; whether huge pages were obtained shows in
// huge_page_bytes() once the pages are backed. Never throws.
bool advise_huge_pages(std::byte* base, std::size_t bytes) noexcept;

// The size of the huge pages a Block of this kind (shareable: the
// platform's shareable object; else private memory) can get when it asks
// (BlockOptions::huge_pages), or 0 where the system gives that kind none.
// Such a Block is mapped at an address aligned to it (map_region,
// adopt_region), and Block::open rounds its size up to whole huge pages.
// Never throws.
std::size_t huge_page_unit(bool shareable) noexcept;

// True where this machine is a VM that hands free memory back to its host
// (Linux: a virtio balloon with free page reporting, read from
// `virtio_devices`, normally /sys/bus/virtio/devices). The host takes back
// free blocks of 2 MiB and more, so touching them again is slow, and huge
// pages are always such blocks. Never throws.
bool free_memory_returns_to_host(const std::string& virtio_devices) noexcept;

// Bytes this process has pinned in all (Linux: VmLck), or 0 when unknown.
std::size_t locked_bytes();

// Asks that fork() children not inherit [base, base + bytes) (private memory
// only the parent uses). Returns false where refused. Never throws.
bool advise_no_fork_copy(std::byte* base, std::size_t bytes) noexcept;

// Bytes of [base, base + bytes) currently mapped with huge pages.
std::size_t huge_page_bytes(const std::byte* base, std::size_t bytes);

// Maps an existing shareable object, taking ownership of `fd` (closed on
// error). Checks that it is a unimem Block and, where expected_object is not
// 0, that it is that object. Applies options.pinning, options.read_only and
// options.huge_pages. Throws Error(not_a_block, not_found, ...).
detail::Region adopt_region(int fd, std::uint64_t expected_object, const BlockOptions& options);

// Maps the file at `path` read-only with `options` (read_only is implied).
// Throws Error(not_found, permission_denied, invalid_argument, ...).
detail::Region map_file_region(const std::string& path, const BlockOptions& options);

// Opens another process's Block by id (read-only when asked); returns a
// descriptor the caller owns. Opens nothing but a regular file, so a FIFO
// cannot block it. Throws Error(invalid_argument, not_found, permission_denied),
// Error(not_a_block) when the descriptor is not a regular file.
int open_by_id(const BlockId& id, bool read_only);

// A new descriptor for region `handle` that a child process keeps across
// exec (close-on-exec off). Throws Error(system).
int inheritable_duplicate(int handle);

// This process's id. Never throws.
int current_pid() noexcept;

// Undoes map_region. Safe on an empty Region. Never throws.
void unmap_region(detail::Region& region) noexcept;

}  // namespace unimem::platform
