#include "unimem/safetensors.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <type_traits>
#include <vector>

namespace unimem {
namespace {

namespace fs = std::filesystem;
constexpr std::size_t MiB = std::size_t{1} << 20;

fs::path temp_path(const char* what) {
  static std::atomic<int> counter{0};
  return fs::temp_directory_path() /
         ("unimem_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + what);
}

struct Owned {
  std::string name;
  DType dtype;
  std::vector<std::uint64_t> shape;
  std::vector<std::byte> bytes;
};

std::vector<Owned> sample_tensors() {
  std::mt19937 rng(7);
  auto make = [&](std::string name, DType dt, std::vector<std::uint64_t> shape) {
    std::uint64_t n = dtype_bytes(dt);
    for (auto d : shape) n *= d;
    Owned o{std::move(name), dt, std::move(shape), std::vector<std::byte>(n)};
    for (auto& b : o.bytes) b = static_cast<std::byte>(rng());
    return o;
  };
  return {make("embed.weight", DType::BF16, {1000, 64}),
          make("norm.weight", DType::F32, {64}),
          make("odd", DType::U8, {3, 7}),
          make("empty", DType::F16, {0, 5}),
          make("ids", DType::I64, {17}),
          make("big", DType::F32, {300, 1000})};
}

fs::path write(const std::vector<Owned>& tensors, std::vector<std::pair<std::string, std::string>> meta = {}) {
  std::vector<TensorData> views;
  for (const Owned& o : tensors) views.push_back({o.name, o.dtype, o.shape, o.bytes});
  fs::path p = temp_path(".safetensors");
  save_safetensors(p, views, meta);
  return p;
}

fs::path write_raw(const std::string& header, std::size_t data_bytes, std::uint64_t claimed_length = ~0ull) {
  fs::path p = temp_path(".raw");
  std::ofstream out(p, std::ios::binary);
  const std::uint64_t n = claimed_length == ~0ull ? header.size() : claimed_length;
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << std::string(data_bytes, '\x5a');
  return p;
}

template <class F>
std::pair<Errc, std::string> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  return {Errc{}, ""};
}

TEST(Safetensors, RoundTripsEveryTensorAtTheAskedAlignment) {
  const auto tensors = sample_tensors();
  const fs::path p = write(tensors, {{"format", "pt"}});
  for (std::size_t align : {std::size_t{64}, std::size_t{4096}, std::size_t{2} << 20}) {
    Tape tape = Tape::start(16 * MiB);
    Safetensors model = Safetensors::load(p, tape, align);
    ASSERT_EQ(model.tensors().size(), tensors.size());
    for (const Owned& o : tensors) {
      const Tensor& t = model.at(o.name);
      EXPECT_EQ(t.info->dtype, o.dtype) << o.name;
      EXPECT_EQ(t.info->shape, o.shape) << o.name;
      EXPECT_EQ(t.info->bytes, o.bytes.size()) << o.name;
      if (!o.bytes.empty()) {
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data) % align, 0u) << o.name << " at align " << align;
        EXPECT_EQ(std::memcmp(t.data, o.bytes.data(), o.bytes.size()), 0) << o.name;
        EXPECT_TRUE(tape.owns(t.data));
      }
    }
    EXPECT_EQ(model.find("missing"), nullptr);
    EXPECT_EQ(error_of([&] { (void)model.at("missing"); }).first, Errc::not_found);
    ASSERT_EQ(model.header().metadata.size(), 1u);
    EXPECT_EQ(model.header().metadata[0].second, "pt");
    std::printf("align %zu: %s, path %s\n", align, model.in_place() ? "in place" : "per tensor",
                to_string(model.report().path));
  }
  fs::remove(p);
}

// A load reads the header, then the tensors, through one FileReader whose
// progress callback sees every read: the count of bytes done never goes back,
// on either route (the pread route used to report 0 done before each read).
TEST(Safetensors, ProgressNeverGoesBackwards) {
  const auto tensors = sample_tensors();
  const fs::path p = write(tensors);
  for (bool ring : {true, false}) {
    std::vector<std::uint64_t> seen;
    ReadOptions o;
    o.io_uring = ring;
    o.chunk_bytes = 64 * 1024;
    o.progress = [&](std::uint64_t done, std::uint64_t) { seen.push_back(done); };
    Tape tape = Tape::start(16 * MiB);
    Safetensors model = Safetensors::load(p, tape, 64, o);
    ASSERT_FALSE(seen.empty());
    for (std::size_t i = 1; i < seen.size(); ++i) {
      EXPECT_GE(seen[i], seen[i - 1]) << "call " << i << " of " << seen.size() << ", io_uring " << ring;
    }
    EXPECT_EQ(seen.back(), model.report().bytes);
  }
  fs::remove(p);
}

// bytes_needed bounds what load() takes, padding included, wherever the
// Tape's next free byte lies, on both placements.
TEST(Safetensors, BytesNeededBoundsWhatALoadTakes) {
  std::vector<Owned> aligned = sample_tensors();
  aligned.erase(aligned.begin() + 2);  // without "odd": every tensor 8-aligned, so align 8 loads in place
  const fs::path per_tensor = write(sample_tensors());
  const fs::path in_place = write(aligned);
  for (const auto& [path, align] : {std::pair{per_tensor, std::size_t{64}}, std::pair{per_tensor, std::size_t{4096}},
                                    std::pair{in_place, std::size_t{8}}}) {
    const std::size_t need = Safetensors::bytes_needed(read_safetensors_header(path), align);
    for (std::size_t skew : {std::size_t{0}, std::size_t{1}, std::size_t{8}, std::size_t{100}}) {
      Tape tape = Tape::start(16 * MiB);
      if (skew != 0) {
        ASSERT_TRUE(tape.take(skew, 1));
      }
      const std::size_t before = tape.used();
      Safetensors model = Safetensors::load(path, tape, align);
      EXPECT_LE(tape.used() - before, need) << path << ", align " << align << ", skew " << skew;
      EXPECT_EQ(model.in_place(), path == in_place);
    }
  }
  EXPECT_EQ(error_of([&] { (void)Safetensors::bytes_needed(read_safetensors_header(per_tensor), 3); }).first,
            Errc::invalid_argument);
  fs::remove(per_tensor);
  fs::remove(in_place);
}

TEST(Safetensors, AlignedFilesLoadInPlaceInOnePass) {
  // Every tensor a multiple of 8 bytes: the data section keeps them 8-aligned.
  std::vector<Owned> tensors = sample_tensors();
  tensors.erase(tensors.begin() + 2);  // "odd" (21 bytes) would misalign the rest
  const fs::path p = write(tensors);
  Tape tape = Tape::start(8 * MiB);
  Safetensors model = Safetensors::load(p, tape, 8);
  EXPECT_TRUE(model.in_place());
  for (const Owned& o : tensors) {
    if (!o.bytes.empty()) {
      EXPECT_EQ(std::memcmp(model.at(o.name).data, o.bytes.data(), o.bytes.size()), 0) << o.name;
    }
  }
  fs::remove(p);
}

TEST(Safetensors, RefusesMalformedFilesAndTakesNothing) {
  const std::string ok_tensor = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    const char* what;
    fs::path file;
    const char* message;
  };
  std::vector<Case> cases = {
      {"too short",
       [] {
         fs::path p = temp_path(".short");
         std::ofstream(p, std::ios::binary) << "abc";
         return p;
       }(),
       "shorter than its 8-byte header length"},
      {"header larger than file", write_raw("{}", 0, 1000), "larger than the file"},
      {"not json", write_raw("{not json", 8), "not valid JSON"},
      {"not an object", write_raw("[1,2]", 8), "not a JSON object"},
      {"unknown dtype", write_raw(R"({"a":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype 'F7'"},
      {"missing dtype", write_raw(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "no dtype"},
      {"negative shape", write_raw(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "non-negative"},
      {"shape vs offsets", write_raw(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "need 12"},
      {"out of bounds", write_raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8), "outside the data"},
      {"reversed offsets", write_raw(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", 8),
       "outside the data"},
      {"overflow", write_raw(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
       "overflows"},
      {"overlap", write_raw("{" + ok_tensor + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 16),
       "overlap"},
      {"bad metadata", write_raw(R"({"__metadata__":{"k":1}})", 0), "__metadata__"},
      {"truncated data", write_raw("{" + ok_tensor + "}", 4), "outside the data"},
  };
  Tape tape = Tape::start(MiB);
  ASSERT_TRUE(tape.take(100, 1));
  const std::size_t used = tape.used();  // 100, plus a red zone in AddressSanitizer builds
  for (const Case& c : cases) {
    auto [code, message] = error_of([&] { (void)Safetensors::load(c.file, tape); });
    EXPECT_EQ(code, Errc::bad_format) << c.what << ": " << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << c.what << ": " << message;
    EXPECT_EQ(tape.used(), used) << c.what << ": a refused file takes nothing";
    fs::remove(c.file);
  }
  EXPECT_EQ(error_of([&] { (void)Safetensors::load("/nonexistent.safetensors", tape); }).first, Errc::not_found);
  EXPECT_EQ(error_of([&] { (void)Safetensors::load("/nonexistent.safetensors", tape, 3); }).first,
            Errc::invalid_argument);
}

TEST(Safetensors, ATapeTooSmallIsOutOfMemoryAndTakesNothing) {
  const fs::path p = write(sample_tensors());
  Tape tape = Tape::start(64 * 1024);
  auto [code, message] = error_of([&] { (void)Safetensors::load(p, tape); });
  EXPECT_EQ(code, Errc::out_of_memory) << message;
  EXPECT_EQ(tape.used(), 0u);
  fs::remove(p);
}

TEST(Safetensors, SaveRefusesInconsistentTensors) {
  std::vector<std::byte> seven(7);
  const TensorData bad_size[] = {{"a", DType::F32, {2}, seven}};
  EXPECT_EQ(error_of([&] { save_safetensors(temp_path(".x"), bad_size); }).first, Errc::invalid_argument);
  std::vector<std::byte> eight(8);
  const TensorData twice[] = {{"a", DType::F32, {2}, eight}, {"a", DType::F32, {2}, eight}};
  EXPECT_EQ(error_of([&] { save_safetensors(temp_path(".x"), twice); }).first, Errc::invalid_argument);
}

// Each Tensor's info points into its Safetensors' own header: a copy would
// point into the original, and read freed memory once the original is gone.
TEST(Safetensors, IsMoveOnly) {
  EXPECT_FALSE(std::is_copy_constructible_v<Safetensors>);
  EXPECT_FALSE(std::is_copy_assignable_v<Safetensors>);
  EXPECT_TRUE(std::is_nothrow_move_constructible_v<Safetensors>);
  EXPECT_TRUE(std::is_nothrow_move_assignable_v<Safetensors>);
}

// What a move leaves behind must stay valid after the source is gone (under
// AddressSanitizer, a dangling info pointer is reported here).
TEST(Safetensors, AMovedToObjectWorksAfterItsSourceDied) {
  const auto tensors = sample_tensors();
  const fs::path p = write(tensors);
  Tape tape = Tape::start(16 * MiB);
  auto check = [&](const Safetensors& model) {
    ASSERT_EQ(model.tensors().size(), tensors.size());
    for (const Owned& o : tensors) {
      const Tensor& t = model.at(o.name);
      EXPECT_EQ(t.info->name, o.name);
      EXPECT_EQ(t.info->shape, o.shape) << o.name;
      EXPECT_EQ(t.info, &model.header().tensors[static_cast<std::size_t>(&t - model.tensors().data())])
          << o.name << ": info points into this object's own header";
      if (!o.bytes.empty()) {
        EXPECT_EQ(std::memcmp(t.data, o.bytes.data(), o.bytes.size()), 0) << o.name;
      }
    }
  };
  std::optional<Safetensors> source(Safetensors::load(p, tape));
  Safetensors moved(std::move(*source));
  source.reset();
  check(moved);

  std::optional<Safetensors> other(Safetensors::load(p, tape));
  Safetensors assigned = Safetensors::load(p, tape);
  assigned = std::move(*other);
  other.reset();
  check(assigned);
  assigned = std::move(moved);  // replaces a loaded object
  check(assigned);
  fs::remove(p);
}

// The bytes of a file with this header and `data_bytes` bytes of data.
std::vector<std::byte> image(const std::string& header, std::size_t data_bytes) {
  std::vector<std::byte> bytes(8 + header.size() + data_bytes, std::byte{0x5a});
  for (int i = 0; i < 8; ++i)
    bytes[static_cast<std::size_t>(i)] = static_cast<std::byte>((header.size() >> (8 * i)) & 0xff);
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  return bytes;
}

// What parse_safetensors_header throws for that file.
std::pair<Errc, std::string> parse_error(const std::string& header, std::size_t data_bytes) {
  const std::vector<std::byte> bytes = image(header, data_bytes);
  return error_of([&] { (void)parse_safetensors_header(bytes, bytes.size()); });
}

const std::string kTensorA = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

// The cases below are what the reference implementation (the Rust
// `safetensors` crate) refuses and this parser used to accept. Each is also a
// file in fuzz/corpus/safetensors/.
TEST(SafetensorsHeader, RefusesANulByte) {
  // nlohmann-json stops at a NUL: what follows it was never looked at.
  const auto [code, message] = parse_error(
      "{" + kTensorA + "}" + std::string(1, '\0') + R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16);
  EXPECT_EQ(code, Errc::bad_format) << message;
  EXPECT_NE(message.find("NUL byte"), std::string::npos) << message;
  EXPECT_EQ(parse_error(std::string("{}\0      ", 9), 0).first, Errc::bad_format) << "NUL as padding";
}

TEST(SafetensorsHeader, RefusesAByteOrderMark) {
  const auto [code, message] = parse_error("\xEF\xBB\xBF{}", 0);
  EXPECT_EQ(code, Errc::bad_format) << message;
  EXPECT_NE(message.find("byte-order mark"), std::string::npos) << message;
}

TEST(SafetensorsHeader, RefusesARepeatedTensorName) {
  // nlohmann-json keeps the last "a": the first would silently vanish.
  const auto [code, message] =
      parse_error("{" + kTensorA + R"(,"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16);
  EXPECT_EQ(code, Errc::bad_format) << message;
  EXPECT_NE(message.find("'a' twice"), std::string::npos) << message;
}

TEST(SafetensorsHeader, RefusesARepeatedKeyAnywhere) {
  const auto field = parse_error(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  EXPECT_EQ(field.first, Errc::bad_format) << field.second;
  EXPECT_NE(field.second.find("'dtype' twice"), std::string::npos) << field.second;
  const auto metadata = parse_error(R"({"__metadata__":{"k":"1","k":"2"}})", 0);
  EXPECT_EQ(metadata.first, Errc::bad_format) << metadata.second;
  const auto two = parse_error(R"({"__metadata__":{},"__metadata__":{}})", 0);
  EXPECT_EQ(two.first, Errc::bad_format) << two.second;
}

// Checking repeated keys used nlohmann's callback parser, which rescans the
// enclosing object at the end of every nested one: 100,000 tensors took
// over a minute (20,000: 3 s). A model of many small tensors must parse in
// time linear in its header. The bound is 20x what a linear parse needs
// under the sanitizers: it catches the quadratic parse, it does not time it.
TEST(SafetensorsHeader, AHundredThousandTensorsParseWithoutQuadraticCost) {
  constexpr std::size_t n = 100'000;
  std::string json = "{";
  for (std::size_t i = 0; i < n; ++i) {
    json += (i ? ",\"t" : "\"t") + std::to_string(i) + R"(":{"dtype":"F32","shape":[2],"data_offsets":[)" +
            std::to_string(8 * i) + "," + std::to_string(8 * i + 8) + "]}";
  }
  json += "}";
  std::vector<std::byte> prefix(8 + json.size());
  for (int b = 0; b < 8; ++b) prefix[b] = static_cast<std::byte>((json.size() >> (8 * b)) & 0xff);
  std::memcpy(prefix.data() + 8, json.data(), json.size());
  const auto start = std::chrono::steady_clock::now();
  const SafetensorsHeader h = parse_safetensors_header(prefix, prefix.size() + 8 * n);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(h.tensors.size(), n);
  std::printf("parsed %zu tensors in %.3f s\n", n, seconds);
  EXPECT_LT(seconds, 30.0) << "quadratic in the number of tensors?";
  // A repeated name among them is still found.
  json.back() = ',';
  json += R"("t5":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})";
  std::vector<std::byte> twice(8 + json.size());
  for (int b = 0; b < 8; ++b) twice[b] = static_cast<std::byte>((json.size() >> (8 * b)) & 0xff);
  std::memcpy(twice.data() + 8, json.data(), json.size());
  try {
    (void)parse_safetensors_header(twice, twice.size() + 8 * n);
    ADD_FAILURE() << "a repeated tensor name was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'t5' twice"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsHeader, RefusesAHoleBetweenTensors) {
  const auto [code, message] =
      parse_error("{" + kTensorA + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", 20);
  EXPECT_EQ(code, Errc::bad_format) << message;
  EXPECT_NE(message.find("hole: bytes [8, 12)"), std::string::npos) << message;
}

TEST(SafetensorsHeader, RefusesAHoleBeforeTheFirstTensor) {
  const auto [code, message] = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  EXPECT_EQ(code, Errc::bad_format) << message;
  EXPECT_NE(message.find("hole: bytes [0, 4)"), std::string::npos) << message;
}

TEST(SafetensorsHeader, RefusesBytesAfterTheLastTensor) {
  const auto [code, message] = parse_error("{" + kTensorA + "}", 12);
  EXPECT_EQ(code, Errc::bad_format) << message;
  EXPECT_NE(message.find("4 bytes after the last tensor 'a'"), std::string::npos) << message;
  const auto none = parse_error("{}", 5);
  EXPECT_EQ(none.first, Errc::bad_format) << "data but no tensor: " << none.second;
}

// What the reference accepts stays accepted.
TEST(SafetensorsHeader, AcceptsWhatTheReferenceAccepts) {
  auto parses = [](const std::string& header, std::size_t data_bytes) {
    const std::vector<std::byte> bytes = image(header, data_bytes);
    return parse_safetensors_header(bytes, bytes.size());
  };
  EXPECT_EQ(parses("{" + kTensorA + "}   ", 8).tensors.size(), 1u) << "padded with spaces, as writers do";
  EXPECT_EQ(parses(" \n{" + kTensorA + "}\t\r\n", 8).tensors.size(), 1u) << "JSON whitespace around the object";
  EXPECT_TRUE(parses(R"({"__metadata__":null})", 0).metadata.empty()) << "null metadata is none";
  // Empty tensors take no bytes, at the start, between and at the end.
  const SafetensorsHeader h = parses(R"({"e0":{"dtype":"F16","shape":[0],"data_offsets":[0,0]},)" + kTensorA +
                                         R"(,"e8":{"dtype":"U8","shape":[3,0],"data_offsets":[8,8]}})",
                                     8);
  EXPECT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(parses(R"({"k\u0000ey":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1).tensors.at(0).name,
            std::string("k\0ey", 4))
      << "an escaped NUL in a name is JSON";
}

// save_safetensors writes what the stricter parser accepts, metadata and
// empty tensors included, in any order of names and sizes.
TEST(SafetensorsHeader, TheWriterSatisfiesTheParser) {
  const auto tensors = sample_tensors();
  const fs::path p = write(tensors, {{"format", "pt"}, {"note", "x"}});
  const SafetensorsHeader h = read_safetensors_header(p);
  EXPECT_EQ(h.tensors.size(), tensors.size());
  EXPECT_EQ(h.data_offset % 8, 0u);
  EXPECT_EQ(h.tensors.back().file_offset + h.tensors.back().bytes, fs::file_size(p));
  fs::remove(p);
  const fs::path empty = write({});
  EXPECT_TRUE(read_safetensors_header(empty).tensors.empty());
  fs::remove(empty);
}

// The corpus names say what the parser must do: "valid_*" files parse, every
// other file is refused with bad_format (and nothing else escapes).
TEST(SafetensorsHeader, CorpusFilesDoWhatTheirNamesSay) {
  const fs::path corpus = fs::path(__FILE__).parent_path().parent_path() / "fuzz" / "corpus" / "safetensors";
  if (!fs::is_directory(corpus)) GTEST_SKIP() << "no corpus at " << corpus;
  int files = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    std::ifstream in(entry.path(), std::ios::binary);
    const std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(chars.data()), chars.size());
    const auto [code, message] = error_of([&] { (void)parse_safetensors_header(bytes, bytes.size()); });
    const bool valid = entry.path().filename().string().starts_with("valid_");
    EXPECT_EQ(code, valid ? Errc{} : Errc::bad_format) << entry.path().filename() << ": " << message;
    ++files;
  }
  EXPECT_GE(files, 16);
}

TEST(TapeUntake, GivesBackOnlyTheLastTake) {
  Tape t = Tape::start(4096);
  Taken a = t.take(100, 1);
  const std::size_t after_a = t.used();  // 100, plus a red zone in AddressSanitizer builds
  Taken b = t.take(50, 1);
  EXPECT_FALSE(t.untake(a, 100)) << "something was taken after a";
  EXPECT_TRUE(t.untake(b, 50));
  EXPECT_EQ(t.used(), after_a);
  EXPECT_TRUE(t.untake(a, 100));
  EXPECT_EQ(t.used(), 0u);
  EXPECT_FALSE(t.untake(Taken{}, 1));
}

}  // namespace
}  // namespace unimem

namespace unimem {
namespace {

// A sharded model's index names files beside it; one that would reach
// outside the folder is refused, however spelt.
TEST(SafetensorsIndex, NamesFilesInItsFolderOnly) {
  const std::vector<ModelFile> files = parse_safetensors_index(
      R"({"metadata": {}, "weight_map": {"b": "two.safetensors", "a": "one.safetensors", "c": "two.safetensors"}})",
      "/m", "index.json");
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].path, "/m/one.safetensors");
  EXPECT_EQ(files[0].tensors, std::vector<std::string>{"a"});
  EXPECT_EQ(files[1].path, "/m/two.safetensors");
  EXPECT_EQ(files[1].tensors, (std::vector<std::string>{"b", "c"}));
  for (const char* name : {"../x.safetensors", "/etc/passwd", "a/b.safetensors", "..", ".", ""}) {
    const std::string text = std::string(R"({"weight_map": {"w": ")") + name + "\"}}";
    EXPECT_EQ(error_of([&] { (void)parse_safetensors_index(text, "/m", "index.json"); }).first, Errc::bad_format)
        << name;
  }
  for (const char* text : {"{", "[]", R"({"weight_map": 1})", R"({"weight_map": {"w": 2}})", R"({"weight_map": {}})"}) {
    EXPECT_EQ(error_of([&] { (void)parse_safetensors_index(text, "/m", "index.json"); }).first, Errc::bad_format)
        << text;
  }
}

TEST(SafetensorsIndex, AFileIsItselfAndAMissingIndexIsNotFound) {
  const std::vector<ModelFile> one = safetensors_model_files("/any/model.safetensors");
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].path, "/any/model.safetensors");
  EXPECT_TRUE(one[0].tensors.empty());
  EXPECT_EQ(error_of([] { (void)safetensors_model_files("/nonexistent/model.safetensors.index.json"); }).first,
            Errc::not_found);
}

}  // namespace
}  // namespace unimem
