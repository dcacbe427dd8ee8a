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
#include <utility>

#include "unimem/tape.hpp"

namespace unimem {

namespace detail {
// What Layout and SharedLayout share: the three Tapes and the two clears.
// `Weights` is Tape, or SharedTape for weights other processes map.
template <class Weights>
class LayoutTapes {
 public:
  Weights& weights() noexcept { return weights_; }
  Tape& scratch() noexcept { return scratch_; }
  Tape& history() noexcept { return history_; }
  const Weights& weights() const noexcept { return weights_; }
  const Tape& scratch() const noexcept { return scratch_; }
  const Tape& history() const noexcept { return history_; }

  // End of a forward pass: clears scratch. Never throws.
  void clear_pass() noexcept { scratch_.clear(); }
  // End of a conversation: clears scratch and history. Never throws.
  void clear_talk() noexcept {
    scratch_.clear();
    history_.clear();
  }

 protected:
  LayoutTapes(Weights weights, Tape scratch, Tape history) noexcept
      : weights_(std::move(weights)), scratch_(std::move(scratch)), history_(std::move(history)) {}

  Weights weights_;
  Tape scratch_;
  Tape history_;
};
}  // namespace detail

class Layout : public detail::LayoutTapes<Tape> {
 public:
  // Opens three Blocks of the given sizes (each rounded up to the page size)
  // with the same options. Throws Block::open's errors; on error nothing
  // stays allocated.
  static Layout open(std::size_t weights_bytes, std::size_t scratch_bytes, std::size_t history_bytes,
                     const BlockOptions& options = {});

  // One line per tape, "name  used / total (percent)" in binary units, e.g.
  //   weights   12.0 MiB /  16.0 MiB  (75.0%)
  std::string stat() const;

 private:
  using LayoutTapes::LayoutTapes;
};

}  // namespace unimem
