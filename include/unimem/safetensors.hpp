// unimem/safetensors.hpp — safetensors files straight into a Tape.
//
// A .safetensors file is an 8-byte little-endian header length, a JSON header
// naming every tensor (dtype, shape, [begin, end) within the data section),
// and the data. Safetensors::load validates the whole header before taking any
// memory, places every tensor at the alignment asked for, and reads the data
// with read_file (O_DIRECT + io_uring where possible):
//   * when the file already has every tensor at that alignment (relative to a
//     4 KiB-aligned placement of the file), the data section is read in one
//     pass and the tensors stay where they land: no copy at all;
//   * otherwise each tensor is read to its own aligned place.
// A file that does not follow the format gives Error(bad_format) naming what
// is wrong; a failed load leaves nothing half-loaded in the Tape (the space is
// given back when no other take came after it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "unimem/file.hpp"
#include "unimem/tape.hpp"

namespace unimem {

enum class DType : std::uint8_t { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

// "BF16", ... as safetensors spells them. Never throws.
const char* to_string(DType dtype) noexcept;
// Bytes per element. Never throws.
std::size_t dtype_bytes(DType dtype) noexcept;

struct TensorInfo {
  std::string name;
  DType dtype = DType::U8;
  std::vector<std::uint64_t> shape;
  std::uint64_t file_offset = 0;  // of the first byte, from the start of the file
  std::uint64_t bytes = 0;
};

struct SafetensorsHeader {
  std::uint64_t data_offset = 0;    // where the data section starts in the file
  std::vector<TensorInfo> tensors;  // ordered by file_offset
  std::vector<std::pair<std::string, std::string>> metadata;
};

// Parses and validates the header of a safetensors file of `file_size` bytes
// whose first bytes are `prefix` (at least the length field and the header).
// Accepts what the reference implementation (the Rust `safetensors` crate)
// accepts, and no repeated key. Throws Error(bad_format) for: a truncated
// length or header, a header larger than the file or than 100 MB, a header
// that is not UTF-8 JSON (a NUL byte or a byte-order mark included), a key
// that repeats, a missing or ill-typed field, an unknown dtype, a shape whose
// byte size overflows or disagrees with the offsets, offsets out of bounds,
// and tensors that do not tile the data section exactly (an overlap, a hole,
// or bytes after the last tensor).
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> prefix, std::uint64_t file_size);

// Reads and parses the header of the file at `path`, or of an open file.
// Throws what parse_safetensors_header, FileReader and FileReader::read throw.
SafetensorsHeader read_safetensors_header(const std::string& path);
SafetensorsHeader read_safetensors_header(FileReader& file);

// One file of a model and the tensors the model takes from it.
struct ModelFile {
  std::string path;
  std::vector<std::string> tensors;  // sorted; empty: every tensor of the file
};

// The files of the model at `path`: the file itself for a .safetensors file;
// for a sharded model's index (a path ending in ".json", e.g.
// model.safetensors.index.json) the files its "weight_map" names, in the
// index's folder, sorted by path, each with the tensors it must provide.
// Throws Error(not_found) when the index cannot be opened, and what
// parse_safetensors_index throws.
std::vector<ModelFile> safetensors_model_files(const std::string& path);

// The files named by the index text `json`, found in `folder`; `index_path`
// names the index in messages. Throws Error(bad_format) for: text that is not
// JSON, no "weight_map" object, a file that is not a string or not a plain
// name inside the folder (empty, ".", "..", a '/' or a NUL byte: an index
// never reaches outside its model's folder), and a weight_map naming no tensor.
std::vector<ModelFile> parse_safetensors_index(std::string_view json, const std::string& folder,
                                               const std::string& index_path);

// A tensor to write with save_safetensors.
struct TensorData {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::uint64_t> shape;
  std::span<const std::byte> data;  // exactly the shape's bytes
};

// Writes a safetensors file (tensors in the given order, header padded to 8
// bytes). Throws Error(invalid_argument) when a tensor's data does not match
// its shape or names repeat, Error(system) when the file cannot be written.
void save_safetensors(const std::string& path, std::span<const TensorData> tensors,
                      std::span<const std::pair<std::string, std::string>> metadata = {});

// A tensor loaded into memory.
struct Tensor {
  const TensorInfo* info = nullptr;
  std::byte* data = nullptr;

  template <class T>
  std::span<T> as() const noexcept {
    return {reinterpret_cast<T*>(data), static_cast<std::size_t>(info->bytes / sizeof(T))};
  }
};

class Safetensors {
 public:
  // Not copyable: each Tensor's `info` points into this object's header, so a
  // copy would point into the original. Moves keep those pointers valid (a
  // moved std::vector hands over its buffer); the moved-from object holds no tensors.
  Safetensors() noexcept = default;
  Safetensors(const Safetensors&) = delete;
  Safetensors& operator=(const Safetensors&) = delete;
  Safetensors(Safetensors&&) noexcept = default;
  Safetensors& operator=(Safetensors&&) noexcept = default;

  // Loads every tensor of the file at `path` into `weights`, each at `align`
  // (a power of two). Throws what read_safetensors_header and read_file throw,
  // Error(invalid_argument) for a bad alignment, and Error(out_of_memory) when
  // the Tape has no room (then nothing is taken).
  static Safetensors load(const std::string& path, Tape& weights, std::size_t align = 64,
                          const ReadOptions& options = {});
  // The most bytes of a Tape that load() of a file with this header takes,
  // alignment padding included: a Tape with this many free bytes holds it.
  // Throws Error(invalid_argument) for an alignment that is not a power of two.
  static std::size_t bytes_needed(const SafetensorsHeader& header, std::size_t align = 64);

  // The tensor called `name`, or nullptr. Never throws.
  const Tensor* find(std::string_view name) const noexcept;
  // The tensor called `name`. Throws Error(not_found).
  const Tensor& at(std::string_view name) const;
  std::span<const Tensor> tensors() const noexcept { return tensors_; }
  const SafetensorsHeader& header() const noexcept { return header_; }
  const ReadReport& report() const noexcept { return report_; }
  // True when the data was read in one pass and left in place (no per-tensor reads).
  bool in_place() const noexcept { return in_place_; }

 private:
  SafetensorsHeader header_;
  std::vector<Tensor> tensors_;  // in file order, as header_.tensors
  ReadReport report_;
  bool in_place_ = false;
};

}  // namespace unimem
