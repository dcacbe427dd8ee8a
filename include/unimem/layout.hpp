// unimem/layout.hpp — Layout: three Tapes matching an inference lifecycle.
//
//   weights  loaded once, lives as long as the model
//   scratch  activations; cleared after every forward pass (clear_pass)
//   history  KV cache and conversation state; cleared per conversation (clear_talk)
//
// Each Tape has its own Block, so each can be registered with devices, shared
// or sized independently. Thread safety is that of Tape: take() and the clears
// may run from any thread; a clear must not overlap uses of the memory it
// releases.
#pragma once

#include <cstddef>
#include <string>

#include "unimem/tape.hpp"

namespace unimem {

class Layout {
 public:
  // Opens three Blocks of the given sizes (each rounded up to the page size)
  // with the same options. Throws Block::open's errors; on error nothing
  // stays allocated.
  static Layout open(std::size_t weights_bytes, std::size_t scratch_bytes, std::size_t history_bytes,
                     const BlockOptions& options = {});

  Tape& weights() noexcept { return weights_; }
  Tape& scratch() noexcept { return scratch_; }
  Tape& history() noexcept { return history_; }
  const Tape& weights() const noexcept { return weights_; }
  const Tape& scratch() const noexcept { return scratch_; }
  const Tape& history() const noexcept { return history_; }

  // End of a forward pass: clears scratch. Never throws.
  void clear_pass() noexcept { scratch_.clear(); }
  // End of a conversation: clears scratch and history. Never throws.
  void clear_talk() noexcept {
    scratch_.clear();
    history_.clear();
  }

  // One line per tape, "name  used / total (percent)" in binary units, e.g.
  //   weights   12.0 MiB /  16.0 MiB  (75.0%)
  std::string stat() const;

 private:
  Layout(Tape weights, Tape scratch, Tape history) noexcept;

  Tape weights_;
  Tape scratch_;
  Tape history_;
};

}  // namespace unimem
