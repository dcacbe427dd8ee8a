// src/shared_layout.cpp — weights shared between processes, scratch and history per process.
#include "format.hpp"
#include "unimem/share.hpp"

namespace unimem {

SharedLayout SharedLayout::create(std::size_t weights_bytes, std::size_t scratch_bytes, std::size_t history_bytes,
                                  const BlockOptions& options) {
  // The weights page holding the shared header comes on top of what was asked for.
  SharedTape weights = SharedTape::create(Block::open(weights_bytes + Block::page_size(), options));
  Tape scratch = Tape::start(scratch_bytes, options);
  Tape history = Tape::start(history_bytes, options);
  return SharedLayout(std::move(weights), std::move(scratch), std::move(history));
}

SharedLayout SharedLayout::attach(const BlockId& weights_id, std::size_t scratch_bytes, std::size_t history_bytes,
                                  const BlockOptions& options) {
  BlockOptions read_only = options;
  read_only.read_only = true;
  read_only.backing = Backing::lazy;  // the pages exist already
  SharedTape weights = SharedTape::attach(Block::attach(weights_id, read_only));
  Tape scratch = Tape::start(scratch_bytes, options);
  Tape history = Tape::start(history_bytes, options);
  return SharedLayout(std::move(weights), std::move(scratch), std::move(history));
}

std::string SharedLayout::stat() const {
  return detail::format_usage_line("weights", weights_.used(), weights_.total(),
                                   weights_.block().read_only() ? "  (shared, read-only)" : "  (shared)") +
         detail::format_usage_line("scratch", scratch_.used(), scratch_.total()) +
         detail::format_usage_line("history", history_.used(), history_.total());
}

}  // namespace unimem
