// tools/cli.cpp — the commands of the `unimem` command line tool.
//
// One implementation for both doors: the executable (tools/unimem.cpp) and
// the Python package (`python3 -m unimem`, through unimem._unimem), so a wheel
// ships the tool without a second copy of it.
//
//   unimem info                       what this build has and this machine offers unimem
//   unimem load FILE [--no-direct] [--no-io-uring]
//                                     read FILE (a .safetensors file: every tensor) into a
//                                     Block, with a progress bar and the throughput
//   unimem load FILE... --gpu [N|all] [--dtype F32|F16|BF16] [--repeat R]
//                                     FILEs into the memory of GPU N (default 0) or of
//                                     every GPU at once, through one gpu::Loader: a
//                                     .safetensors file or a model.safetensors.index.json
//                                     as a model (every tensor at 256 bytes, floating
//                                     ones converted on the GPU with --dtype), any other
//                                     file whole; prints the route and GB/s of each load
//                                     (R loads: the first registers, later ones do not)
//
// Every failure is one line on stderr and a non-zero exit (1: it failed, 2:
// bad usage); cli::run catches every exception, so nothing ends in an abort.
// `info` runs anywhere, even in a working directory that was removed, and its
// O_DIRECT probe uses a nameless file, so no file of the user's is touched.
// `load` reads regular files of known size only: a FIFO would never end, and
// a /proc or /sys file reports a size of 0 while it has contents.
#include "cli.hpp"

#include <cpuid.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <unimem/unimem.hpp>

#include "format.hpp"
#include "platform/files.hpp"

namespace {

using unimem::detail::errno_text;
using unimem::detail::format_bytes;

constexpr const char* kUsage =
    "usage: unimem info | unimem load FILE [--no-direct] [--no-io-uring] | "
    "unimem load FILE... --gpu [N|all] [--dtype F32|F16|BF16] [--repeat R]";

// True while the progress bar has printed a line without its newline: an
// error message then starts on a line of its own.
bool bar_line_open = false;
void end_bar_line() {
  if (bar_line_open) std::fputc('\n', stderr);
  bar_line_open = false;
}

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

// Whether files in `dir` can be opened with O_DIRECT. The probe is a nameless
// file (O_TMPFILE): no existing file can be hit and nothing is left behind,
// even if the tool is killed. Where the file system has no O_TMPFILE, it is a
// new file from mkostemp (which never takes an existing name), removed again.
std::string direct_io_support(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::close(fd);
    return "supported";
  }
  if (errno != EOPNOTSUPP && errno != EISDIR) return errno_text(errno);
  std::string name = dir + "/.unimem_direct_probe.XXXXXX";
  const int created = ::mkostemp(name.data(), O_CLOEXEC);
  if (created < 0) return "unknown: cannot create a probe file (" + errno_text(errno) + ")";
  fd = ::open(name.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  std::string result = fd >= 0 ? "supported" : errno_text(errno);
  if (fd >= 0) ::close(fd);
  ::close(created);
  ::unlink(name.c_str());
  return result;
}

// Whether the page cache can be registered with CUDA in place (what
// gpu::Loader does with cached files): a small file of our own, mapped
// read-only and registered with every GPU.
std::string page_cache_registration() {
  char name[] = "/tmp/unimem_registration_probe.XXXXXX";
  const int fd = ::mkstemp(name);
  if (fd < 0) return "not probed (no temporary file: " + errno_text(errno) + ")";
  std::string result;
  try {
    const std::string page(4096, 'u');
    for (int i = 0; i < 256; ++i) {
      if (::write(fd, page.data(), page.size()) != static_cast<ssize_t>(page.size())) throw std::runtime_error("write");
    }
    unimem::BlockOptions o;
    o.visibility = unimem::Visibility::gpus;
    o.pinning = unimem::Pinning::unpinned;
    unimem::Block cached = unimem::Block::map_file(name, o);
    result = "registers in place, read-only: gpu::Loader copies cached files straight from the page cache";
  } catch (const std::exception& e) {
    result = std::string("refused: ") + e.what() + " (gpu::Loader stages cached files through pinned memory)";
  }
  ::close(fd);
  ::unlink(name);
  return result;
}

int info() {
  const unimem::BuildInfo build = unimem::build_info();
  std::printf("unimem %s\n\nbuild\n", build.version.c_str());
  std::printf("  compiler               %s\n", build.compiler.c_str());
  std::printf("  io_uring               %s\n",
              build.io_uring ? "built in (liburing)"
                             : "not built in: files are read with pread on threads (O_DIRECT where possible)");
  std::printf("\nmemory\n");
  std::printf("  page size              %zu B\n", unimem::Block::page_size());
  std::string huge;
  std::error_code ec;
  for (const auto& d : std::filesystem::directory_iterator("/sys/kernel/mm/hugepages", ec)) {
    const std::string name = d.path().filename().string();  // hugepages-2048kB
    huge += " " + name.substr(10) + " (" + read_text(d.path().string() + "/nr_hugepages") + " reserved)";
  }
  std::printf("  huge page sizes       %s\n", huge.empty() ? " none" : huge.c_str());
  std::printf("  THP, private memory    %s\n", read_text("/sys/kernel/mm/transparent_hugepage/enabled").c_str());
  const std::string shmem = read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::printf("  THP, shmem (Blocks)    %s\n", shmem.c_str());
  if (shmem.find("[never]") != std::string::npos || shmem.find("[deny]") != std::string::npos) {
    // Shareable Blocks are memfd (shmem) pages: they get huge pages only where this allows.
    std::printf(
        "                         shareable Blocks get 4 KiB pages here; to let BlockOptions::huge_pages\n"
        "                         give them 2 MiB pages (faster to back and to register), as root:\n"
        "                         echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled\n");
  }
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
    std::printf("  page cache -> GPU      %s\n", page_cache_registration().c_str());
  }

  std::printf("\nCPU\n");
  std::printf("  AVX2 %s, AVX-512F %s, AVX-512 BF16 %s, AMX-TILE %s, AMX-BF16 %s, AMX-INT8 %s\n",
              __builtin_cpu_supports("avx2") ? "yes" : "no", __builtin_cpu_supports("avx512f") ? "yes" : "no",
              cpuid_bit(7, 1, 0, 5) ? "yes" : "no", cpuid_bit(7, 0, 3, 24) ? "yes" : "no",
              cpuid_bit(7, 0, 3, 22) ? "yes" : "no", cpuid_bit(7, 0, 3, 25) ? "yes" : "no");
  std::printf("  hardware threads       %ld\n", ::sysconf(_SC_NPROCESSORS_ONLN));

  std::printf("\nstorage\n");
  std::printf("  io_uring               %s\n", build.io_uring_status.c_str());
  // Either directory may be unknown: the working directory can have been
  // removed, TMPDIR can name nothing.
  std::error_code cwd_error, tmp_error;
  const std::filesystem::path cwd = std::filesystem::current_path(cwd_error);
  const std::filesystem::path tmp = std::filesystem::temp_directory_path(tmp_error);
  struct Dir {
    const char* what;
    std::filesystem::path path;
    std::error_code error;
  };
  for (const Dir& d : {Dir{"the working directory", cwd, cwd_error}, Dir{"TMPDIR", tmp, tmp_error}}) {
    if (d.error) {
      std::printf("  O_DIRECT in %-10s unknown: %s\n", d.what, errno_text(d.error.value()).c_str());
    } else {
      std::printf("  O_DIRECT in %-10s %s\n", d.path.c_str(), direct_io_support(d.path.string()).c_str());
    }
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
    bar_line_open = true;
    if (done >= total) end_bar_line();
  }
};

// Refuses what `load` cannot read to the end: anything but a regular file,
// and a file whose size the kernel does not report (it says 0 but has bytes).
void check_loadable(const std::string& path) {
  (void)unimem::file_size(path);  // not_found, permission_denied, in the library's words
  unimem::platform::check_loadable_file(path, "unimem load");
}

// FILEs into the memory of every device in `devices` at once, through one
// Loader (each chunk registered once), `repeat` times each.
int load_gpu(const std::vector<std::string>& files, const std::vector<int>& devices, int repeat,
             std::optional<unimem::DType> dtype) {
  unimem::gpu::Loader loader(devices);
  std::string to = "GPU";
  for (std::size_t i = 0; i < devices.size(); ++i) to += (i ? "," : " ") + std::to_string(devices[i]);
  for (const std::string& path : files) {
    check_loadable(path);
    const bool model = path.ends_with(".safetensors") || path.ends_with(".json");
    std::vector<unimem::gpu::DeviceMemory> whole;
    std::vector<unimem::gpu::DeviceSegment> all;
    if (!model) {
      const std::uint64_t size = unimem::file_size(path);
      for (int device : devices) {
        whole.emplace_back(device, size);
        all.push_back({0, whole.back().address(), static_cast<std::size_t>(size), 1, 0, 0, device});
      }
    }
    for (int round = 0; round < repeat; ++round) {
      const auto start = std::chrono::steady_clock::now();
      std::uint64_t bytes = 0;
      std::size_t tensors = 0;
      unimem::ReadReport first;
      if (model) {
        unimem::gpu::TensorLoadOptions o;
        o.dtype = dtype;
        const std::vector<unimem::gpu::DeviceTensors> t = unimem::gpu::load_safetensors(path, loader, o);
        for (const auto& r : t[0].reports()) bytes += r.bytes;
        tensors = t[0].tensors().size();
        first = t[0].reports().empty() ? unimem::ReadReport{} : t[0].reports()[0];
      } else {
        first = loader.load(path, all);
        bytes = first.bytes;
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("%s -> %s, load %d: %s in %.3f s (%.2f GB/s) via %s%s%s", path.c_str(), to.c_str(), round + 1,
                  format_bytes(bytes).c_str(), seconds, bytes / seconds / 1e9, unimem::to_string(first.path),
                  first.fallback_reason.empty() ? "" : " — ", first.fallback_reason.c_str());
      if (model) std::printf("; %zu tensors%s%s", tensors, dtype ? " as " : "", dtype ? unimem::to_string(*dtype) : "");
      std::printf("\n");
    }
  }
  return 0;
}

// What backs the loaded bytes, and why: the first touch of fresh memory is
// most of a CPU load, and huge pages decide it.
void print_pages(const unimem::Tape& tape) {
  std::printf("  %s Block, %s of it on huge pages%s\n", format_bytes(tape.block().size()).c_str(),
              format_bytes(tape.block().huge_page_bytes()).c_str(),
              unimem::huge_pages_pay_off_for_loads() ? ""
                                                     : " (not asked for: none here, or a VM whose host takes "
                                                       "free memory back, where they fault in slower)");
}

int load(const std::string& path, bool direct, bool ring) {
  check_loadable(path);
  const std::uint64_t size = unimem::file_size(path);
  unimem::BlockOptions o;
  o.pinning = unimem::Pinning::unpinned;  // large files exceed non-root memlock limits
  o.shareable = false;                    // nobody else maps it; private memory gets huge pages
  o.huge_pages = unimem::huge_pages_pay_off_for_loads();
  unimem::ReadOptions r;
  r.direct = direct;
  r.io_uring = ring;
  r.progress = Bar{};
  const bool safetensors = path.size() > 12 && path.ends_with(".safetensors");
  const bool index = path.size() > 5 && path.ends_with(".json");  // a sharded model's index
  unimem::ReadReport report;
  std::size_t tensors = 0;
  bool in_place = false;
  const auto start = std::chrono::steady_clock::now();
  if (index) {  // every shard the library's resolver names, each checked for its tensors
    const std::vector<unimem::ModelFile> files = unimem::safetensors_model_files(path);
    std::uint64_t bytes = 0;
    for (const unimem::ModelFile& f : files) {  // every header checked before anything is loaded
      const unimem::SafetensorsHeader h = unimem::read_safetensors_header(f.path);
      for (const std::string& name : f.tensors) {
        if (std::none_of(h.tensors.begin(), h.tensors.end(), [&](const auto& t) { return t.name == name; })) {
          std::string why = "unimem: ";
          why.append(path).append(" puts \"").append(name).append("\" in ").append(f.path).append(", which lacks it");
          throw unimem::Error(unimem::Errc::not_found, 0, why);
        }
      }
      bytes += unimem::file_size(f.path) + (16u << 20);
    }
    unimem::Tape tape = unimem::Tape::start(bytes, o);
    for (const unimem::ModelFile& f : files) {
      unimem::Safetensors model = unimem::Safetensors::load(f.path, tape, 64, r);
      report.bytes += model.report().bytes;
      report.seconds += model.report().seconds;
      report.path = model.report().path;
      report.fallback_reason = model.report().fallback_reason;
      tensors += f.tensors.size();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s: %zu files, %zu tensors, %s in %.3f s (%.2f GB/s with setup) via %s\n", path.c_str(), files.size(),
                tensors, format_bytes(report.bytes).c_str(), seconds, report.bytes / seconds / 1e9,
                unimem::to_string(report.path));
    print_pages(tape);
    return 0;
  }
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
  print_pages(tape);
  return 0;
}

int run_command(const std::vector<std::string>& argv) {
  const int argc = static_cast<int>(argv.size());
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "info" && argc == 2) return info();
  if (cmd == "load") {
    bool gpu = false, direct = true, ring = true, options_done = false;
    std::vector<int> devices;
    int repeat = 1;
    std::optional<unimem::DType> dtype;
    std::vector<std::string> files;
    auto number = [](const std::string& text, int& out) {
      char* end = nullptr;
      const long v = std::strtol(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || v < 0 || v > 1'000'000) return false;
      out = static_cast<int>(v);
      return true;
    };
    for (int i = 2; i < argc; ++i) {
      const std::string& a = argv[i];
      if (!options_done && a == "--") {
        options_done = true;
      } else if (!options_done && a.size() > 1 && a[0] == '-') {
        if (a == "--gpu") {
          gpu = true;
          int n = 0;
          if (i + 1 < argc && argv[i + 1] == "all") {
            ++i;
            for (const auto& d : unimem::gpu::devices()) devices.push_back(d.ordinal);
          } else if (i + 1 < argc && number(argv[i + 1], n)) {
            ++i;
            devices.push_back(n);
          }
        } else if (a == "--repeat") {
          if (i + 1 >= argc || !number(argv[i + 1], repeat) || repeat == 0) {
            std::fprintf(stderr, "unimem load: --repeat needs a count of loads, 1 or more (%s)\n", kUsage);
            return 2;
          }
          ++i;
        } else if (a == "--dtype") {
          const std::string t = i + 1 < argc ? argv[i + 1] : "";
          if (t == "F32" || t == "F16" || t == "BF16") {
            dtype = t == "F32" ? unimem::DType::F32 : t == "F16" ? unimem::DType::F16 : unimem::DType::BF16;
          } else {
            std::fprintf(stderr, "unimem load: --dtype needs F32, F16 or BF16 (%s)\n", kUsage);
            return 2;
          }
          ++i;
        } else if (a == "--no-direct") {
          direct = false;
        } else if (a == "--no-io-uring") {
          ring = false;
        } else {
          std::fprintf(stderr, "unimem load: unknown option %s (%s)\n", a.c_str(), kUsage);
          return 2;
        }
      } else {
        files.push_back(a);
      }
    }
    if (files.empty()) {
      std::fprintf(stderr, "unimem load: no FILE given (%s)\n", kUsage);
      return 2;
    }
    if (gpu) {
      if (devices.empty()) devices.push_back(0);
      return load_gpu(files, devices, repeat, dtype);
    }
    if (files.size() > 1 || repeat != 1 || dtype) {
      std::fprintf(stderr, "unimem load: several FILEs, --repeat and --dtype need --gpu (%s)\n", kUsage);
      return 2;
    }
    return load(files[0], direct, ring);
  }
  std::fprintf(stderr, "%s\n", kUsage);
  return 2;
}

}  // namespace

namespace unimem::cli {

int run(const std::vector<std::string>& args) noexcept {
  int status = 1;
  try {
    status = run_command(args);
  } catch (const unimem::Error& e) {
    end_bar_line();
    std::fprintf(stderr, "%s [%s]\n", e.what(), unimem::to_string(e.code()));
  } catch (const std::exception& e) {
    end_bar_line();
    std::fprintf(stderr, "unimem: %s\n", e.what());
  } catch (...) {
    end_bar_line();
    std::fprintf(stderr, "unimem: failed with an unknown exception\n");
  }
  // The Python door writes to the same descriptors through its own buffers.
  std::fflush(stdout);
  std::fflush(stderr);
  return status;
}

}  // namespace unimem::cli
