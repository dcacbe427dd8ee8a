// src/poison.hpp — AddressSanitizer poisoning for memory handed out by Tape.
//
// A bump allocator hides use-after-clear from AddressSanitizer: the Block is
// one valid mapping, so reads of memory from before a clear() look fine. In
// ASan builds the Tape poisons what it has not handed out and unpoisons
// exactly what take() returns. ASan's shadow bytes are updated with plain
// (non-atomic) read-modify-writes, and two takes can share an 8-byte shadow
// granule, so the updates are serialised by a lock; this exists only in
// ASan builds. In other builds every function here is an empty inline.
#pragma once

#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define UNIMEM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNIMEM_ASAN 1
#endif
#endif

#if defined(UNIMEM_ASAN)
#include <sanitizer/asan_interface.h>

#include <mutex>
#endif

namespace unimem::detail {

#if defined(UNIMEM_ASAN)
inline std::mutex& poison_lock() {
  static std::mutex lock;
  return lock;
}
inline void poison(const void* p, std::size_t n) {
  std::lock_guard<std::mutex> hold(poison_lock());
  ASAN_POISON_MEMORY_REGION(p, n);
}
inline void unpoison(const void* p, std::size_t n) {
  std::lock_guard<std::mutex> hold(poison_lock());
  ASAN_UNPOISON_MEMORY_REGION(p, n);
}
#else
inline void poison(const void*, std::size_t) {}
inline void unpoison(const void*, std::size_t) {}
#endif

}  // namespace unimem::detail
