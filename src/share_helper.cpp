// src/share_helper.cpp — the other process in share_test.cpp's tests.
//
//   unimem_share_helper attach ID SEED     attach by id, check pattern(SEED), write pattern(SEED+1)
//   unimem_share_helper adopt FD SEED      the same with an inherited descriptor
//   unimem_share_helper create BYTES       open a warm Block, fill pattern(9), print its id, wait
//   unimem_share_helper hold-cells ID N    attach a SharedGrid, take N cells, print "ready", wait
// Exit status 0 on success; 2 on a wrong pattern; 3 on a unimem error.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "unimem/linux.hpp"
#include "unimem/share.hpp"

namespace {

std::uint32_t pattern(std::size_t i, std::uint32_t seed) { return static_cast<std::uint32_t>(i) * 2654435761u + seed; }

int check_and_answer(unimem::Block block, std::uint32_t seed) {
  auto* w = reinterpret_cast<std::uint32_t*>(block.data());
  const std::size_t n = block.size() / 4;
  for (std::size_t i = 0; i < n; ++i) {
    if (w[i] != pattern(i, seed)) return 2;
  }
  for (std::size_t i = 0; i < n; ++i) w[i] = pattern(i, seed + 1);
  return 0;
}

[[noreturn]] void wait_forever() {
  for (;;) ::pause();
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "attach" && argc == 4) {
    return check_and_answer(unimem::Block::attach(unimem::BlockId::parse(argv[2])), std::strtoul(argv[3], nullptr, 10));
  }
  if (mode == "adopt" && argc == 4) {
    return check_and_answer(unimem::adopt_block(std::atoi(argv[2])), std::strtoul(argv[3], nullptr, 10));
  }
  if (mode == "create" && argc == 3) {
    unimem::BlockOptions o;
    o.backing = unimem::Backing::warm;
    o.pinning = unimem::Pinning::unpinned;
    unimem::Block block = unimem::Block::open(std::strtoull(argv[2], nullptr, 10), o);
    auto* w = reinterpret_cast<std::uint32_t*>(block.data());
    for (std::size_t i = 0; i < block.size() / 4; ++i) w[i] = pattern(i, 9);
    std::printf("%s\n", block.id().to_string().c_str());
    std::fflush(stdout);
    wait_forever();
  }
  if (mode == "hold-cells" && argc == 4) {
    unimem::SharedGrid grid = unimem::SharedGrid::attach(unimem::Block::attach(unimem::BlockId::parse(argv[2])));
    std::vector<unimem::SharedCell> held;
    for (int i = 0; i < std::atoi(argv[3]); ++i) held.push_back(grid.take());
    std::printf("ready\n");
    std::fflush(stdout);
    wait_forever();
  }
  std::fprintf(stderr, "usage: see src/share_helper.cpp\n");
  return 64;
} catch (const unimem::Error& e) {
  std::fprintf(stderr, "helper: %s (%s)\n", e.what(), unimem::to_string(e.code()));
  return 3;
}
