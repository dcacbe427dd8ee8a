// Whether free memory goes back to a VM host (src/platform/region.hpp), read
// from a sysfs tree made here: the choice of page size for loads rests on it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "platform/region.hpp"

namespace unimem::platform {
namespace {

namespace fs = std::filesystem;

class VirtioTree : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("unimem_virtio_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  // A device as sysfs lists it: its id ("0x0005" is the balloon) and its
  // feature bits, bit 0 first.
  void device(const std::string& name, const std::string& id, const std::string& features) {
    fs::create_directories(root_ / name);
    std::ofstream(root_ / name / "device") << id << "\n";
    std::ofstream(root_ / name / "features") << features << "\n";
  }
  std::string root() const { return root_.string(); }

 private:
  fs::path root_;
};

TEST_F(VirtioTree, ABalloonThatReportsFreePagesSaysSo) {
  device("virtio1", "0x0002", "0010001001");  // a disk
  device("virtio0", "0x0005", "0110010100");  // the dev VM's balloon: bit 5 set
  EXPECT_TRUE(free_memory_returns_to_host(root()));
}

TEST_F(VirtioTree, NoBalloonOrOneThatDoesNotReportMeansNo) {
  EXPECT_FALSE(free_memory_returns_to_host(root())) << "no device at all";
  device("virtio1", "0x0002", "0010011000");  // the GPU machine: disks, a network card; no balloon
  device("virtio2", "0x0001", "1100010110");  // bit 5 set, but not a balloon
  EXPECT_FALSE(free_memory_returns_to_host(root()));
  device("virtio0", "0x0005", "0110000100");  // a balloon without free page reporting
  EXPECT_FALSE(free_memory_returns_to_host(root()));
}

TEST_F(VirtioTree, AnUnreadableTreeMeansNo) {
  EXPECT_FALSE(free_memory_returns_to_host(root() + "/missing"));
  device("virtio0", "0x0005", "0110");  // too short to have bit 5
  EXPECT_FALSE(free_memory_returns_to_host(root()));
  fs::create_directories(fs::path(root()) / "virtio9");  // no files in it
  EXPECT_FALSE(free_memory_returns_to_host(root()));
}

}  // namespace
}  // namespace unimem::platform
