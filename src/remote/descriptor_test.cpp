// Descriptor parsing: every malformed input is Error(bad_format), never a crash or a read past the end.
#include "remote/descriptor.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "testing.hpp"

namespace unimem::remote::detail {
namespace {

using unimem::testing::error_of;

Descriptor sample() {
  Descriptor d;
  d.read_only = true;
  d.generation = 0x1234567890abcdefull;
  d.cells_address = 0x7f0000001000ull;
  d.cell_size = 262144;
  d.cells = 64;
  d.generations_address = 0x7f0000000000ull;
  d.worker_address.assign(37, std::byte{0x11});
  d.cells_rkey.assign(19, std::byte{0x22});
  d.generations_rkey.assign(23, std::byte{0x33});
  return d;
}

// sample() with a same-host section: cells after one page of state, generations in it.
Descriptor sample_same_host() {
  Descriptor d = sample();
  SameHost h;
  for (std::size_t i = 0; i < h.boot.size(); ++i) h.boot[i] = static_cast<std::uint8_t>(0xa0 + i);
  h.pid_namespace = 4026531836ull;
  h.pid = 4242;
  h.block_fd = 17;
  h.block_object = 991;
  h.block_bytes = 4096 + d.cell_size * d.cells;
  h.cells_offset = 4096;
  h.generations_offset = 512;
  h.beacon_fd = 18;
  h.beacon_object = 992;
  d.same_host = h;
  return d;
}

// Where the same-host section starts in sample_same_host()'s bytes.
constexpr std::size_t kSameHostAt = kDescriptorFixedBytes + 37 + 19 + 23;

// Rewrites the trailing checksum, as a forger would.
void reseal(std::vector<std::byte>& bytes) {
  const std::uint64_t h = fnv1a64(std::span(bytes).first(bytes.size() - 8));
  for (int i = 0; i < 8; ++i) bytes[bytes.size() - 8 + i] = static_cast<std::byte>((h >> (8 * i)) & 0xff);
}

template <class T>
void poke(std::vector<std::byte>& bytes, std::size_t at, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) bytes[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
  reseal(bytes);
}

TEST(RemoteDescriptor, RoundTripsEveryField) {
  const Descriptor d = sample();
  const std::vector<std::byte> bytes = serialize(d);
  EXPECT_EQ(bytes.size(), kDescriptorFixedBytes + 37 + 19 + 23 + 8);
  const Descriptor e = parse(bytes);
  EXPECT_EQ(e.version, 2u);
  EXPECT_FALSE(e.same_host);
  EXPECT_TRUE(e.read_only);
  EXPECT_EQ(e.generation, d.generation);
  EXPECT_EQ(e.cells_address, d.cells_address);
  EXPECT_EQ(e.cell_size, d.cell_size);
  EXPECT_EQ(e.cells, d.cells);
  EXPECT_EQ(e.generations_address, d.generations_address);
  EXPECT_EQ(e.worker_address, d.worker_address);
  EXPECT_EQ(e.cells_rkey, d.cells_rkey);
  EXPECT_EQ(e.generations_rkey, d.generations_rkey);
  Descriptor plain = sample();
  plain.read_only = false;
  plain.generations_address = 0;
  plain.generations_rkey.clear();
  const Descriptor p = parse(serialize(plain));
  EXPECT_FALSE(p.read_only);
  EXPECT_FALSE(p.has_generations());

  const Descriptor local = sample_same_host();
  const std::vector<std::byte> local_bytes = serialize(local);
  EXPECT_EQ(local_bytes.size(), kSameHostAt + kSameHostBytes + 8);
  const Descriptor l = parse(local_bytes);
  ASSERT_TRUE(l.same_host);
  EXPECT_EQ(l.same_host->boot, local.same_host->boot);
  EXPECT_EQ(l.same_host->pid_namespace, local.same_host->pid_namespace);
  EXPECT_EQ(l.same_host->pid, 4242);
  EXPECT_EQ(l.same_host->block_fd, 17);
  EXPECT_EQ(l.same_host->block_object, 991u);
  EXPECT_EQ(l.same_host->block_bytes, local.same_host->block_bytes);
  EXPECT_EQ(l.same_host->cells_offset, 4096u);
  EXPECT_EQ(l.same_host->generations_offset, 512u);
  EXPECT_EQ(l.same_host->beacon_fd, 18);
  EXPECT_EQ(l.same_host->beacon_object, 992u);
}

TEST(RemoteDescriptor, EveryTruncationAndEveryFlippedByteIsRefused) {
  const std::vector<std::byte> good = serialize(sample_same_host());
  for (std::size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(error_of([&] { (void)parse(std::span(good).first(n)); }), Errc::bad_format) << n;
  }
  std::vector<std::byte> longer = good;
  longer.push_back(std::byte{0});
  EXPECT_EQ(error_of([&] { (void)parse(longer); }), Errc::bad_format);
  for (std::size_t i = 0; i < good.size(); ++i) {
    std::vector<std::byte> bad = good;
    bad[i] ^= std::byte{0x40};
    EXPECT_EQ(error_of([&] { (void)parse(bad); }), Errc::bad_format) << i;
  }
}

TEST(RemoteDescriptor, ForgedFieldsWithAValidChecksumAreRefused) {
  const std::vector<std::byte> good = serialize(sample());
  auto refused = [&](std::size_t at, auto value, const char* why) {
    std::vector<std::byte> bad = good;
    poke(bad, at, value);
    const auto t = unimem::testing::thrown_by([&] { (void)parse(bad); });
    EXPECT_EQ(t.code, Errc::bad_format) << why;
    return t.message;
  };
  EXPECT_NE(refused(8, std::uint32_t{3}, "version").find("reads versions 1 and 2"), std::string::npos);
  refused(8, std::uint32_t{0}, "version 0");
  refused(12, std::uint32_t{1u << 7}, "unknown flag");
  refused(12, std::uint32_t{1}, "generations flag without generations flag but an address");
  refused(24, std::uint64_t{0}, "cells address 0");
  refused(24, ~std::uint64_t{0} - 4096, "cells wrap the address space");
  refused(32, std::uint64_t{0}, "cell size 0");
  refused(32, std::uint64_t{1} << 62, "cell size x cells overflows");
  refused(40, std::uint64_t{0}, "no cells");
  refused(40, std::uint64_t{0xffffffffu}, "2^32 - 1 cells");
  refused(48, ~std::uint64_t{0} - 8, "generations wrap");
  refused(48, std::uint64_t{0x7f0000000004ull}, "misaligned generations");
  refused(56, std::uint32_t{0xffffffffu}, "a 4 GiB worker address");
  refused(56, std::uint32_t{65537}, "a worker address over the limit");
  refused(56, std::uint32_t{38}, "a worker address longer than the bytes say");
  refused(60, std::uint32_t{0}, "no cells key");
  refused(64, std::uint32_t{0}, "generations without a key");
  refused(68, std::uint32_t{1}, "reserved");
  refused(12, std::uint32_t{1 | 2 | 4}, "a same-host flag without the section");

  const std::vector<std::byte> local = serialize(sample_same_host());
  auto refused_local = [&](std::size_t at, auto value, const char* why) {
    std::vector<std::byte> bad = local;
    poke(bad, kSameHostAt + at, value);
    const auto t = unimem::testing::thrown_by([&] { (void)parse(bad); });
    EXPECT_EQ(t.code, Errc::bad_format) << why;
  };
  refused_local(16, std::uint64_t{0}, "pid namespace 0");
  refused_local(24, std::uint32_t{0}, "pid 0");
  refused_local(24, std::uint32_t{0x80000000u}, "a negative pid");
  refused_local(28, std::uint32_t{0xffffffffu}, "descriptor -1");
  refused_local(32, std::uint64_t{0}, "Block object 0");
  refused_local(40, std::uint64_t{4096}, "a Block too small for its cells");
  refused_local(48, ~std::uint64_t{0} - 10, "cells' offset wraps");
  refused_local(48, std::uint64_t{8192}, "cells past the Block's end");
  refused_local(56, std::uint64_t{0}, "no generations' offset with generations");
  refused_local(56, std::uint64_t{513}, "misaligned generations");
  refused_local(56, std::uint64_t{4096 + 262144 * 64}, "generations past the Block's end");
  refused_local(64, std::uint32_t{0xffffffffu}, "beacon descriptor -1");
  refused_local(68, std::uint32_t{1}, "reserved");
  refused_local(72, std::uint64_t{0}, "beacon object 0");
  // Version 1 had no same-host section.
  std::vector<std::byte> old_with_section = local;
  poke(old_with_section, 8, std::uint32_t{1});
  EXPECT_EQ(error_of([&] { (void)parse(old_with_section); }), Errc::bad_format);
  std::vector<std::byte> foreign = good;
  std::memcpy(foreign.data(), "unimemG3", 8);
  reseal(foreign);
  EXPECT_EQ(error_of([&] { (void)parse(foreign); }), Errc::bad_format);
}

// What an exporter of the previous format wrote still connects (over UCX).
TEST(RemoteDescriptor, VersionOneIsReadAsVersionTwoWithoutTheSameHostSection) {
  Descriptor d = sample();
  d.version = 1;
  const Descriptor e = parse(serialize(d));
  EXPECT_EQ(e.version, 1u);
  EXPECT_FALSE(e.same_host);
  EXPECT_EQ(e.cells, d.cells);
  EXPECT_EQ(e.generations_rkey, d.generations_rkey);
  d.same_host = sample_same_host().same_host;
  EXPECT_EQ(error_of([&] { (void)serialize(d); }), Errc::invalid_argument);
}

TEST(RemoteDescriptor, RandomBytesAreRefused) {
  std::mt19937_64 random(7);
  std::vector<std::byte> good = serialize(sample());
  for (int round = 0; round < 20000; ++round) {
    std::vector<std::byte> bytes(random() % 300);
    for (auto& b : bytes) b = static_cast<std::byte>(random());
    if (round % 2 == 0 && bytes.size() >= 8) std::memcpy(bytes.data(), good.data(), 8);  // right magic
    if (round % 4 == 0 && bytes.size() >= 16) {
      reseal(bytes);  // and a valid checksum: only the fields' checks stand
    }
    EXPECT_EQ(error_of([&] { (void)parse(bytes); }), Errc::bad_format);
  }
}

TEST(RemoteDescriptor, SerializeRefusesWhatParseWould) {
  Descriptor d = sample();
  d.cells = 0;
  EXPECT_EQ(error_of([&] { (void)serialize(d); }), Errc::invalid_argument);
  d = sample();
  d.worker_address.clear();
  EXPECT_EQ(error_of([&] { (void)serialize(d); }), Errc::invalid_argument);
}

}  // namespace
}  // namespace unimem::remote::detail
