// src/platform/linux/pages.cpp — backing pages up front, and huge pages.
//
// First touch of fresh memory runs at ~1.5 GB/s per thread in a VM (the
// kernel zeroes each page); callers split large ranges across threads (see
// parallel.hpp) and call populate() per slice. MADV_POPULATE_WRITE/READ (Linux
// 5.14+) back a range in one call and report ENOMEM instead of letting a
// later touch be killed; older kernels fall back to touching each page.
// Neither changes the contents: attached Blocks hold other processes' data.
//
// Huge pages: memfd memory is shmem, which gets transparent huge pages only
// where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows (advise,
// within_size or always). We ask with MADV_HUGEPAGE and report what we got
// from /proc/self/smaps rather than predicting it. A huge page covers one
// aligned huge-page-sized window that lies wholly inside one mapping, so
// huge_page_unit() tells the region code what to align private memory to,
// and Block::open what to round sizes up to. free_memory_returns_to_host()
// says whether huge pages pay off for memory written once in full (a load):
// not in a VM whose host takes free 2 MiB blocks back.
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "format.hpp"
#include "platform/region.hpp"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace unimem::platform {

void populate(std::byte* base, std::size_t bytes, bool for_writing) {
  if (::madvise(base, bytes, for_writing ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0) return;
  const int err = errno;
  if (err == EINVAL) {
    // Kernel without MADV_POPULATE_*: touch each page. An atomic add of 0
    // write-faults the page without changing it, even if another process
    // writes the same byte at the same time.
    const std::size_t page = page_size();
    for (std::size_t off = 0; off < bytes; off += page) {
      auto* p = reinterpret_cast<unsigned char*>(base) + off;
      if (for_writing) {
        __atomic_fetch_add(p, 0, __ATOMIC_RELAXED);
      } else {
        (void)*reinterpret_cast<volatile unsigned char*>(p);
      }
    }
    return;
  }
  throw Error(err == ENOMEM ? Errc::out_of_memory : Errc::system, err,
              "unimem: backing " + detail::format_bytes(bytes) + " of a Block up front failed (" +
                  detail::errno_text(err) + "). Free memory, open a smaller Block, or use Backing::lazy.");
}

bool advise_no_fork_copy(std::byte* base, std::size_t bytes) noexcept {
  return ::madvise(base, bytes, MADV_DONTFORK) == 0;
}

namespace {

// The selected word of a THP policy file ("always [madvise] never"), or ""
// where the file cannot be read (no THP in this kernel).
std::string thp_policy(const char* path) {
  std::ifstream in(path);
  std::string word;
  while (in >> word) {
    if (word.size() > 2 && word.front() == '[' && word.back() == ']') return word.substr(1, word.size() - 2);
  }
  return "";
}

}  // namespace

bool free_memory_returns_to_host(const std::string& virtio_devices) noexcept {
  try {
    std::error_code ec;
    for (const auto& d : std::filesystem::directory_iterator(virtio_devices, ec)) {
      std::ifstream device(d.path() / "device"), features(d.path() / "features");
      std::string id, bits;
      // Device 5 is the balloon; its feature bit 5 is VIRTIO_BALLOON_F_REPORTING
      // (the file lists the bits from bit 0 on, one character each).
      if (!(device >> id) || id != "0x0005" || !(features >> bits)) continue;
      if (bits.size() > 5 && bits[5] == '1') return true;
    }
  } catch (...) {  // an unreadable tree: no evidence of a balloon
  }
  return false;
}

std::size_t huge_page_unit(bool shareable) noexcept {
  // The policy is read once: it is the administrator's, and a Block opened
  // after a change is at worst padded for nothing, or not padded, as before.
  static const std::array<std::size_t, 2> unit = []() noexcept -> std::array<std::size_t, 2> {
    try {
      const std::string thp = "/sys/kernel/mm/transparent_hugepage/";
      std::size_t pmd = 0;
      std::ifstream size(thp + "hpage_pmd_size");
      if (!(size >> pmd) || pmd <= page_size() || (pmd & (pmd - 1)) != 0) return {0, 0};
      // Linux 6.8+ (6.11+ for shmem) also has a policy per huge page size,
      // which wins unless it says "inherit"; older kernels have none ("").
      const std::string per_size = thp + "hugepages-" + std::to_string(pmd >> 10) + "kB/";
      auto policy = [&](const char* name) {
        const std::string own = thp_policy((per_size + name).c_str());
        return own.empty() || own == "inherit" ? thp_policy((thp + name).c_str()) : own;
      };
      const std::string priv = policy("enabled");
      const std::string shmem = policy("shmem_enabled");
      const bool private_huge = priv == "always" || priv == "madvise";
      const bool shmem_huge = shmem == "always" || shmem == "within_size" || shmem == "advise" || shmem == "force";
      return {private_huge ? pmd : 0, shmem_huge ? pmd : 0};
    } catch (...) {  // no memory for a string: no huge pages, as without THP
      return {0, 0};
    }
  }();
  // A process may have opted out (prctl PR_SET_THP_DISABLE, inherited
  // across fork and exec): asked each time, as it may change.
  if (::prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) > 0) return 0;
  return unit[shareable ? 1 : 0];
}

bool advise_huge_pages(std::byte* base, std::size_t bytes) noexcept {
  return ::madvise(base, bytes, MADV_HUGEPAGE) == 0;
}

std::size_t huge_page_bytes(const std::byte* base, std::size_t bytes) {
  // Sum the PMD-mapped sizes of every mapping inside [base, base + bytes).
  const auto lo = reinterpret_cast<std::uintptr_t>(base);
  const auto hi = lo + bytes;
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  std::size_t total = 0;
  while (std::getline(smaps, line)) {
    std::uintptr_t start = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &start, &end) == 2 && line.find(':') > line.find(' ')) {
      inside = start >= lo && end <= hi;
      continue;
    }
    if (!inside) continue;
    std::size_t kib = 0;
    if (std::sscanf(line.c_str(), "ShmemPmdMapped: %zu kB", &kib) == 1 ||
        std::sscanf(line.c_str(), "FilePmdMapped: %zu kB", &kib) == 1 ||
        std::sscanf(line.c_str(), "AnonHugePages: %zu kB", &kib) == 1) {
      total += kib * 1024;
    }
  }
  return total;
}

}  // namespace unimem::platform
