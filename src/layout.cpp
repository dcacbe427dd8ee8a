// src/layout.cpp — Layout: three independently backed Tapes and their report.
#include "unimem/layout.hpp"

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

std::string Layout::stat() const {
  return detail::format_usage_line("weights", weights_.used(), weights_.total()) +
         detail::format_usage_line("scratch", scratch_.used(), scratch_.total()) +
         detail::format_usage_line("history", history_.used(), history_.total());
}

}  // namespace unimem
