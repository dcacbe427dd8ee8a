// examples/pipeline/cpu_matmul.hpp — the CPU's matrix products.
//
// With oneDNN (Debian's libdnnl-dev) they run through its matmul primitive,
// which uses AMX tiles on CPUs that have them (the GPU machine's Xeon) for
// bf16 weights, AVX-512/AVX2 otherwise; without it, a plain loop. Either way
// the weights are read where they are: in place, no packed copy.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace pipeline {

class CpuMatmul {
 public:
  CpuMatmul();
  ~CpuMatmul();
  CpuMatmul(const CpuMatmul&) = delete;
  CpuMatmul& operator=(const CpuMatmul&) = delete;

  // out[m][n] = x[m][k] . w[n][k]^T, w being f32 or (bf16) 16-bit. When
  // rounds_to_bf16(bf16) is true, x is first rounded to bf16 into x16, which
  // must hold m * k values (AMX multiplies bf16 by bf16). Throws
  // std::runtime_error when the library refuses the shape.
  void run(const float* x, std::size_t m, std::size_t k, const void* w, bool bf16, std::size_t n, float* out,
           std::uint16_t* x16);

  // Whether run() rounds the activations to bf16 for bf16 weights.
  bool rounds_to_bf16(bool bf16) const;

  // One line: the library, the instruction set it found, and the
  // implementation chosen for the given shape (e.g. "brg:avx512_core_amx").
  std::string describe(std::size_t m, std::size_t k, bool bf16, std::size_t n);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pipeline
