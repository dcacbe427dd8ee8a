// src/platform/host.hpp — which machine (kernel) and process namespace this
// is, and whether another process still lives.
//
// A remote pool's reader on the exporter's own host can map the exported
// Block by id instead of moving its bytes through a network stack
// (src/remote/). Two facts decide and guard that route: that a process id in
// a descriptor means the same process here (same running kernel, same pid
// namespace), and that the exporting process has not died since (its pages
// outlive it in every mapping, so a dead exporter is not seen by reading
// them). Linux answers in platform/linux/host.cpp (boot id, /proc/self/ns,
// pidfd); a platform without them answers "unknown", and readers there take
// the network route.
#pragma once

#include <array>
#include <cstdint>

namespace unimem::platform {

// This running kernel (Linux: /proc/sys/kernel/random/boot_id, new at every
// boot) and this process's pid namespace. All zero where unknown: then
// known() is false and no identity matches it.
struct HostIdentity {
  std::array<std::uint8_t, 16> boot{};
  std::uint64_t pid_namespace = 0;

  bool known() const noexcept;
  friend bool operator==(const HostIdentity&, const HostIdentity&) = default;
};

// Read at each call (two small files). Unknown where /proc is not this pid
// namespace's. Never throws.
HostIdentity host_identity() noexcept;

// Watches one process of this pid namespace for its exit. Move-only.
class ProcessWatch {
 public:
  ProcessWatch() noexcept = default;
  // Starts watching `pid`. Throws Error(not_found) when there is no such
  // process, Error(invalid_argument) for pid <= 0, Error(system) otherwise.
  // Linux: a pidfd where the kernel (and seccomp) allow one, else the pid
  // itself, which a recycled pid could fool.
  explicit ProcessWatch(std::int32_t pid);
  ProcessWatch(ProcessWatch&& other) noexcept;
  ProcessWatch& operator=(ProcessWatch&& other) noexcept;
  ProcessWatch(const ProcessWatch&) = delete;
  ProcessWatch& operator=(const ProcessWatch&) = delete;
  ~ProcessWatch();

  // False once the process has exited: with a pidfd, as soon as it is a
  // zombie; with the pid alone, once it is reaped. One system call; any
  // thread. Never throws. A default-constructed watch is never alive.
  bool alive() const noexcept;

 private:
  std::int32_t pid_ = 0;
  int fd_ = -1;  // pidfd; -1 where the kernel has none (then pid_ is polled)
};

}  // namespace unimem::platform
