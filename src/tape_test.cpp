#include "unimem/tape.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "poison.hpp"

namespace unimem {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

bool aligned(const void* p, std::size_t a) { return reinterpret_cast<std::uintptr_t>(p) % a == 0; }

TEST(Tape, StartsEmptyOverAWholeBlock) {
  Tape t = Tape::start(MiB);
  EXPECT_EQ(t.total(), MiB);
  EXPECT_EQ(t.used(), 0u);
  EXPECT_EQ(t.free(), MiB);
  EXPECT_EQ(t.block().size(), MiB);
  EXPECT_TRUE(t.block().pinned());
}

TEST(Tape, TakesConsecutiveAlignedPiecesInsideItsBlock) {
  Tape t = Tape::start(64 * 1024);
  Taken a = t.take(10, 1);
  ASSERT_TRUE(a);
  EXPECT_EQ(a.status, TakeStatus::ok);
  EXPECT_EQ(a.ptr, t.block().data());
  EXPECT_EQ(t.used(), 10u + Tape::kRedZone);  // ASan builds leave a red zone after each take

  Taken b = t.take(100, 64);
  ASSERT_TRUE(b);
  EXPECT_TRUE(aligned(b.ptr, 64));
  EXPECT_EQ(b.ptr, t.block().data() + 64);
  EXPECT_EQ(t.used(), 164u + Tape::kRedZone);  // padding counts as used
  EXPECT_EQ(t.free(), t.total() - 164u - Tape::kRedZone);
  EXPECT_TRUE(t.owns(b.ptr));
  EXPECT_TRUE(t.owns(b.ptr + 99));

  std::memset(a.ptr, 1, 10);
  std::memset(b.ptr, 2, 100);
  EXPECT_EQ(a.ptr[9], std::byte{1});
}

TEST(Tape, DefaultAlignmentIsMaxAlign) {
  Tape t = Tape::start(4096);
  ASSERT_TRUE(t.take(1));
  Taken p = t.take(8);
  ASSERT_TRUE(p);
  EXPECT_TRUE(aligned(p.ptr, alignof(std::max_align_t)));
}

TEST(Tape, AlignsAddressesNotJustOffsets) {
  // An alignment larger than the page: only the address tells.
  const std::size_t align = 4 * Block::page_size();
  Tape t = Tape::start(16 * Block::page_size());
  ASSERT_TRUE(t.take(1, 1));
  Taken p = t.take(64, align);
  ASSERT_TRUE(p);
  EXPECT_TRUE(aligned(p.ptr, align));
  EXPECT_LT(p.ptr - t.block().data(), static_cast<std::ptrdiff_t>(align + 1));
}

TEST(Tape, RejectsBadAlignmentWithoutMovingTheCursor) {
  Tape t = Tape::start(4096);
  ASSERT_TRUE(t.take(3, 1));
  for (std::size_t align : {std::size_t{0}, std::size_t{3}, std::size_t{48}, SIZE_MAX}) {
    Taken r = t.take(8, align);
    EXPECT_FALSE(r) << align;
    EXPECT_EQ(r.status, TakeStatus::invalid_align) << align;
    EXPECT_EQ(t.used(), 3u + Tape::kRedZone);
  }
}

TEST(Tape, RejectsZeroAndImpossibleSizesWithoutMovingTheCursor) {
  Tape t = Tape::start(4096);
  ASSERT_TRUE(t.take(3, 1));
  for (std::size_t size : {std::size_t{0}, t.total() + 1, SIZE_MAX, SIZE_MAX - 63}) {
    Taken r = t.take(size, 64);
    EXPECT_FALSE(r) << size;
    EXPECT_EQ(r.status, TakeStatus::invalid_size) << size;
    EXPECT_EQ(t.used(), 3u + Tape::kRedZone);
  }
}

TEST(Tape, FullIsToldApartAndClearMakesRoom) {
  Tape t = Tape::start(4096);
  ASSERT_TRUE(t.take(4000, 1));
  Taken r = t.take(200, 1);
  EXPECT_EQ(r.status, TakeStatus::full);
  EXPECT_EQ(t.used(), 4000u + Tape::kRedZone);
  // Fits in size, but not once aligned.
  r = t.take(64, 2048);
  EXPECT_EQ(r.status, TakeStatus::full);
  EXPECT_EQ(t.free(), 96u - Tape::kRedZone);
  EXPECT_TRUE(t.take(t.free(), 1));  // exactly what is left (a red zone is left out where it does not fit)
  EXPECT_EQ(t.free(), 0u);
  EXPECT_EQ(t.take(1, 1).status, TakeStatus::full);
  // An alignment no address in the Block can meet within it.
  EXPECT_EQ(t.take(1, std::size_t{1} << 62).status, TakeStatus::full);

  t.clear();
  EXPECT_EQ(t.used(), 0u);
  EXPECT_EQ(t.free(), t.total());
  Taken again = t.take(4096, 1);
  ASSERT_TRUE(again);
  EXPECT_EQ(again.ptr, t.block().data());
}

TEST(Tape, TypedTakeReturnsSpansOfT) {
  Tape t = Tape::start(4096);
  ASSERT_TRUE(t.take(1, 1));
  std::span<double> d = t.take<double>(10);
  ASSERT_EQ(d.size(), 10u);
  EXPECT_TRUE(aligned(d.data(), alignof(double)));
  d[9] = 3.25;
  EXPECT_EQ(d[9], 3.25);
  EXPECT_TRUE(t.take<float>(0).empty());
  EXPECT_TRUE(t.take<float>(SIZE_MAX / 2).empty());  // count * sizeof overflows
  EXPECT_TRUE(t.take<float>(4096).empty());          // larger than the Tape
  const std::size_t used = t.used();
  EXPECT_TRUE(t.take<std::uint64_t>(1000).empty());  // does not fit
  EXPECT_EQ(t.used(), used);
}

TEST(Tape, OverAnExistingBlock) {
  Block b = Block::open(8192);
  std::byte* data = b.data();
  Tape t(std::move(b));
  EXPECT_EQ(t.block().data(), data);
  EXPECT_EQ(t.take(16, 16).ptr, data);
  EXPECT_THROW(Tape(Block{}), Error);
  try {
    Tape bad{Block{}};
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
  }
}

TEST(Tape, MoveKeepsTheCursor) {
  Tape a = Tape::start(4096);
  ASSERT_TRUE(a.take(100, 1));
  Tape b = std::move(a);
  EXPECT_EQ(b.used(), 100u + Tape::kRedZone);
  EXPECT_EQ(a.total(), 0u);
  EXPECT_EQ(a.take(1, 1).status, TakeStatus::invalid_size);  // a moved-from Tape has no room
  Tape c = Tape::start(4096);
  c = std::move(b);
  EXPECT_EQ(c.used(), 100u + Tape::kRedZone);
  EXPECT_TRUE(c.take(1, 1));
}

// A Lane over a Tape that is then move-assigned must not keep handing out
// its chunk of the Block the assignment unmapped.
TEST(Tape, MoveAssignmentInvalidatesLanesOverTheTarget) {
  Tape t = Tape::start(MiB);
  Tape::Lane lane(t, 4096);
  ASSERT_TRUE(lane.take(64, 64));  // the lane now holds a chunk of the first Block
  t = Tape::start(MiB);            // ... which this unmaps
  Taken r = lane.take(64, 64);
  ASSERT_TRUE(r);
  EXPECT_TRUE(t.owns(r.ptr)) << "the lane handed out memory of the unmapped Block";
  std::memset(r.ptr, 1, 64);
}

// Lanes over a moved-from Tape fail (it has no Block) instead of handing out
// the chunk they reserved, which now belongs to the Tape moved to.
TEST(Tape, MovingInvalidatesLanesOverTheSource) {
  for (bool assign : {false, true}) {
    Tape t = Tape::start(MiB);
    Tape::Lane lane(t, 4096);
    Taken first = lane.take(64, 64);
    ASSERT_TRUE(first);
    std::optional<Tape> other;
    if (assign) {
      other.emplace(Tape::start(4096));
      *other = std::move(t);
    } else {
      other.emplace(std::move(t));
    }
    Taken r = lane.take(64, 64);
    EXPECT_FALSE(r) << (assign ? "assignment" : "construction") << ": the lane kept its old chunk";
    EXPECT_EQ(r.status, TakeStatus::invalid_size) << "a moved-from Tape has no room";
    Tape::Lane fresh(*other, 4096);
    Taken mine = fresh.take(64, 64);
    ASSERT_TRUE(mine);
    EXPECT_GE(mine.ptr, first.ptr + 4096) << "the moved Tape handed out the old lane's chunk again";
  }
}

// A copy of a Lane would hand out the bytes the original hands out: Lanes
// move, and the moved-from one reserves a fresh chunk.
TEST(TapeLane, IsMoveOnlyAndAMovedFromLaneTakesAFreshChunk) {
  static_assert(!std::is_copy_constructible_v<Tape::Lane> && !std::is_copy_assignable_v<Tape::Lane>);
  Tape t = Tape::start(MiB);
  Tape::Lane a(t, 4096);
  Taken first = a.take(64, 64);
  ASSERT_TRUE(first);
  Tape::Lane b = std::move(a);
  Taken from_b = b.take(64, 64);
  Taken from_a = a.take(64, 64);
  ASSERT_TRUE(from_a && from_b);
  EXPECT_LT(from_b.ptr, first.ptr + 4096) << "the moved-to lane continues the chunk";
  EXPECT_GE(from_a.ptr, first.ptr + 4096) << "the moved-from lane must not hand out the same chunk";
  Tape::Lane c(t, 4096);
  c = std::move(b);
  Taken from_c = c.take(64, 64);
  ASSERT_TRUE(from_c);
  EXPECT_LT(from_c.ptr, first.ptr + 4096);
  EXPECT_NE(from_c.ptr, from_b.ptr);
}

TEST(Tape, StartPropagatesBlockErrors) {
  try {
    (void)Tape::start(0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
  }
}

// Many threads take random sizes and alignments at once; every piece must be
// inside the Block, aligned, and disjoint from every other piece.
TEST(TapeStress, ConcurrentTakesNeverOverlap) {
  constexpr int kThreads = 8;
  Tape t = Tape::start(16 * MiB);
  struct Piece {
    std::byte* p;
    std::size_t n;
  };
  std::vector<std::vector<Piece>> pieces(kThreads);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      std::mt19937 rng(id);
      while (!go.load()) {
      }
      for (;;) {
        const std::size_t n = 1 + rng() % 700;
        const std::size_t align = std::size_t{1} << (rng() % 8);
        Taken r = t.take(n, align);
        if (!r) {
          ASSERT_EQ(r.status, TakeStatus::full);
          break;
        }
        ASSERT_TRUE(aligned(r.ptr, align));
        std::memset(r.ptr, id + 1, n);  // each thread paints its own pieces
        pieces[id].push_back({r.ptr, n});
      }
    });
  }
  go = true;
  for (auto& th : threads) th.join();

  std::vector<Piece> all;
  for (int id = 0; id < kThreads; ++id) {
    for (const Piece& piece : pieces[id]) {
      for (std::size_t i = 0; i < piece.n; ++i) ASSERT_EQ(piece.p[i], std::byte(id + 1)) << "overwritten";
      all.push_back(piece);
    }
  }
  std::sort(all.begin(), all.end(), [](const Piece& a, const Piece& b) { return a.p < b.p; });
  std::size_t sum = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    ASSERT_TRUE(t.owns(all[i].p) && t.owns(all[i].p + all[i].n - 1));
    if (i > 0) {
      ASSERT_LE(all[i - 1].p + all[i - 1].n, all[i].p) << "two pieces overlap";
    }
    sum += all[i].n;
  }
  EXPECT_LE(sum, t.used());
  EXPECT_GT(t.used(), t.total() - 1024);  // it really ran to full
}

// Threads hand one Tape around through the Tape itself: whoever's take() of
// the whole Tape succeeds owns every byte until its clear(). Nothing else
// orders the owners, so this relies on the documented "a clear()
// happens-before every take() that observes it": each owner writes every byte
// and checks that nobody else wrote meanwhile. ThreadSanitizer reports the
// writes of consecutive owners as a race when clear() does not release them;
// a Tape that handed itself out twice fails the checks anywhere.
TEST(TapeStress, ClearHandsTheTapeFromThreadToThread) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 3000;  // per thread
  constexpr std::size_t kBytes = 4096;
  Tape t = Tape::start(kBytes);
  ASSERT_EQ(t.total(), kBytes);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      Tape::Lane lane(t, kBytes);  // odd threads take through a lane: it must order the same way
      const auto mark = static_cast<unsigned char>(id + 1);
      for (int round = 0; round < kRounds;) {
        Taken r = (id % 2) ? lane.take(kBytes, 64) : t.take(kBytes, 64);
        if (!r) {
          if (r.status != TakeStatus::full) bad.fetch_add(1);
          std::this_thread::yield();
          continue;
        }
        // Byte stores, not memset: ThreadSanitizer checks only part of the
        // range an intercepted memset writes, and misses this race there.
        auto* bytes = reinterpret_cast<volatile unsigned char*>(r.ptr);
        for (std::size_t i = 0; i < kBytes; i += 64) bytes[i] = mark;
        for (std::size_t i = 0; i < kBytes; i += 64) {
          if (bytes[i] != mark) bad.fetch_add(1);  // another owner wrote
        }
        ++round;
        t.clear();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0) << "the Tape was handed to two owners at once, or a take failed for no reason";
  EXPECT_EQ(t.used(), 0u);
}

// clear() racing with takes keeps the cursor consistent: every take is in
// bounds, aligned and writable, and a final clear leaves the Tape empty.
TEST(TapeStress, ClearRacingWithTakesKeepsTheTapeConsistent) {
  Tape t = Tape::start(256 * 1024);
  std::atomic<bool> stop{false};
  std::atomic<long> taken{0};
  std::atomic<long> out_of_bounds{0};
  std::vector<std::thread> threads;
  for (int id = 0; id < 4; ++id) {
    threads.emplace_back([&, id] {
      std::mt19937 rng(id);
      while (!stop.load(std::memory_order_relaxed)) {
        const std::size_t n = 1 + rng() % 2000;
        Taken r = t.take(n, 64);
        if (r) {
          if (!aligned(r.ptr, 64) || !t.owns(r.ptr) || !t.owns(r.ptr + n - 1)) out_of_bounds.fetch_add(1);
          taken.fetch_add(1, std::memory_order_relaxed);
        } else if (r.status != TakeStatus::full) {
          out_of_bounds.fetch_add(1);
        }
      }
    });
  }
  // Clear only once the takers are running, so clears really race with takes.
  while (taken.load(std::memory_order_relaxed) < 100) std::this_thread::yield();
  const long before = taken.load();
  for (int i = 0; i < 2000; ++i) {
    t.clear();
    std::this_thread::yield();
  }
  while (taken.load(std::memory_order_relaxed) < before + 100) std::this_thread::yield();
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(out_of_bounds.load(), 0);
  EXPECT_LE(t.used(), t.total());
  t.clear();
  EXPECT_EQ(t.used(), 0u);
  EXPECT_TRUE(t.take(t.total(), 1)) << "after the last clear the whole Tape is free again";
}

// After fork() the child has a copy of the cursor and of every
// Lane, but the same shared pages: both would hand out the same bytes. The
// child must refuse, with its own status; the parent goes on as before.
TEST(TapeFork, ChildRefusesToTakeWhatTheParentHandsOut) {
  Tape t = Tape::start(MiB);
  Tape::Lane lane(t, 4096);
  ASSERT_TRUE(lane.take(64, 64));  // the lane holds a chunk with room left
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t pid = ::fork();
  ASSERT_NE(pid, -1);
  if (pid == 0) {
    Taken r[3] = {t.take(64, 64), lane.take(64, 64), Tape::Lane(t).take(64, 64)};
    t.clear();  // must not make the child's Tape usable again either
    Taken again = t.take(64, 64);
    std::uintptr_t report[5] = {
        reinterpret_cast<std::uintptr_t>(r[0].ptr), reinterpret_cast<std::uintptr_t>(r[1].ptr),
        reinterpret_cast<std::uintptr_t>(r[2].ptr), reinterpret_cast<std::uintptr_t>(again.ptr),
        static_cast<std::uintptr_t>(r[0].status == TakeStatus::forked && r[1].status == TakeStatus::forked &&
                                    r[2].status == TakeStatus::forked && again.status == TakeStatus::forked)};
    std::_Exit(::write(out[1], report, sizeof report) == sizeof report ? 0 : 1);
  }
  ::close(out[1]);
  std::uintptr_t report[5] = {};
  ASSERT_EQ(::read(out[0], report, sizeof report), static_cast<ssize_t>(sizeof report));
  ::close(out[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(report[i], 0u) << "take " << i << " in the child handed out the parent's memory";
  EXPECT_EQ(report[4], 1u) << "the child's takes should say TakeStatus::forked";
  EXPECT_TRUE(t.take(64, 64));
  EXPECT_TRUE(lane.take(64, 64));
}

TEST(TapeLane, TakesFromAReservedChunkWithPlainArithmetic) {
  Tape t = Tape::start(MiB);
  Tape::Lane lane(t, 4096);
  EXPECT_EQ(lane.chunk_bytes(), 4096u);
  Taken a = lane.take(100, 64);
  ASSERT_TRUE(a);
  EXPECT_EQ(t.used(), 4096u + Tape::kRedZone) << "the first take reserves one chunk (and a red zone, ASan)";
  Taken b = lane.take(100, 64);
  ASSERT_TRUE(b);
  EXPECT_EQ(b.ptr, a.ptr + 128);
  EXPECT_EQ(t.used(), 4096u + Tape::kRedZone) << "later takes do not touch the Tape";
  EXPECT_TRUE(aligned(b.ptr, 64));
  // The shared take continues after the lane's chunk.
  Taken shared = t.take(10, 1);
  ASSERT_TRUE(shared);
  EXPECT_GE(shared.ptr, a.ptr + 4096);
  std::span<double> d = lane.take<double>(5);
  ASSERT_EQ(d.size(), 5u);
  EXPECT_TRUE(t.owns(d.data()));
}

TEST(TapeLane, RejectsBadArgumentsLikeTheTape) {
  Tape t = Tape::start(8192);
  Tape::Lane lane(t);
  EXPECT_EQ(lane.take(8, 0).status, TakeStatus::invalid_align);
  EXPECT_EQ(lane.take(8, 24).status, TakeStatus::invalid_align);
  EXPECT_EQ(lane.take(0, 8).status, TakeStatus::invalid_size);
  EXPECT_EQ(lane.take(t.total() + 1, 8).status, TakeStatus::invalid_size);
  EXPECT_EQ(lane.take(SIZE_MAX, 8).status, TakeStatus::invalid_size);
  EXPECT_EQ(t.used(), 0u);
  EXPECT_TRUE(lane.take<float>(0).empty());
}

TEST(TapeLane, LargeRequestsAndAFullTapeFallBackToTheCursor) {
  Tape t = Tape::start(16384);
  Tape::Lane lane(t, 4096);
  Taken big = lane.take(3000, 64);  // more than half a chunk
  ASSERT_TRUE(big);
  EXPECT_EQ(t.used(), 3000u + Tape::kRedZone);
  ASSERT_TRUE(t.take(t.free() - 100, 1));  // leave 100 bytes (less a red zone): no room for a chunk
  Taken small = lane.take(50, 1);
  ASSERT_TRUE(small) << "a request that fits is served even when a chunk does not";
  EXPECT_EQ(lane.take(200, 1).status, TakeStatus::full);
}

// A lane's chunks double, up to a 64th of what the Tape has free, and start
// over after a clear: lanes taking 4 KiB or 1 MiB pieces used to reserve a
// fixed chunk every few takes from the one cursor all threads contend for
// (at 16 threads: 0.11x and 0.01x pmr::monotonic on the H100 machine).
TEST(TapeLane, ChunksGrowAndStartOverAfterAClear) {
  Tape t = Tape::start(64 * MiB);  // cap: about 1 MiB
  Tape::Lane lane(t, 4096);
  std::vector<std::size_t> reservations;
  for (int i = 0; i < 40000; ++i) {
    const std::size_t before = t.used();
    ASSERT_TRUE(lane.take(64, 64));
    // A reservation moves the cursor by its size, plus (ASan builds) the red
    // zone after it and the padding to 64 after the red zone before it.
    if (t.used() != before) reservations.push_back((t.used() - before - Tape::kRedZone) / 64 * 64);
  }
  ASSERT_GE(reservations.size(), 9u);
  for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(reservations[i], std::size_t{4096} << i) << "reservation " << i;
  for (std::size_t r : reservations) EXPECT_LE(r, MiB) << "at most a 64th of the free space";
  EXPECT_GE(reservations[8], MiB - 64 * 1024) << "the ninth is capped near a 64th of 64 MiB";
  t.clear();
  const std::size_t before = t.used();
  ASSERT_TRUE(lane.take(64, 64));
  EXPECT_EQ(t.used() - before, 4096u + Tape::kRedZone) << "the first chunk after a clear is chunk_bytes again";
}

TEST(TapeLane, LargeTakesComeFromGrowingChunksNotTheCursor) {
  Tape t = Tape::start(std::size_t{1} << 30);  // cap: 16 MiB while mostly free
  Tape::Lane lane(t);
  std::size_t reservations = 0;
  std::byte* last = nullptr;
  for (int i = 0; i < 32; ++i) {
    const std::size_t before = t.used();
    Taken p = lane.take(MiB, 64);
    ASSERT_TRUE(p);
    EXPECT_TRUE(last == nullptr || p.ptr >= last + MiB) << "take " << i << " overlaps the one before";
    last = p.ptr;
    reservations += t.used() != before;
  }
  EXPECT_LE(reservations, 8u) << "32 takes of 1 MiB should need a few growing chunks";
  EXPECT_EQ(lane.take(9 * MiB, 64).status, TakeStatus::ok) << "more than half the cap: straight from the cursor";
}

// A chunk size near SIZE_MAX used to round to 0; such a lane's chunk then
// never grew and its first take spun forever (found in review).
TEST(TapeLane, AHugeChunkSizeDoesNotWrapToZero) {
  Tape t = Tape::start(MiB);
  for (std::size_t bytes : {SIZE_MAX, SIZE_MAX - 10, SIZE_MAX - 63, SIZE_MAX - 64}) {
    Tape::Lane lane(t, bytes);
    EXPECT_GE(lane.chunk_bytes(), 64u) << bytes;
    EXPECT_EQ(lane.chunk_bytes() % 64, 0u) << bytes;
    EXPECT_TRUE(lane.take(16, 16)) << "a small take from a lane of chunk size " << bytes;
  }
}

// Near a full Tape chunks shrink with the free space, and a request that
// fits is still served when no chunk does.
TEST(TapeLane, ChunksShrinkNearAFullTape) {
  Tape t = Tape::start(4 * MiB);
  Tape::Lane lane(t, 4096);
  std::size_t taken = 0;
  while (lane.take(64, 64)) taken += 64;
  EXPECT_GE(t.used(), t.total() - 128 - Tape::kRedZone) << "the lane filled the Tape (less alignment)";
  EXPECT_GE(taken, t.total() * 9 / 10 / (Tape::kRedZone ? 2 : 1));
}

TEST(TapeLane, ClearInvalidatesEveryLane) {
  Tape t = Tape::start(MiB);
  Tape::Lane one(t, 4096), two(t, 4096);
  ASSERT_TRUE(one.take(64, 64));
  ASSERT_TRUE(two.take(64, 64));
  // Each chunk is followed by a red zone in ASan builds (64-aligned: 64 bytes).
  const std::size_t stride = 4096 + (Tape::kRedZone ? 64 : 0);
  EXPECT_EQ(t.used(), stride + 4096 + Tape::kRedZone);
  t.clear();
  // After clear, a lane never continues in its old chunk: the first lane to
  // take gets the start of the Tape, the second the chunk after it.
  Taken b = two.take(64, 64);
  Taken a = one.take(64, 64);
  EXPECT_EQ(b.ptr, t.block().data());
  EXPECT_EQ(a.ptr, t.block().data() + stride);
  EXPECT_EQ(t.used(), stride + 4096 + Tape::kRedZone);
}

// Lanes on several threads take while another thread clears. A take that
// starts after a clear returned and ends before the next clear starts is
// "clean"; clean pieces of the same generation must never overlap. A lane that
// kept handing out its pre-clear chunk would overlap fresh pieces.
TEST(TapeLaneStress, NoLaneHandsOutMemoryFromBeforeAClear) {
  constexpr int kThreads = 4;
  Tape t = Tape::start(4 * MiB);
  std::atomic<std::uint64_t> seq{0};  // odd while a clear runs
  std::atomic<bool> stop{false};
  struct Piece {
    std::uint64_t generation;
    std::byte* p;
    std::size_t n;
  };
  std::vector<std::vector<Piece>> pieces(kThreads);
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      Tape::Lane lane(t, 1024 * (id + 1));
      std::mt19937 rng(id);
      while (!stop.load(std::memory_order_relaxed)) {
        const std::uint64_t before = seq.load(std::memory_order_acquire);
        const std::size_t n = 1 + rng() % 300;
        Taken r = lane.take(n, std::size_t{1} << (rng() % 7));
        const std::uint64_t after = seq.load(std::memory_order_acquire);
        if (r && before == after && before % 2 == 0 && pieces[id].size() < 200000) {
          pieces[id].push_back({before, r.ptr, n});
        }
      }
    });
  }
  for (int i = 0; i < 300; ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    seq.fetch_add(1, std::memory_order_acq_rel);
    t.clear();
    seq.fetch_add(1, std::memory_order_acq_rel);
  }
  stop = true;
  for (auto& th : threads) th.join();

  std::vector<Piece> all;
  for (auto& v : pieces) all.insert(all.end(), v.begin(), v.end());
  ASSERT_GT(all.size(), 1000u);
  std::sort(all.begin(), all.end(), [](const Piece& a, const Piece& b) {
    return a.generation != b.generation ? a.generation < b.generation : a.p < b.p;
  });
  std::size_t generations = 1;
  for (std::size_t i = 1; i < all.size(); ++i) {
    if (all[i].generation != all[i - 1].generation) {
      ++generations;
      continue;
    }
    ASSERT_LE(all[i - 1].p + all[i - 1].n, all[i].p) << "two pieces of generation " << all[i].generation << " overlap";
  }
  EXPECT_GT(generations, 10u);
}

// Lanes and shared takes together, run to full: every piece disjoint.
TEST(TapeLaneStress, LanesAndSharedTakesNeverOverlap) {
  constexpr int kThreads = 6;
  Tape t = Tape::start(8 * MiB);
  std::vector<std::vector<std::pair<std::byte*, std::size_t>>> pieces(kThreads);
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      Tape::Lane lane(t, 8192);
      std::mt19937 rng(id);
      for (;;) {
        const std::size_t n = 1 + rng() % 500;
        Taken r = (id % 3 == 0) ? t.take(n, 16) : lane.take(n, 16);
        if (!r) break;
        std::memset(r.ptr, id + 1, n);
        pieces[id].emplace_back(r.ptr, n);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::vector<std::pair<std::byte*, std::size_t>> all;
  for (int id = 0; id < kThreads; ++id) {
    for (auto [p, n] : pieces[id]) {
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(p[i], std::byte(id + 1)) << "overwritten";
      all.emplace_back(p, n);
    }
  }
  std::sort(all.begin(), all.end());
  for (std::size_t i = 1; i < all.size(); ++i) {
    ASSERT_LE(all[i - 1].first + all[i - 1].second, all[i].first) << "overlap";
  }
}

#if defined(UNIMEM_ASAN)
TEST(TapeAsan, LanesUnpoisonOnlyWhatTheyHandOut) {
  Tape t = Tape::start(MiB);
  Tape::Lane lane(t, 4096);
  Taken r = lane.take(40, 64);
  ASSERT_TRUE(r);
  EXPECT_FALSE(__asan_address_is_poisoned(r.ptr + 39));
  EXPECT_TRUE(__asan_address_is_poisoned(r.ptr + 64)) << "the rest of the chunk stays poisoned";
  t.clear();
  EXPECT_TRUE(__asan_address_is_poisoned(r.ptr));
}

TEST(TapeAsan, OnlyTakenBytesAreAddressable) {
  Tape t = Tape::start(4096);
  EXPECT_TRUE(__asan_address_is_poisoned(t.block().data()));
  Taken r = t.take(32, 64);
  ASSERT_TRUE(r);
  EXPECT_FALSE(__asan_address_is_poisoned(r.ptr));
  EXPECT_FALSE(__asan_address_is_poisoned(r.ptr + 31));
  EXPECT_TRUE(__asan_address_is_poisoned(r.ptr + 32));
  t.clear();
  EXPECT_TRUE(__asan_address_is_poisoned(r.ptr));
}

// A red zone follows every take, so a write one byte past a piece is
// reported even when the next piece starts right after it would have.
TEST(TapeAsanDeathTest, OverflowIntoTheNextPieceIsReported) {
  Tape t = Tape::start(MiB);
  Tape::Lane lane(t, 4096);
  for (bool through_lane : {false, true}) {
    Taken a = through_lane ? lane.take(64, 64) : t.take(64, 64);
    Taken b = through_lane ? lane.take(64, 64) : t.take(64, 64);
    ASSERT_TRUE(a && b);
    EXPECT_GE(b.ptr, a.ptr + 64 + Tape::kRedZone);
    auto* past = reinterpret_cast<volatile char*>(a.ptr + 64);
    EXPECT_DEATH(*past = 1, "use-after-poison") << (through_lane ? "lane" : "tape");
  }
  // A piece that ends exactly at the end of its lane's chunk.
  Tape::Lane small(t, 128);
  Taken head = small.take(48, 1);
  Taken last = small.take(64, 1);
  ASSERT_TRUE(head && last);
  ASSERT_EQ(last.ptr, head.ptr + 64) << "the test expects `last` to end the 128-byte chunk";
  auto* past_chunk = reinterpret_cast<volatile char*>(last.ptr + 64);
  EXPECT_DEATH(*past_chunk = 1, "use-after-poison") << "the chunk's end";
  EXPECT_EQ(Tape::kRedZone, 16u);
}

TEST(TapeAsanDeathTest, UseAfterClearIsReported) {
  Tape t = Tape::start(4096);
  auto* p = reinterpret_cast<volatile int*>(t.take(64, 64).ptr);
  *p = 7;
  t.clear();
  EXPECT_DEATH(*p = 8, "use-after-poison");
}
#endif

}  // namespace
}  // namespace unimem
