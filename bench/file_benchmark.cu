// bench/file_benchmark.cu — storage to memory and to the GPU, side by side.
//
//   unimem_file_benchmark --dir DIR [--gib N] [--st-gib M]
// Makes DIR/bench.bin (N GiB of pseudo-random bytes) and DIR/bench.safetensors
// (M GiB of bf16 tensors) if missing, then times, cold (page cache dropped,
// when this process may) and warm:
//   disk -> host: unimem read_file (io_uring + O_DIRECT) | read() into malloc |
//                 mmap + memcpy | dd iflag=direct bs=4M (the raw disk rate)
//   file -> GPU:  unimem: read chunks into a pinned Block, copy each while the
//                 next is read (copy_file_to_device) | read() into malloc + cudaMemcpy |
//                 cuFile (GPUDirect Storage) where libcufile loads
//   safetensors -> GPU: unimem map_file (page cache registered read-only) +
//                 copies | unimem Safetensors::load into a pinned Tape + copy
// (the safetensors Python package is timed by scripts/file-bench.sh beside it).
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gpu/cuda_check.hpp"
#include "unimem/unimem.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

bool drop_caches() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  f << "3\n";
  f.flush();
  return f.good();
}

void make_file(const std::string& path, std::size_t bytes) {
  if (std::filesystem::exists(path) && std::filesystem::file_size(path) == bytes) return;
  std::ofstream out(path, std::ios::binary);
  std::vector<std::uint64_t> buf(8 << 20);  // 64 MiB
  std::uint64_t x = 0x9E3779B97F4A7C15ull;
  for (std::size_t done = 0; done < bytes; done += buf.size() * 8) {
    for (auto& w : buf) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      w = x;
    }
    out.write(reinterpret_cast<const char*>(buf.data()),
              static_cast<std::streamsize>(std::min(bytes - done, buf.size() * 8)));
  }
}

void make_safetensors(const std::string& path, std::size_t bytes) {
  if (std::filesystem::exists(path)) return;
  const std::size_t per = std::size_t{4096} * 4096 * 2;  // bf16 4096x4096: 32 MiB
  const std::size_t count = std::max<std::size_t>(1, bytes / per);
  std::vector<std::byte> data(per);
  std::uint64_t x = 12345;
  for (auto& b : data) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    b = static_cast<std::byte>(x >> 56);
  }
  std::vector<std::string> names;
  std::vector<unimem::TensorData> tensors;
  for (std::size_t i = 0; i < count; ++i) names.push_back("layers." + std::to_string(i) + ".weight");
  for (std::size_t i = 0; i < count; ++i) tensors.push_back({names[i], unimem::DType::BF16, {4096, 4096}, data});
  unimem::save_safetensors(path, tensors);
}

struct Row {
  std::string what;
  double gbps;
};
std::vector<Row> rows;
void report(const std::string& what, std::size_t bytes, double seconds) {
  rows.push_back({what, bytes / seconds / 1e9});
  std::printf("  %-64s %8.2f GB/s  (%.3f s)\n", what.c_str(), bytes / seconds / 1e9, seconds);
  std::fflush(stdout);
}

double time_once(bool cold, const std::function<void()>& f) {
  if (cold) drop_caches();
  const auto t = Clock::now();
  f();
  return since(t);
}

void read_plain(const std::string& path, std::byte* dest, std::size_t bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  for (std::size_t done = 0; done < bytes;) {
    const ssize_t n = ::read(fd, dest + done, std::min<std::size_t>(4 << 20, bytes - done));
    if (n <= 0) std::exit(3);
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

double dd_direct(const std::string& path, std::size_t bytes) {
  const std::string cmd = "dd if=" + path + " of=/dev/null iflag=direct bs=4M 2>/dev/null";
  const auto t = Clock::now();
  if (std::system(cmd.c_str()) != 0) return 0;
  return bytes / since(t) / 1e9;
}

// cuFile through dlopen (no header needed): the few entry points and types of
// its stable C ABI.
struct CuFile {
  struct Error {
    int err;
    int cu_err;
  };
  struct Descr {
    int type;  // CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1
    union {
      int fd;
      void* handle;
    } handle;
    const void* fs_ops;
  };
  Error (*driver_open)();
  Error (*handle_register)(void** fh, Descr* descr);
  void (*handle_deregister)(void* fh);
  ssize_t (*read)(void* fh, void* dev, std::size_t size, off_t file_offset, off_t dev_offset);
  bool ok = false;
  std::string why;
  CuFile() {
    void* lib = ::dlopen("libcufile.so.0", RTLD_NOW);
    if (!lib) lib = ::dlopen("libcufile.so", RTLD_NOW);
    if (!lib) {
      why = "libcufile not found";
      return;
    }
    driver_open = reinterpret_cast<Error (*)()>(::dlsym(lib, "cuFileDriverOpen"));
    handle_register = reinterpret_cast<Error (*)(void**, Descr*)>(::dlsym(lib, "cuFileHandleRegister"));
    handle_deregister = reinterpret_cast<void (*)(void*)>(::dlsym(lib, "cuFileHandleDeregister"));
    read = reinterpret_cast<ssize_t (*)(void*, void*, std::size_t, off_t, off_t)>(::dlsym(lib, "cuFileRead"));
    if (!driver_open || !handle_register || !handle_deregister || !read) {
      why = "libcufile lacks an entry point";
      return;
    }
    const Error e = driver_open();
    ok = e.err == 0;
    if (!ok) why = "cuFileDriverOpen failed (" + std::to_string(e.err) + ")";
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string dir = ".";
  std::size_t gib = 4, st_gib = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
    if (!std::strcmp(argv[i], "--gib")) gib = std::strtoull(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--st-gib")) st_gib = std::strtoull(argv[i + 1], nullptr, 10);
  }
  const std::string path = dir + "/bench.bin", st_path = dir + "/bench.safetensors";
  const std::size_t bytes = gib << 30;
  std::printf("making %s (%zu GiB) and %s (%zu GiB)...\n", path.c_str(), gib, st_path.c_str(), st_gib);
  std::fflush(stdout);
  make_file(path, bytes);
  make_safetensors(st_path, st_gib << 30);
  const bool can_drop = drop_caches();
  std::printf("page cache can be dropped: %s\n", can_drop ? "yes" : "no (cold rows are skipped)");

  unimem::BlockOptions pinned;
  pinned.backing = unimem::Backing::warm;
  unimem::Block block = unimem::Block::open(bytes, pinned);
  std::vector<std::byte> heap(bytes);
  std::memset(heap.data(), 1, bytes);  // back the pages: time I/O, not faults

  for (bool cold : {true, false}) {
    if (cold && !can_drop) continue;
    const char* c = cold ? "cold" : "warm";
    if (!cold) read_plain(path, heap.data(), bytes);  // make it warm
    if (cold) {
      drop_caches();
      rows.push_back({"disk: dd iflag=direct bs=4M (the raw O_DIRECT rate)", dd_direct(path, bytes)});
      std::printf("  %-64s %8.2f GB/s\n", rows.back().what.c_str(), rows.back().gbps);
    }
    unimem::ReadReport r;
    double t = time_once(cold, [&] { r = unimem::read_file(path, 0, block.bytes().first(bytes)); });
    report(std::string("host ") + c + ": unimem read_file -> Block (" + unimem::to_string(r.path) + ")", bytes, t);
    if (cold) {
      for (auto [chunk, depth] :
           {std::pair<std::size_t, unsigned>{4 << 20, 8}, {4 << 20, 32}, {8 << 20, 16}, {256 << 10, 64}}) {
        unimem::ReadOptions o;
        o.chunk_bytes = chunk;
        o.queue_depth = depth;
        t = time_once(true, [&] { unimem::read_file(path, 0, block.bytes().first(bytes), o); });
        report("host cold: unimem read_file, " + std::to_string(chunk >> 10) + " KiB x " + std::to_string(depth) +
                   " in flight",
               bytes, t);
      }
    }
    if (!cold) {
      unimem::ReadOptions buffered;
      buffered.direct = false;
      t = time_once(false, [&] { unimem::read_file(path, 0, block.bytes().first(bytes), buffered); });
      report("host warm: unimem read_file, page cache (buffered_async)", bytes, t);
    }
    t = time_once(cold, [&] { read_plain(path, heap.data(), bytes); });
    report(std::string("host ") + c + ": read() 4 MiB at a time -> malloc", bytes, t);
    t = time_once(cold, [&] {
      const int fd = ::open(path.c_str(), O_RDONLY);
      void* m = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
      std::memcpy(heap.data(), m, bytes);
      ::munmap(m, bytes);
      ::close(fd);
    });
    report(std::string("host ") + c + ": mmap + memcpy -> malloc", bytes, t);
  }

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device (GPU rows)\n");
    return 0;
  }
  CHECK(cudaFree(nullptr));
  void* dev = nullptr;
  CHECK(cudaMalloc(&dev, bytes));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  // unimem: copy_file_to_device through a staging Block set up once (4 x 64 MiB).
  constexpr std::size_t kSlot = std::size_t{64} << 20;
  unimem::BlockOptions gpu;
  gpu.visibility = unimem::Visibility::gpus;
  unimem::Block ring = unimem::Block::open(kSlot * 4, gpu);
  unimem::gpu::CopyOptions copy;
  copy.staging = &ring;
  auto pipelined = [&] {
    const unimem::gpu::DeviceSegment all{0, reinterpret_cast<std::uintptr_t>(dev), bytes};
    unimem::gpu::copy_file_to_device(path, {&all, 1}, 0, copy);
  };
  auto pageable = [&] {
    read_plain(path, heap.data(), bytes);
    CHECK(cudaMemcpy(dev, heap.data(), bytes, cudaMemcpyHostToDevice));
  };
  CuFile cufile;
  std::printf("cuFile: %s\n", cufile.ok ? "available" : cufile.why.c_str());
  std::string cufile_error;
  auto cufile_read = [&] {
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
    CuFile::Descr d{};
    d.type = 1;
    d.handle.fd = fd;
    void* fh = nullptr;
    if (const auto e = cufile.handle_register(&fh, &d); e.err != 0) {
      cufile_error = "cuFileHandleRegister failed (" + std::to_string(e.err) + ")";
    } else {
      for (std::size_t off = 0; off < bytes && cufile_error.empty(); off += kSlot * 4) {
        const std::size_t n = std::min(kSlot * 4, bytes - off);
        const ssize_t got = cufile.read(fh, dev, n, static_cast<off_t>(off), static_cast<off_t>(off));
        if (got != static_cast<ssize_t>(n)) cufile_error = "cuFileRead returned " + std::to_string(got);
      }
      cufile.handle_deregister(fh);
    }
    ::close(fd);
  };
  for (bool cold : {true, false}) {
    if (cold && !can_drop) continue;
    const char* c = cold ? "cold" : "warm";
    if (!cold) read_plain(path, heap.data(), bytes);
    report(std::string("file->GPU ") + c + ": unimem copy_file_to_device (staged, read || DMA)", bytes,
           time_once(cold, pipelined));
    report(std::string("file->GPU ") + c + ": read() -> malloc, cudaMemcpy (pageable)", bytes,
           time_once(cold, pageable));
    if (cufile.ok) {
      const double t = time_once(cold, cufile_read);
      if (cufile_error.empty()) {
        report(std::string("file->GPU ") + c + ": cuFile (cuFileRead)", bytes, t);
      } else {
        std::printf("  cuFile: %s\n", cufile_error.c_str());
      }
    }
  }

  // safetensors -> GPU, warm (as the Python package is timed).
  const std::size_t st_bytes = std::filesystem::file_size(st_path);
  read_plain(st_path, heap.data(), std::min(st_bytes, bytes));
  void* st_dev = nullptr;
  CHECK(cudaMalloc(&st_dev, st_bytes));
  auto st_map = [&] {
    const unimem::SafetensorsHeader h = unimem::read_safetensors_header(st_path);
    unimem::BlockOptions o;
    o.visibility = unimem::Visibility::gpus;  // registered read-only: copies run from the page cache
    o.pinning = unimem::Pinning::unpinned;
    unimem::Block file = unimem::Block::map_file(st_path, o);
    char* to = static_cast<char*>(st_dev);
    for (const auto& t : h.tensors) {
      CHECK(cudaMemcpyAsync(to, file.data() + t.file_offset, t.bytes, cudaMemcpyHostToDevice, stream));
      to += t.bytes;
    }
    CHECK(cudaStreamSynchronize(stream));
  };
  unimem::BlockOptions st_options;
  st_options.visibility = unimem::Visibility::gpus;  // the weights Tape is set up once, at start-up
  unimem::Tape tape = unimem::Tape::start(st_bytes + (64u << 20), st_options);
  auto st_load = [&] {
    tape.clear();
    unimem::Safetensors model = unimem::Safetensors::load(st_path, tape, 64);
    char* to = static_cast<char*>(st_dev);
    for (const auto& t : model.tensors()) {
      CHECK(cudaMemcpyAsync(to, t.data, t.info->bytes, cudaMemcpyHostToDevice, stream));
      to += t.info->bytes;
    }
    CHECK(cudaStreamSynchronize(stream));
  };
  auto st_copy = [&] {  // every tensor's bytes to consecutive device memory
    const unimem::SafetensorsHeader h = unimem::read_safetensors_header(st_path);
    std::vector<unimem::gpu::DeviceSegment> segments;
    std::uintptr_t to = reinterpret_cast<std::uintptr_t>(st_dev);
    for (const auto& t : h.tensors) {
      segments.push_back({t.file_offset, to, t.bytes});
      to += t.bytes;
    }
    unimem::gpu::copy_file_to_device(st_path, segments, 0, copy);
  };
  st_copy();
  report("safetensors->GPU warm: unimem copy_file_to_device (tensor ranges)", st_bytes, time_once(false, st_copy));
  st_map();  // warm-up: first registration of a file mapping
  report("safetensors->GPU warm: unimem map_file (page cache, registered)", st_bytes, time_once(false, st_map));
  report("safetensors->GPU warm: unimem Safetensors::load (pinned Tape) + copy", st_bytes, time_once(false, st_load));

  std::printf("\n%-66s %10s\n", "what", "GB/s");
  for (const Row& r : rows) std::printf("%-66s %10.2f\n", r.what.c_str(), r.gbps);
  return 0;
}
