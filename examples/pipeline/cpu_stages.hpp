// examples/pipeline/cpu_stages.hpp — the layer's vector stages on the CPU
// (norms, RoPE, attention, SwiGLU, residual adds) and a plain matrix product,
// generic over float (both paths) and double (the reference). They work on
// `m` consecutive token rows at positions p0 .. p0 + m - 1, so one call serves
// the prompt (prefill) and a generated token (m = 1) alike.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "model.hpp"

namespace pipeline::cpu {

template <class T>
void rmsnorm(const T* x, const float* w, T* out, std::size_t m, std::size_t n) {
  for (std::size_t r = 0; r < m; ++r) {
    const T* xr = x + r * n;
    T ss = 0;
    for (std::size_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
    const T scale = T(1) / std::sqrt(ss / T(n) + T(1e-5));
    for (std::size_t i = 0; i < n; ++i) out[r * n + i] = xr[i] * scale * T(w[i]);
  }
}

// Rotates pairs of each head from `in` into `out` (which may be `in`);
// `angle(p, j)` gives {cos, sin} for position p and pair j of a head.
template <class T, class Angle>
void rope(const T* in, T* out, std::size_t m, std::size_t p0, const Config& c, Angle&& angle) {
  const std::size_t hd = c.head_dim();
  for (std::size_t r = 0; r < m; ++r) {
    for (std::size_t i = 0; i < c.dim; i += 2) {
      const auto [cs, sn] = angle(p0 + r, (i % hd) / 2);
      const T a = in[r * c.dim + i], b = in[r * c.dim + i + 1];
      out[r * c.dim + i] = a * T(cs) - b * T(sn);
      out[r * c.dim + i + 1] = a * T(sn) + b * T(cs);
    }
  }
}

// Eight partial sums, so that the compiler can keep them in one vector
// register (it may not reorder a single running sum).
template <class T>
T dot(const T* a, const T* b, std::size_t n) {
  T part[8] = {};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (std::size_t j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  }
  T sum = 0;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (T p : part) sum += p;
  return sum;
}

// Causal attention: row r (position p0 + r) attends to positions 0 .. p0 + r
// of the cache. `scores` holds heads x positions() values. Heads run in
// parallel where the build has OpenMP.
template <class T>
void attend(const T* q, const T* keys, const T* values, T* out, T* scores, std::size_t m, std::size_t p0,
            const Config& c) {
  const std::size_t hd = c.head_dim();
  const T inv_sqrt = T(1) / std::sqrt(T(hd));
  for (std::size_t r = 0; r < m; ++r) {
    const std::size_t last = p0 + r;
#pragma omp parallel for schedule(static)
    for (std::size_t h = 0; h < c.heads; ++h) {
      const T* qh = q + r * c.dim + h * hd;
      T* sc = scores + h * c.positions();
      T max = -1e30;
      for (std::size_t t = 0; t <= last; ++t) {
        sc[t] = dot(qh, keys + t * c.dim + h * hd, hd) * inv_sqrt;
        max = std::max(max, sc[t]);
      }
      T sum = 0;
      for (std::size_t t = 0; t <= last; ++t) sum += sc[t] = std::exp(sc[t] - max);
      T* oh = out + r * c.dim + h * hd;
      std::fill(oh, oh + hd, T(0));
      for (std::size_t t = 0; t <= last; ++t) {  // along the cache's rows, not across them
        const T* vt = values + t * c.dim + h * hd;
        for (std::size_t i = 0; i < hd; ++i) oh[i] += sc[t] * vt[i];
      }
      for (std::size_t i = 0; i < hd; ++i) oh[i] /= sum;
    }
  }
}

// out may be gate (in place).
template <class T>
void swiglu(const T* gate, const T* up, T* out, std::size_t n) {
#pragma omp parallel for schedule(static) if (n >= 4096)
  for (std::size_t i = 0; i < n; ++i) out[i] = gate[i] / (T(1) + std::exp(-gate[i])) * up[i];
}

// out = x + y; out may be x (in place).
template <class T>
void add(const T* x, const T* y, T* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}

inline float widen(float v) { return v; }
inline float widen(std::uint16_t v) { return bf16_to_float(v); }

// out[m][n] = x[m][k] . w[n][k]^T, one dot product at a time.
template <class T, class W>
void matmul_plain(const T* x, std::size_t m, std::size_t k, const W* w, std::size_t n, T* out) {
  for (std::size_t r = 0; r < m; ++r) {
    for (std::size_t j = 0; j < n; ++j) {
      const W* row = w + j * k;
      T acc = 0;
      for (std::size_t i = 0; i < k; ++i) acc += T(widen(row[i])) * x[r * k + i];
      out[r * n + j] = acc;
    }
  }
}

}  // namespace pipeline::cpu
