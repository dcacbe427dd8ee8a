// GPU visibility tests that need no GPU: they run everywhere, CI included.
// The tests that launch kernels are in gpu/gpu_test.cpp.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "testing.hpp"
#include "unimem/block.hpp"
#include "unimem/gpu.hpp"
#include "unimem/tape.hpp"

namespace unimem {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Runs in a child process whose driver library does not exist: every GPU
// request must fail with no_cuda_driver and a message that says what to do,
// and everything host-side must keep working.
[[noreturn]] void without_a_driver() {
  ::setenv("UNIMEM_CUDA_DRIVER", "/nonexistent/libcuda.so.1", 1);
  bool ok = !gpu::available();
  const std::string reason = gpu::unavailable_reason();
  ok = ok && contains(reason, "no CUDA driver") && contains(reason, "/nonexistent/libcuda.so.1") &&
       contains(reason, "Visibility::host");
  try {
    (void)gpu::devices();
    ok = false;
  } catch (const Error& e) {
    ok = ok && e.code() == Errc::no_cuda_driver;
  }
  BlockOptions o;
  o.visibility = Visibility::gpus;
  try {
    Block b = Block::open(MiB, o);
    ok = false;
  } catch (const Error& e) {
    ok = ok && e.code() == Errc::no_cuda_driver && contains(e.what(), "no CUDA driver");
  }
  ok = ok && testing::unimem_mappings() == 0;  // the failed open left nothing

  Block host = Block::open(MiB);
  host.as_f32_mut()[0] = 3.0f;
  try {
    host.make_gpu_visible();
    ok = false;
  } catch (const Error& e) {
    ok = ok && e.code() == Errc::no_cuda_driver;
  }
  ok = ok && !host.gpu_visible() && host.as_f32()[0] == 3.0f && host.gpu_count() == 0 &&
       host.device_pointer(0) == nullptr;
  try {
    const gpu::DeviceSegment none[] = {{0, 1, 1}};
    (void)gpu::copy_file_to_device("/proc/self/exe", none);
    ok = false;
  } catch (const Error& e) {
    ok = ok && e.code() == Errc::no_cuda_driver;
  }
  try {
    gpu::Loader loader;
    ok = false;
  } catch (const Error& e) {
    ok = ok && e.code() == Errc::no_cuda_driver;
  }
  if (!ok) std::fprintf(stderr, "reason: %s\n", reason.c_str());
  std::_Exit(ok ? 0 : 1);
}

TEST(GpuVisibilityDeathTest, NoDriverGivesAClearErrorAndHostBlocksStillWork) {
  EXPECT_EXIT(without_a_driver(), ::testing::ExitedWithCode(0), "");
}

TEST(GpuVisibility, HostOnlyBlocksHaveNoDevicePointers) {
  Block b = Block::open(MiB);
  EXPECT_FALSE(b.gpu_visible());
  EXPECT_EQ(b.gpu_count(), 0);
  EXPECT_EQ(b.device_pointer(0), nullptr);
  EXPECT_EQ(b.device_pointer(0, b.data() + 10), nullptr);
}

TEST(GpuVisibility, EmptyBlockCannotBeMadeVisible) {
  Block empty;
  try {
    empty.make_gpu_visible();
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
  }
}

TEST(GpuVisibility, WithoutAGpuHereTheErrorSaysWhy) {
  if (gpu::available()) GTEST_SKIP() << "a CUDA device is present: see unimem_gpu_test";
  std::printf("no CUDA device here (%s)\n", gpu::unavailable_reason().c_str());
  BlockOptions o;
  o.visibility = Visibility::gpus;
  try {
    Tape t = Tape::start(MiB, o);
    FAIL() << "a GPU-visible Tape opened without a GPU";
  } catch (const Error& e) {
    EXPECT_TRUE(e.code() == Errc::no_cuda_driver || e.code() == Errc::no_cuda_device) << e.what();
  }
}

TEST(HugePages, AskedForAndReportedHonestly) {
  BlockOptions o;
  o.backing = Backing::warm;
  o.huge_pages = true;
  Block b = Block::open(16 * MiB, o);
  const std::size_t huge = b.huge_page_bytes();
  EXPECT_LE(huge, b.size());
  EXPECT_EQ(huge % (2 * MiB), 0u);
  std::ifstream policy("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string text((std::istreambuf_iterator<char>(policy)), std::istreambuf_iterator<char>());
  if (contains(text, "[never]") || contains(text, "[deny]")) {
    EXPECT_EQ(huge, 0u) << text;
  } else if (contains(text, "[advise]") || contains(text, "[always]") || contains(text, "[force]")) {
    // Where the host allows huge pages for shmem, a shareable Block that asks
    // gets them (measured on the GPU machine with advise: all 16 MiB).
    EXPECT_GT(huge, 0u) << "the host allows shmem huge pages, but the Block got none: " << text;
  }
  std::printf("huge pages obtained: %zu of %zu bytes (shmem_enabled: %s)\n", huge, b.size(), text.c_str());
}

}  // namespace
}  // namespace unimem
