#include "unimem/grid.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "testing.hpp"
#include "unimem/linux.hpp"

namespace unimem {
namespace {

TEST(Grid, FixedFormHandsOutEveryCellOnce) {
  Grid<4096, 16> grid;
  EXPECT_EQ(grid.cell_size(), 4096u);
  EXPECT_EQ(grid.cells(), 16u);
  EXPECT_GE(grid.block().size(), 16u * 4096);
  std::vector<Cell> out;
  std::set<std::byte*> seen;
  for (int i = 0; i < 16; ++i) {
    Cell c = grid.take();
    ASSERT_TRUE(c);
    EXPECT_EQ(c.size(), 4096u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(c.data()) % kCellAlign, 0u);
    EXPECT_EQ(c.data(), grid.block().data() + std::size_t{c.index()} * 4096);
    EXPECT_TRUE(seen.insert(c.data()).second) << "cell handed out twice";
    out.push_back(std::move(c));
  }
  Cell none = grid.take();
  EXPECT_FALSE(none);
  EXPECT_EQ(none.data(), nullptr);
  EXPECT_EQ(none.size(), 0u);

  EXPECT_EQ(grid.give(std::move(out[5])), GiveStatus::ok);
  EXPECT_FALSE(out[5]);
  Cell again = grid.take();
  ASSERT_TRUE(again);
  EXPECT_EQ(again.index(), 5u);
}

TEST(Grid, RuntimeFormTakesSizesAtRunTime) {
  Grid<> grid(192, 1000);
  EXPECT_EQ(grid.cell_size(), 192u);
  EXPECT_EQ(grid.cells(), 1000u);
  Cell c = grid.take();
  ASSERT_TRUE(c);
  EXPECT_EQ(c.as<float>().size(), 48u);
  c.as<float>()[47] = 2.0f;
  EXPECT_EQ(c.as<float>()[47], 2.0f);
  EXPECT_EQ(c.bytes().size(), 192u);
}

TEST(Grid, RejectsBadSizes) {
  struct Case {
    std::size_t cell_size, cells;
  };
  for (Case bad : {Case{0, 4}, Case{100, 4}, Case{65, 4}, Case{64, 0}, Case{64, 0xFFFFFFFFu},
                   Case{std::size_t{1} << 40, std::size_t{1} << 30}}) {
    try {
      Grid<> g(bad.cell_size, bad.cells);
      FAIL() << bad.cell_size << " x " << bad.cells << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
      EXPECT_NE(std::string(e.what()).find("Grid"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(testing::unimem_mappings(), 0);
}

TEST(Grid, CellsGoBackWhenDestroyed) {
  Grid<> grid(64, 4);
  for (int round = 0; round < 3; ++round) {
    std::vector<Cell> out;
    for (int i = 0; i < 4; ++i) out.push_back(grid.take());
    for (const Cell& c : out) ASSERT_TRUE(c);
    EXPECT_FALSE(grid.take());
  }  // each round's cells return here
  Cell c = grid.take();
  ASSERT_TRUE(c);
  c.reset();
  EXPECT_FALSE(c);
  std::vector<Cell> all;
  for (int i = 0; i < 4; ++i) all.push_back(grid.take());
  for (const Cell& x : all) EXPECT_TRUE(x);
}

TEST(Grid, RefusesACellFromAnotherGrid) {
  Grid<> a(64, 2), b(64, 2);
  Cell from_a = a.take();
  ASSERT_TRUE(from_a);
  std::byte* data = from_a.data();
  EXPECT_EQ(b.give(std::move(from_a)), GiveStatus::foreign_cell);
  EXPECT_TRUE(from_a) << "a refused cell stays with its holder";
  EXPECT_EQ(from_a.data(), data);

  // b is intact: exactly its own two cells, both inside its Block.
  Cell b1 = b.take(), b2 = b.take();
  ASSERT_TRUE(b1 && b2);
  EXPECT_FALSE(b.take());
  EXPECT_TRUE(b.block().contains(b1.data()) && b.block().contains(b2.data()));

  // a is intact: the cell goes home and a has exactly two again.
  EXPECT_EQ(a.give(std::move(from_a)), GiveStatus::ok);
  Cell a1 = a.take(), a2 = a.take();
  EXPECT_TRUE(a1 && a2);
  EXPECT_FALSE(a.take());
}

TEST(Grid, ACellCannotBeGivenTwice) {
  Grid<> grid(64, 2);
  Cell c = grid.take();
  EXPECT_EQ(grid.give(std::move(c)), GiveStatus::ok);
  EXPECT_EQ(grid.give(std::move(c)), GiveStatus::empty_cell);
  Cell moved = grid.take();
  Cell to = std::move(moved);
  EXPECT_EQ(grid.give(std::move(moved)), GiveStatus::empty_cell);
  EXPECT_EQ(grid.give(Cell{}), GiveStatus::empty_cell);
  // Two cells exist, one is out (to), so exactly one can be taken.
  Cell one = grid.take();
  EXPECT_TRUE(one);
  EXPECT_FALSE(grid.take());
}

TEST(Grid, MoveAssignmentOfCellsReturnsTheOverwrittenOne) {
  Grid<> grid(64, 2);
  Cell a = grid.take(), b = grid.take();
  EXPECT_FALSE(grid.take());
  a = std::move(b);  // a's old cell goes back
  Cell c = grid.take();
  EXPECT_TRUE(c);
}

TEST(Grid, MovedGridKeepsItsCells) {
  Grid<> a(64, 2);
  Cell c = a.take();
  Grid<> b = std::move(a);
  c.reset();  // returns to the grid now owned by b
  Cell x = b.take(), y = b.take();
  EXPECT_TRUE(x && y);
}

TEST(Grid, OutlivedByItsCellsKeepsTheirMemoryValid) {
  int fd;
  std::vector<Cell> survivors;
  {
    Grid<> grid(4096, 8);
    fd = block_descriptor(grid.block());
    for (int i = 0; i < 3; ++i) survivors.push_back(grid.take());
  }
  EXPECT_TRUE(testing::fd_is_open(fd)) << "the Block must live while cells are out";
  for (Cell& c : survivors) {
    std::memset(c.data(), 0x7f, c.size());
    EXPECT_EQ(c.bytes()[4095], std::byte{0x7f});
  }
  survivors.pop_back();
  survivors.pop_back();
  EXPECT_TRUE(testing::fd_is_open(fd));
  survivors.clear();  // the last cell frees the grid
  EXPECT_FALSE(testing::fd_is_open(fd));
}

TEST(Grid, DestroyedWithEveryCellHomeFreesAtOnce) {
  int fd;
  {
    Grid<64, 4> grid;
    fd = block_descriptor(grid.block());
    Cell c = grid.take();
  }
  EXPECT_FALSE(testing::fd_is_open(fd));
}

// A grid large enough that every thread gets a full cache.
std::size_t cached_grid_cells() { return 8 * std::max(1u, std::thread::hardware_concurrency()) * 32; }

// Blocks a thread until released, so a test can act while it is alive.
struct Gate {
  std::atomic<bool> open{false};
  void wait() const {
    while (!open.load()) std::this_thread::yield();
  }
};

TEST(GridCache, ThreadsCacheCellsAndReturnThemWhenTheyExit) {
  Grid<> grid(64, cached_grid_cells());
  const std::size_t n = grid.cells();
  ASSERT_GT(grid.cache_cells(), 0u);
  Gate cached, release;
  std::thread worker([&] {
    Cell c = grid.take();
    ASSERT_TRUE(c);
    c.reset();  // back into this thread's cache
    cached.open = true;
    release.wait();
  });
  cached.wait();
  std::vector<Cell> mine;
  for (Cell c = grid.take(); c; c = grid.take()) mine.push_back(std::move(c));
  EXPECT_LT(mine.size(), n) << "the worker's cache holds some free cells";
  EXPECT_GE(mine.size(), n - grid.cache_cells());
  mine.clear();
  release.open = true;
  worker.join();  // its cache flushes on exit
  for (Cell c = grid.take(); c; c = grid.take()) mine.push_back(std::move(c));
  EXPECT_EQ(mine.size(), n) << "every cell is back after the worker exited";
}

TEST(GridCache, GridDestroyedWhileAnotherThreadCachesItsCells) {
  int fd;
  Gate cached, destroyed;
  std::thread worker;
  {
    Grid<> grid(64, cached_grid_cells());
    fd = block_descriptor(grid.block());
    worker = std::thread([&] {
      for (int i = 0; i < 3; ++i) grid.take().reset();
      cached.open = true;
      destroyed.wait();
      // The grid is gone; this thread's cache still holds its cells, and
      // using another grid must not disturb them.
      Grid<> other(64, cached_grid_cells());
      Cell c = other.take();
      EXPECT_TRUE(c);
    });
    cached.wait();
  }
  EXPECT_TRUE(testing::fd_is_open(fd)) << "cells cached by a live thread keep the Block alive";
  destroyed.open = true;
  worker.join();
  EXPECT_FALSE(testing::fd_is_open(fd)) << "the last cached cells freed the grid";
}

TEST(GridCache, CellOutlivingItsGridIsReturnedFromAnotherThread) {
  int fd;
  Cell survivor;
  {
    Grid<> grid(64, cached_grid_cells());
    fd = block_descriptor(grid.block());
    survivor = grid.take();
    grid.take().reset();  // and some cached on this thread
  }
  EXPECT_TRUE(testing::fd_is_open(fd));
  std::thread([&] { survivor.reset(); }).join();
  EXPECT_FALSE(testing::fd_is_open(fd));
}

TEST(GridCache, ManyGridsPerThreadStayCorrect) {
  // More grids than a thread caches at once: entries are recycled.
  std::vector<Grid<>> grids;
  for (int g = 0; g < 7; ++g) grids.emplace_back(64, cached_grid_cells());
  for (int round = 0; round < 50; ++round) {
    for (auto& grid : grids) {
      Cell c = grid.take();
      ASSERT_TRUE(c);
      ASSERT_TRUE(grid.block().contains(c.data()));
    }
  }
  for (auto& grid : grids) {
    std::size_t n = 0;
    std::vector<Cell> all;
    for (Cell c = grid.take(); c; c = grid.take()) all.push_back(std::move(c));
    n = all.size();
    EXPECT_EQ(n, grid.cells());
  }
}

TEST(Grid, AMovedFromGridHandsOutNothing) {
  Grid<> a(64, 8);
  Grid<> b = std::move(a);
  EXPECT_FALSE(a.take());
  EXPECT_EQ(a.cells(), 0u);
  EXPECT_EQ(a.cell_size(), 0u);
  EXPECT_TRUE(a.block().empty());
  Cell c = b.take();
  EXPECT_EQ(a.give(std::move(c)), GiveStatus::foreign_cell);
  EXPECT_EQ(b.cells(), 8u);
}

// Constructed on a thread before its first take, so it is destroyed after the
// grid cache's exit flush (thread_locals die in reverse order of construction).
thread_local std::vector<Cell> cells_held_until_thread_exit;

// Cells that a thread's own thread_locals give back while the
// thread exits must reach the grid, not a cache nobody flushes again.
TEST(GridCache, CellsGivenBackByLateThreadLocalsAreNotLost) {
  int fd;
  {
    Grid<> grid(64, cached_grid_cells());
    ASSERT_GT(grid.cache_cells(), 0u);
    fd = block_descriptor(grid.block());
    std::thread([&] {
      cells_held_until_thread_exit.reserve(16);  // constructed first: destroyed last
      for (int i = 0; i < 8; ++i) cells_held_until_thread_exit.push_back(grid.take());
      grid.take().reset();  // and one in the cache itself
    }).join();
    std::vector<Cell> all;
    for (Cell c = grid.take(); c; c = grid.take()) all.push_back(std::move(c));
    EXPECT_EQ(all.size(), grid.cells()) << "cells given back during thread exit were lost";
  }
  EXPECT_FALSE(testing::fd_is_open(fd)) << "lost cells kept the destroyed Grid's Block alive";
}

// A forked child has a copy of the Grid's free list and of the
// forking thread's cache, but the same shared pages as the parent. It must
// refuse to hand out cells instead of handing out the parent's.
TEST(GridFork, ChildRefusesToTakeCellsTheParentOwns) {
  Grid<> grid(64, cached_grid_cells());
  Grid<64, 8> uncached;  // too small for thread caches: the shared list alone
  grid.take().reset();   // the forking thread's cache now holds cells
  Cell held = grid.take();
  ASSERT_FALSE(grid.forked());
  const pid_t pid = ::fork();
  ASSERT_NE(pid, -1);
  if (pid == 0) {
    int status = 0;
    if (grid.take() || uncached.take()) status |= 1;  // would be cells the parent hands out too
    if (!grid.forked() || !uncached.forked()) status |= 2;
    held.reset();                  // giving back in the child is harmless ...
    if (grid.take()) status |= 4;  // ... and still does not make cells takeable here
    std::_Exit(status);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the child took a cell, 2: forked() is false, 4: a given cell was taken";
  // The parent is unaffected.
  std::vector<Cell> all;
  for (Cell c = grid.take(); c; c = grid.take()) all.push_back(std::move(c));
  EXPECT_EQ(all.size(), grid.cells() - 1);
  EXPECT_TRUE(uncached.take());
}

// Waves of short-lived threads take and give; each exit flushes its cache.
// The last wave exits while the grid is being destroyed.
TEST(GridCacheStress, ThreadsThatExitReturnEverything) {
  const std::size_t cells = cached_grid_cells();
  int fd;
  {
    Grid<> grid(64, cells);
    fd = block_descriptor(grid.block());
    std::vector<std::atomic<int>> out(cells);
    for (int wave = 0; wave < 20; ++wave) {
      std::vector<std::thread> threads;
      for (int id = 0; id < 4; ++id) {
        threads.emplace_back([&, id, wave] {
          std::mt19937 rng(wave * 10 + id);
          std::vector<Cell> held;
          for (int i = 0; i < 2000; ++i) {
            if (held.size() < 8 && (rng() & 1)) {
              Cell c = grid.take();
              if (!c) continue;
              ASSERT_EQ(out[c.index()].exchange(1), 0) << "cell out twice";
              held.push_back(std::move(c));
            } else if (!held.empty()) {
              out[held.back().index()].store(0);
              held.pop_back();
            }
          }
          for (Cell& c : held) out[c.index()].store(0);
        });
      }
      for (auto& t : threads) t.join();
    }
    std::vector<Cell> all;
    for (Cell c = grid.take(); c; c = grid.take()) all.push_back(std::move(c));
    EXPECT_EQ(all.size(), cells);
    all.clear();

    // Threads caching cells exit while the grid is destroyed. They touch the
    // grid only before `ready`; their exit flushes race with the destructor.
    auto ready = std::make_shared<std::atomic<int>>(0);
    auto go = std::make_shared<std::atomic<bool>>(false);
    for (int id = 0; id < 4; ++id) {
      std::thread([&grid, ready, go] {
        for (int i = 0; i < 100; ++i) grid.take().reset();
        ready->fetch_add(1);
        while (!go->load()) std::this_thread::yield();
      }).detach();
    }
    while (ready->load() < 4) std::this_thread::yield();
    go->store(true);
  }
  for (int i = 0; i < 1000 && testing::fd_is_open(fd); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_FALSE(testing::fd_is_open(fd));
}

// Threads take and give cells as fast as they can, sometimes holding several.
// A per-cell flag catches any cell out twice; a pattern written into each cell
// while held catches two holders writing the same memory.
TEST(GridStress, NoCellIsEverOutTwice) {
  constexpr int kThreads = 8;
  constexpr int kCells = 64;
  constexpr int kRounds = 20000;
  Grid<> grid(128, kCells);
  std::vector<std::atomic<int>> out(kCells);
  std::atomic<long> takes{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      std::mt19937 rng(id);
      std::vector<Cell> held;
      while (!go.load()) {
      }
      for (int r = 0; r < kRounds; ++r) {
        const std::size_t want = 1 + rng() % 4;
        while (held.size() < want) {
          Cell c = grid.take();
          if (!c) break;
          ASSERT_LT(c.index(), static_cast<std::uint32_t>(kCells));
          ASSERT_EQ(out[c.index()].exchange(1), 0) << "cell " << c.index() << " out twice";
          std::memset(c.data(), id, c.size());
          held.push_back(std::move(c));
          takes.fetch_add(1, std::memory_order_relaxed);
        }
        while (!held.empty() && (rng() & 1)) {
          Cell& c = held.back();
          for (std::byte x : c.bytes()) ASSERT_EQ(x, std::byte(id)) << "another thread wrote my cell";
          out[c.index()].store(0);
          if (rng() & 2) {
            ASSERT_EQ(grid.give(std::move(c)), GiveStatus::ok);
          }  // else the Cell's destructor gives it back
          held.pop_back();
        }
      }
      for (Cell& c : held) out[c.index()].store(0);
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_GT(takes.load(), kThreads * kRounds / 2);
  // Every cell is home again: exactly kCells can be taken.
  std::vector<Cell> all;
  for (Cell c = grid.take(); c; c = grid.take()) all.push_back(std::move(c));
  EXPECT_EQ(all.size(), static_cast<std::size_t>(kCells));
}

}  // namespace
}  // namespace unimem
