// fuzz/safetensors_index_fuzzer.cpp — libFuzzer target for the sharded-model
// index resolver (parse_safetensors_index). The input is the index's text.
// The resolver must either return files that all lie directly in the model's
// folder, each naming at least one tensor, or throw unimem::Error; anything
// else (a crash, a sanitizer report, another exception, a path that leaves
// the folder) is a bug.
//
//   build: cmake -DCMAKE_CXX_COMPILER=clang++ -DUNIMEM_SANITIZE=address ...  (target unimem_safetensors_index_fuzzer)
//   run:   unimem_safetensors_index_fuzzer NEW_DIR fuzz/corpus/safetensors_index
#include <cstdlib>
#include <string>
#include <string_view>

#include "unimem/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string folder = "/models/m";
  try {
    const std::vector<unimem::ModelFile> files = unimem::parse_safetensors_index(text, folder, "index.json");
    if (files.empty()) std::abort();
    for (const unimem::ModelFile& f : files) {
      if (f.tensors.empty() || f.path.size() <= folder.size() + 1) std::abort();
      if (f.path.compare(0, folder.size() + 1, folder + "/") != 0) std::abort();
      const std::string name = f.path.substr(folder.size() + 1);
      if (name.find('/') != std::string::npos || name == "." || name == "..") std::abort();
    }
  } catch (const unimem::Error&) {
  }
  return 0;
}
