// examples/demo.cpp — the four layers in one page, with their stats.
//
// Pins its memory when the memlock limit allows, and says so when it has to
// fall back to unpinned pages (a non-root user gets 8 MiB by default).
#include <unimem/unimem.hpp>

#include <cmath>
#include <cstdio>
#include <numeric>

namespace {

unimem::BlockOptions choose_options() {
  unimem::BlockOptions options;
  try {
    (void)unimem::Block::open(16 << 20, options);  // about what the demo pins in all
  } catch (const unimem::Error& e) {
    if (e.code() != unimem::Errc::memlock_limit) throw;
    std::printf("note: %s\n      -> running unpinned\n\n", e.what());
    options.pinning = unimem::Pinning::unpinned;
  }
  return options;
}

}  // namespace

int main() try {
  const unimem::BlockOptions options = choose_options();
  std::printf("unimem %s demo\n\n", UNIMEM_VERSION_STRING);

  // Block: pinned shareable pages; the memfd goes to other processes and devices.
  unimem::Block block = unimem::Block::open(1 << 20, options);
  auto f32 = block.as_f32_mut();
  std::iota(f32.begin(), f32.end(), 0.0f);
  std::printf("Block   %zu bytes at %p, fd %d, id %s, %s, sum of f32 view = %.0f\n", block.size(),
              static_cast<void*>(block.data()), unimem::block_descriptor(block), block.id().to_string().c_str(),
              block.pinned() ? "pinned" : "unpinned", std::accumulate(f32.begin(), f32.end(), 0.0));

  // Tape: bump allocation, released all at once.
  unimem::Tape tape = unimem::Tape::start(1 << 20, options);
  std::span<float> a = tape.take<float>(1000);
  unimem::Taken b = tape.take(4096, 4096);
  unimem::Taken too_big = tape.take(2 << 20, 64);
  std::printf("Tape    took %zu floats and a page-aligned 4 KiB: used %zu of %zu; a 2 MiB take says %s\n", a.size(),
              tape.used(), tape.total(), too_big.status == unimem::TakeStatus::invalid_size ? "invalid_size" : "?");
  (void)b;
  tape.clear();
  std::printf("        after clear(): used %zu\n", tape.used());

  // Grid: fixed-size cells, handed out and returned lock-free.
  unimem::Grid<4096, 256> grid(options);
  {
    unimem::Cell first = grid.take();
    unimem::Cell second = grid.take();
    second.as<float>()[0] = 1.0f;
    std::printf("Grid    %zu cells of %zu B: took cells %u and %u\n", grid.cells(), grid.cell_size(), first.index(),
                second.index());
    (void)grid.give(std::move(first));
  }  // second goes back here
  std::printf("        both back; next take gets cell %u\n", grid.take().index());

  // Layout: weights once, scratch per token, history per conversation.
  unimem::Layout layout = unimem::Layout::open(4 << 20, 1 << 20, 2 << 20, options);
  std::span<std::uint16_t> weights = layout.weights().take<std::uint16_t>(1 << 20);  // bf16 bits
  for (int token = 0; token < 8; ++token) {
    std::span<float> activations = layout.scratch().take<float>(64 * 1024);
    std::span<std::uint16_t> kv = layout.history().take<std::uint16_t>(32 * 1024);
    activations[0] = static_cast<float>(token);
    kv[0] = weights[token];
    if (token < 7) layout.clear_pass();
  }
  std::printf("Layout  after 8 tokens (scratch cleared between them):\n%s", layout.stat().c_str());
  layout.clear_talk();
  std::printf("        after clear_talk():\n%s", layout.stat().c_str());
  return 0;
} catch (const unimem::Error& e) {
  std::fprintf(stderr, "unimem demo failed (%s): %s\n", unimem::to_string(e.code()), e.what());
  return 1;
}
