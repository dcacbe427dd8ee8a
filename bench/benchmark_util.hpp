// bench/benchmark_util.hpp — shared by the *_benchmark.cpp files (never part of the library).
//
// Benchmarks are registered by name as "<group>/<implementation>/<parameter>"
// so that unimem-bench can pair each unimem row with its peers: rows of one
// group with the same parameter and thread count are compared.
#pragma once

#include <benchmark/benchmark.h>
#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

namespace unimem::bench {

// CPUs this process may run on (taskset narrows it), at least 1.
inline int usable_cpus() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// 1, 2 and every usable CPU (without repeats).
inline std::vector<int> thread_counts() {
  const int hw = usable_cpus();
  std::vector<int> out{1};
  if (hw >= 2) out.push_back(2);
  if (hw > 2) out.push_back(hw);
  return out;
}

inline benchmark::internal::Benchmark* with_threads(benchmark::internal::Benchmark* b) {
  for (int t : thread_counts()) b->Threads(t);
  return b->UseRealTime();
}

// Which malloc this process runs: the allocator variants of the benchmark
// binaries link mimalloc or jemalloc, which replace malloc for the process.
inline std::string malloc_name() {
  if (::dlsym(RTLD_DEFAULT, "mi_version") != nullptr) return "mimalloc";
  if (::dlsym(RTLD_DEFAULT, "mallctl") != nullptr) return "jemalloc";
  return "glibc";
}

}  // namespace unimem::bench
