// src/gpu/exchange_plan.cpp — the copies of a peer exchange (exchange_plan.hpp).
#include "gpu/exchange_plan.hpp"

#include <algorithm>

namespace unimem::gpu::detail {

std::vector<ExchangeCopy> plan_exchange(std::span<const WantedRange> wanted, std::uint64_t granule) {
  std::vector<ExchangeCopy> copies;
  if (wanted.empty()) return copies;
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
  std::vector<const WantedRange*> covering;
  for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
    const std::uint64_t x = cuts[k], y = cuts[k + 1];
    covering.clear();
    for (const WantedRange& w : wanted) {
      if (w.begin <= x && y <= w.end) covering.push_back(&w);
    }
    if (covering.empty()) continue;
    const std::size_t owner = covering[(x / granule) % covering.size()]->part;
    copies.push_back({x, y, owner, owner});
    for (const WantedRange* w : covering) {
      if (w->part != owner) copies.push_back({x, y, w->part, owner});
    }
  }
  return copies;
}

}  // namespace unimem::gpu::detail
