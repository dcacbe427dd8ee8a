// Tape take against what a user would call instead, side by side:
//   take/tape-shared   Tape::take from every thread on one cursor
//   take/tape-lane     Tape::Lane::take, one lane per thread, one shared Tape
//   take/malloc[...]   malloc + free (glibc here; mimalloc or jemalloc in the
//                      allocator variants of this binary): what code calls
//   take/aligned_alloc-64[...]  aligned_alloc(64) + free, its own row
//   take/new-delete    operator new + delete (64-byte aligned)
//   take/pmr-monotonic std::pmr::monotonic_buffer_resource, one per thread
// Every row but malloc's asks for `size` bytes at align 64; none touches them. The Tape is
// sized for every timed take (iterations are fixed), so no take runs on a
// full tape, and a failed take aborts the row.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <memory_resource>
#include <new>

#include "benchmark_util.hpp"
#include "unimem/tape.hpp"

namespace unimem::bench {
namespace {

constexpr std::size_t kAlign = 64;

// Iterations per thread for a size. The Tape (and pmr's buffer) must hold
// every take of a run, so the count is fixed rather than chosen by the
// library: as many takes as fit in 4 GiB per thread, or in half the RAM
// shared by the most threads a row runs (Block::open refuses more than the
// machine has), between 256 and 16M. 64-byte rows get 16M takes; 1 MiB rows
// 3072 on the 16-core GPU machine (they used to get 256: microseconds, not a
// measurement; more would need more RAM). The memory is address space only:
// nothing touches it. unimem-bench repeats each run and reports the median.
std::int64_t iterations_for(std::size_t size) {
  const auto ram =
      static_cast<std::size_t>(::sysconf(_SC_PHYS_PAGES)) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const auto most_threads = static_cast<std::size_t>(thread_counts().back());
  const std::size_t per_thread = std::min<std::size_t>(std::size_t{4} << 30, ram / 2 / most_threads);
  return static_cast<std::int64_t>(std::clamp<std::size_t>(per_thread / size, 256, 16u << 20));
}

std::unique_ptr<Tape> tape;  // one per benchmark run, shared by its threads

void make_tape(const benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const auto iterations = static_cast<std::size_t>(iterations_for(size));
  BlockOptions o;
  o.pinning = Pinning::unpinned;  // lazy and never touched: costs address space only
  // Every thread's takes, with their padding, plus slack for what a lane
  // leaves unused: the rest of its last chunk, which grows to kMaxChunk.
  const std::size_t per_take = (size + kAlign - 1) / kAlign * kAlign;
  const std::size_t slack = 2 * Tape::Lane::kMaxChunk;
  const std::size_t bytes = static_cast<std::size_t>(state.threads()) * (iterations * per_take + slack);
  tape = std::make_unique<Tape>(Tape::start(bytes, o));
}
void drop_tape(const benchmark::State&) { tape.reset(); }

void shared_take(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  std::size_t failed = 0;
  for (auto _ : state) {
    Taken t = tape->take(size, kAlign);
    failed += !t;
    benchmark::DoNotOptimize(t.ptr);
  }
  if (failed) state.SkipWithError("a timed take failed");
  state.SetItemsProcessed(state.iterations());
}

void lane_take(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  // A chunk worth 64 takes (64 KiB at least, 4 MiB at most): what a user
  // would pick for this request size.
  Tape::Lane lane(*tape, std::clamp<std::size_t>(64 * size, Tape::Lane::kDefaultChunk, std::size_t{4} << 20));
  std::size_t failed = 0;
  for (auto _ : state) {
    Taken t = lane.take(size, kAlign);
    failed += !t;
    benchmark::DoNotOptimize(t.ptr);
  }
  if (failed) state.SkipWithError("a timed take failed");
  state.SetItemsProcessed(state.iterations());
}

// What code without unimem calls: plain malloc (16-byte aligned on glibc).
void malloc_free(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(size);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
  state.SetItemsProcessed(state.iterations());
}

// The same 64-byte alignment the Tape rows ask for, labelled as such: glibc's
// aligned_alloc takes a slower path than malloc (49-69 ns vs ~12 ns measured).
void aligned_alloc_free(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::aligned_alloc(kAlign, (size + kAlign - 1) / kAlign * kAlign);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
  state.SetItemsProcessed(state.iterations());
}

void new_delete(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = ::operator new (size, std::align_val_t{kAlign});
    benchmark::DoNotOptimize(p);
    ::operator delete (p, std::align_val_t{kAlign});
  }
  state.SetItemsProcessed(state.iterations());
}

void pmr_monotonic(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  // Sized like the Tape: every timed allocation fits in the initial buffer.
  const std::size_t per_take = (size + kAlign - 1) / kAlign * kAlign;
  const std::size_t bytes = static_cast<std::size_t>(iterations_for(size)) * per_take + kAlign;
  // Untouched, like the Tape's pages; MAP_NORESERVE: 16 threads' buffers are
  // far more address space than memory.
  void* buffer = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (buffer == MAP_FAILED) {
    state.SkipWithError("mmap of pmr's buffer failed");
    return;
  }
  std::pmr::monotonic_buffer_resource pool(buffer, bytes, std::pmr::null_memory_resource());
  for (auto _ : state) {
    void* p = pool.allocate(size, kAlign);
    benchmark::DoNotOptimize(p);
  }
  state.SetItemsProcessed(state.iterations());
  pool.release();
  ::munmap(buffer, bytes);
}

void clear_only(benchmark::State& state) {
  for (auto _ : state) tape->clear();
  state.SetItemsProcessed(state.iterations());
}

void take_then_clear(benchmark::State& state) {
  std::size_t failed = 0;
  for (auto _ : state) {
    failed += !tape->take(64, kAlign);
    tape->clear();
  }
  if (failed) state.SkipWithError("a timed take failed");
  state.SetItemsProcessed(state.iterations());
}

int register_all() {
  const std::string malloc_row = "take/malloc[" + malloc_name() + "]";
  const std::string aligned_row = "take/aligned_alloc-64[" + malloc_name() + "]";
  for (std::size_t size : {std::size_t{64}, std::size_t{4096}, std::size_t{1} << 20}) {
    const auto n = iterations_for(size);
    with_threads(benchmark::RegisterBenchmark("take/tape-shared", shared_take))
        ->Arg(static_cast<std::int64_t>(size))
        ->Iterations(n)
        ->Setup(make_tape)
        ->Teardown(drop_tape);
    with_threads(benchmark::RegisterBenchmark("take/tape-lane", lane_take))
        ->Arg(static_cast<std::int64_t>(size))
        ->Iterations(n)
        ->Setup(make_tape)
        ->Teardown(drop_tape);
    with_threads(benchmark::RegisterBenchmark(malloc_row.c_str(), malloc_free))->Arg(static_cast<std::int64_t>(size));
    with_threads(benchmark::RegisterBenchmark(aligned_row.c_str(), aligned_alloc_free))
        ->Arg(static_cast<std::int64_t>(size));
    with_threads(benchmark::RegisterBenchmark("take/new-delete", new_delete))->Arg(static_cast<std::int64_t>(size));
    with_threads(benchmark::RegisterBenchmark("take/pmr-monotonic", pmr_monotonic))
        ->Arg(static_cast<std::int64_t>(size))
        ->Iterations(n);
  }
  benchmark::RegisterBenchmark("clear/tape", clear_only)
      ->Arg(64)
      ->Setup(make_tape)
      ->Teardown(drop_tape)
      ->Iterations(1 << 22);
  benchmark::RegisterBenchmark("clear/tape-take-then-clear", take_then_clear)
      ->Arg(64)
      ->Setup(make_tape)
      ->Teardown(drop_tape)
      ->Iterations(1 << 22);
  return 0;
}
const int registered = register_all();

}  // namespace
}  // namespace unimem::bench
