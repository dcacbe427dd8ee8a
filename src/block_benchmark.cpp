// Block::open against what a user would call instead, side by side:
// malloc+free, mmap+munmap (anonymous) and mmap+mlock. Lazy blocks are timed
// as opened (no touch); warm blocks include faulting every page in.
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "unimem/block.hpp"

namespace {

using unimem::Backing;
using unimem::Block;
using unimem::BlockOptions;

void BM_BlockOpenLazy(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    Block b = Block::open(bytes);
    benchmark::DoNotOptimize(b.data());
  }
}

void BM_BlockOpenWarm(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  BlockOptions o;
  o.backing = Backing::warm;
  for (auto _ : state) {
    Block b = Block::open(bytes, o);
    benchmark::DoNotOptimize(b.data());
  }
}

void BM_Malloc(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(bytes);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

void BM_Mmap(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    benchmark::DoNotOptimize(p);
    ::munmap(p, bytes);
  }
}

void BM_MmapMlock(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || ::mlock(p, bytes) != 0) {
      state.SkipWithError("mmap+mlock failed (memlock limit?)");
      break;
    }
    benchmark::DoNotOptimize(p);
    ::munmap(p, bytes);
  }
}

constexpr std::int64_t k16MiB = 16 << 20;
BENCHMARK(BM_BlockOpenLazy)->Arg(k16MiB)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Malloc)->Arg(k16MiB)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Mmap)->Arg(k16MiB)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BlockOpenWarm)->Arg(k16MiB)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MmapMlock)->Arg(k16MiB)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
