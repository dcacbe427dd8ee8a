// The offload pool's CPU-side contracts (gpu::OffloadPool), on every machine:
// sizes and devices at creation, all-or-nothing batch takes, the checks every
// store and fetch makes before it enqueues anything (pools of kNoDevice get
// through every check but the last: "no device"), read-only and moved-from
// pools, and several processes on one pool (forked children attach by id; a
// SIGKILLed one loses only the cells it held). The moves themselves are
// checked on a GPU by src/gpu/offload_gpu_test.cpp.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "testing.hpp"
#include "unimem/gpu.hpp"
#include "unimem/offload.hpp"

namespace unimem {
namespace {

using gpu::kNoDevice;
using gpu::OffloadPool;
using testing::error_of;
using testing::in_child;
using testing::Thrown;
using testing::thrown_by;

void stamp(std::span<std::byte> cell, std::uint8_t value) { std::memset(cell.data(), value, cell.size()); }
bool stamped(std::span<const std::byte> cell, std::uint8_t value) {
  for (std::byte b : cell) {
    if (b != std::byte{value}) return false;
  }
  return true;
}

TEST(OffloadPool, CreateChecksSizesAndTheDevice) {
  EXPECT_EQ(error_of([] { (void)OffloadPool::create(100, 4, kNoDevice); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([] { (void)OffloadPool::create(0, 4, kNoDevice); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([] { (void)OffloadPool::create(4096, 0, kNoDevice); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([] { (void)OffloadPool::create(4096, 0xffffffffu, kNoDevice); }), Errc::invalid_argument);
  const Thrown overflow = thrown_by([] { (void)OffloadPool::create(std::size_t{1} << 40, 1u << 30, kNoDevice); });
  EXPECT_EQ(overflow.code, Errc::invalid_argument);
  EXPECT_NE(overflow.message.find("overflow"), std::string::npos) << overflow.message;
  EXPECT_EQ(error_of([] { (void)OffloadPool::create(4096, 4, -2); }), Errc::invalid_argument);
  if (!gpu::available()) {  // asking for a GPU where there is none: the driver's error, before any memory
    const Errc e = error_of([] { (void)OffloadPool::create(4096, 4, 0); });
    EXPECT_TRUE(e == Errc::no_cuda_driver || e == Errc::no_cuda_device) << to_string(e);
  } else {
    const int past = static_cast<int>(gpu::devices().size());
    EXPECT_EQ(error_of([&] { (void)OffloadPool::create(4096, 4, past); }), Errc::invalid_argument);
  }
}

TEST(OffloadPool, AHostOnlyPoolHandsOutItsCells) {
  OffloadPool pool = OffloadPool::create(16 * 1024, 12, kNoDevice);
  EXPECT_EQ(pool.block_bytes(), 16u * 1024);
  EXPECT_EQ(pool.blocks(), 12u);
  EXPECT_EQ(pool.device(), kNoDevice);
  EXPECT_EQ(pool.route(), gpu::OffloadRoute::automatic) << "the default";
  EXPECT_EQ(pool.route_taken(), gpu::OffloadRoute::kernel) << "16 KiB is below kAutomaticRouteThreshold";
  EXPECT_FALSE(pool.batched_copies());
  EXPECT_FALSE(pool.host_block().gpu_visible()) << "kNoDevice registers nothing";
  EXPECT_TRUE(pool.host_block().id()) << "the pool is shareable";
  EXPECT_GE(pool.host_block().size(), 12u * 16 * 1024 + Block::page_size());
  std::set<std::uint32_t> seen;
  std::vector<SharedCell> cells;
  for (SharedCell c = pool.take(); c; c = pool.take()) {
    EXPECT_EQ(c.size(), pool.block_bytes());
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(c.data()) % 64, 0u);
    const std::span<std::byte> same = pool.cell(c.index());
    EXPECT_EQ(same.data(), c.data());
    EXPECT_EQ(same.size(), c.size());
    EXPECT_TRUE(pool.host_block().contains(c.data() + c.size() - 1));
    EXPECT_TRUE(seen.insert(c.index()).second);
    cells.push_back(std::move(c));
  }
  EXPECT_EQ(cells.size(), 12u);
  EXPECT_TRUE(pool.cell(12).empty());
  EXPECT_EQ(pool.give(std::move(cells.back())), GiveStatus::ok);
  EXPECT_TRUE(pool.take());
}

TEST(OffloadPool, TheAutomaticRouteFollowsTheBlockSize) {
  using gpu::OffloadRoute;
  EXPECT_EQ(gpu::kAutomaticRouteThreshold, 512u * 1024);
  EXPECT_STREQ(gpu::to_string(OffloadRoute::automatic), "automatic");
  EXPECT_STREQ(gpu::to_string(OffloadRoute::kernel), "kernel");
  EXPECT_STREQ(gpu::to_string(OffloadRoute::copies), "copies");
  struct Case {
    std::size_t bytes;
    OffloadRoute option, taken;
  };
  const std::size_t at = gpu::kAutomaticRouteThreshold;
  const Case cases[] = {
      {64, OffloadRoute::automatic, OffloadRoute::kernel}, {at - 64, OffloadRoute::automatic, OffloadRoute::kernel},
      {at, OffloadRoute::automatic, OffloadRoute::copies}, {2 * at, OffloadRoute::automatic, OffloadRoute::copies},
      {4096, OffloadRoute::copies, OffloadRoute::copies},  {2 * at, OffloadRoute::kernel, OffloadRoute::kernel},
  };
  for (const Case& c : cases) {
    gpu::OffloadOptions o;
    o.route = c.option;
    OffloadPool pool = OffloadPool::create(c.bytes, 2, kNoDevice, o);
    EXPECT_EQ(pool.route(), c.option) << c.bytes;
    EXPECT_EQ(pool.route_taken(), c.taken) << c.bytes << " B, " << gpu::to_string(c.option);
  }
  OffloadPool pool = OffloadPool::create(4096, 2, kNoDevice);
  OffloadPool moved = std::move(pool);
  EXPECT_EQ(pool.route(), OffloadRoute::automatic);
  EXPECT_EQ(pool.route_taken(), OffloadRoute::kernel);
}

TEST(OffloadPool, BatchTakesAreAllOrNothing) {
  OffloadPool pool = OffloadPool::create(4096, 10, kNoDevice);
  std::vector<SharedCell> four(4);
  ASSERT_EQ(pool.take(four), TakeStatus::ok);
  for (const SharedCell& c : four) EXPECT_TRUE(c);

  std::vector<SharedCell> seven(7);
  EXPECT_EQ(pool.take(seven), TakeStatus::full) << "6 are free";
  for (const SharedCell& c : seven) EXPECT_FALSE(c) << "a failed batch takes nothing";
  std::vector<SharedCell> six(6);
  EXPECT_EQ(pool.take(six), TakeStatus::ok) << "the cells a failed batch took went back";
  EXPECT_FALSE(pool.take());
  std::vector<SharedCell> one(1);
  EXPECT_EQ(pool.take(one), TakeStatus::full);

  EXPECT_EQ(pool.give(std::move(six[0])), GiveStatus::ok);
  EXPECT_EQ(pool.give(std::move(six[1])), GiveStatus::ok);
  std::vector<SharedCell> mixed(2);
  mixed[1] = std::move(four[0]);  // holds a cell already
  const std::uint32_t held = mixed[1].index();
  EXPECT_EQ(pool.take(mixed), TakeStatus::invalid_size);
  EXPECT_FALSE(mixed[0]);
  EXPECT_EQ(mixed[1].index(), held) << "left as it was";
  std::vector<SharedCell> eleven(11);
  EXPECT_EQ(pool.take(eleven), TakeStatus::invalid_size) << "more than the pool has";
  EXPECT_EQ(pool.take(std::span<SharedCell>()), TakeStatus::ok);
  std::vector<SharedCell> two(2);
  EXPECT_EQ(pool.take(two), TakeStatus::ok) << "the 2 given back";
}

// Every check of a store and a fetch comes before anything is enqueued: with
// kNoDevice, valid input gets as far as "no device", bad input is named.
TEST(OffloadPool, MovesRefuseBadInputBeforeTouchingAnything) {
  OffloadPool pool = OffloadPool::create(4096, 8, kNoDevice);
  OffloadPool other = OffloadPool::create(4096, 8, kNoDevice);
  std::vector<SharedCell> cells(3);
  ASSERT_EQ(pool.take(cells), TakeStatus::ok);
  for (const SharedCell& c : cells) stamp(c.bytes(), 0x5a);
  const std::vector<std::uintptr_t> blocks = {0x7f0000000000, 0x7f0000010000, 0x7f0000020000};
  const std::vector<std::uint32_t> indices = {cells[0].index(), cells[1].index(), cells[2].index()};

  struct Case {
    const char* what;
    std::function<void()> call;
    const char* says;
  };
  std::vector<SharedCell> with_empty(3);
  with_empty[0] = std::move(cells[0]);
  with_empty[2] = std::move(cells[2]);  // [1] is empty
  SharedCell foreign = other.take();
  std::vector<SharedCell> with_foreign(1);
  with_foreign[0] = std::move(foreign);
  const std::vector<std::uint32_t> out_of_range = {indices[0], 8};
  const std::vector<std::uintptr_t> misaligned = {blocks[0] + 8};
  const std::vector<std::uintptr_t> wraps = {~std::uintptr_t{0} - 1023};
  const std::vector<std::uintptr_t> null = {0};
  const std::vector<Case> cases = {
      {"lengths (store)",
       [&] {
         (void)pool.store({blocks.data(), 2}, 4096, std::span(indices));
       },
       "differ in length"},
      {"lengths (fetch)",
       [&] {
         (void)pool.fetch(std::span(indices), {blocks.data(), 2}, 4096);
       },
       "differ in length"},
      {"block size (store)", [&] { (void)pool.store(blocks, 8192, std::span(indices)); }, "blocks are 4096 bytes"},
      {"block size (fetch)", [&] { (void)pool.fetch(std::span(indices), blocks, 2048); }, "blocks are 4096 bytes"},
      {"empty cell (store)", [&] { (void)pool.store(blocks, 4096, std::span<const SharedCell>(with_empty)); },
       "cell 1 is empty"},
      {"empty cell (fetch)", [&] { (void)pool.fetch(std::span<const SharedCell>(with_empty), blocks, 4096); },
       "cell 1 is empty"},
      {"foreign cell (store)",
       [&] {
         (void)pool.store({blocks.data(), 1}, 4096, std::span<const SharedCell>(with_foreign));
       },
       "cell 0 belongs to another pool"},
      {"foreign cell (fetch)",
       [&] {
         (void)pool.fetch(std::span<const SharedCell>(with_foreign), {blocks.data(), 1}, 4096);
       },
       "cell 0 belongs to another pool"},
      {"index (store)",
       [&] {
         (void)pool.store({blocks.data(), 2}, 4096, std::span(out_of_range));
       },
       "cell index 8 (at 1) is not below"},
      {"index (fetch)",
       [&] {
         (void)pool.fetch(std::span(out_of_range), {blocks.data(), 2}, 4096);
       },
       "cell index 8 (at 1) is not below"},
      {"misaligned", [&] { (void)pool.store(misaligned, 4096, std::span(indices.data(), 1)); },
       "is not 16-byte aligned"},
      {"wraps", [&] { (void)pool.fetch(std::span(indices.data(), 1), wraps, 4096); }, "is not an address"},
      {"null", [&] { (void)pool.fetch(std::span(indices.data(), 1), null, 4096); }, "is not an address"},
      {"valid, but no device (store)", [&] { (void)pool.store(blocks, 4096, std::span(indices)); }, "has no device"},
      {"valid, but no device (fetch)", [&] { (void)pool.fetch(std::span(indices), blocks, 4096); }, "has no device"},
      {"nothing, and no device", [&] { (void)pool.fetch(std::span<const std::uint32_t>(), {}, 4096); },
       "has no device"},
  };
  for (const Case& c : cases) {
    const Thrown t = thrown_by(c.call);
    EXPECT_EQ(t.code, Errc::invalid_argument) << c.what << ": " << t.message;
    EXPECT_NE(t.message.find(c.says), std::string::npos) << c.what << ": " << t.message;
    EXPECT_NE(t.message.find("nothing was moved"), std::string::npos) << c.what << ": " << t.message;
  }
  for (std::uint32_t i : indices) EXPECT_TRUE(stamped(pool.cell(i), 0x5a)) << "cell " << i << " was touched";
  // The cells named stay the caller's, and go back as usual.
  EXPECT_EQ(pool.give(std::move(with_empty[0])), GiveStatus::ok);
  EXPECT_EQ(pool.give(std::move(with_empty[1])), GiveStatus::empty_cell);
  EXPECT_EQ(pool.give(std::move(with_foreign[0])), GiveStatus::foreign_cell);
  EXPECT_EQ(other.give(std::move(with_foreign[0])), GiveStatus::ok);
}

TEST(OffloadPool, ReadOnlyAndMovedFromPoolsRefuseWhatTheyCannotDo) {
  OffloadPool pool = OffloadPool::create(4096, 4, kNoDevice);
  SharedCell mine = pool.take();
  ASSERT_TRUE(mine);
  stamp(mine.bytes(), 0x33);
  BlockOptions ro;
  ro.read_only = true;
  OffloadPool reader = OffloadPool::attach(Block::attach(pool.host_block().id(), ro), kNoDevice);
  EXPECT_EQ(reader.blocks(), 4u);
  EXPECT_TRUE(stamped(reader.cell(mine.index()), 0x33)) << "the same pages";
  EXPECT_FALSE(reader.take());
  std::vector<SharedCell> two(2);
  EXPECT_EQ(reader.take(two), TakeStatus::read_only);
  const std::uintptr_t block = 0x7f0000000000;
  const std::uint32_t index = mine.index();
  const Thrown store = thrown_by([&] { (void)reader.store({&block, 1}, 4096, {&index, 1}); });
  EXPECT_NE(store.message.find("read-only"), std::string::npos) << store.message;
  const Thrown fetch = thrown_by([&] { (void)reader.fetch({&index, 1}, {&block, 1}, 4096); });
  EXPECT_NE(fetch.message.find("has no device"), std::string::npos) << "fetching from a read-only pool is allowed";

  OffloadPool moved = std::move(pool);
  EXPECT_EQ(pool.blocks(), 0u);
  EXPECT_EQ(pool.block_bytes(), 0u);
  EXPECT_TRUE(pool.host_block().empty());
  EXPECT_FALSE(pool.take());
  EXPECT_EQ(pool.take(two), TakeStatus::invalid_size);
  EXPECT_EQ(pool.give(std::move(mine)), GiveStatus::foreign_cell);
  EXPECT_TRUE(pool.cell(0).empty());
  const Thrown gone = thrown_by([&] { (void)pool.store({&block, 1}, 4096, {&index, 1}); });
  EXPECT_EQ(gone.code, Errc::invalid_argument);
  EXPECT_NE(gone.message.find("moved from"), std::string::npos) << gone.message;
  EXPECT_EQ(moved.give(std::move(mine)), GiveStatus::ok) << "the cell belongs to the pool it moved into";
}

// A fork() child inherits the pool object but not the parent's CUDA state:
// its store and fetch throw (before any other check), and letting the pool
// go there touches nothing of the parent's.
TEST(OffloadPool, AForkedChildRefusesMovesAndLetsThePoolGoCleanly) {
  OffloadPool pool = OffloadPool::create(4096, 4, kNoDevice);
  SharedCell cell = pool.take();
  ASSERT_TRUE(cell);
  const std::uint32_t index = cell.index();
  const std::uintptr_t block = 0x7f0000000000;
  EXPECT_EQ(in_child([&] {
              const Thrown store = thrown_by([&] { (void)pool.store({&block, 1}, 4096, {&index, 1}); });
              if (store.code != Errc::invalid_argument) return 2;
              if (store.message.find("fork() child") == std::string::npos) return 3;
              const Thrown fetch = thrown_by([&] { (void)pool.fetch({&index, 1}, {&block, 1}, 4096); });
              if (fetch.code != Errc::invalid_argument || fetch.message.find("fork() child") == std::string::npos) {
                return 4;
              }
              const Thrown none = thrown_by([&] { (void)pool.fetch(std::span<const std::uint32_t>(), {}, 4096); });
              if (none.message.find("fork() child") == std::string::npos) return 5;
              { OffloadPool gone = std::move(pool); }  // destroyed here, in the child
              return 0;
            }),
            0);
  EXPECT_EQ(pool.give(std::move(cell)), GiveStatus::ok) << "the parent's pool is untouched";
  const Thrown here = thrown_by([&] { (void)pool.store({&block, 1}, 4096, {&index, 1}); });
  EXPECT_NE(here.message.find("has no device"), std::string::npos) << "the parent is no fork() child: " << here.message;
}

TEST(OffloadPool, AttachRefusesWhatIsNotAPool) {
  EXPECT_EQ(error_of([] { (void)OffloadPool::attach(Block::open(1 << 20), kNoDevice); }), Errc::not_a_block);
  EXPECT_EQ(error_of([] { (void)OffloadPool::attach(Block(), kNoDevice); }), Errc::not_a_block);
  OffloadPool pool = OffloadPool::create(4096, 4, kNoDevice);
  EXPECT_EQ(error_of([&] { (void)OffloadPool::attach(Block::attach(pool.host_block().id()), -7); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { (void)OffloadPool::attach(pool.host_block().id(), -7); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([] { (void)OffloadPool::attach(BlockId{::getpid(), 1000, 7}, kNoDevice); }), Errc::not_found);
}

// A cache server makes the pool; engines in other processes attach by id,
// take cells, write them and read what others wrote.
TEST(OffloadPool, ProcessesShareOnePoolByItsId) {
  OffloadPool server = OffloadPool::create(8192, 32, kNoDevice);
  std::vector<SharedCell> mine(8);
  ASSERT_EQ(server.take(mine), TakeStatus::ok);
  for (const SharedCell& c : mine) stamp(c.bytes(), static_cast<std::uint8_t>(c.index()));
  const BlockId id = server.host_block().id();
  std::vector<std::uint32_t> indices;
  for (const SharedCell& c : mine) indices.push_back(c.index());
  EXPECT_EQ(in_child([&] {
              OffloadPool engine = OffloadPool::attach(id, kNoDevice);  // by id: mapped unpinned
              if (engine.blocks() != 32 || engine.block_bytes() != 8192) return 2;
              for (std::uint32_t i : indices) {
                if (!stamped(engine.cell(i), static_cast<std::uint8_t>(i))) return 3;  // the server's blocks
              }
              std::vector<SharedCell> taken(24);
              if (engine.take(taken) != TakeStatus::ok) return 4;  // all the rest
              for (SharedCell& c : taken) {
                for (std::uint32_t i : indices) {
                  if (c.index() == i) return 5;  // the server holds it
                }
                stamp(c.bytes(), 0xee);
              }
              for (SharedCell& c : taken) {
                if (engine.give(std::move(c)) != GiveStatus::ok) return 6;
              }
              return 0;
            }),
            0);
  std::vector<SharedCell> rest(24);
  ASSERT_EQ(server.take(rest), TakeStatus::ok) << "the child gave its cells back";
  for (const SharedCell& c : rest) EXPECT_TRUE(stamped(c.bytes(), 0xee)) << "the child's writes are here";
  for (const SharedCell& c : mine) EXPECT_TRUE(stamped(c.bytes(), static_cast<std::uint8_t>(c.index())));
}

// An engine killed while it holds cells loses those, and only those: the
// server and the next engines keep taking, giving and writing the rest.
TEST(OffloadPool, ASigkilledProcessLosesOnlyTheCellsItHeld) {
  OffloadPool server = OffloadPool::create(4096, 16, kNoDevice);
  SharedCell held = server.take();
  ASSERT_TRUE(held);
  const BlockId id = server.host_block().id();
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(ready[0]);
    OffloadPool engine = OffloadPool::attach(Block::attach(id), kNoDevice);
    std::vector<SharedCell> five(5);
    if (engine.take(five) != TakeStatus::ok) std::_Exit(2);
    for (SharedCell& c : five) stamp(c.bytes(), 0x77);
    (void)!::write(ready[1], "r", 1);
    for (;;) ::pause();  // holding them until killed
  }
  ::close(ready[1]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));

  std::vector<SharedCell> all(10);  // 16 - 1 held here - 5 lost
  ASSERT_EQ(server.take(all), TakeStatus::ok);
  EXPECT_FALSE(server.take()) << "the killed engine's 5 cells stay taken";
  for (const SharedCell& cell : all) EXPECT_NE(cell.index(), held.index());
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(server.give(std::move(all[i])), GiveStatus::ok);
  EXPECT_EQ(in_child([&] {
              OffloadPool next = OffloadPool::attach(Block::attach(id), kNoDevice);
              std::vector<SharedCell> three(3);
              if (next.take(three) != TakeStatus::ok) return 2;
              std::vector<SharedCell> two(2);
              if (next.take(two) != TakeStatus::full) return 3;  // 1 left: all or nothing
              for (SharedCell& cell : three) {
                if (next.give(std::move(cell)) != GiveStatus::ok) return 4;
              }
              return 0;
            }),
            0);
  std::vector<SharedCell> four(4);
  EXPECT_EQ(server.take(four), TakeStatus::ok) << "the pool works on for the living";
}

}  // namespace
}  // namespace unimem
