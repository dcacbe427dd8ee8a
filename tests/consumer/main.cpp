// Uses every layer once and checks the results, so that a broken package
// (missing header, missing symbol, wrong include path) fails the build or the run.
#include <unimem/unimem.hpp>

#include <cstdio>

int main() {
  unimem::BlockOptions unpinned;
  unpinned.pinning = unimem::Pinning::unpinned;
  auto tape = unimem::Tape::start(1 << 20, unpinned);
  auto floats = tape.take<float>(1000);
  unimem::Grid<> grid(4096, 8, unpinned);
  unimem::Cell cell = grid.take();
  auto layout = unimem::Layout::open(1 << 16, 1 << 16, 1 << 16, unpinned);
  const bool ok = floats.size() == 1000 && cell && cell.size() == 4096 && layout.weights().total() == (1 << 16);
  std::printf("unimem %s consumer: %s\n", UNIMEM_VERSION_STRING, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
