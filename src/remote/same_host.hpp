// src/remote/same_host.hpp — a reader on the exporter's own host: the export's
// Block mapped by id, cells copied with memcpy.
//
// Between two processes of one host, UCX moves RMA to memory it did not
// allocate by copying it through a shared-memory FIFO on the exporter's
// worker (posix/sysv "bcopy"; UCX 1.13-1.16 choose no zero-copy lane for it),
// a few percent of memory speed. unimem's Block is shareable already: the
// reader attaches it (Block::attach: same user, /proc/<pid>/fd rights) and
// copies the cells itself, on a crew of threads for large batches. What UCX
// would otherwise tell it, this link watches itself: the exporting process
// (a pidfd: its death shows at once, where shared memory alone never shows
// it) and the export (a beacon page the Exporter clears when destroyed).
// Internal to unimem::remote.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "copy_crew.hpp"
#include "platform/host.hpp"
#include "remote/descriptor.hpp"
#include "unimem/block.hpp"

namespace unimem::remote::detail {

class SameHostLink {
 public:
  // One piece of a call: `bytes` from `from` to `to`.
  struct Copy {
    std::byte* to;
    const std::byte* from;
    std::size_t bytes;
  };

  // The link for `d`, or nullptr with `why` set when this reader cannot take
  // it: no same-host section, another host or pid namespace, a Block it may
  // not attach (another user), an exporter already gone. Never throws for
  // those (the caller takes UCX instead); throws std::bad_alloc.
  static std::unique_ptr<SameHostLink> open(const Descriptor& d, std::string& why);

  // Throws Error(disconnected) when the exporting process has exited or the
  // Exporter was destroyed. Any thread.
  void check_alive() const;

  // Where the export's cells and generations are in this process.
  std::byte* cells() const noexcept { return cells_; }
  const std::uint64_t* generations() const noexcept { return generations_; }

  // Performs every copy of one call: on the calling thread, or on the link's
  // crew of threads when the call is large and the crew is free. Any thread;
  // never throws (a copy cannot fail: both sides are mapped).
  void copy(std::span<const Copy> copies);

 private:
  SameHostLink(Block block, Block beacon, platform::ProcessWatch owner, std::uint64_t generation, const Descriptor& d);

  Block block_;   // the export's, attached (read-only for a read-only export)
  Block beacon_;  // attached read-only
  platform::ProcessWatch owner_;
  std::uint64_t generation_;
  std::byte* cells_;
  const std::uint64_t* generations_;              // nullptr without
  std::mutex crew_lock_;                          // one large call at a time on the crew
  std::optional<unimem::detail::CopyCrew> crew_;  // made at the first large call
};

}  // namespace unimem::remote::detail
