// src/safetensors.cpp — safetensors header parsing, writing, and loading into a Tape.
//
// Parsing trusts nothing: every field is type-checked, sizes are computed with
// overflow checks, and offsets are checked against the file before any memory
// is taken (the parser is fuzzed: fuzz/safetensors_header_fuzzer.cpp). It
// accepts what the reference implementation (the Rust `safetensors` crate,
// read_metadata + Metadata::validate) accepts, and the format's rule that no
// key repeats: a file one implementation loads and the other refuses, or reads
// differently, is how polyglot files sneak in. So:
//   * the header is UTF-8 JSON (serde_json's grammar: whitespace around the
//     object is fine). nlohmann-json ends its input at a NUL byte and skips a
//     byte-order mark, which serde_json refuses, so both are refused first;
//   * no object repeats a key (nlohmann keeps the last one: a tensor would
//     silently vanish);
//   * sorted by offsets, the tensors tile the data section exactly: the first
//     starts at 0, each starts where the one before ends (no hole, no
//     overlap), and the last ends at the end of the file.
#include "unimem/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

namespace unimem {
namespace {

constexpr std::uint64_t kMaxHeader = 100'000'000;  // the format's own limit

struct DTypeName {
  DType dtype;
  const char* name;
  std::size_t bytes;
};
constexpr DTypeName kDTypes[] = {
    {DType::BOOL, "BOOL", 1},       {DType::U8, "U8", 1},   {DType::I8, "I8", 1},   {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::I16, "I16", 2}, {DType::U16, "U16", 2}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},       {DType::I32, "I32", 4}, {DType::U32, "U32", 4}, {DType::F32, "F32", 4},
    {DType::I64, "I64", 8},         {DType::U64, "U64", 8}, {DType::F64, "F64", 8},
};

[[noreturn]] void bad(const std::string& why) {
  throw Error(Errc::bad_format, 0, "unimem: not a valid safetensors file: " + why);
}

std::uint64_t read_le64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

TensorInfo parse_tensor(const std::string& name, const nlohmann::json& t, std::uint64_t data_offset,
                        std::uint64_t data_size) {
  if (!t.is_object()) bad("entry '" + name + "' is not an object");
  TensorInfo info;
  info.name = name;
  const auto dtype = t.find("dtype");
  if (dtype == t.end() || !dtype->is_string()) bad("tensor '" + name + "' has no dtype string");
  const std::string& dt = dtype->get_ref<const std::string&>();
  const auto known =
      std::find_if(std::begin(kDTypes), std::end(kDTypes), [&](const DTypeName& d) { return dt == d.name; });
  if (known == std::end(kDTypes)) bad("tensor '" + name + "' has an unknown dtype '" + dt + "'");
  info.dtype = known->dtype;
  const auto shape = t.find("shape");
  if (shape == t.end() || !shape->is_array()) bad("tensor '" + name + "' has no shape array");
  std::uint64_t bytes = known->bytes;
  for (const auto& d : *shape) {
    if (!d.is_number_unsigned()) bad("tensor '" + name + "' has a shape entry that is not a non-negative integer");
    const auto n = d.get<std::uint64_t>();
    info.shape.push_back(n);
    if (__builtin_mul_overflow(bytes, n, &bytes)) bad("tensor '" + name + "' has a shape whose byte size overflows");
  }
  const auto offsets = t.find("data_offsets");
  if (offsets == t.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    bad("tensor '" + name + "' has no data_offsets [begin, end] of non-negative integers");
  }
  const auto begin = (*offsets)[0].get<std::uint64_t>();
  const auto end = (*offsets)[1].get<std::uint64_t>();
  if (begin > end || end > data_size) {
    bad("tensor '" + name + "' has offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
        ") outside the data section of " + std::to_string(data_size) + " bytes");
  }
  if (end - begin != bytes) {
    bad("tensor '" + name + "' spans " + std::to_string(end - begin) + " bytes but its dtype and shape need " +
        std::to_string(bytes));
  }
  info.file_offset = data_offset + begin;
  info.bytes = bytes;
  return info;
}

// A SAX handler that only looks for a key repeated within one object.
struct RepeatedKeys : nlohmann::json_sax<nlohmann::json> {
  std::vector<std::set<std::string, std::less<>>> open;  // keys of each open object, innermost last
  std::string duplicate;                                 // the first repeated key
  bool duplicate_at_top = false;

  bool start_object(std::size_t) override {
    open.emplace_back();
    return true;
  }
  bool end_object() override {
    open.pop_back();
    return true;
  }
  bool key(string_t& k) override {
    if (!open.back().insert(k).second) {
      duplicate = k;
      duplicate_at_top = open.size() == 1;
      return false;  // stop: one is enough
    }
    return true;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  // Malformed JSON: the DOM parse that follows reports it.
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
};

}  // namespace

const char* to_string(DType dtype) noexcept {
  for (const DTypeName& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

std::size_t dtype_bytes(DType dtype) noexcept {
  for (const DTypeName& d : kDTypes) {
    if (d.dtype == dtype) return d.bytes;
  }
  return 0;
}

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> prefix, std::uint64_t file_size) {
  if (prefix.size() < 8 || file_size < 8) bad("the file is shorter than its 8-byte header length");
  const std::uint64_t n = read_le64(prefix.data());
  if (n > file_size - 8) bad("the header length " + std::to_string(n) + " is larger than the file");
  if (n > kMaxHeader) bad("the header length " + std::to_string(n) + " exceeds the format's 100 MB limit");
  if (prefix.size() - 8 < n) bad("the header is truncated");
  SafetensorsHeader h;
  h.data_offset = 8 + n;
  const std::uint64_t data_size = file_size - h.data_offset;
  const auto* text = reinterpret_cast<const char*>(prefix.data() + 8);
  const std::string_view header(text, static_cast<std::size_t>(n));
  if (const std::size_t nul = header.find('\0'); nul != std::string_view::npos) {
    bad("the header has a NUL byte at offset " + std::to_string(nul) + " (JSON allows none)");
  }
  if (header.starts_with("\xEF\xBB\xBF")) bad("the header starts with a byte-order mark (JSON allows none)");
  // Repeated keys first, in a SAX pass of their own: nlohmann keeps the last
  // of a repeated key silently, and its callback parser, which could catch
  // them during the DOM parse, rescans the whole enclosing object at the end
  // of every nested one (quadratic: 100,000 tensors took minutes).
  RepeatedKeys repeated;
  (void)nlohmann::json::sax_parse(text, text + n, &repeated);
  if (!repeated.duplicate.empty()) {
    bad("the header has the key '" + repeated.duplicate + "' twice" +
        (repeated.duplicate_at_top && repeated.duplicate != "__metadata__" ? " (two tensors of one name)" : ""));
  }
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text, text + n);
  } catch (const nlohmann::json::exception& e) {
    bad(std::string("the header is not valid JSON (") + e.what() + ")");
  }
  if (!json.is_object()) bad("the header is not a JSON object");
  for (const auto& [key, value] : json.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;  // as the reference reads it: no metadata
      if (!value.is_object()) bad("__metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) bad("__metadata__ value '" + mk + "' is not a string");
        h.metadata.emplace_back(mk, mv.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(parse_tensor(key, value, h.data_offset, data_size));
  }
  // By [begin, end), as the reference sorts them; then they must tile the data
  // section. Every byte of it belongs to exactly one tensor.
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.file_offset != b.file_offset ? a.file_offset < b.file_offset : a.bytes < b.bytes;
  });
  std::uint64_t end = h.data_offset;  // where the tensors so far end, in the file
  for (std::size_t i = 0; i < h.tensors.size(); ++i) {
    const TensorInfo& t = h.tensors[i];
    if (t.file_offset < end) bad("tensors '" + h.tensors[i - 1].name + "' and '" + t.name + "' overlap");
    if (t.file_offset > end) {
      bad("the data section has a hole: bytes [" + std::to_string(end - h.data_offset) + ", " +
          std::to_string(t.file_offset - h.data_offset) + ") before tensor '" + t.name + "' belong to no tensor");
    }
    end = t.file_offset + t.bytes;
  }
  if (end != file_size) {
    bad("the data section has " + std::to_string(file_size - end) + " bytes after " +
        (h.tensors.empty() ? std::string("the header, and no tensor")
                           : "the last tensor '" + h.tensors.back().name + "'") +
        " (the tensors must cover it exactly)");
  }
  return h;
}

SafetensorsHeader read_safetensors_header(FileReader& file) {
  const std::uint64_t size = file.size();
  std::byte length[8] = {};
  if (size >= 8) file.read(0, length);
  const std::uint64_t n = size >= 8 ? std::min<std::uint64_t>(read_le64(length), size - 8) : 0;
  if (n > kMaxHeader) bad("the header length exceeds the format's 100 MB limit");
  std::vector<std::byte> prefix(8 + n);
  if (size >= 8) file.read(0, prefix);
  return parse_safetensors_header(prefix, size);
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  FileReader file(path);
  return read_safetensors_header(file);
}

void save_safetensors(const std::string& path, std::span<const TensorData> tensors,
                      std::span<const std::pair<std::string, std::string>> metadata) {
  nlohmann::json header = nlohmann::json::object();
  std::set<std::string> names;
  std::uint64_t offset = 0;
  for (const TensorData& t : tensors) {
    std::uint64_t bytes = dtype_bytes(t.dtype);
    for (std::uint64_t d : t.shape) bytes *= d;
    if (bytes != t.data.size()) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: save_safetensors: tensor '" + t.name + "' has " + std::to_string(t.data.size()) +
                      " bytes, its shape needs " + std::to_string(bytes));
    }
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      throw Error(Errc::invalid_argument, 0,
                  "unimem: save_safetensors: tensor name '" + t.name + "' is reserved or repeated");
    }
    header[t.name] = {{"dtype", to_string(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::string text;
  try {
    text = header.dump();  // strict: throws on a name or value that is not UTF-8
  } catch (const nlohmann::json::exception&) {
    throw Error(Errc::invalid_argument, 0,
                "unimem: save_safetensors: a tensor name or metadata entry is not valid UTF-8");
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');  // pad: the data section starts 8-aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  std::uint64_t n = text.size();
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.write(length, 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const TensorData& t : tensors)
    out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
  if (!out.good()) throw Error(Errc::system, errno, "unimem: save_safetensors: cannot write " + path);
}

namespace {

constexpr std::uint64_t kPage = 4096;

void check_align(std::size_t align, const char* what) {
  if (align == 0 || (align & (align - 1)) != 0) {
    throw Error(Errc::invalid_argument, 0,
                std::string("unimem: Safetensors::") + what + ": alignment " + std::to_string(align) +
                    " is not a power of two");
  }
}

// Where load() puts a file's tensors: in place (the data read in one pass,
// placed at a 4 KiB boundary, when the file already aligns every tensor:
// O_DIRECT needs that placement anyway), or each tensor at `align`.
struct Placement {
  bool in_place;
  std::uint64_t file_end;    // one past the last tensor byte
  std::size_t region_bytes;  // what load() takes from the Tape
  std::size_t region_align;
};

Placement placement_of(const SafetensorsHeader& h, std::size_t align) {
  Placement p{};
  p.file_end = h.tensors.empty() ? h.data_offset : h.tensors.back().file_offset + h.tensors.back().bytes;
  p.in_place = align <= kPage && std::all_of(h.tensors.begin(), h.tensors.end(), [&](const TensorInfo& t) {
                 return t.bytes == 0 || t.file_offset % align == 0;
               });
  if (p.in_place) {
    const std::uint64_t first = h.data_offset / kPage * kPage;
    p.region_bytes = static_cast<std::size_t>(std::max<std::uint64_t>(p.file_end - first, 1));
    p.region_align = kPage;
  } else {
    p.region_bytes = 1;
    for (const TensorInfo& t : h.tensors) p.region_bytes += (t.bytes + align - 1) / align * align;
    p.region_align = align;
  }
  return p;
}

}  // namespace

std::size_t Safetensors::bytes_needed(const SafetensorsHeader& header, std::size_t align) {
  check_align(align, "bytes_needed");
  const Placement p = placement_of(header, align);
  return p.region_bytes + p.region_align - 1 + Tape::kRedZone;
}

Safetensors Safetensors::load(const std::string& path, Tape& weights, std::size_t align, const ReadOptions& options) {
  check_align(align, "load");
  Safetensors model;
  // Opened once: the header, then the tensors. Progress is the tensors'
  // bytes alone, so that a bar's total is right from its first report.
  ReadOptions header_options = options;
  header_options.progress = nullptr;
  FileReader file(path, header_options);
  model.header_ = read_safetensors_header(file);
  const SafetensorsHeader& h = model.header_;
  const Placement placed = placement_of(h, align);
  const std::uint64_t file_end = placed.file_end;
  model.in_place_ = placed.in_place;
  std::vector<ReadSegment> segments;
  std::vector<std::byte*> places(h.tensors.size());
  const std::size_t region_bytes = placed.region_bytes;
  Taken region;
  if (model.in_place_) {
    const std::uint64_t first = h.data_offset / kPage * kPage;
    region = weights.take(region_bytes, kPage);
    if (region) {
      if (file_end > h.data_offset)
        segments.push_back({h.data_offset, region.ptr + (h.data_offset - first), file_end - h.data_offset});
      for (std::size_t i = 0; i < h.tensors.size(); ++i) places[i] = region.ptr + (h.tensors[i].file_offset - first);
    }
  } else {
    region = weights.take(region_bytes, align);
    if (region) {
      std::byte* at = region.ptr;
      for (std::size_t i = 0; i < h.tensors.size(); ++i) {
        places[i] = at;
        if (h.tensors[i].bytes) segments.push_back({h.tensors[i].file_offset, at, h.tensors[i].bytes});
        at += (h.tensors[i].bytes + align - 1) / align * align;
      }
    }
  }
  if (!region) {
    throw Error(Errc::out_of_memory, 0,
                "unimem: Safetensors::load: " + path + " needs " + std::to_string(region_bytes) +
                    " bytes; the Tape has " + std::to_string(weights.free()) + " free");
  }
  try {
    model.report_ = file.read(segments, options.progress);
  } catch (...) {
    // Nothing half-loaded stays taken; untake refuses (false) when another
    // take came after ours, and then the space stays taken until a clear.
    (void)weights.untake(region, region_bytes);
    throw;
  }
  // Tensors in file order, as header_.tensors; `info` points into header_
  // (which is why Safetensors is move-only).
  model.tensors_.reserve(h.tensors.size());
  for (std::size_t i = 0; i < h.tensors.size(); ++i) model.tensors_.push_back({&h.tensors[i], places[i]});
  return model;
}

const Tensor* Safetensors::find(std::string_view name) const noexcept {
  for (const Tensor& t : tensors_) {
    if (t.info->name == name) return &t;
  }
  return nullptr;
}

const Tensor& Safetensors::at(std::string_view name) const {
  if (const Tensor* t = find(name)) return *t;
  throw Error(Errc::not_found, 0, "unimem: no tensor '" + std::string(name) + "' in this file");
}

}  // namespace unimem
