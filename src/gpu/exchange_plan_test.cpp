// The copies of a peer exchange (gpu/exchange_plan.hpp), on every machine:
// applied in order to buffers standing in for the devices' memory, every
// wanted byte must arrive once and right, each interval must cross from the
// host once, a peer copy must read bytes an earlier copy of the plan wrote,
// and the granules must be dealt over the parts that want them.
#include "gpu/exchange_plan.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

namespace unimem::gpu::detail {
namespace {

std::uint8_t file_byte(std::uint64_t at) { return static_cast<std::uint8_t>(at * 2654435761u >> 13); }

// Applies `plan` to one buffer per wanted range (indexed by part) and checks
// it; returns the bytes copied from the host.
std::uint64_t apply_and_check(const std::vector<WantedRange>& wanted, const std::vector<ExchangeCopy>& plan) {
  std::map<std::size_t, const WantedRange*> by_part;
  for (const WantedRange& w : wanted) by_part[w.part] = &w;
  std::map<std::size_t, std::vector<std::uint8_t>> memory;
  std::map<std::size_t, std::vector<int>> writes;
  for (const WantedRange& w : wanted) {
    memory[w.part].assign(w.end - w.begin, 0xee);
    writes[w.part].assign(w.end - w.begin, 0);
  }
  std::uint64_t from_host = 0;
  for (const ExchangeCopy& c : plan) {
    EXPECT_LT(c.begin, c.end);
    const WantedRange& to = *by_part.at(c.to);
    EXPECT_LE(to.begin, c.begin) << "a copy outside what part " << c.to << " wants";
    EXPECT_LE(c.end, to.end) << "a copy outside what part " << c.to << " wants";
    if (!c.from_host()) {
      const WantedRange& from = *by_part.at(c.from);
      EXPECT_LE(from.begin, c.begin);
      EXPECT_LE(c.end, from.end);
    }
    for (std::uint64_t x = c.begin; x < c.end; ++x) {
      std::uint8_t value = file_byte(x);
      if (c.from_host()) {
        ++from_host;
      } else {
        const std::size_t i = x - by_part.at(c.from)->begin;
        EXPECT_EQ(writes[c.from][i], 1) << "a peer copy read byte " << x << " of part " << c.from << " before it came";
        value = memory[c.from][i];
      }
      memory[c.to][x - to.begin] = value;
      ++writes[c.to][x - to.begin];
    }
  }
  for (const WantedRange& w : wanted) {
    for (std::uint64_t x = w.begin; x < w.end; ++x) {
      EXPECT_EQ(writes[w.part][x - w.begin], 1) << "byte " << x << " of part " << w.part << " written that often";
      EXPECT_EQ(memory[w.part][x - w.begin], file_byte(x)) << "byte " << x << " of part " << w.part;
    }
  }
  return from_host;
}

std::uint64_t union_bytes(const std::vector<WantedRange>& wanted) {
  std::set<std::uint64_t> bytes;
  for (const WantedRange& w : wanted) {
    for (std::uint64_t x = w.begin; x < w.end; ++x) bytes.insert(x);
  }
  return bytes.size();
}

TEST(ExchangePlan, ReplicatedRangesCrossFromTheHostOnceAndReachEveryPart) {
  // Two devices want the same 10 granules and a bit: each granule comes from
  // the host once, to the two devices in turn.
  const std::vector<WantedRange> wanted = {{0, 10 * 16 + 5, 0}, {0, 10 * 16 + 5, 1}};
  const std::vector<ExchangeCopy> plan = plan_exchange(wanted, 16);
  EXPECT_EQ(apply_and_check(wanted, plan), 10u * 16 + 5);
  std::vector<std::size_t> owners;
  for (const ExchangeCopy& c : plan) {
    if (c.from_host()) owners.push_back(c.to);
  }
  ASSERT_EQ(owners.size(), 11u);
  for (std::size_t g = 0; g < owners.size(); ++g) EXPECT_EQ(owners[g], g % 2) << "granule " << g;
}

TEST(ExchangePlan, RangesThatOverlapOnlyInPartOrNotAtAll) {
  const std::vector<WantedRange> wanted = {
      {3, 40, 0}, {20, 75, 1}, {60, 64, 2}, {100, 130, 3}, {0, 8, 4}};  // 4 and 0 share [3, 8); 3 alone
  const std::vector<ExchangeCopy> plan = plan_exchange(wanted, 16);
  EXPECT_EQ(apply_and_check(wanted, plan), union_bytes(wanted));
  for (const ExchangeCopy& c : plan) {  // part 3 shares nothing: only host copies
    if (c.to == 3) {
      EXPECT_TRUE(c.from_host());
    }
  }
}

TEST(ExchangePlan, RandomRangesOnRandomGranules) {
  std::mt19937_64 rng(26);
  for (int round = 0; round < 300; ++round) {
    const std::uint64_t granule = 1 + rng() % 64;
    std::vector<WantedRange> wanted;
    const std::size_t n = 1 + rng() % 6;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t b = rng() % 400, len = 1 + rng() % 300;
      wanted.push_back({b, b + len, i * 3 + 1});  // part indices need not be dense
    }
    const std::vector<ExchangeCopy> plan = plan_exchange(wanted, granule);
    EXPECT_EQ(apply_and_check(wanted, plan), union_bytes(wanted)) << "round " << round;
    if (::testing::Test::HasFailure()) break;
  }
}

// The plan as first written (every cut against every range), kept as the
// reference the sweep must match copy for copy.
std::vector<ExchangeCopy> reference_plan(const std::vector<WantedRange>& wanted, std::uint64_t granule) {
  std::vector<ExchangeCopy> copies;
  std::vector<std::uint64_t> cuts;
  std::uint64_t lo = wanted.front().begin, hi = wanted.front().end;
  for (const WantedRange& w : wanted) {
    cuts.push_back(w.begin);
    cuts.push_back(w.end);
    lo = std::min(lo, w.begin);
    hi = std::max(hi, w.end);
  }
  for (std::uint64_t g = (lo / granule + 1) * granule; g < hi; g += granule) cuts.push_back(g);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
    std::vector<const WantedRange*> covering;
    for (const WantedRange& w : wanted) {
      if (w.begin <= cuts[k] && cuts[k + 1] <= w.end) covering.push_back(&w);
    }
    if (covering.empty()) continue;
    const std::size_t owner = covering[(cuts[k] / granule) % covering.size()]->part;
    copies.push_back({cuts[k], cuts[k + 1], owner, owner});
    for (const WantedRange* w : covering) {
      if (w->part != owner) copies.push_back({cuts[k], cuts[k + 1], w->part, owner});
    }
  }
  return copies;
}

TEST(ExchangePlan, TheSweepMatchesTheReferenceCopyForCopy) {
  std::mt19937_64 rng(2626);
  for (int round = 0; round < 500; ++round) {
    const std::uint64_t granule = 1 + rng() % 50;
    std::vector<WantedRange> wanted;
    const std::size_t n = 1 + rng() % 8;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t b = rng() % 300, len = 1 + rng() % 200;
      wanted.push_back({b, b + len, i});
    }
    const std::vector<ExchangeCopy> got = plan_exchange(wanted, granule), want = reference_plan(wanted, granule);
    ASSERT_EQ(got.size(), want.size()) << "round " << round;
    for (std::size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].begin, want[i].begin) << "round " << round << ", copy " << i;
      ASSERT_EQ(got[i].end, want[i].end) << "round " << round << ", copy " << i;
      ASSERT_EQ(got[i].to, want[i].to) << "round " << round << ", copy " << i;
      ASSERT_EQ(got[i].from, want[i].from) << "round " << round << ", copy " << i;
    }
  }
}

TEST(ExchangePlan, ThousandsOfSmallRangesStayCheap) {
  // 2 devices x 4000 small tensors in one 64 MiB chunk: the sweep handles
  // them in one pass (the reference would make 16 million comparisons).
  std::vector<WantedRange> wanted;
  for (std::size_t t = 0; t < 4000; ++t) {
    for (std::size_t d = 0; d < 2; ++d) wanted.push_back({t * 16384, t * 16384 + 16000, t * 2 + d});
  }
  const std::vector<ExchangeCopy> plan = plan_exchange(wanted, std::uint64_t{4} << 20);
  EXPECT_EQ(plan.size(), 2u * 4000);
  std::size_t from_host = 0;
  for (const ExchangeCopy& c : plan) from_host += c.from_host();
  EXPECT_EQ(from_host, 4000u);
}

TEST(ExchangePlan, NothingWantedIsNoCopy) { EXPECT_TRUE(plan_exchange({}, 4096).empty()); }

}  // namespace
}  // namespace unimem::gpu::detail
