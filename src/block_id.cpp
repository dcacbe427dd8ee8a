// src/block_id.cpp — BlockId's text form, for argv, environment and files.
#include <charconv>
#include <string>

#include "unimem/block.hpp"

namespace unimem {

std::string BlockId::to_string() const {
  return "unimem:" + std::to_string(process) + ":" + std::to_string(handle) + ":" + std::to_string(object);
}

BlockId BlockId::parse(std::string_view text) {
  BlockId id;
  const std::string_view prefix = "unimem:";
  bool ok = text.substr(0, prefix.size()) == prefix;
  const char* p = text.data() + prefix.size();
  const char* end = text.data() + text.size();
  auto field = [&](auto& value, bool last) {
    if (!ok || p >= end) return void(ok = false);
    auto [next, ec] = std::from_chars(p, end, value);
    ok = ec == std::errc() && (last ? next == end : next < end && *next == ':');
    p = next + 1;
  };
  field(id.process, false);
  field(id.handle, false);
  field(id.object, true);
  if (!ok || id.process <= 0 || id.handle < 0 || id.object == 0) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: '" + std::string(text) + "' is not a Block id (expected unimem:<process>:<handle>:<object>)");
  }
  return id;
}

}  // namespace unimem
