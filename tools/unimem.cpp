// tools/unimem.cpp — the `unimem` command line tool.
//
//   unimem info                       what this machine offers unimem
//   unimem load FILE [--gpu] [--no-direct] [--no-io-uring]
//                                     read FILE (a .safetensors file: every tensor) into a
//                                     Block, with a progress bar and the throughput
#include <cpuid.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <unimem/unimem.hpp>

#include "format.hpp"

namespace {

using unimem::detail::format_bytes;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s.empty() ? "(unavailable)" : s;
}

bool cpuid_bit(unsigned leaf, unsigned sub, int reg, int bit) {
  unsigned r[4] = {};
  if (!__get_cpuid_count(leaf, sub, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
}

int info() {
  std::printf("unimem %s\n\nmemory\n", UNIMEM_VERSION_STRING);
  std::printf("  page size              %zu B\n", unimem::Block::page_size());
  std::string huge;
  std::error_code ec;
  for (const auto& d : std::filesystem::directory_iterator("/sys/kernel/mm/hugepages", ec)) {
    const std::string name = d.path().filename().string();  // hugepages-2048kB
    huge += " " + name.substr(10) + " (" + read_text(d.path().string() + "/nr_hugepages") + " reserved)";
  }
  std::printf("  huge page sizes       %s\n", huge.empty() ? " none" : huge.c_str());
  std::printf("  THP, private memory    %s\n", read_text("/sys/kernel/mm/transparent_hugepage/enabled").c_str());
  std::printf("  THP, shmem (Blocks)    %s\n", read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled").c_str());
  rlimit limit{};
  ::getrlimit(RLIMIT_MEMLOCK, &limit);
  std::printf("  memlock limit          %s%s\n",
              limit.rlim_cur == RLIM_INFINITY ? "unlimited" : format_bytes(limit.rlim_cur).c_str(),
              ::geteuid() == 0 ? " (root: not enforced)" : "");

  std::printf("\nGPUs\n");
  if (!unimem::gpu::available()) {
    std::printf("  %s\n", unimem::gpu::unavailable_reason().c_str());
  } else {
    const int v = unimem::gpu::driver_version();
    std::printf("  CUDA driver            %d.%d\n", v / 1000, v % 1000 / 10);
    for (const auto& d : unimem::gpu::devices()) {
      std::printf("  GPU %d                  %s; host pointers usable on device: %s\n", d.ordinal, d.name.c_str(),
                  d.host_pointer_is_device_pointer ? "yes" : "no");
    }
  }

  std::printf("\nCPU\n");
  std::printf("  AVX2 %s, AVX-512F %s, AVX-512 BF16 %s, AMX-TILE %s, AMX-BF16 %s, AMX-INT8 %s\n",
              __builtin_cpu_supports("avx2") ? "yes" : "no", __builtin_cpu_supports("avx512f") ? "yes" : "no",
              cpuid_bit(7, 1, 0, 5) ? "yes" : "no", cpuid_bit(7, 0, 3, 24) ? "yes" : "no",
              cpuid_bit(7, 0, 3, 22) ? "yes" : "no", cpuid_bit(7, 0, 3, 25) ? "yes" : "no");
  std::printf("  hardware threads       %ld\n", ::sysconf(_SC_NPROCESSORS_ONLN));

  std::printf("\nstorage\n");
  io_uring ring;
  const int err = io_uring_queue_init(4, &ring, 0);
  if (err == 0) io_uring_queue_exit(&ring);
  std::printf("  io_uring               %s\n", err == 0 ? "available" : (std::string("unavailable: ") + std::strerror(-err)).c_str());
  for (const std::string dir : {std::filesystem::current_path().string(), std::filesystem::temp_directory_path().string()}) {
    const std::string probe = dir + "/.unimem_direct_probe";
    const int fd = ::open(probe.c_str(), O_CREAT | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
    std::printf("  O_DIRECT in %-10s %s\n", dir.c_str(), fd >= 0 ? "supported" : std::strerror(errno));
    if (fd >= 0) ::close(fd);
    ::unlink(probe.c_str());
  }
  return 0;
}

struct Bar {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  double last = -1;
  void operator()(std::uint64_t done, std::uint64_t total) {
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (done < total && now - last < 0.1) return;
    last = now;
    const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    char bar[41];
    const int filled = static_cast<int>(frac * 40);
    for (int i = 0; i < 40; ++i) bar[i] = i < filled ? '#' : ' ';
    bar[40] = 0;
    std::fprintf(stderr, "\r[%s] %5.1f%%  %s / %s  %.2f GB/s ", bar, frac * 100, format_bytes(done).c_str(),
                 format_bytes(total).c_str(), now > 0 ? static_cast<double>(done) / now / 1e9 : 0.0);
    if (done >= total) std::fprintf(stderr, "\n");
  }
};

int load(const std::string& path, bool gpu, bool direct, bool ring) {
  const std::uint64_t size = unimem::file_size(path);
  unimem::BlockOptions o;
  o.pinning = unimem::Pinning::unpinned;  // large files exceed non-root memlock limits
  if (gpu) o.visibility = unimem::Visibility::gpus;
  unimem::ReadOptions r;
  r.direct = direct;
  r.io_uring = ring;
  r.progress = Bar{};
  const bool safetensors = path.size() > 12 && path.ends_with(".safetensors");
  unimem::ReadReport report;
  std::size_t tensors = 0;
  bool in_place = false;
  const auto start = std::chrono::steady_clock::now();
  unimem::Tape tape = unimem::Tape::start(size + (16u << 20), o);  // room for per-tensor alignment
  if (safetensors) {
    unimem::Safetensors model = unimem::Safetensors::load(path, tape, 64, r);
    report = model.report();
    tensors = model.tensors().size();
    in_place = model.in_place();
  } else {
    std::span<std::byte> dest = tape.take<std::byte>(size);
    report = unimem::read_file(path, 0, dest, r);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s: %s in %.3f s (%.2f GB/s reading, %.2f GB/s with setup) via %s%s%s\n", path.c_str(),
              format_bytes(report.bytes).c_str(), seconds, report.bytes / report.seconds / 1e9,
              report.bytes / seconds / 1e9, unimem::to_string(report.path), report.fallback_reason.empty() ? "" : " — ",
              report.fallback_reason.c_str());
  if (safetensors) std::printf("  %zu tensors, %s\n", tensors, in_place ? "read in place" : "read per tensor");
  if (gpu) std::printf("  GPU-visible on %d device(s) at the same address\n", tape.block().gpu_count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "info" && argc == 2) return info();
  if (cmd == "load" && argc >= 3) {
    bool gpu = false, direct = true, ring = true;
    for (int i = 3; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--gpu") gpu = true;
      else if (a == "--no-direct") direct = false;
      else if (a == "--no-io-uring") ring = false;
      else {
        std::fprintf(stderr, "unimem load: unknown option %s\n", a.c_str());
        return 2;
      }
    }
    return load(argv[2], gpu, direct, ring);
  }
  std::fprintf(stderr, "usage: unimem info\n       unimem load FILE [--gpu] [--no-direct] [--no-io-uring]\n");
  return 2;
} catch (const unimem::Error& e) {
  std::fprintf(stderr, "\n%s [%s]\n", e.what(), unimem::to_string(e.code()));
  return 1;
}
