// Grid take+give of 4 KiB cells against what a user would build instead:
//   cell/grid            Grid<>::take + Cell::reset (thread caches in front)
//   cell/malloc[...]     malloc + free of 4 KiB
//   cell/boost-stack     boost::lockfree::stack of cell indices, pop + push
//   cell/boost-queue     boost::lockfree::queue of cell indices, pop + push
//   cell/mutex-list      a std::vector of free indices under a std::mutex
// All pools hold 4096 cells, shared by every thread of the row.
#include <boost/lockfree/queue.hpp>
#include <boost/lockfree/stack.hpp>

#include <cstdlib>
#include <memory>
#include <mutex>

#include "benchmark_util.hpp"
#include "unimem/grid.hpp"

namespace unimem::bench {
namespace {

constexpr std::size_t kCell = 4096;
constexpr std::uint32_t kCells = 4096;

std::unique_ptr<Grid<>> grid;
std::unique_ptr<boost::lockfree::stack<std::uint32_t>> stack;
std::unique_ptr<boost::lockfree::queue<std::uint32_t>> queue;
struct MutexList {
  std::mutex lock;
  std::vector<std::uint32_t> free;
};
std::unique_ptr<MutexList> list;

void make_pools(const benchmark::State&) {
  BlockOptions o;
  o.pinning = Pinning::unpinned;
  grid = std::make_unique<Grid<>>(kCell, kCells, o);
  stack = std::make_unique<boost::lockfree::stack<std::uint32_t>>(kCells);
  queue = std::make_unique<boost::lockfree::queue<std::uint32_t>>(kCells);
  list = std::make_unique<MutexList>();
  for (std::uint32_t i = 0; i < kCells; ++i) {
    stack->push(i);
    queue->push(i);
    list->free.push_back(i);
  }
}
void drop_pools(const benchmark::State&) {
  grid.reset();
  stack.reset();
  queue.reset();
  list.reset();
}

void grid_cycle(benchmark::State& state) {
  std::size_t failed = 0;
  for (auto _ : state) {
    Cell c = grid->take();
    failed += !c;
    benchmark::DoNotOptimize(c.data());
  }  // the Cell goes back here
  if (failed) state.SkipWithError("a timed take found the grid empty");
  state.SetItemsProcessed(state.iterations());
}

void malloc_cycle(benchmark::State& state) {
  for (auto _ : state) {
    void* p = std::malloc(kCell);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
  state.SetItemsProcessed(state.iterations());
}

template <class Pool>
void lockfree_cycle(benchmark::State& state, std::unique_ptr<Pool>& pool) {
  std::size_t failed = 0;
  for (auto _ : state) {
    std::uint32_t i;
    if (pool->pop(i)) {
      benchmark::DoNotOptimize(i);
      pool->push(i);
    } else {
      ++failed;
    }
  }
  if (failed) state.SkipWithError("a timed pop found the pool empty");
  state.SetItemsProcessed(state.iterations());
}

void stack_cycle(benchmark::State& state) { lockfree_cycle(state, stack); }
void queue_cycle(benchmark::State& state) { lockfree_cycle(state, queue); }

void mutex_cycle(benchmark::State& state) {
  for (auto _ : state) {
    std::uint32_t i;
    {
      std::lock_guard<std::mutex> hold(list->lock);
      i = list->free.back();
      list->free.pop_back();
    }
    benchmark::DoNotOptimize(i);
    std::lock_guard<std::mutex> hold(list->lock);
    list->free.push_back(i);
  }
  state.SetItemsProcessed(state.iterations());
}

int register_all() {
  const std::string p = "/" + std::to_string(kCell);
  auto add = [&](const std::string& name, void (*fn)(benchmark::State&)) {
    with_threads(benchmark::RegisterBenchmark((name + p).c_str(), fn))->Setup(make_pools)->Teardown(drop_pools);
  };
  add("cell/grid", grid_cycle);
  add("cell/malloc[" + malloc_name() + "]", malloc_cycle);
  add("cell/boost-stack", stack_cycle);
  add("cell/boost-queue", queue_cycle);
  add("cell/mutex-list", mutex_cycle);
  return 0;
}
const int registered = register_all();

}  // namespace
}  // namespace unimem::bench
