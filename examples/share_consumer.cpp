// examples/share_consumer.cpp — uses weights another process loaded, read-only
// and without a copy, beside its own scratch memory.
//
//   unimem_share_consumer ID     (ID as printed by unimem_share_producer)
#include <unistd.h>

#include <cmath>
#include <cstdio>

#include <unimem/unimem.hpp>

#include "share_directory.hpp"

int main(int argc, char** argv) try {
  if (argc != 2) {
    std::fprintf(stderr, "usage: unimem_share_consumer ID\n");
    return 2;
  }
  unimem::BlockOptions options;
  options.pinning = unimem::Pinning::unpinned;
  unimem::SharedLayout layout =
      unimem::SharedLayout::attach(unimem::BlockId::parse(argv[1]), 1 << 20, 1 << 20, options);

  const auto* dir = reinterpret_cast<const example::Directory*>(layout.weights().at(unimem::Block::page_size()));
  if (dir == nullptr || dir->magic != example::kMagic) {
    std::fprintf(stderr, "consumer: no weights directory in that Block\n");
    return 1;
  }
  const auto* tensor = reinterpret_cast<const float*>(layout.weights().at(dir->offset));
  double checksum = 0;
  for (std::size_t i = 0; i < dir->count; ++i) checksum += tensor[i];

  // A toy use of the weights: a dot product into this process's own scratch.
  std::span<float> out = layout.scratch().take<float>(256);
  for (std::size_t r = 0; r < out.size(); ++r) {
    float acc = 0;
    for (std::size_t k = 0; k < 4096; ++k) acc += tensor[r * 4096 + k];
    out[r] = acc;
  }
  const bool same = std::fabs(checksum - dir->checksum) < 1e-6 * std::fabs(dir->checksum) + 1e-9;
  std::printf("consumer %d: read %zu floats in place, checksum %.6f (%s), out[0] = %.4f\n%s", ::getpid(), dir->count,
              checksum, same ? "matches" : "DIFFERS", out[0], layout.stat().c_str());
  return same ? 0 : 1;
} catch (const unimem::Error& e) {
  std::fprintf(stderr, "consumer: %s (%s)\n", e.what(), unimem::to_string(e.code()));
  return 1;
}
