// examples/pipeline/cpu_matmul.cpp — CpuMatmul over oneDNN when the build
// found it (UNIMEM_PIPELINE_ONEDNN), else over cpu::matmul_plain.
//
// oneDNN 2.6 (Debian 12) keeps AMX behind its CPU dispatcher, so the largest
// instruction set is raised once, before the first primitive. Primitives are
// created once per shape and reused: creating one costs milliseconds, running
// one microseconds.
#include "cpu_matmul.hpp"

#include <algorithm>
#include <map>
#include <stdexcept>
#include <tuple>

#include "cpu_stages.hpp"

#if defined(UNIMEM_PIPELINE_ONEDNN)
#include <oneapi/dnnl/dnnl.hpp>

#include <thread>

// Debian's oneDNN runs on GNU OpenMP; its thread count is set through the
// runtime oneDNN loaded (weak: absent, the runtime's default stays).
extern "C" void omp_set_num_threads(int) __attribute__((weak));
extern "C" int omp_get_max_threads() __attribute__((weak));
#endif

namespace pipeline {

#if defined(UNIMEM_PIPELINE_ONEDNN)

namespace {
const char* isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx (AMX)";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    default:
      return "other";
  }
}
}  // namespace

struct CpuMatmul::Impl {
  using Key = std::tuple<std::size_t, std::size_t, std::size_t, bool>;  // m, k, n, bf16
  struct Entry {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
    dnnl::memory src, wei, dst;
  };
  dnnl::engine engine;
  dnnl::stream stream;
  std::map<Key, Entry> cache;
  bool bf16_ok = true;  // whether this CPU has a bf16 x bf16 matmul

  Impl() {
    // One core left to the rest of the machine: an OpenMP team that fills
    // every core of a VM stalls at each barrier whenever the host or a
    // kernel thread takes one of them (seen as 10x slower matmuls at random).
    if (omp_set_num_threads) omp_set_num_threads(int(std::max(1u, std::thread::hardware_concurrency() - 1)));
    dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx512_core_amx);  // before any primitive
    engine = dnnl::engine(dnnl::engine::kind::cpu, 0);
    stream = dnnl::stream(engine);
    try {
      entry(1, 64, true, 64);
    } catch (const dnnl::error&) {
      bf16_ok = false;
    }
  }

  Entry& entry(std::size_t m, std::size_t k, bool bf16, std::size_t n) {
    const Key key{m, k, n, bf16};
    if (auto it = cache.find(key); it != cache.end()) return it->second;
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    const auto M = dnnl::memory::dim(m), K = dnnl::memory::dim(k), N = dnnl::memory::dim(n);
    const dt in = bf16 ? dt::bf16 : dt::f32;
    dnnl::memory::desc src({M, K}, in, tag::ab), wei({K, N}, in, tag::ba), dst({M, N}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), engine);
    Entry e{pd, dnnl::matmul(pd), dnnl::memory(src, engine, DNNL_MEMORY_NONE),
            dnnl::memory(wei, engine, DNNL_MEMORY_NONE), dnnl::memory(dst, engine, DNNL_MEMORY_NONE)};
    return cache.emplace(key, std::move(e)).first->second;
  }
};

CpuMatmul::CpuMatmul() : impl_(std::make_unique<Impl>()) {}
CpuMatmul::~CpuMatmul() = default;

bool CpuMatmul::rounds_to_bf16(bool bf16) const { return bf16 && impl_->bf16_ok; }

void CpuMatmul::run(const float* x, std::size_t m, std::size_t k, const void* w, bool bf16, std::size_t n, float* out,
                    std::uint16_t* x16) {
  if (bf16 && !impl_->bf16_ok) {
    cpu::matmul_plain(x, m, k, static_cast<const std::uint16_t*>(w), n, out);
    return;
  }
  try {
    Impl::Entry& e = impl_->entry(m, k, bf16, n);
    if (bf16) {
      for (std::size_t i = 0; i < m * k; ++i) x16[i] = float_to_bf16(x[i]);
      e.src.set_data_handle(x16);
    } else {
      e.src.set_data_handle(const_cast<float*>(x));
    }
    e.wei.set_data_handle(const_cast<void*>(w));
    e.dst.set_data_handle(out);
    e.prim.execute(impl_->stream, {{DNNL_ARG_SRC, e.src}, {DNNL_ARG_WEIGHTS, e.wei}, {DNNL_ARG_DST, e.dst}});
    impl_->stream.wait();
  } catch (const dnnl::error& err) {
    throw std::runtime_error(std::string("oneDNN matmul: ") + err.what());
  }
}

std::string CpuMatmul::describe(std::size_t m, std::size_t k, bool bf16, std::size_t n) {
  const dnnl_version_t* v = dnnl_version();
  std::string s = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                  std::to_string(v->patch) + ", CPU " + isa_name(dnnl::get_effective_cpu_isa()) + ", " +
                  (omp_get_max_threads ? std::to_string(omp_get_max_threads()) + " threads, " : "");
  if (bf16 && !impl_->bf16_ok) return s + "no bf16 matmul on this CPU: plain loop";
  return s + (bf16 ? "bf16" : "f32") + " matmul " + std::to_string(m) + "x" + std::to_string(k) + "x" +
         std::to_string(n) + " by " + impl_->entry(m, k, bf16, n).pd.impl_info_str();
}

#else  // no oneDNN

struct CpuMatmul::Impl {};
CpuMatmul::CpuMatmul() = default;
CpuMatmul::~CpuMatmul() = default;
bool CpuMatmul::rounds_to_bf16(bool) const { return false; }
void CpuMatmul::run(const float* x, std::size_t m, std::size_t k, const void* w, bool bf16, std::size_t n, float* out,
                    std::uint16_t*) {
  if (bf16) {
    cpu::matmul_plain(x, m, k, static_cast<const std::uint16_t*>(w), n, out);
  } else {
    cpu::matmul_plain(x, m, k, static_cast<const float*>(w), n, out);
  }
}
std::string CpuMatmul::describe(std::size_t, std::size_t, bool, std::size_t) {
  return "plain loop (built without oneDNN: install libdnnl-dev for AVX-512/AMX)";
}

#endif

}  // namespace pipeline
