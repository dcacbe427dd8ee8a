// src/remote/remote_benchmark.cpp — batched remote gets/puts beside ucx_perftest, same transport and size.
//
//   unimem_remote_benchmark [--tls tcp,sm,same_host] [--sizes 262144,...] [--cells N] [--seconds S]
//                           [--perftest PATH] [--gpu]
//
// For each transport (UCX_TLS; '+' stands for ',') and cell size: ucx_perftest
// as a server/client pair on loopback (ucp_get and ucp_put_bw, as many
// operations outstanding as a batch of ours; endpoints with error handling,
// -e, where ours detect peer failures: every transport but shared memory
// alone, see RemoteOptions::detect_peer_failure), then unimem: an exporter process (this binary, re-run)
// exports a SharedGrid; this process gets and puts batches of cells that are
// not adjacent (so each is one operation, the message size of perftest's).
// Prints GB/s and the ratio to perftest. "same_host" is not a UCX transport:
// the RemotePool's same-host route (the exporter's Block attached, cells
// copied with memcpy), beside perftest over shared memory (sm), UCX's fastest
// way between two processes of one host. Every row also prints the ceiling:
// one thread's memcpy of the same batch inside this process. --gpu (built with CUDA, on a GPU):
// the remote -> local pool -> GPU chain (get, then OffloadPool::fetch)
// beside the local fetch alone.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "remote/remote_testing.hpp"
#include "unimem/offload.hpp"
#include "unimem/remote.hpp"

#ifdef UNIMEM_REMOTE_BENCH_CUDA
#include <cuda_runtime.h>
#endif

namespace {

using namespace unimem;
using clock_type = std::chrono::steady_clock;

struct Options {
  std::vector<std::string> tls{"tcp", "sm", "same_host"};
  std::vector<std::size_t> sizes{256 << 10, 512 << 10, 1 << 20, 2 << 20};
  std::size_t batch = 16;
  double seconds = 1.0;
  std::string perftest = "ucx_perftest";
  bool gpu = false;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) {
    for (char& c : part) c = c == '+' ? ',' : c;
    out.push_back(part);
  }
  return out;
}

// The exporter: a SharedGrid (or an OffloadPool without a device) exported
// until stdin closes; the descriptor goes to stdout as hex.
int serve(std::size_t cell_size, std::size_t cells, bool offload_pool) {
  if (offload_pool) {
    gpu::OffloadPool pool = gpu::OffloadPool::create(cell_size, cells, gpu::kNoDevice);
    remote::Exporter ex = remote::Exporter::create(pool);
    std::printf("%s\n", remote::testing::to_hex(ex.descriptor()).c_str());
    std::fflush(stdout);
    char c;
    while (::read(0, &c, 1) > 0) {
    }
    return 0;
  }
  SharedGrid grid =
      SharedGrid::create(Block::open(SharedGrid::state_bytes(cells) + cell_size * cells), cell_size, cells);
  remote::Exporter ex = remote::Exporter::create(grid);
  std::printf("%s\n", remote::testing::to_hex(ex.descriptor()).c_str());
  std::fflush(stdout);
  char c;
  while (::read(0, &c, 1) > 0) {
  }
  return 0;
}

struct Server {
  pid_t pid = -1;
  int to = -1;
  FILE* from = nullptr;
  ~Server() {
    if (to >= 0) ::close(to);
    if (from != nullptr) std::fclose(from);
    if (pid > 0) ::waitpid(pid, nullptr, 0);
  }
};

// Starts this binary as an exporter and reads its descriptor.
std::vector<std::byte> start_exporter(Server& s, const char* self, std::size_t cell_size, std::size_t cells,
                                      bool offload_pool) {
  int in[2], out[2];
  if (::pipe(in) != 0 || ::pipe(out) != 0) std::exit(1);
  s.pid = ::fork();
  if (s.pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::close(in[1]);
    ::close(out[0]);
    const std::string size = std::to_string(cell_size), count = std::to_string(cells);
    ::execl(self, self, "--serve", size.c_str(), count.c_str(), offload_pool ? "pool" : "grid", nullptr);
    std::_Exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  s.to = in[1];
  s.from = ::fdopen(out[0], "r");
  std::string line(1 << 16, '\0');
  if (std::fgets(line.data(), static_cast<int>(line.size()), s.from) == nullptr) {
    std::fprintf(stderr, "the exporter said nothing\n");
    std::exit(1);
  }
  line.resize(std::strlen(line.c_str()));
  while (!line.empty() && line.back() == '\n') line.pop_back();
  return remote::testing::from_hex(line);
}

// Whether connections over `tls` ask UCX to detect peer failures: not over
// shared memory alone, where UCX cannot (and would refuse to connect).
bool detects(const std::string& tls) { return tls != "sm" && tls.find("tcp") != std::string::npos; }

// The row "same_host": the RemotePool's own route, UCX not carrying bytes.
bool same_host(const std::string& tls) { return tls == "same_host"; }

// What UCX_TLS the exporter (and perftest) get for a row.
std::string ucx_tls(const std::string& tls) { return same_host(tls) ? "sm" : tls; }

remote::RemotePool connect(const std::vector<std::byte>& descriptor, const std::string& tls) {
  remote::RemoteOptions options;
  options.detect_peer_failure = detects(tls);
  options.same_host = same_host(tls);
  remote::RemotePool far = remote::RemotePool::connect(descriptor, options);
  if ((far.route() == remote::Route::same_host) != same_host(tls)) {
    std::fprintf(stderr, "the %s row did not get its route\n", tls.c_str());
    std::exit(1);
  }
  return far;
}

// GB/s of `once()`, which moves `bytes`: three untimed calls, then as many
// as fit in o.seconds.
template <class Once>
double rate(const Options& o, std::size_t bytes, Once&& once) {
  for (int i = 0; i < 3; ++i) once();  // warm: connection, caches, first touch
  std::size_t calls = 0;
  const auto start = clock_type::now();
  double elapsed = 0;
  while (elapsed < o.seconds) {
    once();
    ++calls;
    elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
  }
  return static_cast<double>(calls * bytes) / elapsed / 1e9;
}

// One thread's memcpy of a batch of `batch` cells of `size` bytes between two
// buffers of this process (every other cell, as unimem_rate): the ceiling of
// any same-host route, in GB/s.
double memcpy_rate(const Options& o, std::size_t size) {
  std::vector<std::byte> from(2 * o.batch * size, std::byte{1}), to(2 * o.batch * size, std::byte{2});
  return rate(o, o.batch * size, [&] {
    for (std::size_t i = 0; i < o.batch; ++i) std::memcpy(to.data() + 2 * i * size, from.data() + 2 * i * size, size);
  });
}

// ucx_perftest's overall bandwidth in GB/s for `test` (ucp_get, ucp_put), or -1.
double perftest(const Options& o, const std::string& tls, const char* test, std::size_t size, std::size_t iters) {
  static int port = 20000 + static_cast<int>(::getpid() % 20000);
  ++port;
  const std::string common = "UCX_TLS='" + tls + "' " + o.perftest + " -t " + test + " -s " + std::to_string(size) +
                             " -n " + std::to_string(iters) + " -w " + std::to_string(iters / 10 + 1) + " -O " +
                             std::to_string(o.batch) + (detects(tls) ? " -e" : "") + " -p " + std::to_string(port);
  const std::string server = common + " >/dev/null 2>&1 &";
  if (std::system(server.c_str()) != 0) return -1;
  ::usleep(300000);
  FILE* client = ::popen((common + " localhost 2>/dev/null").c_str(), "r");
  if (client == nullptr) return -1;
  double mbps = -1;
  char line[1024];
  while (std::fgets(line, sizeof line, client) != nullptr) {
    // "Final:  iters  lat.typ  lat.avg  lat.overall  bw.avg  bw.overall  rate.avg  rate.overall"
    double v[8];
    if (std::sscanf(line, " Final: %lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                    &v[7]) == 8) {
      mbps = v[5];
    }
  }
  ::pclose(client);
  ::usleep(200000);                               // the server exits after the client
  return mbps < 0 ? -1 : mbps * 1048576.0 / 1e9;  // perftest's MB/s are MiB/s
}

// unimem's GB/s for batches of `batch` cells; `put` or get. `distinct`:
// every other cell (nothing merges), each into its own local buffer; else
// perftest's shape: one remote cell and one local buffer, named `batch`
// times (cache-hot on both sides, as perftest's one buffer is).
double unimem_rate(remote::RemotePool& far, const Options& o, bool put, std::size_t size, bool distinct) {
  const std::size_t cells = far.cells();
  std::vector<std::byte> local(2 * o.batch * size);
  std::vector<std::uint32_t> remote(o.batch);
  std::vector<std::byte*> where(o.batch);
  for (std::size_t i = 0; i < o.batch; ++i) {
    remote[i] = distinct ? static_cast<std::uint32_t>((2 * i) % cells) : 0;
    where[i] = distinct ? local.data() + 2 * i * size : local.data();
  }
  std::vector<const std::byte*> from(where.begin(), where.end());
  return rate(o, o.batch * size, [&] { (put ? far.put(remote, from) : far.get(remote, where)).wait(); });
}

#ifdef UNIMEM_REMOTE_BENCH_CUDA
// remote -> local pool -> GPU, beside the local pool -> GPU alone.
void gpu_chain(const Options& o, const char* self) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("gpu chain: skipped: no CUDA device\n");
    return;
  }
  for (const std::string& tls : o.tls) {
    ::setenv("UCX_TLS", ucx_tls(tls).c_str(), 1);
    for (std::size_t size : o.sizes) {
      const std::size_t cells = 2 * o.batch;
      Server server;
      const auto descriptor = start_exporter(server, self, size, cells, true);
      remote::RemotePool far = connect(descriptor, tls);
      gpu::OffloadPool pool = gpu::OffloadPool::create(size, o.batch, 0);
      std::vector<SharedCell> local(o.batch);
      if (pool.take(local) != TakeStatus::ok) std::exit(1);
      void* device = nullptr;
      cudaMalloc(&device, o.batch * size);
      cudaStream_t stream;
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      std::vector<std::uintptr_t> blocks(o.batch);
      std::vector<std::uint32_t> remote(o.batch);
      for (std::size_t i = 0; i < o.batch; ++i) {
        blocks[i] = reinterpret_cast<std::uintptr_t>(device) + i * size;
        remote[i] = static_cast<std::uint32_t>(2 * i);
      }
      auto run = [&](bool with_remote) {
        return rate(o, o.batch * size, [&] {
          if (with_remote) far.get(remote, local).wait();
          pool.fetch(local, blocks, size, stream).wait();
        });
      };
      const double chain = run(true), alone = run(false);
      std::printf("gpu chain  %-7s %8zu KiB  remote->pool->GPU %7.2f GB/s   pool->GPU alone %7.2f GB/s   %.2fx\n",
                  tls.c_str(), size >> 10, chain, alone, chain / alone);
      cudaStreamDestroy(stream);
      cudaFree(device);
    }
  }
}
#endif

}  // namespace

int main(int argc, char** argv) try {
  if (argc == 5 && std::string(argv[1]) == "--serve") {
    return serve(std::strtoull(argv[2], nullptr, 10), std::strtoull(argv[3], nullptr, 10),
                 std::string(argv[4]) == "pool");
  }
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--tls") {
      o.tls = split(v), ++i;
    } else if (a == "--sizes") {
      o.sizes.clear();
      for (const auto& s : split(v)) o.sizes.push_back(std::strtoull(s.c_str(), nullptr, 10));
      ++i;
    } else if (a == "--batch") {
      o.batch = std::strtoull(v, nullptr, 10), ++i;
    } else if (a == "--seconds") {
      o.seconds = std::strtod(v, nullptr), ++i;
    } else if (a == "--perftest") {
      o.perftest = v, ++i;
    } else if (a == "--gpu") {
      o.gpu = true;
    } else {
      std::fprintf(stderr, "usage: see src/remote/remote_benchmark.cpp\n");
      return 64;
    }
  }
  std::printf("%-9s %9s %-4s | %-30s | %s\n", "", "", "", "perftest's shape (1 cell x batch)",
              "distinct cells (batch of them)");
  std::printf("%-9s %9s %-4s | %8s %9s %7s | %8s %9s %7s   (GB/s)\n", "route", "cell", "op", "unimem", "perftest",
              "ratio", "unimem", "memcpy", "ratio");
  for (const std::string& tls : o.tls) {
    ::setenv("UCX_TLS", ucx_tls(tls).c_str(), 1);
    for (std::size_t size : o.sizes) {
      const double ceiling = memcpy_rate(o, size);
      Server server;
      const auto descriptor = start_exporter(server, argv[0], size, 2 * o.batch, false);
      remote::RemotePool far = connect(descriptor, tls);
      for (const char* op : {"get", "put"}) {
        const bool put = op[0] == 'p';
        const double ours = unimem_rate(far, o, put, size, false);
        const double ours_distinct = unimem_rate(far, o, put, size, true);
        // As many messages as ours moved in the time, at least 100.
        const auto iters =
            static_cast<std::size_t>(std::max(100.0, ours * 1e9 * o.seconds / static_cast<double>(size)));
        const double theirs = perftest(o, ucx_tls(tls), put ? "ucp_put_bw" : "ucp_get", size, iters);
        std::printf("%-9s %6zu KiB %-4s | %8.2f %9.2f %7s | %8.2f %9.2f %6.2fx\n", tls.c_str(), size >> 10, op, ours,
                    theirs, theirs > 0 ? (std::to_string(ours / theirs).substr(0, 4) + "x").c_str() : "n/a",
                    ours_distinct, ceiling, ours_distinct / ceiling);
        std::fflush(stdout);
      }
    }
  }
#ifdef UNIMEM_REMOTE_BENCH_CUDA
  if (o.gpu) gpu_chain(o, argv[0]);
#else
  if (o.gpu) std::printf("gpu chain: skipped: built without CUDA\n");
#endif
  return 0;
} catch (const unimem::Error& e) {
  std::fprintf(stderr, "unimem_remote_benchmark: %s (%s)\n", e.what(), unimem::to_string(e.code()));
  return 1;
}
