// src/gpu/convert.cpp — the dtype-conversion kernel, as PTX (see convert.hpp).
//
// One grid-stride kernel for all six conversions: every element goes through
// f32 (exact for f16 and bf16), then out. bf16 is the top half of an f32, so
// widening is a shift and narrowing adds the round-to-nearest-even bias by
// hand (cvt.rn.bf16.f32 needs sm_80; this runs anywhere), with NaN kept quiet.
// The code is memory-bound: one branch per element on a mode that is the
// same for every thread costs nothing next to the loads.
#include "gpu/convert.hpp"

#include <algorithm>
#include <string>

#include "gpu/ptx_kernel.hpp"

namespace unimem::gpu::detail {
namespace {

// Types as the kernel numbers them.
constexpr unsigned kF32 = 0, kF16 = 1, kBF16 = 2;

constexpr const char kPtx[] = R"PTX(.version 7.0
.target sm_75
.address_size 64

.visible .entry unimem_convert(
    .param .u64 src_param,
    .param .u64 dst_param,
    .param .u64 n_param,
    .param .u32 from_param,
    .param .u32 to_param)
{
    .reg .pred %p<8>;
    .reg .b16 %h<4>;
    .reg .b32 %r<16>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<16>;

    ld.param.u64 %rd1, [src_param];
    ld.param.u64 %rd2, [dst_param];
    ld.param.u64 %rd3, [n_param];
    ld.param.u32 %r1, [from_param];
    ld.param.u32 %r2, [to_param];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %tid.x;
    mov.u32 %r6, %nctaid.x;
    mul.wide.u32 %rd4, %r3, %r4;
    cvt.u64.u32 %rd5, %r5;
    add.u64 %rd4, %rd4, %rd5;
    mul.wide.u32 %rd6, %r6, %r4;
LOOP:
    setp.ge.u64 %p1, %rd4, %rd3;
    @%p1 bra DONE;
    setp.eq.u32 %p2, %r1, 0;
    @%p2 bra LOAD_F32;
    setp.eq.u32 %p3, %r1, 1;
    @%p3 bra LOAD_F16;
    shl.b64 %rd7, %rd4, 1;
    add.u64 %rd8, %rd1, %rd7;
    ld.global.u16 %h1, [%rd8];
    cvt.u32.u16 %r7, %h1;
    shl.b32 %r7, %r7, 16;
    mov.b32 %f1, %r7;
    bra STORE;
LOAD_F16:
    shl.b64 %rd7, %rd4, 1;
    add.u64 %rd8, %rd1, %rd7;
    ld.global.b16 %h1, [%rd8];
    cvt.f32.f16 %f1, %h1;
    bra STORE;
LOAD_F32:
    shl.b64 %rd7, %rd4, 2;
    add.u64 %rd8, %rd1, %rd7;
    ld.global.f32 %f1, [%rd8];
STORE:
    setp.eq.u32 %p2, %r2, 0;
    @%p2 bra STORE_F32;
    setp.eq.u32 %p3, %r2, 1;
    @%p3 bra STORE_F16;
    mov.b32 %r8, %f1;
    shl.b64 %rd9, %rd4, 1;
    add.u64 %rd10, %rd2, %rd9;
    testp.notanumber.f32 %p4, %f1;
    @%p4 bra BF16_NAN;
    shr.u32 %r9, %r8, 16;
    and.b32 %r9, %r9, 1;
    add.u32 %r9, %r9, 32767;
    add.u32 %r8, %r8, %r9;
    shr.u32 %r8, %r8, 16;
    cvt.u16.u32 %h2, %r8;
    st.global.u16 [%rd10], %h2;
    bra NEXT;
BF16_NAN:
    shr.u32 %r8, %r8, 16;
    or.b32 %r8, %r8, 64;
    cvt.u16.u32 %h2, %r8;
    st.global.u16 [%rd10], %h2;
    bra NEXT;
STORE_F16:
    shl.b64 %rd9, %rd4, 1;
    add.u64 %rd10, %rd2, %rd9;
    cvt.rn.f16.f32 %h2, %f1;
    st.global.b16 [%rd10], %h2;
    bra NEXT;
STORE_F32:
    shl.b64 %rd9, %rd4, 2;
    add.u64 %rd10, %rd2, %rd9;
    st.global.f32 [%rd10], %f1;
NEXT:
    add.u64 %rd4, %rd4, %rd6;
    bra LOOP;
DONE:
    ret;
}
)PTX";

unsigned code_of(DType t) { return t == DType::F32 ? kF32 : t == DType::F16 ? kF16 : kBF16; }

}  // namespace

bool convertible(DType from, DType to) noexcept {
  auto floating = [](DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; };
  return floating(from) && floating(to);
}

void convert(int device, CUstream stream, CUdeviceptr src, CUdeviceptr dst, std::uint64_t n, DType from, DType to) {
  if (!convertible(from, to)) {
    throw Error(Errc::invalid_argument, 0,
                std::string("unimem: cannot convert ") + to_string(from) + " to " + to_string(to) +
                    " on the GPU (F32, F16 and BF16 convert to each other)");
  }
  if (n == 0) return;
  CUfunction f = ptx_kernel(device, kPtx, "unimem_convert", "the dtype-conversion kernel").function;
  unsigned from_code = code_of(from), to_code = code_of(to);
  void* params[] = {&src, &dst, &n, &from_code, &to_code};
  constexpr unsigned kThreads = 256;
  // Enough blocks to fill any current GPU; the loop strides over the rest.
  const auto blocks = static_cast<unsigned>(std::min<std::uint64_t>((n + kThreads - 1) / kThreads, 8192));
  check(driver().cuLaunchKernel(f, blocks, 1, 1, kThreads, 1, 1, 0, stream, params, nullptr),
        "cuLaunchKernel (dtype conversion)");
}

}  // namespace unimem::gpu::detail
