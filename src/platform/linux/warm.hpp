// src/platform/linux/warm.hpp — faulting a mapping's pages in up front.
#pragma once

#include <cstddef>

namespace unimem::platform::linux_detail {

// Backs every page of [base, base + bytes) with memory, using `threads`
// threads (0: chosen from the size and the machine). The mapping must be
// writable and its contents zero (the pages are written with zeros where the
// kernel cannot populate them itself). Throws Error(out_of_memory) when the
// kernel cannot back the pages.
void warm_pages(std::byte* base, std::size_t bytes, unsigned threads);

// The thread count warm_pages uses for `requested` == 0. Never throws.
unsigned default_warm_threads(std::size_t bytes) noexcept;

}  // namespace unimem::platform::linux_detail
