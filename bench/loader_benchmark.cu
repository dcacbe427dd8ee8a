// bench/loader_benchmark.cu — a cached file into GPU memory, every route side by side.
//
//   unimem_loader_benchmark FILE [--device N] [--reps R] [--safetensors] [--trace]
//   (--first-load-child: the fresh-process row's child, not for callers;
//   with --trace it also prints where its one load's time went)
// --trace: only where a staged load's time goes, per staging worker (waiting
// for its slot, reading, queueing copies), for a fresh and a kept Loader.
// FILE must be in the page cache (the benchmark reads it once first). One run
// prints, in one table, GB/s and the ratio to the pinned ceiling:
//   ceiling    cudaMemcpy from cudaMallocHost memory (the link rate)
//   unimem     gpu::Loader, first load (fresh Loader: registration overlapped
//              with DMA) at several chunk sizes; reload (registrations kept);
//              copy_file_to_device (a Loader per call, unregistered at the end);
//              the staged route (page cache copied into pinned slots)
//   baselines  read() into two pinned buffers + cudaMemcpyAsync, double-buffered
//              (what a competent engineer writes); read() into malloc + cudaMemcpy
// With --safetensors, FILE is a safetensors file and every tensor goes to its
// own 256-byte-aligned place in one device allocation; rows also convert
// every float tensor on the GPU, and with two GPUs a second table loads the
// model onto both at once (replicated, split by rows, split by columns).
// Each row is the best of R runs (default 3), after one untimed warm-up.
#include <cuda_runtime.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gpu/cuda_check.hpp"
#include "gpu/loader_probe.hpp"
#include "unimem/unimem.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double best_of(int reps, const std::function<void()>& f) {
  f();  // warm-up
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t).count());
  }
  return best;
}

struct Row {
  std::string what;
  double gbps;
};

void read_exact(int fd, std::byte* dest, std::size_t n, std::size_t offset) {
  while (n != 0) {
    const ssize_t r = ::pread(fd, dest, n, static_cast<off_t>(offset));
    if (r <= 0) {
      std::perror("pread");
      std::exit(1);
    }
    dest += r;
    n -= static_cast<std::size_t>(r);
    offset += static_cast<std::size_t>(r);
  }
}

unimem::SafetensorsHeader header_of(const std::string& path, std::size_t file_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  std::uint64_t header_len = 0;
  read_exact(fd, reinterpret_cast<std::byte*>(&header_len), 8, 0);
  std::vector<std::byte> prefix(8 + header_len);
  read_exact(fd, prefix.data(), prefix.size(), 0);
  ::close(fd);
  return unimem::parse_safetensors_header(prefix, file_bytes);
}

// The model onto two GPUs at once: replicated, and split for tensor
// parallelism, against the aggregate ceiling (pinned cudaMemcpyAsync to both
// devices at once) and two Loaders (one per GPU) on two threads. Then per
// GPU for replicated loads, against one link's ceiling: host to each GPU,
// and CopyOptions::peer_exchange (half over each link, half GPU to GPU),
// with the peer copy's own rate printed as that route's bound.
void two_gpus(const std::string& path, int device, int reps, void* pinned, std::size_t moved) {
  const int other = device == 0 ? 1 : 0;
  const int both[] = {device, other};
  std::vector<Row> rows;
  auto row = [&](const std::string& what, std::size_t bytes, double seconds) {
    rows.push_back({what, bytes / seconds / 1e9});
    std::printf("  %-72s %7.2f GB/s\n", what.c_str(), rows.back().gbps);
    std::fflush(stdout);
  };
  void* dev[2];
  cudaStream_t stream[2];
  for (int i = 0; i < 2; ++i) {
    CHECK(cudaSetDevice(both[i]));
    CHECK(cudaMalloc(&dev[i], moved));
    CHECK(cudaStreamCreate(&stream[i]));
  }
  row("ceiling: cudaMemcpyAsync from cudaMallocHost memory to both GPUs at once", 2 * moved, best_of(reps, [&] {
        for (int i = 0; i < 2; ++i) CHECK(cudaMemcpyAsync(dev[i], pinned, moved, cudaMemcpyHostToDevice, stream[i]));
        for (int i = 0; i < 2; ++i) CHECK(cudaStreamSynchronize(stream[i]));
      }));
  // Per GPU, for replicated loads: one link's ceiling, and the bound of the
  // peer exchange (each GPU takes half over its link, the other half from
  // its peer): the peer copy's rate, one way and both ways at once.
  std::vector<Row> per_gpu;
  auto per = [&](const std::string& what, double seconds) {
    per_gpu.push_back({what, moved / seconds / 1e9});
    std::printf("  %-72s %7.2f GB/s per GPU\n", what.c_str(), per_gpu.back().gbps);
    std::fflush(stdout);
  };
  per("ceiling: one link, cudaMemcpyAsync from cudaMallocHost memory", best_of(reps, [&] {
        CHECK(cudaMemcpyAsync(dev[0], pinned, moved, cudaMemcpyHostToDevice, stream[0]));
        CHECK(cudaStreamSynchronize(stream[0]));
      }));
  int peer_ok = 0, back_ok = 0;
  CHECK(cudaDeviceCanAccessPeer(&peer_ok, both[0], both[1]));
  CHECK(cudaDeviceCanAccessPeer(&back_ok, both[1], both[0]));
  if (peer_ok && back_ok) {
    for (int i = 0; i < 2; ++i) {
      CHECK(cudaSetDevice(both[i]));
      const cudaError_t e = cudaDeviceEnablePeerAccess(both[1 - i], 0);
      if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) CHECK(e);
      (void)cudaGetLastError();
    }
    per("bound: peer copy GPU to GPU, one way (cudaMemcpyPeerAsync)", best_of(reps, [&] {
          CHECK(cudaMemcpyPeerAsync(dev[1], both[1], dev[0], both[0], moved, stream[0]));
          CHECK(cudaStreamSynchronize(stream[0]));
        }));
    per("bound: peer copy both ways at once (each GPU's rate)", best_of(reps, [&] {
          CHECK(cudaMemcpyPeerAsync(dev[1], both[1], dev[0], both[0], moved, stream[0]));
          CHECK(cudaMemcpyPeerAsync(dev[0], both[0], dev[1], both[1], moved, stream[1]));
          for (int i = 0; i < 2; ++i) CHECK(cudaStreamSynchronize(stream[i]));
        }));
  } else {
    std::printf("  no peer access between GPUs %d and %d: peer exchange cannot run here\n", both[0], both[1]);
  }
  for (int i = 0; i < 2; ++i) {
    CHECK(cudaSetDevice(both[i]));
    CHECK(cudaFree(dev[i]));
    CHECK(cudaStreamDestroy(stream[i]));
  }
  CHECK(cudaSetDevice(device));
  unimem::gpu::TensorLoadOptions replicate;
  // First loads: one Loader registers each chunk once for both GPUs; two
  // Loaders register everything twice (the driver serializes registrations).
  row("unimem: one Loader, both GPUs, replicated, first load (fresh Loader)", 2 * moved, best_of(reps, [&] {
        unimem::gpu::Loader fresh(both);
        (void)unimem::gpu::load_safetensors(path, fresh, replicate);
      }));
  row("baseline: two fresh Loaders (one per GPU) on two threads, replicated, first load", 2 * moved, best_of(reps, [&] {
        unimem::gpu::Loader a(device), b(other);
        std::thread t([&] { (void)unimem::gpu::load_safetensors(path, b); });
        (void)unimem::gpu::load_safetensors(path, a);
        t.join();
      }));
  unimem::gpu::Loader loader(both);
  (void)unimem::gpu::load_safetensors(path, loader, replicate);  // registers
  row("unimem: one Loader, both GPUs, every tensor replicated (kept Loader)", 2 * moved,
      best_of(reps, [&] { (void)unimem::gpu::load_safetensors(path, loader, replicate); }));
  for (auto split : {unimem::gpu::Split::rows, unimem::gpu::Split::columns}) {
    unimem::gpu::TensorLoadOptions o;
    o.split = [split](const unimem::TensorInfo&) { return split; };
    row(std::string("unimem: one Loader, both GPUs, every tensor split by ") +
            (split == unimem::gpu::Split::rows ? "rows" : "columns (strided copies)"),
        moved, best_of(reps, [&] { (void)unimem::gpu::load_safetensors(path, loader, o); }));
  }
  {
    unimem::gpu::Loader a(device), b(other);
    auto both_at_once = [&] {
      std::thread t([&] { (void)unimem::gpu::load_safetensors(path, b); });
      (void)unimem::gpu::load_safetensors(path, a);
      t.join();
    };
    both_at_once();  // registers
    row("baseline: two Loaders (one per GPU, each registering) on two threads, replicated", 2 * moved,
        best_of(reps, both_at_once));
  }
  // Replicated loads per GPU, with and without the peer exchange.
  unimem::gpu::CopyOptions exchange;
  exchange.peer_exchange = true;
  per("unimem: one Loader, both GPUs, replicated, first load (fresh Loader), host to each", best_of(reps, [&] {
        unimem::gpu::Loader fresh(both);
        (void)unimem::gpu::load_safetensors(path, fresh, replicate);
      }));
  if (peer_ok && back_ok) {
    per("unimem: the same with peer_exchange (half over each link, half GPU to GPU)", best_of(reps, [&] {
          unimem::gpu::Loader fresh(both, exchange);
          (void)unimem::gpu::load_safetensors(path, fresh, replicate);
        }));
    unimem::gpu::Loader kept(both, exchange);
    const std::string why =
        unimem::gpu::load_safetensors(path, kept, replicate).front().reports().front().fallback_reason;
    std::printf("    with peer_exchange: %s\n", why.c_str());
    (void)unimem::gpu::load_safetensors(path, kept, replicate);  // registers
    per("unimem: kept Loader with peer_exchange, later loads",
        best_of(reps, [&] { (void)unimem::gpu::load_safetensors(path, kept, replicate); }));
  }
  per("unimem: kept Loader, host to each, later loads",
      best_of(reps, [&] { (void)unimem::gpu::load_safetensors(path, loader, replicate); }));
  const double ceiling = rows.front().gbps;
  std::printf("\n| two GPUs | GB/s (aggregate) | x ceiling |\n|---|---|---|\n");
  for (const Row& r : rows) std::printf("| %s | %.2f | %.2f |\n", r.what.c_str(), r.gbps, r.gbps / ceiling);
  const double link = per_gpu.front().gbps;
  std::printf("\n| replicated, per GPU | GB/s per GPU | x one link |\n|---|---|---|\n");
  for (const Row& r : per_gpu) std::printf("| %s | %.2f | %.2f |\n", r.what.c_str(), r.gbps, r.gbps / link);
}

// Where a staged load's time goes: per worker, the time it waited for its
// slots, read and queued copies, summed over its slices.
struct Trace : unimem::gpu::detail::LoaderProbe {
  struct Worker {
    std::size_t slices = 0;
    double wait = 0, read = 0, queue = 0;
    Clock::time_point first{}, last{};
  };
  std::vector<Worker> workers = std::vector<Worker>(256);
  std::mutex lock;
  double made_s = -1;  // the longest a worker took to make its slots and streams
  Clock::time_point starting{};
  std::vector<std::pair<const char*, Clock::time_point>> steps =
      std::vector<std::pair<const char*, Clock::time_point>>(8);
  std::size_t step_count = 0;  // the loading thread's alone
  void workers_starting() noexcept override { starting = Clock::now(); }
  void step(const char* what) noexcept override {
    if (step_count < steps.size()) steps[step_count++] = {what, Clock::now()};
  }
  void staged_slice(std::size_t w, double wait_s, double read_s, double queue_s) noexcept override {
    Worker& k = workers[w % workers.size()];  // each worker writes only its own entry
    const auto now = Clock::now();
    if (k.slices++ == 0)
      k.first =
          now - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait_s + read_s + queue_s));
    k.last = now;
    k.wait += wait_s;
    k.read += read_s;
    k.queue += queue_s;
  }
  double streams_s = 0, backing_s = 0, registering_s = 0;  // summed over the workers made
  std::size_t made = 0;
  void worker_made(std::size_t, double seconds, double streams, double backing, double registering) noexcept override {
    std::lock_guard hold(lock);
    made_s = std::max(made_s, seconds);
    streams_s += streams;
    backing_s += backing;
    registering_s += registering;
    ++made;
  }
  void print(const char* what, Clock::time_point start, double seconds, std::size_t bytes) const {
    std::size_t n = 0, slices = 0;
    double wait = 0, read = 0, queue = 0, late = 0, early = 1e30, early_end = 1e30, late_end = 0;
    for (const Worker& k : workers) {
      if (k.slices == 0) continue;
      ++n;
      slices += k.slices;
      wait += k.wait;
      read += k.read;
      queue += k.queue;
      late = std::max(late, std::chrono::duration<double>(k.first - start).count());
      early = std::min(early, std::chrono::duration<double>(k.first - start).count());
      const double end = std::chrono::duration<double>(k.last - start).count();
      early_end = std::min(early_end, end);
      late_end = std::max(late_end, end);
    }
    std::printf("  trace %s: %.1f ms, %.2f GB/s; %zu workers, %zu slices", what, seconds * 1e3, bytes / seconds / 1e9,
                n, slices);
    for (std::size_t i = 0; i < step_count; ++i) {
      std::printf("; %s at %.1f ms", steps[i].first,
                  std::chrono::duration<double, std::milli>(steps[i].second - start).count());
    }
    if (made_s >= 0) {
      std::printf(
          "; workers made their slots and streams in at most %.1f ms (mean: streams %.2f, backing %.2f, "
          "registering %.2f ms)",
          made_s * 1e3, streams_s / made * 1e3, backing_s / made * 1e3, registering_s / made * 1e3);
    }
    if (n == 0) {
      std::printf("\n");
      return;
    }
    std::printf(
        "\n    per worker (mean): wait %.1f ms, read %.1f ms (%.2f GB/s each, %.2f all), queue %.1f ms;"
        " set going at %.1f ms, workers started %.1f-%.1f ms, ended %.1f-%.1f ms\n",
        wait / n * 1e3, read / n * 1e3, bytes / read / 1e9, bytes / (read / n) / 1e9, queue / n * 1e3,
        std::chrono::duration<double, std::milli>(starting - start).count(), early * 1e3, late * 1e3, early_end * 1e3,
        late_end * 1e3);
  }
};

int trace(const std::string& path, int device, int reps, const std::vector<unimem::gpu::DeviceSegment>& segments,
          std::size_t moved) {
  for (int rep = 0; rep < 3; ++rep) {  // what the workers' slots cost to make, by part
    unimem::BlockOptions b;
    b.pinning = unimem::Pinning::unpinned;
    b.shareable = false;
    b.huge_pages = true;
    b.backing = unimem::Backing::warm;
    auto t = Clock::now();
    unimem::Block block = unimem::Block::open(std::size_t{128} << 20, b);
    const double backed = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
    t = Clock::now();
    block.make_gpu_visible();
    const double registered = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
    b.visibility = unimem::Visibility::gpus;
    b.warm_threads = 1;
    t = Clock::now();
    std::vector<unimem::Block> small;
    for (int k = 0; k < 16; ++k) small.push_back(unimem::Block::open(std::size_t{8} << 20, b));
    const double sixteen = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
    std::printf(
        "  slots: Block::open 128 MiB warm huge private %.2f ms (huge %zu MiB), make_gpu_visible %.2f ms; "
        "16 x Block::open 8 MiB gpus, one thread %.2f ms\n",
        backed, block.huge_page_bytes() >> 20, registered, sixteen);
  }
  unimem::gpu::CopyOptions o;
  o.register_page_cache = unimem::gpu::PageCacheRegistration::never;
  for (int fresh = 1; fresh >= 0; --fresh) {
    std::optional<unimem::gpu::Loader> kept;
    if (!fresh) kept.emplace(device, o), (void)kept->load(path, segments);
    for (int i = 0; i < reps; ++i) {
      std::optional<unimem::gpu::Loader> made;
      if (fresh) made.emplace(device, o);
      unimem::gpu::Loader& loader = fresh ? *made : *kept;
      Trace t;
      unimem::gpu::detail::set_loader_probe(&t);
      const auto start = Clock::now();
      (void)loader.load(path, segments);
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      unimem::gpu::detail::set_loader_probe(nullptr);
      t.print(fresh ? "fresh Loader, first load" : "kept Loader, later load", start, s, moved);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE [--device N] [--reps R] [--safetensors]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  int device = 0, reps = 3;
  bool safetensors = false, first_load_child = false, tracing = false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) {
      device = std::atoi(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--safetensors") {
      safetensors = true;
    } else if (a == "--trace") {
      tracing = true;
    } else if (a == "--first-load-child") {
      first_load_child = true;
    } else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  CHECK(cudaSetDevice(device));
  if (first_load_child) {  // one first load, in this fresh process, after the context exists
    CHECK(cudaFree(nullptr));
    Trace probe;  // with --trace: where this first load's time goes
    if (tracing) unimem::gpu::detail::set_loader_probe(&probe);
    const auto t = Clock::now();
    unimem::gpu::Loader loader(device);
    const unimem::gpu::DeviceTensors tensors = unimem::gpu::load_safetensors(path, loader);
    const double seconds = std::chrono::duration<double>(Clock::now() - t).count();
    std::printf("first-load-seconds %.6f\n", seconds);
    if (tracing) {
      unimem::gpu::detail::set_loader_probe(nullptr);
      std::size_t moved = 0;
      for (const auto& x : tensors.tensors()) moved += x.bytes;
      probe.print("fresh process, load_safetensors", t, seconds, moved);
    }
    return tensors.tensors().empty() ? 1 : 0;
  }
  const std::size_t bytes = unimem::file_size(path);

  // What goes where: the whole file, or every tensor at 256-byte alignment.
  std::vector<unimem::gpu::DeviceSegment> segments;
  std::size_t device_bytes = bytes;
  unimem::SafetensorsHeader h;
  if (safetensors) {
    h = header_of(path, bytes);
    device_bytes = 0;
    for (const auto& t : h.tensors) device_bytes += (t.bytes + 255) / 256 * 256;
    segments.reserve(h.tensors.size());
    std::printf("%zu tensors\n", h.tensors.size());
  }
  void* dev = nullptr;
  CHECK(cudaMalloc(&dev, device_bytes));
  const auto base = reinterpret_cast<std::uintptr_t>(dev);
  if (safetensors) {
    std::size_t at = 0;
    for (const auto& t : h.tensors) {
      segments.push_back({t.file_offset, base + at, t.bytes});
      at += (t.bytes + 255) / 256 * 256;
    }
  } else {
    segments.push_back({0, base, bytes});
  }
  std::size_t moved = 0;
  for (const auto& s : segments) moved += s.bytes;

  // Into the page cache.
  {
    std::vector<std::byte> sink(64u << 20);
    const int fd = ::open(path.c_str(), O_RDONLY);
    for (std::size_t off = 0; off < bytes; off += sink.size()) {
      read_exact(fd, sink.data(), std::min(sink.size(), bytes - off), off);
    }
    ::close(fd);
  }
  std::printf("%s: %.2f GiB, %.0f%% in the page cache; moving %.2f GiB to device %d\n", path.c_str(),
              bytes / 1073741824.0, 100 * unimem::page_cache_fraction(path, 0, bytes), moved / 1073741824.0, device);
  if (tracing) return trace(path, device, reps, segments, moved);
  std::vector<Row> rows;
  auto row = [&](const std::string& what, double seconds) {
    rows.push_back({what, moved / seconds / 1e9});
    std::printf("  %-72s %7.2f GB/s\n", what.c_str(), rows.back().gbps);
    std::fflush(stdout);
  };

  // The ceiling: pinned memory, one cudaMemcpy.
  void* pinned = nullptr;
  CHECK(cudaMallocHost(&pinned, moved));
  std::memset(pinned, 1, moved);
  row("ceiling: cudaMemcpy from cudaMallocHost memory",
      best_of(reps, [&] { CHECK(cudaMemcpy(dev, pinned, moved, cudaMemcpyHostToDevice)); }));

  // unimem, first loads: a fresh Loader each time (made before the clock
  // starts); releasing what it registered is timed on its own.
  struct Route {
    const char* name;
    unimem::gpu::PageCacheRegistration policy;
    bool both_routes;
  };
  for (const Route& route :
       {Route{"defaults (staged by the workers)", unimem::gpu::PageCacheRegistration::on_reload, true},
        Route{"always: registers from the front, workers stage from the back",
              unimem::gpu::PageCacheRegistration::always, true},
        Route{"always, both_routes = false: registers every chunk", unimem::gpu::PageCacheRegistration::always,
              false}}) {
    unimem::gpu::CopyOptions o;
    o.register_page_cache = route.policy;
    o.both_routes = route.both_routes;
    unimem::ReadReport last;
    double best = 1e30, release = 0;
    for (int i = 0; i <= reps; ++i) {
      unimem::gpu::Loader loader(device, o);
      const auto t = Clock::now();
      last = loader.load(path, segments);
      const double dt = std::chrono::duration<double>(Clock::now() - t).count();
      const auto r = Clock::now();
      loader.release();
      if (i > 0 && dt < best) {  // the first is the warm-up
        best = dt;
        release = std::chrono::duration<double>(Clock::now() - r).count();
      }
    }
    row(std::string("unimem Loader, first load, ") + route.name + " (" + unimem::to_string(last.path) + ")", best);
    std::printf("    %s; release afterwards %.1f ms\n", last.fallback_reason.c_str(), release * 1e3);
  }
  {  // the workers' rate alone: a kept Loader that never registers
    unimem::gpu::CopyOptions o;
    o.register_page_cache = unimem::gpu::PageCacheRegistration::never;
    unimem::gpu::Loader loader(device, o);
    const unimem::ReadReport first = loader.load(path, segments);
    std::printf("    first load of a kept Loader: %.2f GB/s; %s\n", moved / first.seconds / 1e9,
                first.fallback_reason.c_str());
    row("unimem Loader, later loads, staged by the workers (never; kept Loader)",
        best_of(reps, [&] { (void)loader.load(path, segments); }));
  }
  {
    // The second load of a file (defaults: registers where registering runs
    // near staging's rate), best of `reps` Loaders each loading it twice.
    std::optional<unimem::gpu::Loader> loader;
    double second_s = 1e30;
    unimem::ReadReport second;
    for (int rep = 0; rep < reps; ++rep) {
      loader.emplace(device);
      (void)loader->load(path, segments);  // first load: staged
      const auto t = Clock::now();
      second = loader->load(path, segments);
      second_s = std::min(second_s, std::chrono::duration<double>(Clock::now() - t).count());
    }
    std::printf("    second load: %s\n", second.fallback_reason.c_str());
    row(std::string("unimem Loader (defaults), second load (") + unimem::to_string(second.path) + ")", second_s);
    row("unimem Loader (defaults), third and later loads (" +
            std::string(unimem::to_string(loader->load(path, segments).path)) + ")",
        best_of(reps, [&] { (void)loader->load(path, segments); }));
    std::printf("    registered: %.2f GiB\n", loader->registered_bytes() / 1073741824.0);
  }
  if (safetensors) {  // the whole API: headers, one device allocation, every tensor
    // What a serving process pays: a fresh process whose CUDA context exists
    // (as PyTorch's does), a new Loader, load_safetensors; this binary again
    // per run, each timing itself from the Loader's construction on.
    double fresh = 1e30;
    for (int i = 0; i < reps; ++i) {
      const std::string command =
          std::string(argv[0]) + " " + path + " --device " + std::to_string(device) + " --first-load-child";
      FILE* child = ::popen(command.c_str(), "r");
      double seconds = 0;
      if (child == nullptr || std::fscanf(child, "first-load-seconds %lf", &seconds) != 1) {
        std::fprintf(stderr, "the first-load child failed\n");
        return 1;
      }
      if (::pclose(child) != 0) return 1;
      fresh = std::min(fresh, seconds);
    }
    row("unimem gpu::load_safetensors, first load in a fresh process (new Loader; allocation included)", fresh);
    row("unimem gpu::load_safetensors, first load (fresh Loader; allocation included)", best_of(reps, [&] {
          unimem::gpu::Loader loader(device);
          (void)unimem::gpu::load_safetensors(path, loader);
        }));
    unimem::gpu::Loader kept(device);
    (void)unimem::gpu::load_safetensors(path, kept);
    (void)unimem::gpu::load_safetensors(path, kept);  // registers
    row("unimem gpu::load_safetensors, later loads (kept Loader; allocation included)",
        best_of(reps, [&] { (void)unimem::gpu::load_safetensors(path, kept); }));
    for (unimem::DType to : {unimem::DType::F16, unimem::DType::F32}) {
      unimem::gpu::TensorLoadOptions o;
      o.dtype = to;
      row(std::string("unimem gpu::load_safetensors, later loads, every float tensor converted to ") +
              unimem::to_string(to) + " on the GPU (GB/s of file bytes)",
          best_of(reps, [&] { (void)unimem::gpu::load_safetensors(path, kept, o); }));
    }
  }
  row("unimem copy_file_to_device, defaults (a first load)",
      best_of(reps, [&] { (void)unimem::gpu::copy_file_to_device(path, segments, device); }));

  // Baselines.
  {
    constexpr std::size_t kChunk = 64u << 20;
    void* buf[2] = {nullptr, nullptr};
    CHECK(cudaMallocHost(&buf[0], kChunk));
    CHECK(cudaMallocHost(&buf[1], kChunk));
    cudaStream_t stream;
    cudaEvent_t done[2];
    CHECK(cudaStreamCreate(&stream));
    CHECK(cudaEventCreateWithFlags(&done[0], cudaEventDisableTiming));
    CHECK(cudaEventCreateWithFlags(&done[1], cudaEventDisableTiming));
    row("baseline: pread() into 2 pinned 64 MiB buffers + cudaMemcpyAsync", best_of(reps, [&] {
          const int fd = ::open(path.c_str(), O_RDONLY);
          int k = 0;
          for (const auto& s : segments) {
            for (std::size_t off = 0; off < s.bytes; off += kChunk, k ^= 1) {
              const std::size_t n = std::min(kChunk, s.bytes - off);
              CHECK(cudaEventSynchronize(done[k]));
              read_exact(fd, static_cast<std::byte*>(buf[k]), n, s.file_offset + off);
              CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(s.device_address + off), buf[k], n, cudaMemcpyHostToDevice,
                                    stream));
              CHECK(cudaEventRecord(done[k], stream));
            }
          }
          CHECK(cudaStreamSynchronize(stream));
          ::close(fd);
        }));
    CHECK(cudaFreeHost(buf[0]));
    CHECK(cudaFreeHost(buf[1]));
  }
  {
    std::vector<std::byte> heap(bytes);
    row("baseline: read() the file into malloc, cudaMemcpy per segment (pageable)", best_of(reps, [&] {
          const int fd = ::open(path.c_str(), O_RDONLY);
          read_exact(fd, heap.data(), bytes, 0);
          ::close(fd);
          for (const auto& s : segments) {
            CHECK(cudaMemcpy(reinterpret_cast<void*>(s.device_address), heap.data() + s.file_offset, s.bytes,
                             cudaMemcpyHostToDevice));
          }
        }));
  }

  // Check the last load's bytes against the file.
  {
    unimem::gpu::Loader loader(device);
    CHECK(cudaMemset(dev, 0, device_bytes));
    (void)loader.load(path, segments);
    std::vector<std::byte> host(device_bytes), file(bytes);
    CHECK(cudaMemcpy(host.data(), dev, device_bytes, cudaMemcpyDeviceToHost));
    const int fd = ::open(path.c_str(), O_RDONLY);
    read_exact(fd, file.data(), bytes, 0);
    ::close(fd);
    std::size_t wrong = 0;
    for (const auto& s : segments) {
      wrong += std::memcmp(host.data() + (s.device_address - base), file.data() + s.file_offset, s.bytes) != 0;
    }
    std::printf("check: %zu of %zu segments differ from the file\n", wrong, segments.size());
    if (wrong != 0) return 1;
  }

  const double ceiling = rows.front().gbps;
  std::printf("\n| route | GB/s | x ceiling |\n|---|---|---|\n");
  for (const Row& r : rows) std::printf("| %s | %.2f | %.2f |\n", r.what.c_str(), r.gbps, r.gbps / ceiling);
  int gpus = 0;
  CHECK(cudaGetDeviceCount(&gpus));
  if (safetensors && gpus >= 2) two_gpus(path, device, reps, pinned, moved);
  CHECK(cudaFreeHost(pinned));
  CHECK(cudaFree(dev));
  return 0;
}
