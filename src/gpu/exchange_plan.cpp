// src/gpu/exchange_plan.cpp — the copies of a peer exchange (exchange_plan.hpp).
//
// One sweep over the range's edges: the wanted ranges open and close at
// their ends, and the granule boundaries cut between, so a chunk holding
// thousands of small replicated tensors costs O((ranges + granules) log
// ranges) plus the copies, not ranges x cuts.
#include "gpu/exchange_plan.hpp"

#include <algorithm>
#include <set>

namespace unimem::gpu::detail {

std::vector<ExchangeCopy> plan_exchange(std::span<const WantedRange> wanted, std::uint64_t granule) {
  std::vector<ExchangeCopy> copies;
  if (wanted.empty()) return copies;
  struct Edge {
    std::uint64_t at;
    bool opens;
    std::size_t index;  // into wanted
  };
  std::vector<Edge> edges;
  edges.reserve(2 * wanted.size());
  for (std::size_t i = 0; i < wanted.size(); ++i) {
    edges.push_back({wanted[i].begin, true, i});
    edges.push_back({wanted[i].end, false, i});
  }
  std::sort(edges.begin(), edges.end(), [](const Edge& a, const Edge& b) { return a.at < b.at; });
  std::set<std::size_t> open;  // indices into wanted: the owner is picked in their order
  std::vector<std::size_t> covering;
  for (std::size_t e = 0; e < edges.size();) {
    const std::uint64_t x = edges[e].at;
    for (; e < edges.size() && edges[e].at == x; ++e) {
      if (edges[e].opens) {
        open.insert(edges[e].index);
      } else {
        open.erase(edges[e].index);
      }
    }
    if (open.empty() || e == edges.size()) continue;
    covering.assign(open.begin(), open.end());
    // [x, next edge), cut at every granule boundary inside it.
    for (std::uint64_t b = x, next = edges[e].at; b < next;) {
      const std::uint64_t y = std::min(next, (b / granule + 1) * granule);
      const std::size_t owner = wanted[covering[(b / granule) % covering.size()]].part;
      copies.push_back({b, y, owner, owner});
      for (std::size_t i : covering) {
        if (wanted[i].part != owner) copies.push_back({b, y, wanted[i].part, owner});
      }
      b = y;
    }
  }
  return copies;
}

}  // namespace unimem::gpu::detail
