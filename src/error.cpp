// src/error.cpp — names for error codes.
#include "unimem/error.hpp"

namespace unimem {

const char* to_string(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_argument:
      return "invalid_argument";
    case Errc::out_of_memory:
      return "out_of_memory";
    case Errc::memlock_limit:
      return "memlock_limit";
    case Errc::system:
      return "system";
    case Errc::unsupported:
      return "unsupported";
    case Errc::no_cuda_driver:
      return "no_cuda_driver";
    case Errc::no_cuda_device:
      return "no_cuda_device";
    case Errc::cuda:
      return "cuda";
    case Errc::not_found:
      return "not_found";
    case Errc::permission_denied:
      return "permission_denied";
    case Errc::not_a_block:
      return "not_a_block";
    case Errc::disconnected:
      return "disconnected";
    case Errc::bad_format:
      return "bad_format";
  }
  return "unknown";
}

}  // namespace unimem
