// src/remote/same_host.hpp — a reader on the exporter's own host: the export's
// Block mapped by id, cells copied with memcpy.
//
// Between two processes of one host, UCX moves RMA to memory it did not
// allocate by copying it through a shared-memory FIFO on the exporter's
// worker (posix/sysv "bcopy"; UCX 1.13-1.16 choose no zero-copy lane for it),
// a few percent of memory speed. unimem's Block is shareable already: the
// reader attaches it (Block::attach: same user, /proc/<pid>/fd rights) and
// copies the cells itself, with helper threads for large calls. What UCX
// would otherwise tell it, this link watches itself: the exporting process
// (a pidfd: its death shows at once, where shared memory alone never shows
// it) and the export (the beacon, src/remote/beacon.hpp, by which the
// Exporter's destructor also waits for calls copying). Internal to
// unimem::remote.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

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
  // the route and UCX may: no same-host section, another host or pid
  // namespace, a Block this process may not attach (another user) or that is
  // not what the descriptor says. Throws Error(disconnected) when the
  // exporter is certainly gone (its process, its Block's descriptor, or its
  // export), since UCX could only fail later and less clearly.
  static std::unique_ptr<SameHostLink> open(const Descriptor& d, std::string& why);

  // One call's stay in the export: constructing it counts the call in and
  // throws Error(disconnected) when the exporting process has exited or the
  // Exporter was destroyed (then nothing is counted); destroying it counts
  // the call out. Copies and generation reads happen while one lives, and
  // ~Exporter waits for them. Any thread.
  class Call {
   public:
    explicit Call(const SameHostLink& link);
    ~Call();
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

   private:
    const SameHostLink& link_;
  };

  // False once the exporting process has exited. Never throws.
  bool exporter_alive() const noexcept { return owner_.alive(); }

  // Where the export's cells and generations are in this process.
  std::byte* cells() const noexcept { return cells_; }
  const std::uint64_t* generations() const noexcept { return generations_; }

  // Performs every copy of one call: on the calling thread, with the
  // process's copy helpers (src/remote/copy_helpers.hpp) when the call is
  // large and they are free. Any thread. Nothing can fail (both sides are
  // mapped); throws only std::bad_alloc.
  static void copy(std::span<const Copy> copies);

 private:
  SameHostLink(Block block, Block beacon, platform::ProcessWatch owner, std::uint64_t generation, const Descriptor& d);

  Block block_;   // the export's, attached (read-only for a read-only export)
  Block beacon_;  // attached writable: calls count themselves in it
  platform::ProcessWatch owner_;
  std::uint64_t generation_;
  std::byte* cells_;
  const std::uint64_t* generations_;  // nullptr without
};

}  // namespace unimem::remote::detail
