// SIMD matrix multiplication for the GGUF weight types, compiled once per Highway target and
// dispatched at run time.
//
// Activations are converted once per row of x (ConvertActs) into a target-private layout:
//   F32/F16/BF16 weights: the f32 values as the dot product sees them (rounded through f16/bf16).
//   Q8_0/Q4_0 weights:    Q8_0 quantization; Q4_K/Q6_K weights: Q8_K quantization.
// Two integer designs:
//   * Portable (every target but AVX3_DL): quants widened to int16 once per activation row, so
//     each target multiplies with a 16x16->32 pairwise multiply-add (pmaddwd on x86).
//   * AVX3_DL (AVX-512 VNNI): int8 quants and 8x8->32 dot products of four bytes (vpdpbusd),
//     two 32-element blocks per 512-bit vector; per-lane scale patterns and exact integer
//     corrections are precomputed with the activations.
// Integer sums are exact; each block's sum is scaled in f32 and accumulated per lane, as
// llama.cpp does.
//
// Weight rows are processed in tiles of R rows x C activation rows so that each weight block is
// loaded and unpacked once and applied to C activation rows (prompt processing), and each
// activation block is loaded once for R weight rows. Decode streams one weight row at a time.
// Q4_0 and Q8_0 on AVX3_DL and F16 on AVX3 are the exception: the model copies them into groups
// of 16 interleaved rows (Interleave16), which 16-row kernels read as a single stream for decode
// and prompt alike.
#include "kernels/kernels_hwy.h"
// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kernels_matmul.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on
#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#include "edgeshard/error.h"
#include "hwy/highway.h"
#include "kernels/kernels_arm.h"
#include "kernels/kernels_internal.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"

#ifndef ES_KERNELS_MATMUL_ONCE
#define ES_KERNELS_MATMUL_ONCE
namespace es::kernels::detail {
namespace {
constexpr size_t RoundUp64(size_t v) {
  return (v + 63) & ~size_t{63};
}
// Byte offsets inside one converted activation row (quants start at offset 0).
struct ActLayout {
  size_t d_off = 0;      // float scale per block
  size_t sum_off = 0;    // int16 path, Q8_K: int32 sums of 32 quants
  size_t dxl_off = 0;    // VNNI, Q8_0: float scale per int32 lane (8 per block)
  size_t corr_off = 0;   // VNNI, Q8_0: int32 -8 * (sum of 4 quants) per lane, for Q4_0
  size_t bcorr_off = 0;  // VNNI, Q8_0: int32 -8 * (sum of the block's 32 quants), for Q4_0
  size_t bs16_off = 0;   // VNNI, Q8_K: int16 sums of 16 quants
  size_t bs32_off = 0;   // VNNI, Q8_K: int16 sums of 32 quants
  size_t arm_off = 0;    // NEON with sdot: what kernels_matmul_arm.cpp reads (0: nothing)
  size_t bytes = 0;
};
}  // namespace
}  // namespace es::kernels::detail
#endif

HWY_BEFORE_NAMESPACE();
namespace es::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::ActLayout;
using detail::RoundUp64;
using detail::UnpackScalesQ4_K;
using detail::WalkTiles;

#undef ES_VNNI
#if HWY_TARGET == HWY_AVX3_DL
#define ES_VNNI 1
#else
#define ES_VNNI 0
#endif
// 64-bit Arm's NEON target hands the quantized types to the sdot/i8mm kernels where the CPU has
// them (kernels_arm.h).
#undef ES_ARM_DOT
#if HWY_TARGET == HWY_NEON && HWY_ARCH_ARM_A64
#define ES_ARM_DOT 1
#else
#define ES_ARM_DOT 0
#endif

ActLayout LayoutFor(TensorType w, int64_t n) {
  ActLayout l;
  const size_t un = static_cast<size_t>(n);
  switch (VecDotType(w)) {
    case TensorType::kQ8_0:
#if ES_VNNI
      l.d_off = RoundUp64(un);
      l.dxl_off = RoundUp64(l.d_off + un / 32 * 4);
      l.corr_off = RoundUp64(l.dxl_off + un / 32 * 8 * 4);
      l.bcorr_off = RoundUp64(l.corr_off + un / 4 * 4);
      l.bytes = RoundUp64(l.bcorr_off + un / 32 * 4);
#else
      l.d_off = RoundUp64(un * 2);
      l.bytes = RoundUp64(l.d_off + un / kQK8_0 * 4);
#endif
      break;
    case TensorType::kQ8_K:
#if ES_VNNI
      l.d_off = RoundUp64(un);
      l.bs16_off = RoundUp64(l.d_off + un / kQK_K * 4);
      l.bs32_off = RoundUp64(l.bs16_off + un / 16 * 2);
      l.bytes = RoundUp64(l.bs32_off + un / 32 * 2);
#else
      l.d_off = RoundUp64(un * 2);
      l.sum_off = RoundUp64(l.d_off + un / kQK_K * 4);
      l.bytes = RoundUp64(l.sum_off + un / 32 * 4);
#endif
      break;
    default:
      l.bytes = RoundUp64(un * 4);
      break;
  }
#if ES_ARM_DOT
  if (const size_t extra = detail::arm::ExtraActBytes(w, n)) l.arm_off = l.bytes, l.bytes += extra;
#endif
  return l;
}

// Scalar f16 -> f32 through the target's conversion (a single instruction with F16C).
HWY_INLINE float HalfToFloat(const f16_t* p) {
  const hn::CappedTag<float, 1> d1;
  const hn::Rebind<hwy::float16_t, decltype(d1)> dh1;
  return hn::GetLane(hn::PromoteTo(d1, hn::LoadU(dh1, reinterpret_cast<const hwy::float16_t*>(p))));
}

// ---------------------------------------------------------------------------------------------
// Activation conversion

// f32 -> nearest f16 -> f32 (round to nearest even, overflow to inf, NaN kept), integer ops only so
// that every target rounds like the F16C instruction.
template <class DF>
HWY_INLINE hn::Vec<DF> RoundThroughF16(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const auto bits = hn::BitCast(du, v);
  const auto sign = hn::And(bits, hn::Set(du, 0x80000000u));
  const auto abs = hn::AndNot(hn::Set(du, 0x80000000u), bits);
  // Normal range: round the mantissa to 10 bits, ties to even.
  const auto odd = hn::And(hn::ShiftRight<13>(abs), hn::Set(du, 1));
  const auto rounded =
      hn::And(hn::Add(abs, hn::Add(hn::Set(du, 0xfffu), odd)), hn::Set(du, 0xffffe000u));
  // Subnormal range (|v| < 2^-14): rounding to a multiple of 2^-24 is what adding 0.5f does.
  const auto absf = hn::BitCast(df, abs);
  const auto sub = hn::Sub(hn::Add(absf, hn::Set(df, 0.5f)), hn::Set(df, 0.5f));
  auto out = hn::IfThenElse(hn::RebindMask(du, hn::Lt(absf, hn::Set(df, 6.103515625e-05f))),
                            hn::BitCast(du, sub), rounded);
  // >= 65520 rounds to infinity; NaN stays (quiet) NaN.
  // (Signed compares: x86 lacks unsigned ones and |bits| < 2^31.)
  const auto iabs = hn::BitCast(di, abs);
  out = hn::IfThenElse(hn::RebindMask(du, hn::Gt(iabs, hn::Set(di, 0x477fefff))),
                       hn::Set(du, 0x7f800000u), out);
  out = hn::IfThenElse(hn::RebindMask(du, hn::Gt(iabs, hn::Set(di, 0x7f800000))),
                       hn::Set(du, 0x7fc00000u), out);
  return hn::BitCast(df, hn::Or(out, sign));
}

// f32 -> nearest bf16 -> f32 (ties to even, NaN kept).
template <class DF>
HWY_INLINE hn::Vec<DF> RoundThroughBF16(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  const auto bits = hn::BitCast(du, v);
  const auto odd = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1));
  auto out = hn::And(hn::Add(bits, hn::Add(hn::Set(du, 0x7fffu), odd)), hn::Set(du, 0xffff0000u));
  const auto nan = hn::Or(hn::And(bits, hn::Set(du, 0xffff0000u)), hn::Set(du, 0x00400000u));
  out = hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), nan, out);
  return hn::BitCast(df, out);
}

void ConvertFloatRow(TensorType w, const float* x, int64_t n, float* out) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  int64_t i = 0;
  for (; i + static_cast<int64_t>(N) <= n; i += N) {
    auto v = hn::LoadU(df, x + i);
    if (w == TensorType::kF16) v = RoundThroughF16(df, v);
    if (w == TensorType::kBF16) v = RoundThroughBF16(df, v);
    hn::StoreU(v, df, out + i);
  }
  for (; i < n; ++i) {
    float v = x[i];
    if (w == TensorType::kF16) v = F16ToF32(F32ToF16(v));
    if (w == TensorType::kBF16) v = BF16ToF32(F32ToBF16(v));
    out[i] = v;
  }
}

// Q8_0 as llama.cpp's x86 backend: d = amax/127 (stored as f16), q = round_even(x * 127/amax).
// Portable layout: int16 quants. VNNI layout: int8 quants, biased by +128 for row-major Q8_0
// weights (the unsigned operand of vpdpbusd), or unbiased with per-lane corrections of the
// unsigned weights' offsets for Q4_0 (-8 * sum; interleaved Q8_0, which MatMul converts as if
// for Q4_0, scales it by 16 to -128 * sum).
void ConvertRowQ8_0(TensorType w, const float* x, int64_t n, uint8_t* row, const ActLayout& l) {
  const hn::CappedTag<float, 16> df;
  const size_t N = hn::Lanes(df);
  auto* dst_d = reinterpret_cast<float*>(row + l.d_off);
#if ES_VNNI
  const hn::Rebind<int8_t, decltype(df)> d8;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const hn::RebindToSigned<decltype(df)> di;
  const bool biased = w == TensorType::kQ8_0;
  auto* dxl = reinterpret_cast<float*>(row + l.dxl_off);
#else
  (void)w;
  const hn::Rebind<int16_t, decltype(df)> d16;
  auto* q = reinterpret_cast<int16_t*>(row);
#endif
  for (int64_t b = 0; b < n / kQK8_0; ++b) {
    const float* xb = x + b * kQK8_0;
    auto vmax = hn::Zero(df);
    for (size_t k = 0; k < kQK8_0; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + k)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    const float d = F16ToF32(F32ToF16(amax / 127.0f));
    dst_d[b] = d;
    const auto vid = hn::Set(df, amax != 0.0f ? 127.0f / amax : 0.0f);
    for (size_t k = 0; k < kQK8_0; k += N) {
      const auto qi = hn::NearestInt(hn::Mul(hn::LoadU(df, xb + k), vid));
#if ES_VNNI
      if (biased) {
        hn::StoreU(hn::DemoteTo(du8, hn::Add(qi, hn::Set(di, 128))), du8, row + b * kQK8_0 + k);
      } else {
        hn::StoreU(hn::DemoteTo(d8, qi), d8, reinterpret_cast<int8_t*>(row) + b * kQK8_0 + k);
      }
#else
      hn::StoreU(hn::DemoteTo(d16, qi), d16, q + b * kQK8_0 + k);
#endif
    }
#if ES_VNNI
    std::fill(dxl + 8 * b, dxl + 8 * b + 8, d);
#endif
  }
#if ES_VNNI
  if (!biased) {
    const auto* q8 = reinterpret_cast<const int8_t*>(row);
    auto* corr = reinterpret_cast<int32_t*>(row + l.corr_off);
    for (int64_t g = 0; g < n / 4; ++g)
      corr[g] = -8 * (q8[4 * g] + q8[4 * g + 1] + q8[4 * g + 2] + q8[4 * g + 3]);
    auto* bcorr = reinterpret_cast<int32_t*>(row + l.bcorr_off);
    for (int64_t b = 0; b < n / 32; ++b) {
      int32_t sum = 0;
      for (int k = 0; k < 8; ++k) sum += corr[8 * b + k];
      bcorr[b] = sum;
    }
  }
#endif
}

// Q8_K as llama.cpp: the signed value of largest magnitude maps to -127; q = min(127,
// round_even(x * -127/max)); d = 1/iscale.
void ConvertRowQ8_K(const float* x, int64_t n, uint8_t* row, const ActLayout& l) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t N = hn::Lanes(df);
  auto* dst_d = reinterpret_cast<float*>(row + l.d_off);
#if ES_VNNI
  const hn::Rebind<int8_t, decltype(df)> dq;
  auto* q = reinterpret_cast<int8_t*>(row);
  auto* bs16 = reinterpret_cast<int16_t*>(row + l.bs16_off);
  auto* bs32 = reinterpret_cast<int16_t*>(row + l.bs32_off);
#else
  const hn::Rebind<int16_t, decltype(df)> dq;
  auto* q = reinterpret_cast<int16_t*>(row);
  auto* sums = reinterpret_cast<int32_t*>(row + l.sum_off);
#endif
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    auto vmax = hn::Zero(df);
    for (size_t k = 0; k < kQK_K; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + k)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    auto* qb = q + b * kQK_K;
    int32_t s16[16] = {};
    if (amax == 0.0f) {
      dst_d[b] = 0.0f;
      std::fill(qb, qb + kQK_K, 0);
    } else {
      // The first element reaching amax decides the sign, as in the scalar reference.
      float max = 0.0f;
      for (int j = 0; j < kQK_K; ++j) {
        if (std::fabs(xb[j]) == amax) {
          max = xb[j];
          break;
        }
      }
      const float iscale = -127.0f / max;
      const auto vis = hn::Set(df, iscale);
      for (int g = 0; g < kQK_K / 16; ++g) {
        auto acc = hn::Zero(di);
        for (size_t k = 0; k < 16; k += N) {
          auto qi = hn::NearestInt(hn::Mul(hn::LoadU(df, xb + 16 * g + k), vis));
          qi = hn::Min(qi, hn::Set(di, 127));
          acc = hn::Add(acc, qi);
          hn::StoreU(hn::DemoteTo(dq, qi), dq, qb + 16 * g + k);
        }
        s16[g] = hn::GetLane(hn::SumOfLanes(di, acc));
      }
      dst_d[b] = 1.0f / iscale;
    }
    for (int g = 0; g < 8; ++g) {
#if ES_VNNI
      bs16[b * 16 + 2 * g] = static_cast<int16_t>(s16[2 * g]);
      bs16[b * 16 + 2 * g + 1] = static_cast<int16_t>(s16[2 * g + 1]);
      bs32[b * 8 + g] = static_cast<int16_t>(s16[2 * g] + s16[2 * g + 1]);
#else
      sums[b * 8 + g] = s16[2 * g] + s16[2 * g + 1];
#endif
    }
  }
}

size_t ActRowBytesImpl(TensorType w, int64_t n) {
  return LayoutFor(w, n).bytes;
}

void ConvertActsImpl(TensorType w, const float* x, int64_t ldx, int64_t n, int64_t b0, int64_t b1,
                     uint8_t* dst, size_t stride) {
  const ActLayout l = LayoutFor(w, n);
  const TensorType vt = VecDotType(w);
  for (int64_t b = b0; b < b1; ++b) {
    const float* xr = x + b * ldx;
    uint8_t* row = dst + static_cast<size_t>(b) * stride;
    if (vt == TensorType::kQ8_0) {
      ConvertRowQ8_0(w, xr, n, row, l);
    } else if (vt == TensorType::kQ8_K) {
      ConvertRowQ8_K(xr, n, row, l);
    } else {
      ConvertFloatRow(w, xr, n, reinterpret_cast<float*>(row));
    }
#if ES_ARM_DOT
    if (l.arm_off) detail::arm::ConvertActRow(w, row, n, {l.d_off, l.sum_off, l.arm_off});
#endif
  }
}

// Quant j of a converted row.
HWY_INLINE int ActQuant(TensorType w, const uint8_t* row, int64_t j) {
#if ES_VNNI
  if (w == TensorType::kQ8_0) return static_cast<int>(row[j]) - 128;
  return reinterpret_cast<const int8_t*>(row)[j];
#else
  (void)w;
  return reinterpret_cast<const int16_t*>(row)[j];
#endif
}

// Repacks one converted row into the reference block format (tests compare bytes).
void ActsToBlocksImpl(TensorType w, const uint8_t* row, int64_t n, void* blocks) {
  const ActLayout l = LayoutFor(w, n);
  const auto* d = reinterpret_cast<const float*>(row + l.d_off);
  switch (VecDotType(w)) {
    case TensorType::kQ8_0: {
      auto* out = static_cast<BlockQ8_0*>(blocks);
      for (int64_t b = 0; b < n / kQK8_0; ++b) {
        out[b].d = F32ToF16(d[b]);
        for (int j = 0; j < kQK8_0; ++j)
          out[b].qs[j] = static_cast<int8_t>(ActQuant(w, row, b * kQK8_0 + j));
      }
      break;
    }
    case TensorType::kQ8_K: {
      auto* out = static_cast<BlockQ8_K*>(blocks);
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        out[b].d = d[b];
        for (int j = 0; j < kQK_K; ++j)
          out[b].qs[j] = static_cast<int8_t>(ActQuant(w, row, b * kQK_K + j));
        for (int g = 0; g < kQK_K / 16; ++g) {
#if ES_VNNI
          out[b].bsums[g] = reinterpret_cast<const int16_t*>(row + l.bs16_off)[b * 16 + g];
#else
          int s = 0;
          for (int j = 0; j < 16; ++j) s += out[b].qs[16 * g + j];
          out[b].bsums[g] = static_cast<int16_t>(s);
#endif
        }
      }
      break;
    }
    case TensorType::kF16: {
      auto* out = static_cast<f16_t*>(blocks);
      for (int64_t i = 0; i < n; ++i) out[i] = F32ToF16(reinterpret_cast<const float*>(row)[i]);
      break;
    }
    case TensorType::kBF16: {
      auto* out = static_cast<bf16_t*>(blocks);
      for (int64_t i = 0; i < n; ++i) out[i] = F32ToBF16(reinterpret_cast<const float*>(row)[i]);
      break;
    }
    default:
      std::memcpy(blocks, row, static_cast<size_t>(n) * 4);
  }
}

#if ES_VNNI
// Highway's AVX3_DL target string lacks avx512vnni although its CPU check requires it.
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif

// ---------------------------------------------------------------------------------------------
// Tiles: y[c * ldy + r] for R weight rows starting at w (row_bytes apart) and C activation rows
// starting at a (stride apart). A kernel K walks the rows in steps (a vector or a block) and
// accumulates into R x C f32 vectors; Tile() drives it. Single-output tiles (decode) alternate
// two accumulator sets so that consecutive steps do not wait on each other's FMA.

struct TileArgs {
  const uint8_t* w;
  size_t wrb;
  const uint8_t* a;
  size_t as;
  int64_t n;
  float* y;
  int64_t ldy;
  ActLayout l;
};

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
// Int16 tag covering at most one 32-element block, and the matching int32/f32 tags.
using D16B = hn::CappedTag<int16_t, 32>;
using D32B = hn::Repartition<int32_t, D16B>;
using DFB = hn::Repartition<float, D16B>;
constexpr size_t kNV = 32 / hn::MaxLanes(D16B());  // int16 vectors per 32 elements

template <class D>
HWY_INLINE float Sum(D d, hn::Vec<D> v) {
  return hn::GetLane(hn::SumOfLanes(d, v));
}

// Lane sums of several int32 vectors of consecutive blocks: a level adds adjacent lanes and
// halves the vector count, so M vectors of M lanes become one vector with lane j = sum of vector
// j's lanes (the order of the blocks is kept). Integer sums are exact, so the order is free.
template <class D, size_t M>
HWY_INLINE hn::Vec<D> ReduceBlocks(D d, hn::Vec<D> (&v)[M]) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (M > 1) {
    for (size_t m = M; m > 1; m /= 2)
      for (size_t j = 0; j < m / 2; ++j)
        v[j] = hn::Add(hn::ConcatEven(d, v[2 * j + 1], v[2 * j]),
                       hn::ConcatOdd(d, v[2 * j + 1], v[2 * j]));
  }
#else
  (void)d;
  static_assert(M == 1, "one lane per vector");
#endif
  return v[0];
}

// llama.cpp's x86 reduction of eight lane sums: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
HWY_INLINE float Hsum8(const float* a) {
  const float h0 = a[0] + a[4], h1 = a[1] + a[5], h2 = a[2] + a[6], h3 = a[3] + a[7];
  return (h0 + h2) + (h1 + h3);
}

// Kernels with kOrdered keep llama.cpp's order of float operations per output; single-output tiles
// then get no second accumulator set (FMA latency is hidden by other outputs instead).
template <class K, class = void>
struct IsOrdered : std::false_type {};
template <class K>
struct IsOrdered<K, std::void_t<decltype(K::kOrdered)>> : std::bool_constant<K::kOrdered> {};

template <int R, int C, class K>
HWY_NOINLINE void Tile(const TileArgs& t) {
  K k(t);
  using Acc = typename K::Acc;
  using VA = hn::Vec<Acc>;
  const Acc da;
  VA acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = hn::Zero(da);
  const int64_t steps = k.Steps();
  int64_t s = 0;
  if constexpr (R * C <= 2 && !IsOrdered<K>::value) {
    VA acc2[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc2[r][c] = hn::Zero(da);
    for (; s + 2 <= steps; s += 2) {
      k.template Step<R, C>(s, acc);
      k.template Step<R, C>(s + 1, acc2);
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = hn::Add(acc[r][c], acc2[r][c]);
  }
  for (; s < steps; ++s) k.template Step<R, C>(s, acc);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) t.y[c * t.ldy + r] = k.Finish(r, c, acc[r][c]);
}

// Float weights: one vector of N elements per step; the tail past the last full vector is
// added in Finish.
template <class Loader>
struct FloatKernel {
  using Acc = DF;
  // One accumulator per output in every tile shape, so that decode and prompt rows give the same
  // result (with 16 lanes this is also llama.cpp's order for rows of a multiple of 16).
  static constexpr bool kOrdered = true;
  const TileArgs& t;
  int64_t N;
  explicit FloatKernel(const TileArgs& args) : t(args), N(static_cast<int64_t>(hn::Lanes(DF()))) {}
  int64_t Steps() const { return t.n / N; }
  const float* X(int c) const { return reinterpret_cast<const float*>(t.a + c * t.as); }
  template <int R, int C>
  HWY_INLINE void Step(int64_t s, VF (&acc)[R][C]) const {
    const DF df;
    const Loader load;
    VF wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load(df, t.w + r * t.wrb, s * N);
    for (int c = 0; c < C; ++c) {
      const VF xv = hn::LoadU(df, X(c) + s * N);
      for (int r = 0; r < R; ++r) acc[r][c] = hn::MulAdd(wv[r], xv, acc[r][c]);
    }
  }
  float Finish(int r, int c, VF acc) const {
    float sum = Sum(DF(), acc);
    for (int64_t i = Steps() * N; i < t.n; ++i) sum += Loader::One(t.w + r * t.wrb, i) * X(c)[i];
    return sum;
  }
};

struct LoadF32 {
  HWY_INLINE VF operator()(DF df, const uint8_t* row, int64_t k) const {
    return hn::LoadU(df, reinterpret_cast<const float*>(row) + k);
  }
  static float One(const uint8_t* row, int64_t k) { return reinterpret_cast<const float*>(row)[k]; }
};
struct LoadF16 {
  HWY_INLINE VF operator()(DF df, const uint8_t* row, int64_t k) const {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + k));
  }
  static float One(const uint8_t* row, int64_t k) {
    return F16ToF32(reinterpret_cast<const f16_t*>(row)[k]);
  }
};
struct LoadBF16 {
  HWY_INLINE VF operator()(DF df, const uint8_t* row, int64_t k) const {
    const hn::Rebind<hwy::bfloat16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::bfloat16_t*>(row) + k));
  }
  static float One(const uint8_t* row, int64_t k) {
    return BF16ToF32(reinterpret_cast<const bf16_t*>(row)[k]);
  }
};

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define ES_F16_X16 1
// F16 interleaved in groups of 16 rows (Interleave16): per 32-element block, the 16 rows' 64-byte
// pieces one after another, so that 16 rows stream as one sequential read (several row-major
// rows at once measured slower than one, and one row alone is bound by its FMA chain). Each row
// keeps FloatKernel's single accumulator over 16-lane vectors in order and its final Sum, so
// results are bit-identical to the row-major tiles. C activation rows per pass over 16 rows
// (C == 1, decode), 8 (C <= 3) or 4: the accumulators must fit 32 registers, and wider tiles
// convert each weight vector for more columns.
template <int C>
HWY_NOINLINE void F16x16Tile(const TileArgs& t) {
  const DF df;
  static_assert(hn::MaxLanes(DF()) == 16, "the layout's 32-byte pieces are one 16-lane vector");
  const hn::Rebind<hwy::float16_t, DF> dh;
  constexpr int kRows = C == 1 ? 16 : C <= 3 ? 8 : 4;
  const int64_t nb = t.n / 32;
  for (int h = 0; h < 16; h += kRows) {
    VF acc[kRows][C];
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = hn::Zero(df);
    for (int64_t b = 0; b < nb; ++b) {
      const auto* g =
          reinterpret_cast<const hwy::float16_t*>(t.w) + static_cast<size_t>(b) * 16 * 32;
      for (int half = 0; half < 2; ++half) {
        VF x[C];
        for (int c = 0; c < C; ++c)
          x[c] = hn::LoadU(df, reinterpret_cast<const float*>(t.a + c * t.as) + 32 * b + 16 * half);
        for (int r = 0; r < kRows; ++r) {
          const VF w = hn::PromoteTo(df, hn::LoadU(dh, g + 32 * (h + r) + 16 * half));
          for (int c = 0; c < C; ++c) acc[r][c] = hn::MulAdd(w, x[c], acc[r][c]);
        }
      }
    }
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < C; ++c) t.y[c * t.ldy + h + r] = Sum(df, acc[r][c]);
  }
}
#else
#define ES_F16_X16 0
#endif

// Base for the integer kernels: int16 activation quants and f32 scales of C activation rows.
template <class Block>
struct QuantKernelBase {
  using Acc = DFB;
  const TileArgs& t;
  explicit QuantKernelBase(const TileArgs& args) : t(args) {}
  const Block* W(int r) const { return reinterpret_cast<const Block*>(t.w + r * t.wrb); }
  const int16_t* XQ(int c) const { return reinterpret_cast<const int16_t*>(t.a + c * t.as); }
  float XD(int c, int64_t b) const {
    return reinterpret_cast<const float*>(t.a + c * t.as + t.l.d_off)[b];
  }
  float Finish(int, int, hn::Vec<DFB> acc) const { return Sum(DFB(), acc); }
};

// Q8_0 weights: elements [off, off + Lanes) of a block as int16.
struct UnpackQ8_0 {
  using Block = BlockQ8_0;
  HWY_INLINE hn::Vec<D16B> operator()(D16B d16, const Block& b, size_t off) const {
    const hn::Rebind<int8_t, D16B> d8;
    return hn::PromoteTo(d16, hn::LoadU(d8, b.qs + off));
  }
};
// Q4_0 weights: elements < 16 are the low nibbles, 16..31 the high nibbles, value q - 8.
struct UnpackQ4_0 {
  using Block = BlockQ4_0;
  HWY_INLINE hn::Vec<D16B> operator()(D16B d16, const Block& b, size_t off) const {
#if HWY_TARGET != HWY_SCALAR
    if (hn::Lanes(d16) == 32) {
      const hn::Half<D16B> dh;
      const hn::Rebind<uint8_t, decltype(dh)> d8;
      const auto v = hn::PromoteTo(dh, hn::LoadU(d8, b.qs));
      const auto lo = hn::And(v, hn::Set(dh, 15));
      const auto hi = hn::ShiftRight<4>(v);
      return hn::Sub(hn::Combine(d16, hi, lo), hn::Set(d16, 8));
    }
#endif
    const hn::Rebind<uint8_t, D16B> d8;
    auto v = hn::PromoteTo(d16, hn::LoadU(d8, b.qs + (off & 15)));
    v = off < 16 ? hn::And(v, hn::Set(d16, 15)) : hn::ShiftRight<4>(v);
    return hn::Sub(v, hn::Set(d16, 8));
  }
};

// Int32 pair sums of one 32-element group (kNV vectors; lane i of vector v holds elements
// 2i, 2i+1 of v's part) -> one vector holding, per lane, the sum of four adjacent elements
// 4l..4l+3 ("partial l", the int32 lane of llama.cpp's x86 kernels). Lane of partial l:
// PartialLane(l). Targets with more than two vectors per group (128-bit and scalar) mix partials
// (kExact8 false) and are reduced in any order.
constexpr bool kExact8 = kNV <= 2;
constexpr size_t PartialLane(int l) {
  return kNV == 1 ? 2 * l : (l < 4 ? 2 * l : 2 * (l - 4) + 1);
}
HWY_INLINE hn::Vec<D32B> Partials8(const hn::Vec<D32B> (&s)[kNV]) {
#if HWY_TARGET == HWY_SCALAR
  if constexpr (false) {
#else
  if constexpr (kNV == 1) {
    return hn::Add(s[0], hn::Shuffle2301(s[0]));
  } else if constexpr (kNV == 2) {
    return hn::OddEven(hn::Add(s[1], hn::Shuffle2301(s[1])), hn::Add(s[0], hn::Shuffle2301(s[0])));
#endif
  } else {
    auto sum = s[0];
    for (size_t v = 1; v < kNV; ++v) sum = hn::Add(sum, s[v]);
    return sum;
  }
}
// Final reduction of a partial-lane accumulator.
HWY_INLINE float ReducePartials(hn::Vec<DFB> acc) {
  if constexpr (kExact8) {
    alignas(64) float lanes[hn::MaxLanes(DFB())];
    hn::Store(acc, DFB(), lanes);
    float a[8];
    for (int l = 0; l < 8; ++l) a[l] = lanes[PartialLane(l)];
    return Hsum8(a);
  } else {
    return Sum(DFB(), acc);
  }
}

// Q8_0 weights against Q8_0 activations: one 32-element block per step; per partial lane
// acc = fma(dw * dx, float(partial), acc) over blocks in order.
template <class Unpack>
struct Q8_0Kernel : QuantKernelBase<typename Unpack::Block> {
  static constexpr bool kOrdered = true;
  using Base = QuantKernelBase<typename Unpack::Block>;
  using Base::Base;
  using Base::t;
  using Base::W;
  using Base::XD;
  using Base::XQ;
  int64_t Steps() const { return t.n / 32; }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const size_t N = hn::Lanes(d16);
    const Unpack unpack;
    float dw[R];
    hn::Vec<D16B> wv[R][kNV];
    for (int r = 0; r < R; ++r) {
      const auto& blk = W(r)[b];
      dw[r] = HalfToFloat(&blk.d);
      for (size_t v = 0; v < kNV; ++v) wv[r][v] = unpack(d16, blk, v * N);
    }
    for (int c = 0; c < C; ++c) {
      hn::Vec<D16B> xv[kNV];
      for (size_t v = 0; v < kNV; ++v) xv[v] = hn::LoadU(d16, XQ(c) + b * 32 + v * N);
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        hn::Vec<D32B> s[kNV];
        for (size_t v = 0; v < kNV; ++v) {
          auto s1 = hn::Zero(d32);
          s[v] = hn::ReorderWidenMulAccumulate(d32, wv[r][v], xv[v], hn::Zero(d32), s1);
          s[v] = hn::Add(s[v], s1);
        }
        acc[r][c] = hn::MulAdd(hn::Set(df, dw[r] * dx), hn::ConvertTo(df, Partials8(s)), acc[r][c]);
      }
    }
  }
  float Finish(int, int, hn::Vec<DFB> acc) const { return ReducePartials(acc); }
};

// Q4_0 weights against Q8_0 activations: per block one exact integer sum, and one accumulator per
// output: acc = fma(float(isum), dw * dx, acc) over blocks in order. A step takes G blocks (one
// per int32 lane) and reduces their lane sums together; the ordered chains of the R x C outputs
// interleave.
struct Q4_0Kernel : QuantKernelBase<BlockQ4_0> {
  using Acc = hn::CappedTag<float, 1>;
  static constexpr bool kOrdered = true;
  static constexpr size_t G = hn::MaxLanes(D32B());
  using QuantKernelBase::QuantKernelBase;
  int64_t nb() const { return t.n / 32; }
  // The last step may hold fewer than G blocks (absent blocks count as zeros in the reduction).
  int64_t Steps() const { return (nb() + static_cast<int64_t>(G) - 1) / static_cast<int64_t>(G); }
  template <int R, int C>
  HWY_INLINE void Step(int64_t s, hn::Vec<Acc> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const Acc d1;
    const size_t N = hn::Lanes(d16);
    const UnpackQ4_0 unpack;
    const int64_t b0 = s * static_cast<int64_t>(G);
    const size_t count = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(G), nb() - b0));
    // Unpacked once per step, reused for every activation row.
    alignas(64) int16_t wq[R][G][32];
    float dw[R][G];
    for (int r = 0; r < R; ++r) {
      for (size_t j = 0; j < count; ++j) {
        const auto& blk = W(r)[b0 + static_cast<int64_t>(j)];
        dw[r][j] = HalfToFloat(&blk.d);
        for (size_t v = 0; v < kNV; ++v) hn::Store(unpack(d16, blk, v * N), d16, wq[r][j] + v * N);
      }
    }
    alignas(64) float fi[R][C][G];
    for (int c = 0; c < C; ++c) {
      const int16_t* xq = XQ(c) + b0 * 32;
      for (int r = 0; r < R; ++r) {
        hn::Vec<D32B> bs[G];
        for (size_t j = 0; j < G; ++j) {
          auto s0 = hn::Zero(d32), s1 = hn::Zero(d32);
          if (j < count) {
            for (size_t v = 0; v < kNV; ++v)
              s0 = hn::ReorderWidenMulAccumulate(d32, hn::Load(d16, wq[r][j] + v * N),
                                                 hn::LoadU(d16, xq + 32 * j + v * N), s0, s1);
          }
          bs[j] = hn::Add(s0, s1);
        }
        hn::Store(hn::ConvertTo(df, ReduceBlocks(d32, bs)), df, fi[r][c]);
      }
    }
    // The R x C ordered chains, interleaved.
    for (size_t j = 0; j < count; ++j) {
      for (int c = 0; c < C; ++c) {
        const float dx = XD(c, b0 + static_cast<int64_t>(j));
        for (int r = 0; r < R; ++r)
          acc[r][c] = hn::MulAdd(hn::Set(d1, fi[r][c][j]), hn::Set(d1, dw[r][j] * dx), acc[r][c]);
      }
    }
  }
  float Finish(int, int, hn::Vec<Acc> acc) const { return hn::GetLane(acc); }
};

// Q4_K: 8 sub-blocks of 32 with 6-bit scale and min. Sub-block j holds nibble plane (j & 1) of
// qs[32 * (j / 2) ...]. One 256-element block per step; the min terms are summed separately
// as scalars and subtracted in Finish.
HWY_INLINE hn::Vec<D16B> NibblesQ4_K(D16B d16, const BlockQ4_K& b, int j, size_t off) {
  const hn::Rebind<uint8_t, D16B> d8;
  const auto v = hn::PromoteTo(d16, hn::LoadU(d8, b.qs + 32 * (j / 2) + off));
  return (j & 1) ? hn::ShiftRight<4>(v) : hn::And(v, hn::Set(d16, 15));
}

struct Q4KKernelBase : QuantKernelBase<BlockQ4_K> {
  using QuantKernelBase::QuantKernelBase;
  int64_t Steps() const { return t.n / kQK_K; }
  const int32_t* XS(int c) const {
    return reinterpret_cast<const int32_t*>(t.a + c * t.as + t.l.sum_off);
  }
};

template <int RMax, int CMax>
struct Q4KKernel : Q4KKernelBase {
  mutable float minsum[RMax][CMax] = {};
  using Q4KKernelBase::Q4KKernelBase;
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const size_t N = hn::Lanes(d16);
    int sc[R][8], mn[R][8];
    for (int r = 0; r < R; ++r) UnpackScalesQ4_K(W(r)[b].scales, sc[r], mn[r]);
    hn::Vec<D32B> s0[R][C], s1[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) s0[r][c] = s1[r][c] = hn::Zero(d32);
    for (int j = 0; j < 8; ++j) {
      hn::Vec<D16B> wv[R][kNV];
      for (int r = 0; r < R; ++r)
        for (size_t v = 0; v < kNV; ++v) wv[r][v] = NibblesQ4_K(d16, W(r)[b], j, v * N);
      for (int c = 0; c < C; ++c) {
        const int16_t* xj = XQ(c) + b * kQK_K + 32 * j;
        for (size_t v = 0; v < kNV; ++v) {
          const auto xv = hn::LoadU(d16, xj + v * N);
          for (int r = 0; r < R; ++r) {
            // q * x <= 15 * 127 fits int16; the scale multiply widens to int32.
            const auto p = hn::Mul(wv[r][v], xv);
            s0[r][c] = hn::ReorderWidenMulAccumulate(
                d32, p, hn::Set(d16, static_cast<int16_t>(sc[r][j])), s0[r][c], s1[r][c]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = HalfToFloat(&W(r)[b].d), dmin = HalfToFloat(&W(r)[b].dmin);
      for (int c = 0; c < C; ++c) {
        const float dx = XD(c, b);
        acc[r][c] = hn::MulAdd(hn::ConvertTo(df, hn::Add(s0[r][c], s1[r][c])), hn::Set(df, d * dx),
                               acc[r][c]);
        const int32_t* xs = XS(c) + b * 8;
        int msum = 0;
        for (int j = 0; j < 8; ++j) msum += mn[r][j] * xs[j];
        minsum[r][c] += dmin * dx * static_cast<float>(msum);
      }
    }
  }
  float Finish(int r, int c, hn::Vec<DFB> acc) const { return Sum(DFB(), acc) - minsum[r][c]; }
};

// Q6_K: elements 32k .. 32k+31 of a 128-element half h (k = 0..3) take nibble (k >= 2) of
// ql[64h + 32(k % 2) + l] and bits 2k, 2k+1 of qh[32h + l]; value q - 32; scale per 16.
HWY_INLINE hn::Vec<D16B> ValuesQ6_K(D16B d16, const BlockQ6_K& b, int t, size_t off) {
  const hn::Rebind<uint8_t, D16B> d8;
  const int h = t / 4, k = t % 4;
  auto lo = hn::PromoteTo(d16, hn::LoadU(d8, b.ql + 64 * h + 32 * (k % 2) + off));
  lo = k < 2 ? hn::And(lo, hn::Set(d16, 15)) : hn::ShiftRight<4>(lo);
  auto hi = hn::PromoteTo(d16, hn::LoadU(d8, b.qh + 32 * h + off));
  hi = hn::And(hn::ShiftRightSame(hi, 2 * k), hn::Set(d16, 3));
  return hn::Sub(hn::Or(lo, hn::ShiftLeft<4>(hi)), hn::Set(d16, 32));
}

// Scale of each lane for elements [32t + off, + Lanes): the first 16 use scales[2t], the rest
// scales[2t + 1].
HWY_INLINE hn::Vec<D16B> ScalesQ6_K(D16B d16, const BlockQ6_K& b, int t, size_t off) {
#if HWY_TARGET != HWY_SCALAR
  if (hn::Lanes(d16) == 32) {
    const hn::Half<D16B> dh;
    return hn::Combine(d16, hn::Set(dh, b.scales[2 * t + 1]), hn::Set(dh, b.scales[2 * t]));
  }
#endif
  return hn::Set(d16, b.scales[2 * t + (off >= 16 ? 1 : 0)]);
}

// Per block, each partial lane (four adjacent elements of every 32-element group) sums
// scale * (q - 32) * x over the eight groups; acc = fma(dw * dx, float(lane), acc) per block.
struct Q6KKernel : QuantKernelBase<BlockQ6_K> {
  static constexpr bool kOrdered = true;
  using QuantKernelBase::QuantKernelBase;
  int64_t Steps() const { return t.n / kQK_K; }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const size_t N = hn::Lanes(d16);
    hn::Vec<D32B> s0[R][C][kNV], s1[R][C][kNV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c)
        for (size_t v = 0; v < kNV; ++v) s0[r][c][v] = s1[r][c][v] = hn::Zero(d32);
    for (int q = 0; q < 8; ++q) {
      hn::Vec<D16B> wv[R][kNV], sv[R][kNV];
      for (int r = 0; r < R; ++r) {
        for (size_t v = 0; v < kNV; ++v) {
          wv[r][v] = ValuesQ6_K(d16, W(r)[b], q, v * N);
          sv[r][v] = ScalesQ6_K(d16, W(r)[b], q, v * N);
        }
      }
      for (int c = 0; c < C; ++c) {
        const int16_t* xj = XQ(c) + b * kQK_K + 32 * q;
        for (size_t v = 0; v < kNV; ++v) {
          const auto xv = hn::LoadU(d16, xj + v * N);
          for (int r = 0; r < R; ++r) {
            // (q - 32) * x <= 32 * 127 fits int16.
            const auto p = hn::Mul(wv[r][v], xv);
            s0[r][c][v] = hn::ReorderWidenMulAccumulate(d32, p, sv[r][v], s0[r][c][v], s1[r][c][v]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = HalfToFloat(&W(r)[b].d);
      for (int c = 0; c < C; ++c) {
        hn::Vec<D32B> sum[kNV];
        for (size_t v = 0; v < kNV; ++v) sum[v] = hn::Add(s0[r][c][v], s1[r][c][v]);
        acc[r][c] =
            hn::MulAdd(hn::Set(df, XD(c, b) * d), hn::ConvertTo(df, Partials8(sum)), acc[r][c]);
      }
    }
  }
  float Finish(int, int, hn::Vec<DFB> acc) const { return ReducePartials(acc); }
};

#if ES_VNNI
// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI kernels. Int32 lane i of a dot product covers bytes 4i..4i+3, so with blocks laid
// out contiguously, lanes map to fixed element groups and per-lane scale patterns apply.

using D8 = hn::ScalableTag<int8_t>;
using DU8 = hn::ScalableTag<uint8_t>;
using DU16 = hn::ScalableTag<uint16_t>;
using D32 = hn::ScalableTag<int32_t>;
using V8 = hn::Vec<D8>;
using VU8 = hn::Vec<DU8>;
using V32 = hn::Vec<D32>;

// acc[i] += sum_k a[4i + k] * b[4i + k], a unsigned bytes, b signed bytes (vpdpbusd).
HWY_INLINE V32 DotBytes(V32 acc, VU8 a, V8 b) {
  return V32{_mm512_dpbusd_epi32(acc.raw, a.raw, b.raw)};
}
// acc[i] += lo16(a[i]) * lo16(b[i]) + hi16(a[i]) * hi16(b[i]) (vpdpwssd). Used with b holding
// a scale in its low half and 0 in its high half, and a an int32 that fits in int16.
HWY_INLINE V32 DotPairs(V32 acc, V32 a, V32 b) {
  return V32{_mm512_dpwssd_epi32(acc.raw, a.raw, b.raw)};
}

// Per-lane shift counts for 16-bit lanes: `lo` in the lower 256 bits, `hi` in the upper.
HWY_NOINLINE hn::Vec<DU16> HalfShifts(int lo, int hi) {
  const DU16 d;
  const hn::Half<DU16> dh;
  return hn::Combine(d, hn::Set(dh, static_cast<uint16_t>(hi)),
                     hn::Set(dh, static_cast<uint16_t>(lo)));
}

// Lane patterns for scales: lane i takes source lane (i / group) + base; group is 4 or 8. Built
// per kernel object (per weight row in decode), so without divisions or memory round trips.
HWY_NOINLINE hn::Indices512<int32_t> GroupIndices(int base, int group) {
  const D32 d;
  const auto lane = hn::ShiftRightSame(hn::Iota(d, 0), group == 8 ? 3 : 2);
  return hn::IndicesFromVec(d, hn::Add(lane, hn::Set(d, base)));
}

struct VnniBase {
  using Acc = DF;
  const TileArgs& t;
  explicit VnniBase(const TileArgs& args) : t(args) {}
  const uint8_t* XQ(int c) const { return t.a + c * t.as; }
  float XD(int c, int64_t b) const {
    return reinterpret_cast<const float*>(t.a + c * t.as + t.l.d_off)[b];
  }
  const float* DXL(int c) const {
    return reinterpret_cast<const float*>(t.a + c * t.as + t.l.dxl_off);
  }
};

// Accumulator of eight partial lanes (four adjacent products each), as llama.cpp's x86 kernels.
using DF8 = hn::Full256<float>;

// Q8_0 weights x (q + 128) activations: two blocks per step. sum(w * x) = sum(w * (x + 128)) -
// 128 * sum(w); the second term is computed per weight row and seeds the accumulator.
// Lanes 0-7 of a step hold the partials of its first block, 8-15 those of the second; both
// blocks go into the same eight lanes, in order.
struct Q8_0Vnni : VnniBase {
  using Acc = DF8;
  static constexpr bool kOrdered = true;
  using VnniBase::VnniBase;
  int64_t nb() const { return t.n / 32; }
  int64_t Steps() const { return nb() / 2; }
  const BlockQ8_0* W(int r) const { return reinterpret_cast<const BlockQ8_0*>(t.w + r * t.wrb); }
  template <int R, int C>
  HWY_INLINE void Step(int64_t s, hn::Vec<DF8> (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const D32 d32;
    const DF df;
    const hn::Half<D8> d8h;
    const hn::Half<DF> dfh;
    V8 w[R];
    V32 seed[R];
    VF dw[R];
    for (int r = 0; r < R; ++r) {
      const BlockQ8_0* blk = W(r) + 2 * s;
      w[r] = hn::Combine(d8, hn::LoadU(d8h, blk[1].qs), hn::LoadU(d8h, blk[0].qs));
      seed[r] = hn::Neg(DotBytes(hn::Zero(d32), hn::Set(du8, 0x80), w[r]));
      dw[r] = hn::Combine(df, hn::Set(dfh, HalfToFloat(&blk[1].d)),
                          hn::Set(dfh, HalfToFloat(&blk[0].d)));
    }
    for (int c = 0; c < C; ++c) {
      const VU8 xu = hn::Load(du8, XQ(c) + 64 * s);
      const VF dx = hn::Load(df, DXL(c) + 16 * s);
      for (int r = 0; r < R; ++r) {
        const VF p = hn::ConvertTo(df, DotBytes(seed[r], xu, w[r]));
        const VF d = hn::Mul(dw[r], dx);
        acc[r][c] = hn::MulAdd(hn::LowerHalf(DF8(), d), hn::LowerHalf(DF8(), p), acc[r][c]);
        acc[r][c] = hn::MulAdd(hn::UpperHalf(DF8(), d), hn::UpperHalf(DF8(), p), acc[r][c]);
      }
    }
  }
  float Finish(int r, int c, hn::Vec<DF8> acc) const {
    alignas(32) float a[8];
    hn::Store(acc, DF8(), a);
    if (nb() % 2) {  // odd block count: the last block in scalar code
      const int64_t b = nb() - 1;
      const BlockQ8_0& blk = W(r)[b];
      const float d = HalfToFloat(&blk.d) * XD(c, b);
      for (int l = 0; l < 8; ++l) {
        int p = 0;
        for (int j = 4 * l; j < 4 * l + 4; ++j)
          p += blk.qs[j] * (static_cast<int>(XQ(c)[32 * b + j]) - 128);
        a[l] = std::fma(d, static_cast<float>(p), a[l]);
      }
    }
    return Hsum8(a);
  }
};

// Q4_0 weights (unsigned nibbles) x int8 activations, the -8 offset being the precomputed
// per-lane correction that seeds each dot product. One accumulator per output, in block order:
// a step takes 16 blocks (eight dot products of two blocks), reduces them to one integer per block
// and chains acc = fma(float(isum), dw * dx, acc).
// Full tiles of 16 outputs keep the 16 chains in the lanes of one vector instead: the integer sums
// of one block for all 16 outputs are reduced together, so each block costs one vector FMA.
template <int RMax, int CMax>
struct Q4_0Vnni : VnniBase {
  using Acc = hn::CappedTag<float, 1>;
  static constexpr bool kOrdered = true;
  static constexpr int kG = 16;  // blocks per step
  static constexpr bool kLanes = RMax * CMax == 16;
  mutable VF acc16 = hn::Zero(DF());  // kLanes: lane r * CMax + c is output (r, c)
  hn::Vec<DU16> shifts = HalfShifts(0, 0);
  explicit Q4_0Vnni(const TileArgs& args) : VnniBase(args) {
    // Each 128-bit block holds one copy of a block's 16 bytes: low nibbles in copies 0 and 2,
    // high nibbles in copies 1 and 3.
    alignas(64) uint16_t sh[32];
    for (int i = 0; i < 32; ++i) sh[i] = ((i / 8) % 2) ? 4 : 0;
    shifts = hn::Load(DU16(), sh);
  }
  int64_t nb() const { return t.n / 32; }
  // The last step may hold fewer than 16 blocks: absent pairs are zeros, and an odd last block
  // pairs with zero weights (its partner's lanes are not used).
  int64_t Steps() const { return (nb() + kG - 1) / kG; }
  const BlockQ4_0* W(int r) const { return reinterpret_cast<const BlockQ4_0*>(t.w + r * t.wrb); }
  const int32_t* Corr(int c) const {
    return reinterpret_cast<const int32_t*>(t.a + c * t.as + t.l.corr_off);
  }
  // Nibbles of blk[0] (and blk[1] when `two`) as unsigned bytes, laid out for DotBytes against
  // two blocks of activation quants: low nibbles in 128-bit copies 0 and 2, high in 1 and 3.
  HWY_INLINE VU8 Nibbles(const BlockQ4_0* blk, bool two) const {
    const DU8 du8;
    const DU16 du16;
    const VU8 hi = two ? hn::LoadDup128(du8, blk[1].qs) : hn::Zero(du8);
    const VU8 v = hn::ConcatUpperLower(du8, hi, hn::LoadDup128(du8, blk[0].qs));
    return hn::And(hn::BitCast(du8, hn::BitCast(du16, v) >> shifts), hn::Set(du8, 0x0F));
  }
  template <int R, int C>
  HWY_INLINE void Step(int64_t s, hn::Vec<Acc> (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const D32 d32;
    const DF df;
    const Acc d1;
    const int64_t b0 = s * kG;
    const int count = static_cast<int>(std::min<int64_t>(kG, nb() - b0));
    const int pairs = (count + 1) / 2;
    // Unpacked once per step, reused for every activation row.
    alignas(64) uint8_t q[R][kG / 2][64];
    float dw[R][kG];
    for (int r = 0; r < R; ++r) {
      for (int k = 0; k < pairs; ++k) {
        const BlockQ4_0* blk = W(r) + b0 + 2 * k;
        const bool two = 2 * k + 1 < count;
        hn::Store(Nibbles(blk, two), du8, q[r][k]);
        dw[r][2 * k] = HalfToFloat(&blk[0].d);
        if (two) dw[r][2 * k + 1] = HalfToFloat(&blk[1].d);
      }
    }
    if constexpr (kLanes && R == RMax && C == CMax) {
      StepLanes<R, C>(b0, count, pairs, q, dw);
      return;
    }
    alignas(64) float fi[R][C][kG];
    for (int c = 0; c < C; ++c) {
      // Reads stay inside the converted row: quants and corrections are padded to 64 bytes.
      const auto* xq = reinterpret_cast<const int8_t*>(XQ(c)) + 32 * b0;
      const int32_t* corr = Corr(c) + 8 * b0;
      for (int r = 0; r < R; ++r) {
        V32 v[kG / 2];
        for (int k = 0; k < kG / 2; ++k)
          v[k] = k < pairs ? DotBytes(hn::Load(d32, corr + 16 * k), hn::Load(du8, q[r][k]),
                                      hn::Load(d8, xq + 64 * k))
                           : hn::Zero(d32);
        hn::Store(hn::ConvertTo(df, ReduceBlocks(d32, v)), df, fi[r][c]);
      }
    }
    // The R x C ordered chains, interleaved.
    for (int j = 0; j < count; ++j) {
      for (int c = 0; c < C; ++c) {
        const float dx = XD(c, b0 + j);
        for (int r = 0; r < R; ++r)
          acc[r][c] = hn::MulAdd(hn::Set(d1, fi[r][c][j]), hn::Set(d1, dw[r][j] * dx), acc[r][c]);
      }
    }
  }
  // Sums of one pair of blocks for the 16 outputs: three halving levels leave, per output, the two
  // block sums in adjacent lanes; even lanes are the first block, odd lanes the second.
  template <int R, int C>
  HWY_INLINE void StepLanes(int64_t b0, int count, int pairs, const uint8_t (&q)[R][kG / 2][64],
                            const float (&dw)[R][kG]) const {
    const D8 d8;
    const DU8 du8;
    const D32 d32;
    const DF df;
    alignas(64) int32_t ir[16], ic[16];
    for (int i = 0; i < 16; ++i) {
      ir[i] = i / C;
      ic[i] = i % C;
    }
    const auto idx_r = hn::SetTableIndices(df, ir);
    const auto idx_c = hn::SetTableIndices(df, ic);
    alignas(64) float dwt[kG][16] = {}, dxt[kG][16] = {};
    for (int j = 0; j < count; ++j) {
      for (int r = 0; r < R; ++r) dwt[j][r] = dw[r][j];
      for (int c = 0; c < C; ++c) dxt[j][c] = XD(c, b0 + j);
    }
    auto dd = [&](int j) HWY_ATTR {
      return hn::Mul(hn::TableLookupLanes(hn::Load(df, dwt[j]), idx_r),
                     hn::TableLookupLanes(hn::Load(df, dxt[j]), idx_c));
    };
    for (int k = 0; k < pairs; ++k) {
      V32 v[16];
      for (int c = 0; c < C; ++c) {
        const auto* xq = reinterpret_cast<const int8_t*>(XQ(c)) + 32 * (b0 + 2 * k);
        const V8 x = hn::Load(d8, xq);
        const V32 corr = hn::Load(d32, Corr(c) + 8 * (b0 + 2 * k));
        for (int r = 0; r < R; ++r) v[r * C + c] = DotBytes(corr, hn::Load(du8, q[r][k]), x);
      }
      for (int m = 16; m > 2; m /= 2)
        for (int j = 0; j < m / 2; ++j)
          v[j] = hn::Add(hn::ConcatEven(d32, v[2 * j + 1], v[2 * j]),
                         hn::ConcatOdd(d32, v[2 * j + 1], v[2 * j]));
      acc16 = hn::MulAdd(hn::ConvertTo(df, hn::ConcatEven(d32, v[1], v[0])), dd(2 * k), acc16);
      if (2 * k + 1 < count)
        acc16 = hn::MulAdd(hn::ConvertTo(df, hn::ConcatOdd(d32, v[1], v[0])), dd(2 * k + 1), acc16);
    }
  }
  float Finish(int r, int c, hn::Vec<Acc> acc) const {
    if constexpr (kLanes) {
      alignas(64) float l[16];
      hn::Store(acc16, DF(), l);
      return l[r * CMax + c];
    }
    return hn::GetLane(acc);
  }
};

// Decode of 16 Q4_0 rows. Phase 1 reads each row start to end (one sequential DRAM stream, as a
// single-row kernel does; interleaving 16 rows' blocks measured 30% slower than one row at a time)
// and keeps the exact integer sum of every block as a float with its scale product. Phase 2 then
// advances the 16 ordered chains together, one FMA per block for all rows: the same float
// operations per row as Q4_0Vnni's 1x1 tile, without its scalar FMA latency chain.
HWY_NOINLINE void DecodeQ4_0x16(const TileArgs& t) {
  const Q4_0Vnni<1, 1> k(t);
  const D8 d8;
  const D32 d32;
  const DF df;
  constexpr int kRows = 16;
  const int64_t nb = k.nb(), steps = k.Steps(), kG = Q4_0Vnni<1, 1>::kG;
  // Grows once per thread to the widest matrix; decode then allocates nothing.
  thread_local std::vector<float> buf;
  const size_t cells = static_cast<size_t>(steps * kG) * kRows;
  if (buf.size() < 2 * cells + 16) buf.resize(2 * cells + 16);
  float* fi = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) &
                                       ~uintptr_t{63});  // [block][row]: block sums
  float* dd = fi + cells;  // [block][row]: weight scale x activation scale
  const auto* xq = reinterpret_cast<const int8_t*>(k.XQ(0));
  const int32_t* corr = k.Corr(0);
  for (int r = 0; r < kRows; ++r) {
    const BlockQ4_0* w = k.W(r);
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t b0 = s * kG;
      const int count = static_cast<int>(std::min<int64_t>(kG, nb - b0));
      const int pairs = (count + 1) / 2;
      V32 v[kG / 2];
      for (int p = 0; p < kG / 2; ++p) {
        if (p >= pairs) {
          v[p] = hn::Zero(d32);
          continue;
        }
        v[p] = DotBytes(hn::Load(d32, corr + 8 * b0 + 16 * p),
                        k.Nibbles(w + b0 + 2 * p, 2 * p + 1 < count),
                        hn::Load(d8, xq + 32 * b0 + 64 * p));
      }
      alignas(64) float f[kG];
      hn::Store(hn::ConvertTo(df, ReduceBlocks(d32, v)), df, f);
      for (int j = 0; j < count; ++j) {
        fi[(b0 + j) * kRows + r] = f[j];
        dd[(b0 + j) * kRows + r] = HalfToFloat(&w[b0 + j].d) * k.XD(0, b0 + j);
      }
    }
  }
  VF acc = hn::Zero(df);
  for (int64_t j = 0; j < nb; ++j)
    acc = hn::MulAdd(hn::Load(df, fi + j * kRows), hn::Load(df, dd + j * kRows), acc);
  hn::StoreU(acc, df, t.y);
}

// Q4_0 interleaved in groups of 16 rows (Interleave16): per block index, the 16 rows' scales
// (f16, 32 bytes) then four 64-byte vectors; vector j holds, as its int32 lane r, bytes 4j..4j+3
// of row r's nibble array. Its low nibbles are elements 4j..4j+3 of every row, its high nibbles
// elements 16+4j..16+4j+3, so a dot product against one broadcast dword of activations adds
// four products into each row's own lane: eight of them leave lane r holding row r's exact block
// sum, with no reduction across lanes. The float steps per row and block are those of Q4_0Vnni
// (convert, scale product, FMA in block order), so results are bit-identical to the row-major
// kernels. C activation rows share each unpack.
template <int C>
HWY_NOINLINE void Q4_0x16Tile(const TileArgs& t) {
  const DU8 du8;
  const DU16 du16;
  const D32 d32;
  const DF df;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const int64_t nb = t.n / 32;
  constexpr size_t kGroupBlock = 16 * sizeof(BlockQ4_0);
  VF acc[C];
  for (int c = 0; c < C; ++c) acc[c] = hn::Zero(df);
  const VU8 low = hn::Set(du8, 0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* g = t.w + static_cast<size_t>(b) * kGroupBlock;
    const VF dw = hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(g)));
    VU8 lo[4], hi[4];
    for (int v = 0; v < 4; ++v) {
      const VU8 raw = hn::LoadU(du8, g + 32 + 64 * v);
      lo[v] = hn::And(raw, low);
      hi[v] = hn::And(hn::BitCast(du8, hn::ShiftRight<4>(hn::BitCast(du16, raw))), low);
    }
    for (int c = 0; c < C; ++c) {
      const uint8_t* a = t.a + c * t.as;
      const auto* xq = reinterpret_cast<const int32_t*>(a) + 8 * b;
      const int32_t bcorr = reinterpret_cast<const int32_t*>(a + t.l.bcorr_off)[b];
      // Two chains (low and high nibbles) so that consecutive dot products overlap.
      V32 s0 = hn::Set(d32, bcorr), s1 = hn::Zero(d32);
      for (int k = 0; k < 4; ++k) {
        s0 = DotBytes(s0, lo[k], hn::BitCast(D8(), hn::Set(d32, xq[k])));
        s1 = DotBytes(s1, hi[k], hn::BitCast(D8(), hn::Set(d32, xq[4 + k])));
      }
      const VF sum = hn::ConvertTo(df, hn::Add(s0, s1));  // lane r: row r's block sum
      const float dx = reinterpret_cast<const float*>(a + t.l.d_off)[b];
      acc[c] = hn::MulAdd(sum, hn::Mul(dw, hn::Set(df, dx)), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) hn::StoreU(acc[c], df, t.y + c * t.ldy);
}

// Q8_0 interleaved like Q4_0 above: per block index the 16 rows' scales, then eight 64-byte
// vectors, vector k holding bytes 4k..4k+3 (partial k) of every row's quants as its int32 lane r,
// stored with the sign bit flipped (q + 128, the unsigned operand of vpdpbusd). A dot product of
// vector k with a broadcast dword of activations, seeded with -128 * that dword's sum, is partial k
// of all 16 rows at once, so llama.cpp's order (per row, eight partial accumulators,
// acc_k = fma(dw * dx, float(partial_k), acc_k) over blocks, then the hsum8 tree) runs with the
// eight accumulators as vectors whose lanes are the rows.
template <int C>
HWY_NOINLINE void Q8_0x16Tile(const TileArgs& t) {
  const D8 d8;
  const DU8 du8;
  const D32 d32;
  const DF df;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const int64_t nb = t.n / 32;
  constexpr size_t kGroupBlock = 16 * sizeof(BlockQ8_0);
  VF acc[C][8];
  for (int c = 0; c < C; ++c)
    for (int k = 0; k < 8; ++k) acc[c][k] = hn::Zero(df);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* g = t.w + static_cast<size_t>(b) * kGroupBlock;
    const VF dw = hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(g)));
    VU8 w[8];
    for (int k = 0; k < 8; ++k) w[k] = hn::LoadU(du8, g + 32 + 64 * k);
    for (int c = 0; c < C; ++c) {
      const uint8_t* a = t.a + c * t.as;
      const auto* xq = reinterpret_cast<const int32_t*>(a) + 8 * b;
      const auto* corr = reinterpret_cast<const int32_t*>(a + t.l.corr_off) + 8 * b;
      const float dx = reinterpret_cast<const float*>(a + t.l.d_off)[b];
      const VF d = hn::Mul(dw, hn::Set(df, dx));
      for (int k = 0; k < 8; ++k) {
        // corr holds -8 * sum for Q4_0's nibbles; the q + 128 bytes need -128 * sum.
        const V32 p =
            DotBytes(hn::Set(d32, 16 * corr[k]), w[k], hn::BitCast(d8, hn::Set(d32, xq[k])));
        acc[c][k] = hn::MulAdd(d, hn::ConvertTo(df, p), acc[c][k]);
      }
    }
  }
  for (int c = 0; c < C; ++c) {
    const VF* a = acc[c];
    const VF sum = hn::Add(hn::Add(hn::Add(a[0], a[4]), hn::Add(a[2], a[6])),
                           hn::Add(hn::Add(a[1], a[5]), hn::Add(a[3], a[7])));
    hn::StoreU(sum, df, t.y + c * t.ldy);
  }
}

struct KVnniBase : VnniBase {
  using VnniBase::VnniBase;
  int64_t Steps() const { return t.n / kQK_K; }
  const int8_t* X(int c, int64_t b) const {
    return reinterpret_cast<const int8_t*>(t.a + c * t.as) + b * kQK_K;
  }
  const int16_t* BS16(int c, int64_t b) const {
    return reinterpret_cast<const int16_t*>(t.a + c * t.as + t.l.bs16_off) + b * 16;
  }
  const int16_t* BS32(int c, int64_t b) const {
    return reinterpret_cast<const int16_t*>(t.a + c * t.as + t.l.bs32_off) + b * 8;
  }
};

// Q4_K: 64 elements per vector (the 32 bytes of nibbles for sub-blocks 2p and 2p + 1, low nibbles
// in the lower half); int32 lanes 0-7 belong to sub-block 2p, 8-15 to 2p + 1. The six-bit scales
// multiply the lane sums (which fit int16) with vpdpwssd; the mins meet the precomputed sums of
// 32 activations.
template <int RMax, int CMax>
struct Q4KVnni : KVnniBase {
  using D32x4 = hn::Full128<int32_t>;
  using DFx4 = hn::Full128<float>;
  // Min terms per output, 4 lanes each, reduced in Finish.
  mutable hn::Vec<DFx4> minacc[RMax][CMax];
  hn::Vec<DU16> shifts = HalfShifts(0, 4);
  hn::Indices512<int32_t> pat[4] = {GroupIndices(0, 8), GroupIndices(2, 8), GroupIndices(4, 8),
                                    GroupIndices(6, 8)};
  explicit Q4KVnni(const TileArgs& args) : KVnniBase(args) {
    for (int r = 0; r < RMax; ++r)
      for (int c = 0; c < CMax; ++c) minacc[r][c] = hn::Zero(DFx4());
  }
  const BlockQ4_K* W(int r) const { return reinterpret_cast<const BlockQ4_K*>(t.w + r * t.wrb); }
  // The 8 six-bit scales and mins as bytes of two 64-bit words (no round trip through memory:
  // a vector load of freshly stored scalars would stall on store forwarding).
  static HWY_INLINE void ScaleMinBytes(const uint8_t* q, uint64_t* sc, uint64_t* mn) {
    uint32_t u0, u1, u2;
    std::memcpy(&u0, q, 4);
    std::memcpy(&u1, q + 4, 4);
    std::memcpy(&u2, q + 8, 4);
    const uint32_t sc_lo = u0 & 0x3f3f3f3fu, mn_lo = u1 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    *sc = sc_lo | (static_cast<uint64_t>(sc_hi) << 32);
    *mn = mn_lo | (static_cast<uint64_t>(mn_hi) << 32);
  }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, VF (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const hn::Half<DU8> du8h;
    const DU16 du16;
    const D32 d32;
    const DF df;
    const hn::Full128<uint64_t> d64x2;
    const hn::Full128<uint8_t> d8x16;
    const hn::Full64<uint8_t> d8x8;
    const hn::Full128<int16_t> d16x8;
    const D32x4 d32x4;
    const DFx4 dfx4;
    VU8 q[R][4];
    V32 sc[R][4];
    hn::Vec<decltype(d16x8)> mins[R];
    float d[R], dmin[R];
    for (int r = 0; r < R; ++r) {
      const BlockQ4_K& blk = W(r)[b];
      uint64_t sc64, mn64;
      ScaleMinBytes(blk.scales, &sc64, &mn64);
      const V32 all = hn::PromoteTo(d32, hn::BitCast(d8x16, hn::Set(d64x2, sc64)));
      const auto mbytes = hn::LowerHalf(d8x8, hn::BitCast(d8x16, hn::Set(d64x2, mn64)));
      mins[r] = hn::BitCast(d16x8, hn::PromoteTo(hn::Full128<uint16_t>(), mbytes));
      for (int p = 0; p < 4; ++p) {
        sc[r][p] = hn::TableLookupLanes(all, pat[p]);
        const auto half = hn::LoadU(du8h, blk.qs + 32 * p);
        const VU8 v = hn::Combine(du8, half, half);
        q[r][p] = hn::And(hn::BitCast(du8, hn::BitCast(du16, v) >> shifts), hn::Set(du8, 0x0F));
      }
      d[r] = HalfToFloat(&blk.d);
      dmin[r] = HalfToFloat(&blk.dmin);
    }
    for (int c = 0; c < C; ++c) {
      const int8_t* xb = X(c, b);
      V8 x[4];
      for (int p = 0; p < 4; ++p) x[p] = hn::Load(d8, xb + 64 * p);
      const auto bs = hn::Load(d16x8, BS32(c, b));
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        V32 isum = hn::Zero(d32);
        for (int p = 0; p < 4; ++p)
          isum = DotPairs(isum, DotBytes(hn::Zero(d32), q[r][p], x[p]), sc[r][p]);
        acc[r][c] = hn::MulAdd(hn::ConvertTo(df, isum), hn::Set(df, d[r] * dx), acc[r][c]);
        auto m1 = hn::Zero(d32x4);
        const auto m0 = hn::ReorderWidenMulAccumulate(d32x4, mins[r], bs, hn::Zero(d32x4), m1);
        minacc[r][c] = hn::MulAdd(hn::ConvertTo(dfx4, hn::Add(m0, m1)), hn::Set(dfx4, dmin[r] * dx),
                                  minacc[r][c]);
      }
    }
  }
  float Finish(int r, int c, VF acc) const {
    return Sum(DF(), acc) - hn::GetLane(hn::SumOfLanes(DFx4(), minacc[r][c]));
  }
};

// Q6_K: 64 elements per vector, assembled from 64 bytes of ql and 32 bytes of qh (duplicated in
// both halves and shifted per half); unsigned values 0..63. Lanes of 16 elements share a scale;
// the -32 offset is subtracted per int32 lane (32 * the sum of its four activations), so that
// every lane holds sum (q - 32) * x of its four elements. Per block, partial lane l (elements
// 4l..4l+3 of each 32-element group, scaled) is summed over the eight groups and
// acc = fma(dw * dx, float(lane), acc), as llama.cpp's x86 kernel.
struct Q6KVnni : KVnniBase {
  using Acc = DF8;
  static constexpr bool kOrdered = true;
  hn::Vec<DU16> shl_a = HalfShifts(4, 2);
  hn::Vec<DU16> shr_b = HalfShifts(0, 2);
  hn::Indices512<int32_t> pat[4] = {GroupIndices(0, 4), GroupIndices(4, 4), GroupIndices(8, 4),
                                    GroupIndices(12, 4)};
  using KVnniBase::KVnniBase;
  const BlockQ6_K* W(int r) const { return reinterpret_cast<const BlockQ6_K*>(t.w + r * t.wrb); }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DF8> (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const hn::Half<DU8> du8h;
    const DU16 du16;
    const D32 d32;
    const hn::Full256<int32_t> d32x8;
    const hn::Rebind<int8_t, D32> d8x16;
    VU8 q[R][4];
    V32 sc[R][4];
    float d[R];
    const VU8 m0f = hn::Set(du8, 0x0F), m30 = hn::Set(du8, 0x30);
    for (int r = 0; r < R; ++r) {
      const BlockQ6_K& blk = W(r)[b];
      const V32 all = hn::PromoteTo(d32, hn::LoadU(d8x16, blk.scales));
      // Keep only the low 16 bits: DotPairs multiplies the high halves too.
      for (int j = 0; j < 4; ++j)
        sc[r][j] = hn::And(hn::TableLookupLanes(all, pat[j]), hn::Set(d32, 0xFFFF));
      for (int h = 0; h < 2; ++h) {
        const VU8 ql = hn::LoadU(du8, blk.ql + 64 * h);
        const auto qh_half = hn::LoadU(du8h, blk.qh + 32 * h);
        const auto qh = hn::BitCast(du16, hn::Combine(du8, qh_half, qh_half));
        q[r][2 * h] = hn::OrAnd(hn::And(ql, m0f), hn::BitCast(du8, qh << shl_a), m30);
        q[r][2 * h + 1] =
            hn::OrAnd(hn::And(hn::BitCast(du8, hn::ShiftRight<4>(hn::BitCast(du16, ql))), m0f),
                      hn::BitCast(du8, qh >> shr_b), m30);
      }
      d[r] = HalfToFloat(&blk.d);
    }
    for (int c = 0; c < C; ++c) {
      const int8_t* xb = X(c, b);
      V8 x[4];
      V32 off[4];
      for (int j = 0; j < 4; ++j) {
        x[j] = hn::Load(d8, xb + 64 * j);
        off[j] = DotBytes(hn::Zero(d32), hn::Set(du8, 32), x[j]);
      }
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        V32 isum = hn::Zero(d32);
        for (int j = 0; j < 4; ++j)
          isum = DotPairs(isum, hn::Sub(DotBytes(hn::Zero(d32), q[r][j], x[j]), off[j]), sc[r][j]);
        const auto lanes = hn::Add(hn::LowerHalf(d32x8, isum), hn::UpperHalf(d32x8, isum));
        acc[r][c] = hn::MulAdd(hn::Set(DF8(), dx * d[r]), hn::ConvertTo(DF8(), lanes), acc[r][c]);
      }
    }
  }
  float Finish(int, int, hn::Vec<DF8> acc) const {
    alignas(32) float a[8];
    hn::Store(acc, DF8(), a);
    return Hsum8(a);
  }
};
#endif  // ES_VNNI

// ---------------------------------------------------------------------------------------------
// Driver: tiles over [r0, r1) x [0, batch).

using TileFn = void (*)(const TileArgs&);
struct TileSet {
  TileFn full;      // R x C
  TileFn rows_one;  // R x 1
  TileFn one_cols;  // 1 x C
  TileFn one_one;   // 1 x 1 (also the decode kernel: one weight row streams at a time)
  int R, C;
  TileFn decode = nullptr;  // D x 1 for batch 1 where the kernel keeps D rows' chains in lanes
  int D = 1;
  // Interleaved matrices (Matrix::interleave 16): 16 rows x x16_width[i] activation rows, widest
  // first, the last of width 1.
  TileFn x16[3] = {nullptr, nullptr, nullptr};
  int x16_width[3] = {0, 0, 0};
  void SetX16(std::initializer_list<std::pair<TileFn, int>> tiles) {
    int i = 0;
    for (const auto& [fn, width] : tiles) x16[i] = fn, x16_width[i++] = width;
  }
};

template <int R, int C, template <int, int> class KT>
TileSet MakeTiles() {
  return {&Tile<R, C, KT<R, C>>,
          &Tile<R, 1, KT<R, 1>>,
          &Tile<1, C, KT<1, C>>,
          &Tile<1, 1, KT<1, 1>>,
          R,
          C};
}
template <int R, int C, class K>
TileSet MakeTiles() {
  return {&Tile<R, C, K>, &Tile<R, 1, K>, &Tile<1, C, K>, &Tile<1, 1, K>, R, C};
}

// Tile shapes measured on Zen 5 (AVX3_DL) and its AVX2 fallback, batch 256-512: the accumulators
// must fit the register file (32 vector registers on AVX-512, 16 on AVX2).
TileSet TilesFor(TensorType t) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  constexpr bool kWide = true;
#else
  constexpr bool kWide = false;
#endif
  switch (t) {
    case TensorType::kF32:
      return kWide ? MakeTiles<6, 4, FloatKernel<LoadF32>>()
                   : MakeTiles<2, 4, FloatKernel<LoadF32>>();
    case TensorType::kF16: {
      TileSet ts =
          kWide ? MakeTiles<6, 4, FloatKernel<LoadF16>>() : MakeTiles<4, 2, FloatKernel<LoadF16>>();
#if ES_F16_X16
      ts.SetX16({{&F16x16Tile<6>, 6}, {&F16x16Tile<4>, 4}, {&F16x16Tile<1>, 1}});
#endif
      return ts;
    }
    case TensorType::kBF16:
      return kWide ? MakeTiles<6, 4, FloatKernel<LoadBF16>>()
                   : MakeTiles<4, 2, FloatKernel<LoadBF16>>();
#if ES_VNNI
    case TensorType::kQ8_0: {
      TileSet ts = MakeTiles<4, 4, Q8_0Vnni>();
      // Eight accumulators per activation row: two rows fill the register file.
      ts.SetX16({{&Q8_0x16Tile<2>, 2}, {&Q8_0x16Tile<1>, 1}});
      return ts;
    }
    case TensorType::kQ4_0: {
      // Decode: 16 consecutive rows (one contiguous stream) with their ordered per-block chains in
      // the 16 lanes of one vector, one FMA per block for all of them, instead of 16 scalar
      // latency-bound chains one row after another.
      TileSet ts = MakeTiles<4, 4, Q4_0Vnni>();
      ts.decode = &DecodeQ4_0x16;
      ts.D = 16;
      ts.SetX16({{&Q4_0x16Tile<8>, 8}, {&Q4_0x16Tile<4>, 4}, {&Q4_0x16Tile<1>, 1}});
      return ts;
    }
    case TensorType::kQ4_K:
      return MakeTiles<3, 8, Q4KVnni>();
    case TensorType::kQ6_K:
      return MakeTiles<3, 8, Q6KVnni>();
#else
    case TensorType::kQ8_0:
      return kWide ? MakeTiles<4, 4, Q8_0Kernel<UnpackQ8_0>>()
                   : MakeTiles<2, 4, Q8_0Kernel<UnpackQ8_0>>();
    case TensorType::kQ4_0:
      return kWide ? MakeTiles<4, 4, Q4_0Kernel>() : MakeTiles<2, 2, Q4_0Kernel>();
    case TensorType::kQ4_K:
      return MakeTiles<2, 4, Q4KKernel>();
    case TensorType::kQ6_K:
      return MakeTiles<2, 4, Q6KKernel>();
#endif
    default:
      return {nullptr, nullptr, nullptr, nullptr, 1, 1};
  }
}

void MatMulRowsImpl(const Matrix& w, const detail::Acts& acts, int64_t batch, int64_t r0,
                    int64_t r1, float* y, int64_t ldy) {
#if ES_ARM_DOT
  if (const ActLayout l = LayoutFor(acts.type, w.cols); l.arm_off) {
    detail::arm::MatMulRows(w, acts.base, acts.stride, {l.d_off, l.sum_off, l.arm_off}, batch, r0,
                            r1, y, ldy);
    return;
  }
#endif
  const TileSet ts = TilesFor(w.type);
  TileArgs t;
  t.wrb = w.row_bytes;
  t.as = acts.stride;
  t.n = w.cols;
  t.ldy = ldy;
  t.l = LayoutFor(acts.type, w.cols);
  if (w.interleave) {
    const auto* wbase = static_cast<const uint8_t*>(w.data);
    // Row ranges are whole groups of 16 (the caller splits work in units of 16 rows).
    constexpr int64_t kColBlock = 64;
    for (int64_t cb = 0; cb < batch; cb += kColBlock) {
      const int64_t ce = std::min(batch, cb + kColBlock);
      for (int64_t r = r0; r < r1; r += 16) {
        t.w = wbase + static_cast<size_t>(r) * w.row_bytes;
        int64_t c = cb;
        for (int i = 0; i < 3 && ts.x16[i]; ++i) {
          for (; c + ts.x16_width[i] <= ce; c += ts.x16_width[i]) {
            t.a = acts.base + static_cast<size_t>(c) * acts.stride;
            t.y = y + c * ldy + r;
            ts.x16[i](t);
          }
        }
      }
    }
    return;
  }
  WalkTiles(t, ts, static_cast<const uint8_t*>(w.data), w.row_bytes, acts.base, acts.stride, batch,
            r0, r1, y, ldy);
}

bool PrefersInterleavedImpl(TensorType t) {
  return (ES_VNNI != 0 && (t == TensorType::kQ4_0 || t == TensorType::kQ8_0)) ||
         (ES_F16_X16 != 0 && t == TensorType::kF16);
}

#if ES_VNNI
#pragma GCC pop_options
#endif
#undef ES_F16_X16
#undef ES_ARM_DOT

}  // namespace es::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace es::kernels {
HWY_EXPORT(ActRowBytesImpl);
HWY_EXPORT(ConvertActsImpl);
HWY_EXPORT(ActsToBlocksImpl);
HWY_EXPORT(MatMulRowsImpl);
HWY_EXPORT(PrefersInterleavedImpl);

bool PrefersInterleaved(TensorType t) {
  return HWY_DYNAMIC_DISPATCH(PrefersInterleavedImpl)(t);
}

bool CanInterleave(const Matrix& w) {
  return PrefersInterleaved(w.type) && w.interleave == 0 && w.rows % 16 == 0 && w.cols % 32 == 0;
}

namespace {
constexpr int kGroup = 16;  // rows per interleaved group

// One 32-element block index of a 16-row group in Interleave16's layout. Q4_0/Q8_0: row r's f16
// scale at byte 2r, its quant dword j at 2 * 16 + 64j + 4r; Q8_0 quants are stored with the sign
// bit flipped (q + 128). F16: row r's 64 bytes at 64r.
struct GroupBlock {
  size_t scale_bytes = 0;  // per row and block, leading the row's block
  size_t quant_bytes = 0;  // per row and block; 0: the type has no interleaved layout
  size_t piece = 0;        // bytes of one row kept together (the rows alternate per piece)
  uint8_t flip = 0;
  explicit GroupBlock(TensorType t) {
    if (t == TensorType::kQ4_0) scale_bytes = 2, quant_bytes = sizeof(BlockQ4_0::qs), piece = 4;
    if (t == TensorType::kQ8_0)
      scale_bytes = 2, quant_bytes = sizeof(BlockQ8_0::qs), piece = 4, flip = 0x80;
    if (t == TensorType::kF16) quant_bytes = piece = 32 * sizeof(f16_t);
  }
  size_t row_block_bytes() const { return scale_bytes + quant_bytes; }
  size_t bytes() const { return kGroup * row_block_bytes(); }
  // Copies row r's block between its row-major bytes and the group block, either way.
  void Copy(int r, bool into_group, const uint8_t* from, uint8_t* to) const {
    auto move = [&](size_t row_off, size_t group_off, size_t n) {
      uint8_t* d = to + (into_group ? group_off : row_off);
      std::memcpy(d, from + (into_group ? row_off : group_off), n);
      return d;
    };
    const size_t rr = static_cast<size_t>(r);
    if (scale_bytes) move(0, scale_bytes * rr, scale_bytes);
    for (size_t j = 0; j < quant_bytes / piece; ++j) {
      uint8_t* d = move(scale_bytes + piece * j,
                        scale_bytes * kGroup + kGroup * piece * j + piece * rr, piece);
      for (size_t e = 0; flip && e < piece; ++e) d[e] ^= flip;
    }
  }
};
}  // namespace

Matrix Interleave16(const Matrix& w, void* out) {
  const GroupBlock gb(w.type);
  if (gb.quant_bytes == 0 || w.interleave != 0 || w.rows % kGroup != 0 || w.cols % 32 != 0)
    throw Error(
        "Interleave16: needs a row-major Q4_0, Q8_0 or F16 matrix of 16k rows and 32k columns");
  const auto* src = static_cast<const uint8_t*>(w.data);
  auto* dst = static_cast<uint8_t*>(out);
  for (int64_t g = 0; g < w.rows / kGroup; ++g) {
    const uint8_t* rows = src + static_cast<size_t>(g) * kGroup * w.row_bytes;
    uint8_t* grp = dst + static_cast<size_t>(g) * kGroup * w.row_bytes;
    for (int64_t b = 0; b < w.cols / 32; ++b)
      for (int r = 0; r < kGroup; ++r)
        gb.Copy(r, true, rows + r * w.row_bytes + static_cast<size_t>(b) * gb.row_block_bytes(),
                grp + static_cast<size_t>(b) * gb.bytes());
  }
  Matrix m = w;
  m.data = out;
  m.interleave = kGroup;
  return m;
}

void DequantizeMatrixRow(const Matrix& w, int64_t row, float* dst) {
  if (row < 0 || row >= w.rows) throw Error("DequantizeMatrixRow: row out of range");
  const auto* base = static_cast<const uint8_t*>(w.data);
  if (!w.interleave) {
    DequantizeRow(w.type, base + static_cast<size_t>(row) * w.row_bytes, dst, w.cols);
    return;
  }
  // Gather the row's blocks back from its group.
  const GroupBlock gb(w.type);
  const int r = static_cast<int>(row % kGroup);
  const uint8_t* grp = base + static_cast<size_t>(row - r) * w.row_bytes;
  uint8_t blk[64];
  for (int64_t b = 0; b < w.cols / 32; ++b) {
    gb.Copy(r, false, grp + static_cast<size_t>(b) * gb.bytes(), blk);
    DequantizeRow(w.type, blk, dst + 32 * b, 32);
  }
}

namespace detail {
size_t ActRowBytes(TensorType w, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(ActRowBytesImpl)(w, n);
}
void ConvertActs(TensorType w, const float* x, int64_t ldx, int64_t n, int64_t b0, int64_t b1,
                 uint8_t* dst, size_t stride) {
  HWY_DYNAMIC_DISPATCH(ConvertActsImpl)(w, x, ldx, n, b0, b1, dst, stride);
}
void ActsToBlocks(TensorType w, const uint8_t* row, int64_t n, void* blocks) {
  HWY_DYNAMIC_DISPATCH(ActsToBlocksImpl)(w, row, n, blocks);
}
void MatMulRows(const Matrix& w, const Acts& acts, int64_t batch, int64_t r0, int64_t r1, float* y,
                int64_t ldy) {
  HWY_DYNAMIC_DISPATCH(MatMulRowsImpl)(w, acts, batch, r0, r1, y, ldy);
}
}  // namespace detail
}  // namespace es::kernels
#endif
