// Block against what a user would call instead, side by side.
//
//   open-lazy/...    Block::open (lazy) vs malloc, mmap: address space only
//   open-warm/...    Block::open(Backing::warm) vs malloc + memset, mmap with
//                    MAP_POPULATE, mmap + mlock: every page backed
//   read/..., write/...  sequential bandwidth of a Block (shareable, and
//                    private with huge pages) vs malloc'ed vs mmap'ed memory;
//                    the buffer is split across the threads.
// Sizes 16 MiB and 1 GiB for opening, 64 MiB and 1 GiB for bandwidth. Buffers
// read are filled with a non-zero pattern first; writes store non-zero words.
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "benchmark_util.hpp"
#include "unimem/block.hpp"

namespace unimem::bench {
namespace {

void block_lazy(benchmark::State& state) {
  for (auto _ : state) {
    Block b = Block::open(static_cast<std::size_t>(state.range(0)));
    benchmark::DoNotOptimize(b.data());
  }
}

void block_warm(benchmark::State& state) {
  BlockOptions o;
  o.backing = Backing::warm;
  for (auto _ : state) {
    Block b = Block::open(static_cast<std::size_t>(state.range(0)), o);
    benchmark::DoNotOptimize(b.data());
  }
}

// Private memory with transparent huge pages: not shareable, but backed in
// 2 MiB pages where shmem gets none (shmem_enabled=never).
void block_warm_private_huge(benchmark::State& state) {
  BlockOptions o;
  o.backing = Backing::warm;
  o.shareable = false;
  o.huge_pages = true;
  for (auto _ : state) {
    Block b = Block::open(static_cast<std::size_t>(state.range(0)), o);
    benchmark::DoNotOptimize(b.data());
  }
}

void malloc_only(benchmark::State& state) {
  for (auto _ : state) {
    void* p = std::malloc(static_cast<std::size_t>(state.range(0)));
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

void malloc_touched(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(bytes);
    std::memset(p, 1, bytes);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

void mmap_with(benchmark::State& state, int flags, bool lock) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (p == MAP_FAILED || (lock && ::mlock(p, bytes) != 0)) {
      state.SkipWithError("mmap or mlock failed (memlock limit?)");
      break;
    }
    benchmark::DoNotOptimize(p);
    ::munmap(p, bytes);
  }
}
void mmap_only(benchmark::State& state) { mmap_with(state, 0, false); }
void mmap_populate(benchmark::State& state) { mmap_with(state, MAP_POPULATE, false); }
void mmap_mlock(benchmark::State& state) { mmap_with(state, 0, true); }

// ---- bandwidth ----------------------------------------------------------------

struct Buffer {
  std::unique_ptr<Block> block;
  std::unique_ptr<Block> huge;  // private, huge pages
  void* heap = nullptr;
  void* mapped = nullptr;
  std::size_t bytes = 0;
};
Buffer buffer;

void fill(void* p, std::size_t bytes) {
  auto* w = static_cast<std::uint64_t*>(p);
  for (std::size_t i = 0; i < bytes / 8; ++i) w[i] = i * 0x9E3779B97F4A7C15ull + 1;
}

void make_buffers(const benchmark::State& state) {
  buffer.bytes = static_cast<std::size_t>(state.range(0));
  BlockOptions o;
  o.pinning = Pinning::unpinned;  // 1 GiB exceeds a non-root memlock limit
  buffer.block = std::make_unique<Block>(Block::open(buffer.bytes, o));
  o.shareable = false;
  o.huge_pages = true;
  buffer.huge = std::make_unique<Block>(Block::open(buffer.bytes, o));
  fill(buffer.huge->data(), buffer.bytes);
  buffer.heap = std::malloc(buffer.bytes);
  buffer.mapped = ::mmap(nullptr, buffer.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  fill(buffer.block->data(), buffer.bytes);
  fill(buffer.heap, buffer.bytes);
  fill(buffer.mapped, buffer.bytes);
}
void drop_buffers(const benchmark::State&) {
  buffer.block.reset();
  buffer.huge.reset();
  std::free(buffer.heap);
  ::munmap(buffer.mapped, buffer.bytes);
  buffer = Buffer{};
}

void* base_of(int which) {
  switch (which) {
    case 0:
      return buffer.block->data();
    case 1:
      return buffer.heap;
    case 2:
      return buffer.mapped;
    default:
      return buffer.huge->data();
  }
}

void read_pass(benchmark::State& state, int which) {
  const std::size_t slice = buffer.bytes / static_cast<std::size_t>(state.threads()) / 32 * 32;
  const auto* w =
      reinterpret_cast<const std::uint64_t*>(static_cast<char*>(base_of(which)) + slice * state.thread_index());
  for (auto _ : state) {
    std::uint64_t a = 0, b = 0, c = 0, d = 0;
    for (std::size_t i = 0; i < slice / 8; i += 4) {
      a += w[i];
      b ^= w[i + 1];
      c += w[i + 2];
      d ^= w[i + 3];
    }
    benchmark::DoNotOptimize(a + b + c + d);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * slice));
}

void write_pass(benchmark::State& state, int which) {
  const std::size_t slice = buffer.bytes / static_cast<std::size_t>(state.threads()) / 32 * 32;
  auto* w = reinterpret_cast<std::uint64_t*>(static_cast<char*>(base_of(which)) + slice * state.thread_index());
  std::uint64_t v = 0x0101010101010101ull;
  for (auto _ : state) {
    for (std::size_t i = 0; i < slice / 8; ++i) w[i] = v;
    benchmark::ClobberMemory();
    v += 0x0101010101010101ull;
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * slice));
}

int register_all() {
  for (std::int64_t bytes : {std::int64_t{16} << 20, std::int64_t{1} << 30}) {
    const bool big = bytes >= (std::int64_t{1} << 30);
    auto add = [&](const std::string& name, void (*fn)(benchmark::State&)) {
      auto* b =
          benchmark::RegisterBenchmark(name.c_str(), fn)->Arg(bytes)->Unit(benchmark::kMicrosecond)->UseRealTime();
      if (big) b->Iterations(3);
    };
    add("open-lazy/block", block_lazy);
    add("open-lazy/malloc", malloc_only);
    add("open-lazy/mmap", mmap_only);
    add("open-warm/block", block_warm);
    add("open-warm/block-private-huge", block_warm_private_huge);
    add("open-warm/malloc-memset", malloc_touched);
    add("open-warm/mmap-populate", mmap_populate);
    add("open-warm/mmap-mlock", mmap_mlock);
  }
  const char* names[] = {"block", "malloc", "mmap", "block-private-huge"};
  for (std::int64_t bytes : {std::int64_t{64} << 20, std::int64_t{1} << 30}) {
    for (int which = 0; which < 4; ++which) {
      const std::string p = names[which];
      for (int t : thread_counts()) {
        if (t == 2 && thread_counts().size() > 2) continue;  // 1 thread and all threads
        benchmark::RegisterBenchmark(("read/" + p).c_str(), [which](benchmark::State& s) { read_pass(s, which); })
            ->Arg(bytes)
            ->Threads(t)
            ->UseRealTime()
            ->Setup(make_buffers)
            ->Teardown(drop_buffers);
        benchmark::RegisterBenchmark(("write/" + p).c_str(), [which](benchmark::State& s) { write_pass(s, which); })
            ->Arg(bytes)
            ->Threads(t)
            ->UseRealTime()
            ->Setup(make_buffers)
            ->Teardown(drop_buffers);
      }
    }
  }
  return 0;
}
const int registered = register_all();

}  // namespace
}  // namespace unimem::bench

BENCHMARK_MAIN();
