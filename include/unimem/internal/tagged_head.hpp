// unimem/internal/tagged_head.hpp — the head word of a tagged free list. Internal.
//
// Grid's core keeps one in process memory and SharedGrid's header one in its
// Block; src/tagged_stack.hpp swaps it. In the installed headers only because
// GridCore's layout holds one: not part of the API, may change.
#pragma once

#include <cstdint>

namespace unimem::detail {

// The head of a tagged free list (src/tagged_stack.hpp): the first free
// index and a tag bumped by every change, swapped together in 16 bytes.
struct alignas(16) TaggedHead {
  std::uint64_t index;
  std::uint64_t tag;
};

}  // namespace unimem::detail
