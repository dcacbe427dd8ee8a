// bench/staging_probe.cu — what bounds a first load of a cached file.
//
//   unimem_staging_probe FILE
// FILE must be in the page cache (the probe reads it once first). Prints, in
// GB/s of file bytes, the parts a first load is made of, each alone, so that
// a loader's figure can be read against them:
//   host copy      the file into pre-faulted private huge-page memory by T
//                  threads, with memcpy out of a read-only mapping and with
//                  pread (no GPU): the CPU's and memory's bound for staging
//   register       cuMemHostRegister of the file's mapping, 64 MiB at a time,
//                  alone (no copy): the bound for registering in place
//   pipelines      W worker threads, each with its own pinned slots and
//                  stream, each taking the next chunk of S bytes, filling a
//                  slot (pread) and queueing its copy to the GPU: staging
//                  without a shared crew or a barrier per chunk
//   ceiling        cudaMemcpy from cudaMallocHost memory
#include <cuda.h>
#include <cuda_runtime.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "gpu/cuda_check.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_of(const std::function<void()>& f, int reps = 3) {
  f();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t).count());
  }
  return best;
}

void parallel(unsigned threads, const std::function<void(unsigned)>& body) {
  std::vector<std::thread> crew;
  for (unsigned t = 0; t < threads; ++t) crew.emplace_back(body, t);
  for (auto& t : crew) t.join();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return 2;
  const std::size_t bytes = static_cast<std::size_t>(::lseek(fd, 0, SEEK_END));
  auto* map = static_cast<std::byte*>(::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0));
  if (map == MAP_FAILED) return 2;
  auto rate = [&](double s) { return bytes / s / 1e9; };
  auto print = [&](const char* what, double s) { std::printf("  %-70s %7.2f GB/s\n", what, rate(s)); };
  {  // into the page cache
    std::vector<std::byte> sink(64 << 20);
    for (std::size_t off = 0; off < bytes; off += sink.size())
      (void)!::pread(fd, sink.data(), std::min(sink.size(), bytes - off), static_cast<off_t>(off));
  }
  std::printf("%s: %.2f GiB, %u cores\n", path.c_str(), bytes / 1073741824.0, std::thread::hardware_concurrency());

  // Host copies into pre-faulted private huge-page memory.
  auto* dest =
      static_cast<std::byte*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ::madvise(dest, bytes, MADV_HUGEPAGE);
  parallel(16, [&](unsigned t) { std::memset(dest + t * (bytes / 16), 0, bytes / 16); });
  for (unsigned threads : {1u, 8u, 16u}) {
    const std::size_t share = (bytes + threads - 1) / threads;
    char what[96];
    std::snprintf(what, sizeof what, "host copy: memcpy out of a mapping, %u threads", threads);
    print(what, seconds_of([&] {
            parallel(threads, [&](unsigned t) {
              const std::size_t b = std::min(bytes, t * share), e = std::min(bytes, b + share);
              std::memcpy(dest + b, map + b, e - b);
            });
          }));
    std::snprintf(what, sizeof what, "host copy: pread, %u threads (4 MiB reads)", threads);
    print(what, seconds_of([&] {
            parallel(threads, [&](unsigned t) {
              const std::size_t b = std::min(bytes, t * share), e = std::min(bytes, b + share);
              for (std::size_t o = b; o < e; o += 4 << 20)
                (void)!::pread(fd, dest + o, std::min<std::size_t>(4 << 20, e - o), static_cast<off_t>(o));
            });
          }));
  }

  CHECK(cudaSetDevice(0));
  CHECK(cudaFree(nullptr));
  void* dev = nullptr;
  CHECK(cudaMalloc(&dev, bytes));
  {  // ceiling
    void* pinned = nullptr;
    CHECK(cudaMallocHost(&pinned, bytes));
    std::memset(pinned, 1, bytes);
    print("ceiling: cudaMemcpy from cudaMallocHost memory",
          seconds_of([&] { CHECK(cudaMemcpy(dev, pinned, bytes, cudaMemcpyHostToDevice)); }));
    CHECK(cudaFreeHost(pinned));
  }
  {  // registering the mapping in place, alone
    const std::size_t chunk = 64 << 20;
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t = Clock::now();
      for (std::size_t o = 0; o < bytes; o += chunk) {
        CHECK(
            cudaHostRegister(map + o, std::min(chunk, bytes - o), cudaHostRegisterPortable | cudaHostRegisterReadOnly));
      }
      best = std::min(best, std::chrono::duration<double>(Clock::now() - t).count());
      for (std::size_t o = 0; o < bytes; o += chunk) CHECK(cudaHostUnregister(map + o));
    }
    print("register in place: cudaHostRegister of the mapping, 64 MiB at a time (no copy)", best);
  }
  {  // what making staging slots costs: one registration of 128 MiB of backed
     // huge pages, or 16 of 8 MiB (one after another, and from 16 threads)
    const std::size_t area_bytes = std::size_t{128} << 20, part = area_bytes / 16;
    for (int variant = 0; variant < 3; ++variant) {
      double best = 1e30;
      for (int rep = 0; rep < 3; ++rep) {
        auto* area = static_cast<std::byte*>(
            ::mmap(nullptr, area_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        ::madvise(area, area_bytes, MADV_HUGEPAGE);
        parallel(16, [&](unsigned t) { std::memset(area + t * part, 0, part); });
        const auto t = Clock::now();
        if (variant == 0) {
          CHECK(cudaHostRegister(area, area_bytes, cudaHostRegisterPortable | cudaHostRegisterMapped));
        } else if (variant == 1) {
          for (unsigned k = 0; k < 16; ++k)
            CHECK(cudaHostRegister(area + k * part, part, cudaHostRegisterPortable | cudaHostRegisterMapped));
        } else {
          parallel(16, [&](unsigned k) {
            CHECK(cudaHostRegister(area + k * part, part, cudaHostRegisterPortable | cudaHostRegisterMapped));
          });
        }
        best = std::min(best, std::chrono::duration<double, std::milli>(Clock::now() - t).count());
        if (variant == 0) {
          CHECK(cudaHostUnregister(area));
        } else {
          for (unsigned k = 0; k < 16; ++k) CHECK(cudaHostUnregister(area + k * part));
        }
        ::munmap(area, area_bytes);
      }
      std::printf("  registering 128 MiB of backed huge pages: %s: %.2f ms\n",
                  variant == 0   ? "one call"
                  : variant == 1 ? "16 calls of 8 MiB, one thread"
                                 : "16 calls of 8 MiB, 16 threads",
                  best);
    }
  }
  {  // what finding the cached part of the file costs: mincore over the mapping, 64 MiB at a time
    const std::size_t chunk = 64 << 20, page = 4096;
    std::vector<unsigned char> vec(chunk / page);
    std::size_t resident = 0;
    const auto t = Clock::now();
    for (std::size_t o = 0; o < bytes; o += chunk) {
      const std::size_t n = std::min(chunk, bytes - o);
      ::mincore(map + o, n, vec.data());
      for (std::size_t i = 0; i < (n + page - 1) / page; ++i) resident += vec[i] & 1;
    }
    std::printf("  mincore of the whole mapping, 64 MiB at a time: %.1f ms (%zu pages resident)\n",
                std::chrono::duration<double, std::milli>(Clock::now() - t).count(), resident);
  }
  // Independent staging workers: slots from cudaMallocHost, or one registered
  // private huge-page mapping (as unimem's Block with Visibility::gpus).
  for (const auto& [workers, slot_bytes, registered] : std::vector<std::tuple<unsigned, std::size_t, bool>>{
           {16, 8 << 20, false}, {16, 8 << 20, true}, {16, 4 << 20, false}, {16, 4 << 20, true}}) {
    constexpr int kSlots = 2;
    std::vector<std::byte*> slots(workers * kSlots);
    std::vector<cudaStream_t> streams(workers);
    std::vector<cudaEvent_t> events(workers * kSlots);
    std::byte* area = nullptr;
    const std::size_t area_bytes = slots.size() * slot_bytes;
    const auto made = Clock::now();
    if (registered) {
      area = static_cast<std::byte*>(
          ::mmap(nullptr, area_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
      ::madvise(area, area_bytes, MADV_HUGEPAGE);
      parallel(16, [&](unsigned t) { std::memset(area + t * (area_bytes / 16), 0, area_bytes / 16); });
      CHECK(cudaHostRegister(area, area_bytes, cudaHostRegisterPortable | cudaHostRegisterMapped));
      for (std::size_t i = 0; i < slots.size(); ++i) slots[i] = area + i * slot_bytes;
    } else {
      for (auto& s : slots) CHECK(cudaMallocHost(reinterpret_cast<void**>(&s), slot_bytes));
    }
    std::printf("  slots made in %.1f ms (%s)\n",
                std::chrono::duration<double, std::milli>(Clock::now() - made).count(),
                registered ? "registered huge-page mapping" : "cudaMallocHost");
    for (auto& s : streams) CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    for (auto& e : events) CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    const std::size_t chunks = (bytes + slot_bytes - 1) / slot_bytes;
    for (int source = 0; source < 2; ++source) {  // pread, memcpy out of the mapping
      char what[96];
      std::snprintf(what, sizeof what, "pipeline: %u workers x %d slots of %zu MiB%s, %s + async copy", workers, kSlots,
                    slot_bytes >> 20, registered ? " (registered)" : "", source == 0 ? "pread" : "memcpy");
      print(what, seconds_of([&] {
              std::atomic<std::size_t> next{0};
              parallel(workers, [&](unsigned w) {
                CHECK(cudaSetDevice(0));
                for (int use = 0;; ++use) {
                  const std::size_t k = next.fetch_add(1);
                  if (k >= chunks) break;
                  const int s = static_cast<int>(w) * kSlots + use % kSlots;
                  CHECK(cudaEventSynchronize(events[s]));
                  const std::size_t off = k * slot_bytes, n = std::min(slot_bytes, bytes - off);
                  if (source == 0) {
                    (void)!::pread(fd, slots[s], n, static_cast<off_t>(off));
                  } else {
                    std::memcpy(slots[s], map + off, n);
                  }
                  CHECK(cudaMemcpyAsync(static_cast<std::byte*>(dev) + off, slots[s], n, cudaMemcpyHostToDevice,
                                        streams[w]));
                  CHECK(cudaEventRecord(events[s], streams[w]));
                }
                CHECK(cudaStreamSynchronize(streams[w]));
              });
            }));
    }
    if (registered) {
      CHECK(cudaHostUnregister(area));
      ::munmap(area, area_bytes);
    } else {
      for (auto& s : slots) CHECK(cudaFreeHost(s));
    }
    for (auto& s : streams) CHECK(cudaStreamDestroy(s));
    for (auto& e : events) CHECK(cudaEventDestroy(e));
  }
  CHECK(cudaFree(dev));
  return 0;
}
