// src/platform/fork.hpp — handlers run around fork().
//
// Process-local allocators and GPU objects must know that they are a fork()
// child's copies (src/fork_watch.cpp). Linux answers in
// platform/linux/fork.cpp (pthread_atfork); a platform without fork()
// registers nothing and returns true.
#pragma once

namespace unimem::platform {

// Registers `prepare` (in the parent, before fork), `parent` (in the parent,
// after it) and `child` (in the child, after it). Returns false when the
// platform refuses (Linux: ENOMEM). Never throws.
bool at_fork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept;

}  // namespace unimem::platform
