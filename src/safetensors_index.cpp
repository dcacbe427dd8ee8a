// src/safetensors_index.cpp — which files make a sharded safetensors model.
//
// A sharded model is an index (model.safetensors.index.json) whose
// "weight_map" names the file of every tensor. It is resolved here once, for
// every loader (host, GPU, the Python package, the tool), so that they agree
// on what a model is and refuse the same things: an index is untrusted input
// (downloaded with the weights), so a file name that would reach outside the
// index's folder is refused, not followed.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include "unimem/safetensors.hpp"

namespace unimem {
namespace {

[[noreturn]] void bad_index(const std::string& path, const std::string& why) {
  throw Error(Errc::bad_format, 0, "unimem: the safetensors index " + path + ": " + why);
}

bool plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

std::vector<ModelFile> parse_safetensors_index(std::string_view json, const std::string& folder,
                                               const std::string& index_path) {
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::exception& e) {
    bad_index(index_path, std::string("not JSON (") + e.what() + ")");
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    bad_index(index_path, "no \"weight_map\" object");
  }
  const std::filesystem::path base(folder);
  std::map<std::string, std::vector<std::string>> by_file;  // sorted: a stable file order
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    if (!file.is_string()) bad_index(index_path, "the file of \"" + tensor + "\" is not a string");
    const std::string name = file.get<std::string>();
    if (!plain_file_name(name)) {
      std::string why = "\"";
      why.append(name).append("\" (the file of \"").append(tensor);
      why.append("\") is not a file name in the index's folder; an index names files beside it");
      bad_index(index_path, why);
    }
    by_file[(base / name).string()].push_back(tensor);
  }
  if (by_file.empty()) bad_index(index_path, "the weight_map names no tensor");
  std::vector<ModelFile> out;
  out.reserve(by_file.size());
  for (auto& [path, tensors] : by_file) {
    std::sort(tensors.begin(), tensors.end());
    out.push_back(ModelFile{path, std::move(tensors)});
  }
  return out;
}

std::vector<ModelFile> safetensors_model_files(const std::string& path) {
  const bool is_index = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  if (!is_index) return {ModelFile{path, {}}};
  std::ifstream in(path, std::ios::binary);
  std::error_code ignored;
  if (!in || std::filesystem::is_directory(path, ignored)) {
    throw Error(Errc::not_found, 0, "unimem: cannot open the safetensors index " + path);
  }
  std::ostringstream text;
  text << in.rdbuf();
  return parse_safetensors_index(text.str(), std::filesystem::path(path).parent_path().string(), path);
}

}  // namespace unimem
