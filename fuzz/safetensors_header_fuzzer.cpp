// fuzz/safetensors_header_fuzzer.cpp — libFuzzer target for the safetensors
// header parser. The input is a whole file image: its first 8 bytes are the
// header length. The parser must either return a header whose every tensor
// lies inside the image, or throw unimem::Error; anything else (a crash, a
// sanitizer report, another exception) is a bug.
//
//   build: cmake -DCMAKE_CXX_COMPILER=clang++ -DUNIMEM_SANITIZE=address ...  (target unimem_safetensors_fuzzer)
//   run:   unimem_safetensors_fuzzer NEW_DIR fuzz/corpus/safetensors
#include <cstdlib>

#include "unimem/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  try {
    const unimem::SafetensorsHeader h = unimem::parse_safetensors_header({bytes, size}, size);
    for (const unimem::TensorInfo& t : h.tensors) {
      if (t.file_offset < h.data_offset || t.file_offset > size || t.bytes > size - t.file_offset) std::abort();
    }
  } catch (const unimem::Error&) {
  }
  return 0;
}
