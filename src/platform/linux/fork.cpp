// src/platform/linux/fork.cpp — at_fork with pthread_atfork
// (platform/fork.hpp).
#include "platform/fork.hpp"

#include <pthread.h>

namespace unimem::platform {

bool at_fork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept {
  return ::pthread_atfork(prepare, parent, child) == 0;
}

}  // namespace unimem::platform
