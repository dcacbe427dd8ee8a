// src/remote/same_host.cpp — the same-host route of a RemotePool
// (src/remote/same_host.hpp): attaching, watching, copying.
#include "remote/same_host.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "remote/beacon.hpp"
#include "remote/copy_helpers.hpp"
#include "unimem/detail/fork_watch.hpp"
#include "unimem/error.hpp"

namespace unimem::remote::detail {
namespace {

using Words = BeaconWords;

// Below this a call copies on its own thread: waking helpers costs a few
// microseconds, one thread's memcpy moves ~10 GB/s.
constexpr std::size_t kHelpedBytes = std::size_t{4} << 20;

[[noreturn]] void gone(const std::string& why) { throw Error(Errc::disconnected, 0, "unimem: RemotePool: " + why); }

// Slices of a large call, claimed one at a time by the caller and helpers.
constexpr std::size_t kSliceBytes = std::size_t{1} << 20;

// The process's copy helpers (every link's large calls), started at the
// first one; a call that finds them busy copies on its own thread, which is
// as parallel. Not in a fork() child, where their threads do not exist.
class ProcessHelpers {
 public:
  static ProcessHelpers& get() {
    static ProcessHelpers helpers;  // NOLINT(misc-use-anonymous-namespace): one per process
    return helpers;
  }
  // Runs slice(i) for i in [0, slices) with the helpers and returns true, or
  // returns false when they cannot help (busy, one core, the parent's).
  bool run(std::size_t slices, const std::function<void(std::size_t)>& slice) {
    if (forked_.forked() || std::thread::hardware_concurrency() < 2) return false;
    return helpers_.run(slices, slice);
  }

 private:
  unimem::detail::ForkedFlag forked_;
  CopyHelpers helpers_{std::min(7u, std::thread::hardware_concurrency() - 1)};
};

// True when two copies write the same bytes: a call that names one cell (or
// one local buffer) several times. Its copies then stay on one thread, where
// the bytes stay in one core's cache, instead of helper threads writing the
// same lines in turn.
bool destinations_overlap(std::span<const SameHostLink::Copy> copies) {
  std::vector<std::pair<std::uintptr_t, std::size_t>> to;
  to.reserve(copies.size());
  for (const auto& c : copies) to.emplace_back(reinterpret_cast<std::uintptr_t>(c.to), c.bytes);
  std::sort(to.begin(), to.end());
  for (std::size_t i = 1; i < to.size(); ++i) {
    if (to[i - 1].first + to[i - 1].second > to[i].first) return true;
  }
  return false;
}

}  // namespace

std::unique_ptr<SameHostLink> SameHostLink::open(const Descriptor& d, std::string& why) {
  if (!d.same_host) {
    why = "the descriptor has no same-host section (the exporter's Block is not shareable)";
    return nullptr;
  }
  const SameHost& h = *d.same_host;
  const platform::HostIdentity here = platform::host_identity();
  if (!here.known() || here.boot != h.boot || here.pid_namespace != h.pid_namespace) {
    why = "the exporter runs on another host (or in another pid namespace)";
    return nullptr;
  }
  // On this host, a process or descriptor that names nothing means the
  // exporter is gone: say so. Refusals (another user, what is not a Block)
  // leave UCX to try.
  auto attach = [&](const BlockId& id, bool read_only, const char* what) -> std::optional<Block> {
    BlockOptions o;
    o.pinning = Pinning::unpinned;  // the exporter pins them; this mapping needs no memlock
    o.read_only = read_only;
    try {
      return Block::attach(id, o);
    } catch (const Error& e) {
      if (e.code() == Errc::not_found) gone(std::string("the exporter's ") + what + " is gone: " + e.what());
      why = std::string("the exporter's ") + what + " cannot be attached here: " + e.what();
      return std::nullopt;
    }
  };
  // Watch first: a pid recycled after this cannot be mistaken for the
  // exporter, since the Blocks attached next are checked by object.
  std::optional<platform::ProcessWatch> owner;
  try {
    owner.emplace(h.pid);
  } catch (const Error& e) {
    if (e.code() == Errc::not_found) gone("the exporting process has exited");
    why = std::string("the exporting process cannot be watched: ") + e.what();
    return nullptr;
  }
  std::optional<Block> beacon = attach(BlockId{h.pid, h.beacon_fd, h.beacon_object}, false, "beacon");
  if (!beacon) return nullptr;
  std::uint64_t magic = 0;
  if (beacon->size() >= 3 * sizeof(std::uint64_t)) std::memcpy(&magic, beacon->data() + Words::kMagic, sizeof magic);
  if (magic != kBeaconMagic) {
    why = "the descriptor's beacon is not an export's beacon";
    return nullptr;
  }
  if (Words::at(*beacon, Words::kLive).load(std::memory_order_seq_cst) != d.generation) {
    gone("the export was destroyed");
  }
  std::optional<Block> block = attach(BlockId{h.pid, h.block_fd, h.block_object}, d.read_only, "Block");
  if (!block) return nullptr;
  if (block->size() < h.block_bytes) {
    why = "the exporter's Block is smaller than the descriptor says";
    return nullptr;
  }
  return std::unique_ptr<SameHostLink>(
      new SameHostLink(std::move(*block), std::move(*beacon), std::move(*owner), d.generation, d));
}

SameHostLink::SameHostLink(Block block, Block beacon, platform::ProcessWatch owner, std::uint64_t generation,
                           const Descriptor& d)
    : block_(std::move(block)),
      beacon_(std::move(beacon)),
      owner_(std::move(owner)),
      generation_(generation),
      cells_(block_.data() + d.same_host->cells_offset),
      generations_(d.has_generations()
                       ? reinterpret_cast<const std::uint64_t*>(block_.data() + d.same_host->generations_offset)
                       : nullptr) {}

SameHostLink::Call::Call(const SameHostLink& link) : link_(link) {
  if (!link.owner_.alive()) gone("the exporting process has exited");
  // Counted in before the check, both sequentially consistent: ~Exporter
  // either sees this call and waits, or this call sees it (beacon.hpp).
  Words::at(link.beacon_, Words::kCalls).fetch_add(1, std::memory_order_seq_cst);
  if (Words::at(link.beacon_, Words::kLive).load(std::memory_order_seq_cst) != link.generation_) {
    Words::at(link.beacon_, Words::kCalls).fetch_sub(1, std::memory_order_seq_cst);
    gone("the export was destroyed");
  }
}

SameHostLink::Call::~Call() {
  // The bytes a put wrote happen before the owner sees the count drop.
  Words::at(link_.beacon_, Words::kCalls).fetch_sub(1, std::memory_order_seq_cst);
}

void SameHostLink::copy(std::span<const Copy> copies) {
  std::size_t total = 0;
  for (const Copy& c : copies) total += c.bytes;
  // Bytes [begin, end) of the call's copies taken as one range.
  auto copy_range = [copies](std::size_t begin, std::size_t end) {
    std::size_t at = 0;
    for (const Copy& c : copies) {
      const std::size_t b = std::max(begin, at), e = std::min(end, at + c.bytes);
      if (b < e) std::memcpy(c.to + (b - at), c.from + (b - at), e - b);
      at += c.bytes;
      if (at >= end) break;
    }
  };
  if (total >= kHelpedBytes && !destinations_overlap(copies)) {
    const std::size_t slices = (total + kSliceBytes - 1) / kSliceBytes;
    const std::function<void(std::size_t)> slice = [&](std::size_t i) {
      copy_range(i * kSliceBytes, std::min(total, (i + 1) * kSliceBytes));
    };
    if (ProcessHelpers::get().run(slices, slice)) return;
  }
  copy_range(0, total);
}

}  // namespace unimem::remote::detail
