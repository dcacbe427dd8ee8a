// src/layout.cpp — Layout: three independently backed Tapes and their report.
#include "unimem/layout.hpp"

#include <cstdio>
#include <utility>

#include "format.hpp"

namespace unimem {

Layout Layout::open(std::size_t weights_bytes, std::size_t scratch_bytes, std::size_t history_bytes,
                    const BlockOptions& options) {
  // Each Tape owns its Block, so a throw from a later one releases the earlier ones.
  Tape weights = Tape::start(weights_bytes, options);
  Tape scratch = Tape::start(scratch_bytes, options);
  Tape history = Tape::start(history_bytes, options);
  return Layout(std::move(weights), std::move(scratch), std::move(history));
}

Layout::Layout(Tape weights, Tape scratch, Tape history) noexcept
    : weights_(std::move(weights)), scratch_(std::move(scratch)), history_(std::move(history)) {}

std::string Layout::stat() const {
  std::string out;
  const std::pair<const char*, const Tape*> tapes[] = {
      {"weights", &weights_}, {"scratch", &scratch_}, {"history", &history_}};
  for (const auto& [name, tape] : tapes) {
    const std::size_t used = tape->used();
    const std::size_t total = tape->total();
    char line[128];
    std::snprintf(line, sizeof line, "%-8s %10s / %10s  (%5.1f%%)\n", name, detail::format_bytes(used).c_str(),
                  detail::format_bytes(total).c_str(), total ? 100.0 * double(used) / double(total) : 0.0);
    out += line;
  }
  return out;
}

}  // namespace unimem
