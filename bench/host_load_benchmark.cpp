// bench/host_load_benchmark.cpp — a cached file into fresh host memory, by the
// pages that back it, each load in a fresh process.
//
//   unimem_host_load_benchmark FILE [--reps N] [--cool SECONDS] [--only a,b,...]
//
// A CPU load (Python's load_safetensors(device="cpu"), `unimem load`, the
// demo's weights) writes every page of memory nobody touched before, so its
// cost is the first touch as much as the copy: which page size backs the
// memory decides it. Each row is one way of doing the same load, timed from
// the allocation to the last byte read, in its own process (a second load in
// one process would reuse memory that is already backed):
//   naive      malloc + pread in 1 MiB pieces, one thread (what a first version does)
//   malloc     malloc + unimem::read_file (the same reader as the Block rows:
//              isolates the pages from the route)
//   4k         a private Block of base pages, unpinned, + read_file
//   huge       a private Block asking for huge pages, unpinned, + read_file
//   4k-pinned, huge-pinned   the same, pinned (the Python default where
//              RLIMIT_MEMLOCK allows)
//   ceiling    read_file into memory backed before the clock starts: the copy alone
// Rows alternate, N rounds. --cool sleeps before every load, so that memory
// the previous process freed is cold again: on a VM whose balloon reports free
// pages to its host (virtio free page reporting, printed in the header) the host
// takes reported 2 MiB blocks back, and touching them again costs more than
// reusing memory freed a moment ago. A load that follows another is the hot case.
// FILE must be in the page cache (it is read once first).
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "platform/region.hpp"
#include "unimem/unimem.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  const char* name;
  const char* what;
};
constexpr Row kRows[] = {
    {"naive", "malloc + pread 1 MiB, 1 thread"},
    {"malloc", "malloc + read_file"},
    {"4k", "Block, base pages + read_file"},
    {"huge", "Block, huge pages + read_file"},
    {"4k-pinned", "Block, base pages, pinned + read_file"},
    {"huge-pinned", "Block, huge pages, pinned + read_file"},
    {"ceiling", "read_file into memory backed first"},
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// The bracketed choice of a THP policy file ("[madvise]" -> "madvise").
std::string policy(const std::string& path) {
  const std::string text = read_text(path);
  const auto open = text.find('['), close = text.find(']');
  return open == std::string::npos || close == std::string::npos ? "?" : text.substr(open + 1, close - open - 1);
}

// One load, in this (fresh) process. Returns its seconds.
double load_once(const std::string& row, const std::string& path) {
  const std::size_t size = unimem::file_size(path);
  const auto start = Clock::now();
  std::byte* sink = nullptr;
  if (row == "naive" || row == "malloc" || row == "ceiling") {
    auto* p = static_cast<std::byte*>(std::malloc(size));
    if (p == nullptr) throw std::bad_alloc();
    if (row == "naive") {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw std::runtime_error("cannot open " + path);
      for (std::size_t done = 0; done < size;) {
        const ssize_t n =
            ::pread(fd, p + done, std::min<std::size_t>(size - done, std::size_t{1} << 20), static_cast<off_t>(done));
        if (n <= 0) throw std::runtime_error("short read of " + path);
        done += static_cast<std::size_t>(n);
      }
      ::close(fd);
    } else if (row == "malloc") {
      unimem::read_file(path, 0, {p, size});
    } else {
      std::memset(p, 1, size);  // backed before the clock starts
      const auto copy = Clock::now();
      unimem::read_file(path, 0, {p, size});
      const double s = std::chrono::duration<double>(Clock::now() - copy).count();
      std::free(p);
      return s;
    }
    sink = p;
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    std::free(sink);
    return s;
  }
  unimem::BlockOptions o;
  o.shareable = false;
  o.huge_pages = row.starts_with("huge");
  o.pinning = row.ends_with("-pinned") ? unimem::Pinning::pinned : unimem::Pinning::unpinned;
  unimem::Block block = unimem::Block::open(size, o);
  unimem::read_file(path, 0, block.bytes().first(size));
  const double s = std::chrono::duration<double>(Clock::now() - start).count();
  if (o.huge_pages && block.huge_page_bytes() == 0) std::fprintf(stderr, "note: %s got no huge page\n", row.c_str());
  return s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int usage() {
  std::fprintf(stderr, "usage: unimem_host_load_benchmark FILE [--reps N] [--cool SECONDS] [--only ROW,...]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc == 4 && std::string(argv[1]) == "--child") {
    std::printf("seconds %.9f\n", load_once(argv[2], argv[3]));
    return 0;
  }
  if (argc < 2) return usage();
  const std::string path = argv[1];
  int reps = 5;
  double cool = 0;
  std::vector<std::string> rows;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--cool" && i + 1 < argc) {
      cool = std::max(0.0, std::atof(argv[++i]));
    } else if (a == "--only" && i + 1 < argc) {
      std::stringstream list(argv[++i]);
      for (std::string r; std::getline(list, r, ',');) rows.push_back(r);
    } else {
      return usage();
    }
  }
  if (rows.empty()) {
    for (const Row& r : kRows) rows.emplace_back(r.name);
  }
  for (const std::string& r : rows) {
    if (std::none_of(std::begin(kRows), std::end(kRows), [&](const Row& k) { return r == k.name; })) {
      std::fprintf(stderr, "unknown row %s\n", r.c_str());
      return usage();
    }
  }
  const std::size_t size = unimem::file_size(path);
  {  // into the page cache
    std::vector<std::byte> buf(std::size_t{1} << 20);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path);
    while (::read(fd, buf.data(), buf.size()) > 0) {
    }
    ::close(fd);
  }
  std::printf("%s: %.1f MiB, cached; THP %s (defrag %s); free page reporting to a VM host: %s; %d rounds, %s\n",
              path.c_str(), size / 1048576.0, policy("/sys/kernel/mm/transparent_hugepage/enabled").c_str(),
              policy("/sys/kernel/mm/transparent_hugepage/defrag").c_str(),
              unimem::platform::free_memory_returns_to_host("/sys/bus/virtio/devices") ? "yes" : "no", reps,
              cool > 0 ? ("each load after " + std::to_string(cool).substr(0, 4) + " s idle (cold)").c_str()
                       : "loads back to back (hot)");
  std::fflush(stdout);
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();  // popen runs a shell
  std::map<std::string, std::vector<double>> seconds;
  for (int rep = 0; rep < reps; ++rep) {
    for (std::size_t k = 0; k < rows.size(); ++k) {
      const std::string& row = rows[(k + static_cast<std::size_t>(rep)) % rows.size()];  // rotate the order
      if (cool > 0) std::this_thread::sleep_for(std::chrono::duration<double>(cool));
      const std::string command = "'" + self + "' --child " + row + " '" + path + "'";
      FILE* child = ::popen(command.c_str(), "r");
      double s = 0;
      const bool ok = child != nullptr && std::fscanf(child, "seconds %lf", &s) == 1;
      if (child != nullptr && ::pclose(child) != 0) {
        std::fprintf(stderr, "the %s child failed\n", row.c_str());
        return 1;
      }
      if (!ok) {
        std::fprintf(stderr, "the %s child printed no time\n", row.c_str());
        return 1;
      }
      seconds[row].push_back(s);
    }
  }
  // Ratios against malloc + the same reader (what a competent loader does
  // without unimem), not against the one-thread naive row.
  const double baseline = seconds.count("malloc") ? median(seconds["malloc"]) : 0;
  std::printf("%-12s %-40s %9s %9s %9s %8s %10s\n", "row", "what", "median ms", "min ms", "max ms", "GB/s",
              "malloc / x");
  for (const Row& r : kRows) {
    if (!seconds.count(r.name)) continue;
    const std::vector<double>& v = seconds[r.name];
    const double m = median(v);
    std::printf("%-12s %-40s %9.1f %9.1f %9.1f %8.2f %10s\n", r.name, r.what, m * 1e3,
                *std::min_element(v.begin(), v.end()) * 1e3, *std::max_element(v.begin(), v.end()) * 1e3,
                size / m / 1e9, baseline > 0 ? (std::to_string(baseline / m).substr(0, 4) + "x").c_str() : "-");
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "unimem_host_load_benchmark: %s\n", e.what());
  return 1;
}
