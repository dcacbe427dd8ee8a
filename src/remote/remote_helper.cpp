// src/remote/remote_helper.cpp — the exporting process in remote_test.cpp's two-process tests.
//
//   unimem_remote_helper export CELL_SIZE CELLS SEED [read-only]
// makes a SharedGrid of CELLS cells of CELL_SIZE bytes, takes every cell
// (each then has an odd generation), fills cell i with pattern(i, SEED),
// exports it and prints "descriptor HEX". It progresses the exporter itself
// (Progress::caller) between commands, so that the bytes peers write land in
// this thread, which then checks them (a progress thread would write them
// with no order to this one that ThreadSanitizer could see).
// Then it answers lines on stdin:
//   verify SEED   "ok", or "bad I" for the first cell I not holding pattern(I, SEED)
//   flip I        gives cell I back and takes it again: "generation G" (its new one)
// and exits 0 at "quit" or at the end of stdin; 3 on a unimem error.
#include <poll.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "remote/remote_testing.hpp"
#include "unimem/remote.hpp"

int main(int argc, char** argv) try {
  using namespace unimem;
  if (argc < 5 || std::string(argv[1]) != "export") {
    std::fprintf(stderr, "usage: see src/remote/remote_helper.cpp\n");
    return 64;
  }
  const std::size_t cell_size = std::strtoull(argv[2], nullptr, 10);
  const std::size_t cells = std::strtoull(argv[3], nullptr, 10);
  const std::uint64_t seed = std::strtoull(argv[4], nullptr, 10);
  const bool read_only = argc > 5 && std::string(argv[5]) == "read-only";
  SharedGrid grid =
      SharedGrid::create(Block::open(SharedGrid::state_bytes(cells) + cell_size * cells), cell_size, cells);
  std::vector<SharedCell> held(cells);
  for (std::size_t n = 0; n < cells; ++n) {
    SharedCell c = grid.take();
    const std::uint32_t i = c.index();
    held[i] = std::move(c);
    remote::testing::fill(held[i].bytes(), i, seed);
  }
  remote::ExportOptions options;
  options.read_only = read_only;
  options.progress = remote::Progress::caller;
  remote::Exporter exporter = remote::Exporter::create(grid, options);
  std::printf("descriptor %s\n", remote::testing::to_hex(exporter.descriptor()).c_str());
  std::fflush(stdout);
  // Progresses the exporter until a command line arrives; false at the end of stdin.
  char line[256];
  auto next_line = [&]() {
    for (;;) {
      const bool busy = exporter.progress() != 0;
      pollfd in{0, POLLIN, 0};
      if (::poll(&in, 1, busy ? 0 : 1) > 0) return std::fgets(line, sizeof line, stdin) != nullptr;
    }
  };
  while (next_line()) {
    char command[32] = {};
    unsigned long long arg = 0;
    if (std::sscanf(line, "%31s %llu", command, &arg) < 1) continue;
    const std::string c = command;
    if (c == "verify") {
      std::size_t bad = cells;
      for (std::size_t i = 0; i < cells && bad == cells; ++i) {
        if (!remote::testing::holds(held[i].bytes(), i, arg)) bad = i;
      }
      if (bad == cells) {
        std::printf("ok\n");
      } else {
        std::printf("bad %zu\n", bad);
      }
    } else if (c == "flip") {
      const auto i = static_cast<std::uint32_t>(arg);
      held.at(i).reset();
      held[i] = grid.take();  // every other cell is held: this is cell i again
      std::printf("generation %llu\n", static_cast<unsigned long long>(grid.generation(held[i].index())));
    } else if (c == "quit") {
      break;
    }
    std::fflush(stdout);
  }
  return 0;
} catch (const unimem::Error& e) {
  std::fprintf(stderr, "remote helper: %s (%s)\n", e.what(), unimem::to_string(e.code()));
  return 3;
}
