// src/remote/descriptor.cpp — writing and checking export descriptors.
//
// parse() reads bytes that came from outside the process: it reads every
// field through a bounds-checked cursor, checks each against the format's
// rules (src/remote/descriptor.hpp) and every sum and product for overflow,
// before anything of it reaches UCX. serialize() checks the same rules, so
// that what one side writes the other side reads.
#include "remote/descriptor.hpp"

#include <cstring>
#include <string>

#include "unimem/error.hpp"

namespace unimem::remote::detail {
namespace {

constexpr char kMagic[8] = {'u', 'n', 'i', 'm', 'e', 'm', 'R', '1'};
constexpr std::uint32_t kReadOnly = 1u << 0;
constexpr std::uint32_t kGenerations = 1u << 1;
constexpr std::uint32_t kSameHostSection = 1u << 2;
constexpr std::uint32_t kKnownFlags = kReadOnly | kGenerations | kSameHostSection;

[[noreturn]] void bad(const std::string& why) {
  throw Error(Errc::bad_format, 0, "unimem: remote pool descriptor: " + why);
}

// Why the same-host section `h` of `d` breaks the format's rules, or nullptr.
// Called after d's own fields passed: cells * cell_size does not overflow.
const char* broken_rule(const SameHost& h, const Descriptor& d) {
  if (h.pid_namespace == 0) return "the same-host section's pid namespace is 0";
  if (h.pid <= 0) return "the same-host section's process id is not positive";
  if (h.block_fd < 0 || h.beacon_fd < 0) return "a same-host descriptor number is negative";
  if (h.block_object == 0 || h.beacon_object == 0) return "a same-host Block's object is 0";
  std::uint64_t end = 0;
  if (__builtin_add_overflow(h.cells_offset, d.cell_size * d.cells, &end) || end > h.block_bytes) {
    return "the cells do not lie inside the same-host Block";
  }
  if (d.has_generations() != (h.generations_offset != 0)) {
    return "the same-host section's generations disagree with the descriptor's";
  }
  if (h.generations_offset != 0 &&
      (h.generations_offset % 8 != 0 || __builtin_add_overflow(h.generations_offset, d.cells * 8, &end) ||
       end > h.block_bytes)) {
    return "the generations do not lie 8-aligned inside the same-host Block";
  }
  return nullptr;
}

// Why `d` breaks the format's rules, or nullptr when it does not.
const char* broken_rule(const Descriptor& d) {
  if (d.version != 1 && d.version != kDescriptorVersion) return "the version is neither 1 nor 2";
  if (d.version == 1 && d.same_host) return "a version-1 descriptor has no same-host section";
  if (d.cell_size == 0) return "the cell size is 0";
  if (d.cells == 0 || d.cells >= 0xffffffffu) return "the cell count is not in [1, 2^32 - 1)";
  std::uint64_t bytes = 0, end = 0;
  if (__builtin_mul_overflow(d.cell_size, d.cells, &bytes) || __builtin_add_overflow(d.cells_address, bytes, &end)) {
    return "the cells' sizes overflow the address space";
  }
  if (d.cells_address == 0) return "the cells' address is 0";
  if (d.generations_address != 0) {
    if (d.generations_address % 8 != 0) return "the generations' address is not 8-byte aligned";
    if (__builtin_add_overflow(d.generations_address, d.cells * 8, &end)) {
      return "the generations overflow the address space";
    }
    if (d.generations_rkey.empty()) return "generations without a remote key";
  } else if (!d.generations_rkey.empty()) {
    return "a generations remote key without generations";
  }
  if (d.worker_address.empty() || d.worker_address.size() > kMaxDescriptorBlob) {
    return "the worker address is empty or longer than 64 KiB";
  }
  if (d.cells_rkey.empty() || d.cells_rkey.size() > kMaxDescriptorBlob) {
    return "the cells' remote key is empty or longer than 64 KiB";
  }
  if (d.generations_rkey.size() > kMaxDescriptorBlob) return "the generations' remote key is longer than 64 KiB";
  if (d.same_host) return broken_rule(*d.same_host, d);
  return nullptr;
}

// Writes fields in order into a buffer sized for them up front.
class Writer {
 public:
  explicit Writer(std::size_t bytes) : out_(bytes) {}
  void bytes(const void* p, std::size_t n) {
    if (n != 0) std::memcpy(out_.data() + at_, p, n);
    at_ += n;
  }
  template <class T>
  void le(T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i) out_[at_++] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
  }
  std::span<const std::byte> written() const noexcept { return {out_.data(), at_}; }
  std::vector<std::byte> done() && { return std::move(out_); }

 private:
  std::vector<std::byte> out_;
  std::size_t at_ = 0;
};

// Reads fields in order, refusing to step past the end.
class Cursor {
 public:
  explicit Cursor(std::span<const std::byte> bytes) : bytes_(bytes) {}
  std::span<const std::byte> take(std::size_t n, const char* field) {
    if (n > bytes_.size() - at_) bad(std::string("truncated at ") + field);
    auto s = bytes_.subspan(at_, n);
    at_ += n;
    return s;
  }
  template <class T>
  T le(const char* field) {
    auto s = take(sizeof(T), field);
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(std::to_integer<unsigned>(s[i])) << (8 * i);
    return v;
  }
  std::size_t at() const noexcept { return at_; }

 private:
  std::span<const std::byte> bytes_;
  std::size_t at_ = 0;
};

}  // namespace

std::uint64_t fnv1a64(std::span<const std::byte> bytes) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::byte b : bytes) {
    h ^= std::to_integer<std::uint64_t>(b);
    h *= 0x100000001b3ull;
  }
  return h;
}

std::vector<std::byte> serialize(const Descriptor& d) {
  if (const char* why = broken_rule(d)) {
    throw Error(Errc::invalid_argument, 0, std::string("unimem: cannot write a remote pool descriptor: ") + why);
  }
  Writer out(kDescriptorFixedBytes + d.worker_address.size() + d.cells_rkey.size() + d.generations_rkey.size() +
             (d.same_host ? kSameHostBytes : 0) + 8);
  out.bytes(kMagic, sizeof kMagic);
  out.le<std::uint32_t>(d.version);
  out.le<std::uint32_t>((d.read_only ? kReadOnly : 0) | (d.has_generations() ? kGenerations : 0) |
                        (d.same_host ? kSameHostSection : 0));
  out.le<std::uint64_t>(d.generation);
  out.le<std::uint64_t>(d.cells_address);
  out.le<std::uint64_t>(d.cell_size);
  out.le<std::uint64_t>(d.cells);
  out.le<std::uint64_t>(d.generations_address);
  out.le<std::uint32_t>(static_cast<std::uint32_t>(d.worker_address.size()));
  out.le<std::uint32_t>(static_cast<std::uint32_t>(d.cells_rkey.size()));
  out.le<std::uint32_t>(static_cast<std::uint32_t>(d.generations_rkey.size()));
  out.le<std::uint32_t>(0);
  out.bytes(d.worker_address.data(), d.worker_address.size());
  out.bytes(d.cells_rkey.data(), d.cells_rkey.size());
  out.bytes(d.generations_rkey.data(), d.generations_rkey.size());
  if (const auto& h = d.same_host) {
    out.bytes(h->boot.data(), h->boot.size());
    out.le<std::uint64_t>(h->pid_namespace);
    out.le<std::uint32_t>(static_cast<std::uint32_t>(h->pid));
    out.le<std::uint32_t>(static_cast<std::uint32_t>(h->block_fd));
    out.le<std::uint64_t>(h->block_object);
    out.le<std::uint64_t>(h->block_bytes);
    out.le<std::uint64_t>(h->cells_offset);
    out.le<std::uint64_t>(h->generations_offset);
    out.le<std::uint32_t>(static_cast<std::uint32_t>(h->beacon_fd));
    out.le<std::uint32_t>(0);
    out.le<std::uint64_t>(h->beacon_object);
  }
  out.le<std::uint64_t>(fnv1a64(out.written()));
  return std::move(out).done();
}

Descriptor parse(std::span<const std::byte> bytes) {
  Cursor in(bytes);
  if (std::memcmp(in.take(sizeof kMagic, "the magic").data(), kMagic, sizeof kMagic) != 0) {
    bad("not a unimem remote pool descriptor (wrong magic)");
  }
  Descriptor d;
  d.version = in.le<std::uint32_t>("the version");
  if (d.version != 1 && d.version != kDescriptorVersion) {
    bad("format version " + std::to_string(d.version) + "; this unimem reads versions 1 and " +
        std::to_string(kDescriptorVersion));
  }
  const auto flags = in.le<std::uint32_t>("the flags");
  // Version 1 is version 2 without the same-host section.
  if ((flags & ~(d.version == 1 ? kKnownFlags & ~kSameHostSection : kKnownFlags)) != 0) {
    bad("unknown flags " + std::to_string(flags) + " for format version " + std::to_string(d.version));
  }
  d.read_only = (flags & kReadOnly) != 0;
  d.generation = in.le<std::uint64_t>("the generation");
  d.cells_address = in.le<std::uint64_t>("the cells' address");
  d.cell_size = in.le<std::uint64_t>("the cell size");
  d.cells = in.le<std::uint64_t>("the cell count");
  d.generations_address = in.le<std::uint64_t>("the generations' address");
  const auto worker_bytes = in.le<std::uint32_t>("the worker address's length");
  const auto cells_rkey_bytes = in.le<std::uint32_t>("the cells' remote key's length");
  const auto generations_rkey_bytes = in.le<std::uint32_t>("the generations' remote key's length");
  if (in.le<std::uint32_t>("the reserved word") != 0) bad("the reserved word is not 0");
  if (((flags & kGenerations) != 0) != (d.generations_address != 0)) {
    bad("the generations flag and the generations' address disagree");
  }
  // Lengths are checked before any allocation of their size.
  for (std::uint32_t n : {worker_bytes, cells_rkey_bytes, generations_rkey_bytes}) {
    if (n > kMaxDescriptorBlob) bad("a length of " + std::to_string(n) + " bytes is over the 64 KiB limit");
  }
  auto blob = [&](std::uint32_t n, const char* field) {
    auto s = in.take(n, field);
    return std::vector<std::byte>(s.begin(), s.end());
  };
  d.worker_address = blob(worker_bytes, "the worker address");
  d.cells_rkey = blob(cells_rkey_bytes, "the cells' remote key");
  d.generations_rkey = blob(generations_rkey_bytes, "the generations' remote key");
  if ((flags & kSameHostSection) != 0) {
    SameHost h;
    const auto boot = in.take(h.boot.size(), "the same-host section's boot id");
    for (std::size_t i = 0; i < h.boot.size(); ++i) h.boot[i] = std::to_integer<std::uint8_t>(boot[i]);
    h.pid_namespace = in.le<std::uint64_t>("the same-host section's pid namespace");
    h.pid = static_cast<std::int32_t>(in.le<std::uint32_t>("the same-host section's process id"));
    h.block_fd = static_cast<std::int32_t>(in.le<std::uint32_t>("the same-host Block's descriptor"));
    h.block_object = in.le<std::uint64_t>("the same-host Block's object");
    h.block_bytes = in.le<std::uint64_t>("the same-host Block's size");
    h.cells_offset = in.le<std::uint64_t>("the cells' offset in the same-host Block");
    h.generations_offset = in.le<std::uint64_t>("the generations' offset in the same-host Block");
    h.beacon_fd = static_cast<std::int32_t>(in.le<std::uint32_t>("the beacon's descriptor"));
    if (in.le<std::uint32_t>("the same-host section's reserved word") != 0) {
      bad("the same-host section's reserved word is not 0");
    }
    h.beacon_object = in.le<std::uint64_t>("the beacon's object");
    d.same_host = h;
  }
  const std::size_t covered = in.at();
  const auto checksum = in.le<std::uint64_t>("the checksum");
  if (in.at() != bytes.size()) {
    bad(std::to_string(bytes.size() - in.at()) + " bytes past the end of the descriptor");
  }
  if (checksum != fnv1a64(bytes.first(covered))) bad("the checksum does not match (corrupt in transit?)");
  if (const char* why = broken_rule(d)) bad(why);
  return d;
}

}  // namespace unimem::remote::detail
