// src/remote/same_host.cpp — the same-host route of a RemotePool
// (src/remote/same_host.hpp): attaching, watching, copying.
#include "remote/same_host.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "unimem/error.hpp"

namespace unimem::remote::detail {
namespace {

// Below this a call copies on its own thread: starting a crew's copy costs
// a few microseconds, a thread's memcpy moves ~10 GB/s.
constexpr std::size_t kCrewBytes = std::size_t{4} << 20;

std::uint64_t load_acquire(const std::uint64_t* p) noexcept { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

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
  try {
    // Watch first: a pid recycled after this cannot be mistaken for the
    // exporter, since the Blocks attached next are checked by object.
    platform::ProcessWatch owner(h.pid);
    BlockOptions o;
    o.pinning = Pinning::unpinned;  // the exporter pins them; this mapping needs no memlock
    o.read_only = true;
    Block beacon = Block::attach(BlockId{h.pid, h.beacon_fd, h.beacon_object}, o);
    std::uint64_t magic = 0;
    if (beacon.size() < 16) throw Error(Errc::not_a_block, 0, "the beacon is too small");
    std::memcpy(&magic, beacon.data(), sizeof magic);
    if (magic != kBeaconMagic) throw Error(Errc::not_a_block, 0, "the beacon is not one");
    if (load_acquire(reinterpret_cast<const std::uint64_t*>(beacon.data() + 8)) != d.generation) {
      throw Error(Errc::disconnected, 0, "the export was destroyed");
    }
    o.read_only = d.read_only;
    Block block = Block::attach(BlockId{h.pid, h.block_fd, h.block_object}, o);
    if (block.size() < h.block_bytes) throw Error(Errc::not_a_block, 0, "the Block is smaller than described");
    return std::unique_ptr<SameHostLink>(
        new SameHostLink(std::move(block), std::move(beacon), std::move(owner), d.generation, d));
  } catch (const Error& e) {
    why = std::string("the exporter's Block cannot be attached here: ") + e.what();
    return nullptr;
  }
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

void SameHostLink::check_alive() const {
  if (!owner_.alive()) {
    throw Error(Errc::disconnected, 0, "unimem: RemotePool: the exporting process has exited");
  }
  if (load_acquire(reinterpret_cast<const std::uint64_t*>(beacon_.data() + 8)) != generation_) {
    throw Error(Errc::disconnected, 0, "unimem: RemotePool: the export was destroyed");
  }
}

void SameHostLink::copy(std::span<const Copy> copies) {
  std::size_t total = 0;
  for (const Copy& c : copies) total += c.bytes;
  std::unique_lock crew(crew_lock_, std::defer_lock);
  if (total < kCrewBytes || std::thread::hardware_concurrency() < 2 || !crew.try_lock()) {
    for (const Copy& c : copies) std::memcpy(c.to, c.from, c.bytes);
    return;
  }
  if (!crew_) crew_.emplace(std::min(8u, std::thread::hardware_concurrency()));
  // Slice the call's bytes as if its copies were one range; each slice walks
  // the copies it overlaps.
  (void)crew_->run(total, [copies](std::size_t begin, std::size_t end) {
    std::size_t at = 0;
    for (const Copy& c : copies) {
      const std::size_t b = std::max(begin, at), e = std::min(end, at + c.bytes);
      if (b < e) std::memcpy(c.to + (b - at), c.from + (b - at), e - b);
      at += c.bytes;
      if (at >= end) break;
    }
    return 0;
  });
}

}  // namespace unimem::remote::detail
