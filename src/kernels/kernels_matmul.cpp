// SIMD matrix multiplication for the GGUF weight types, compiled once per Highway target and
// dispatched at run time.
//
// Activations are converted once per row of x (ConvertActs) into a target-private layout:
//   F32/F16/BF16 weights: the f32 values as the dot product sees them (rounded through f16/bf16).
//   Q8_0/Q4_0 weights:    int16 q[n] | float d[n/32] (Q8_0 quantization, d rounded through f16).
//   Q4_K/Q6_K weights:    int16 q[n] | float d[n/256] | int32 sum32[n/32] (Q8_K quantization).
// Keeping the quants widened to int16 lets every target use a 16x16->32 multiply-add (pmaddwd on
// x86) without re-widening per weight row. Integer sums are exact; each block's sum is scaled
// in f32 and accumulated per lane, as llama.cpp does.
//
// Weight rows are processed in tiles of R rows x C activation rows so that each weight block is
// loaded and unpacked once and applied to C activation rows (prompt processing), and each
// activation block is loaded once for R weight rows.
#include "kernels/kernels_hwy.h"
// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kernels_matmul.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on
#include <algorithm>
#include <cmath>
#include <cstring>

#include "hwy/highway.h"
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
// Byte offsets inside one converted activation row.
struct ActLayout {
  size_t d_off = 0;    // float scales
  size_t sum_off = 0;  // int32 sums of 32 quants (Q8_K only)
  size_t bytes = 0;
};
inline ActLayout LayoutFor(TensorType w, int64_t n) {
  ActLayout l;
  const size_t un = static_cast<size_t>(n);
  switch (VecDotType(w)) {
    case TensorType::kQ8_0:
      l.d_off = RoundUp64(un * 2);
      l.bytes = RoundUp64(l.d_off + un / kQK8_0 * 4);
      break;
    case TensorType::kQ8_K:
      l.d_off = RoundUp64(un * 2);
      l.sum_off = RoundUp64(l.d_off + un / kQK_K * 4);
      l.bytes = RoundUp64(l.sum_off + un / 32 * 4);
      break;
    default:
      l.bytes = RoundUp64(un * 4);
      break;
  }
  return l;
}
}  // namespace
}  // namespace es::kernels::detail
#endif

HWY_BEFORE_NAMESPACE();
namespace es::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::ActLayout;
using detail::LayoutFor;

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
void ConvertRowQ8_0(const float* x, int64_t n, uint8_t* row, const ActLayout& l) {
  const hn::CappedTag<float, 16> df;
  const hn::Rebind<int16_t, decltype(df)> d16;
  const size_t N = hn::Lanes(df);
  auto* q = reinterpret_cast<int16_t*>(row);
  auto* dst_d = reinterpret_cast<float*>(row + l.d_off);
  for (int64_t b = 0; b < n / kQK8_0; ++b) {
    const float* xb = x + b * kQK8_0;
    auto vmax = hn::Zero(df);
    for (size_t k = 0; k < kQK8_0; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + k)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    const f16_t dh = F32ToF16(amax / 127.0f);
    dst_d[b] = F16ToF32(dh);
    const auto vid = hn::Set(df, amax != 0.0f ? 127.0f / amax : 0.0f);
    for (size_t k = 0; k < kQK8_0; k += N) {
      const auto qi = hn::NearestInt(hn::Mul(hn::LoadU(df, xb + k), vid));
      hn::StoreU(hn::DemoteTo(d16, qi), d16, q + b * kQK8_0 + k);
    }
  }
}

// Q8_K as llama.cpp: the signed value of largest magnitude maps to -127; q = min(127,
// round_even(x * -127/max)); d = 1/iscale.
void ConvertRowQ8_K(const float* x, int64_t n, uint8_t* row, const ActLayout& l) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int16_t, decltype(df)> d16;
  const size_t N = hn::Lanes(df);
  auto* q = reinterpret_cast<int16_t*>(row);
  auto* dst_d = reinterpret_cast<float*>(row + l.d_off);
  auto* sums = reinterpret_cast<int32_t*>(row + l.sum_off);
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    auto vmax = hn::Zero(df);
    for (size_t k = 0; k < kQK_K; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + k)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    int16_t* qb = q + b * kQK_K;
    if (amax == 0.0f) {
      dst_d[b] = 0.0f;
      std::fill(qb, qb + kQK_K, 0);
      std::fill(sums + b * 8, sums + b * 8 + 8, 0);
      continue;
    }
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
    for (int g = 0; g < kQK_K / 32; ++g) {
      auto acc = hn::Zero(di);
      for (size_t k = 0; k < 32; k += N) {
        auto qi = hn::NearestInt(hn::Mul(hn::LoadU(df, xb + 32 * g + k), vis));
        qi = hn::Min(qi, hn::Set(di, 127));
        acc = hn::Add(acc, qi);
        hn::StoreU(hn::DemoteTo(d16, qi), d16, qb + 32 * g + k);
      }
      sums[b * 8 + g] = hn::GetLane(hn::SumOfLanes(di, acc));
    }
    dst_d[b] = 1.0f / iscale;
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
      ConvertRowQ8_0(xr, n, row, l);
    } else if (vt == TensorType::kQ8_K) {
      ConvertRowQ8_K(xr, n, row, l);
    } else {
      ConvertFloatRow(w, xr, n, reinterpret_cast<float*>(row));
    }
  }
}

// Repacks one converted row into the reference block format (tests compare bytes).
void ActsToBlocksImpl(TensorType w, const uint8_t* row, int64_t n, void* blocks) {
  const ActLayout l = LayoutFor(w, n);
  const auto* q = reinterpret_cast<const int16_t*>(row);
  const auto* d = reinterpret_cast<const float*>(row + l.d_off);
  switch (VecDotType(w)) {
    case TensorType::kQ8_0: {
      auto* out = static_cast<BlockQ8_0*>(blocks);
      for (int64_t b = 0; b < n / kQK8_0; ++b) {
        out[b].d = F32ToF16(d[b]);
        for (int j = 0; j < kQK8_0; ++j) out[b].qs[j] = static_cast<int8_t>(q[b * kQK8_0 + j]);
      }
      break;
    }
    case TensorType::kQ8_K: {
      auto* out = static_cast<BlockQ8_K*>(blocks);
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        out[b].d = d[b];
        for (int j = 0; j < kQK_K; ++j) out[b].qs[j] = static_cast<int8_t>(q[b * kQK_K + j]);
        for (int g = 0; g < kQK_K / 16; ++g) {
          int s = 0;
          for (int j = 0; j < 16; ++j) s += q[b * kQK_K + 16 * g + j];
          out[b].bsums[g] = static_cast<int16_t>(s);
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
  if constexpr (R * C <= 2) {
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
    for (int c = 0; c < C; ++c) t.y[c * t.ldy + r] = k.Finish(r, c, Sum(da, acc[r][c]));
}

// Float weights: one vector of N elements per step; the tail past the last full vector is
// added in Finish.
template <class Loader>
struct FloatKernel {
  using Acc = DF;
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
  float Finish(int r, int c, float sum) const {
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
  float Finish(int, int, float sum) const { return sum; }
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

// Q8_0 / Q4_0 weights against Q8_0 activations: one 32-element block per step.
template <class Unpack>
struct Q32Kernel : QuantKernelBase<typename Unpack::Block> {
  using Base = QuantKernelBase<typename Unpack::Block>;
  using Base::Base;
  int64_t Steps() const { return this->t.n / 32; }
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
      const auto& blk = this->W(r)[b];
      dw[r] = HalfToFloat(&blk.d);
      for (size_t v = 0; v < kNV; ++v) wv[r][v] = unpack(d16, blk, v * N);
    }
    for (int c = 0; c < C; ++c) {
      hn::Vec<D16B> xv[kNV];
      for (size_t v = 0; v < kNV; ++v) xv[v] = hn::LoadU(d16, this->XQ(c) + b * 32 + v * N);
      const float dx = this->XD(c, b);
      for (int r = 0; r < R; ++r) {
        auto s0 = hn::Zero(d32), s1 = hn::Zero(d32);
        for (size_t v = 0; v < kNV; ++v)
          s0 = hn::ReorderWidenMulAccumulate(d32, wv[r][v], xv[v], s0, s1);
        acc[r][c] =
            hn::MulAdd(hn::ConvertTo(df, hn::Add(s0, s1)), hn::Set(df, dw[r] * dx), acc[r][c]);
      }
    }
  }
};

// Q4_K: 8 sub-blocks of 32 with 6-bit scale and min. Sub-block j holds nibble plane (j & 1) of
// qs[32 * (j / 2) ...]. One 256-element block per step; the min terms are summed separately
// as scalars and subtracted in Finish.
HWY_INLINE void UnpackScalesQ4_K(const uint8_t* q, int* sc, int* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = q[j] & 63;
    mn[j] = q[j + 4] & 63;
    sc[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
    mn[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
  }
}

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
  float Finish(int r, int c, float sum) const { return sum - minsum[r][c]; }
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

struct Q6KKernel : QuantKernelBase<BlockQ6_K> {
  using QuantKernelBase::QuantKernelBase;
  int64_t Steps() const { return t.n / kQK_K; }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const size_t N = hn::Lanes(d16);
    hn::Vec<D32B> s0[R][C], s1[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) s0[r][c] = s1[r][c] = hn::Zero(d32);
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
            s0[r][c] = hn::ReorderWidenMulAccumulate(d32, p, sv[r][v], s0[r][c], s1[r][c]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = HalfToFloat(&W(r)[b].d);
      for (int c = 0; c < C; ++c)
        acc[r][c] = hn::MulAdd(hn::ConvertTo(df, hn::Add(s0[r][c], s1[r][c])),
                               hn::Set(df, d * XD(c, b)), acc[r][c]);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Driver: tiles over [r0, r1) x [0, batch).

using TileFn = void (*)(const TileArgs&);
struct TileSet {
  TileFn full;      // R x C
  TileFn rows_one;  // R x 1
  TileFn one_cols;  // 1 x C
  TileFn one_one;   // 1 x 1 (also the decode kernel: one weight row streams at a time)
  int R, C;
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

TileSet TilesFor(TensorType t) {
  switch (t) {
    case TensorType::kF32:
      return MakeTiles<4, 4, FloatKernel<LoadF32>>();
    case TensorType::kF16:
      return MakeTiles<4, 4, FloatKernel<LoadF16>>();
    case TensorType::kBF16:
      return MakeTiles<4, 4, FloatKernel<LoadBF16>>();
    case TensorType::kQ8_0:
      return MakeTiles<4, 4, Q32Kernel<UnpackQ8_0>>();
    case TensorType::kQ4_0:
      return MakeTiles<4, 4, Q32Kernel<UnpackQ4_0>>();
    case TensorType::kQ4_K:
      return MakeTiles<2, 4, Q4KKernel>();
    case TensorType::kQ6_K:
      return MakeTiles<2, 4, Q6KKernel>();
    default:
      return {nullptr, nullptr, nullptr, nullptr, 1, 1};
  }
}

void MatMulRowsImpl(const Matrix& w, const detail::Acts& acts, int64_t batch, int64_t r0,
                    int64_t r1, float* y, int64_t ldy) {
  const TileSet ts = TilesFor(w.type);
  TileArgs t;
  t.wrb = w.row_bytes;
  t.as = acts.stride;
  t.n = w.cols;
  t.ldy = ldy;
  t.l = LayoutFor(w.type, w.cols);
  const auto* wbase = static_cast<const uint8_t*>(w.data);
  if (batch == 1) {
    // Decode: one row at a time. Streaming several rows at once interleaves DRAM streams and
    // measured 2-4x slower than a single sequential stream per thread.
    t.a = acts.base;
    for (int64_t r = r0; r < r1; ++r) {
      t.w = wbase + static_cast<size_t>(r) * w.row_bytes;
      t.y = y + r;
      ts.one_one(t);
    }
    return;
  }
  // Column blocks keep a slab of activations in L2 while every weight tile passes over it.
  constexpr int64_t kColBlock = 64;
  auto row_tile = [&](int64_t r, int64_t cb, int64_t ce, TileFn cols_fn, TileFn one_fn) {
    t.w = wbase + static_cast<size_t>(r) * w.row_bytes;
    int64_t c = cb;
    for (; c + ts.C <= ce; c += ts.C) {
      t.a = acts.base + static_cast<size_t>(c) * acts.stride;
      t.y = y + c * ldy + r;
      cols_fn(t);
    }
    for (; c < ce; ++c) {
      t.a = acts.base + static_cast<size_t>(c) * acts.stride;
      t.y = y + c * ldy + r;
      one_fn(t);
    }
  };
  for (int64_t cb = 0; cb < batch; cb += kColBlock) {
    const int64_t ce = std::min(batch, cb + kColBlock);
    int64_t r = r0;
    for (; r + ts.R <= r1; r += ts.R) row_tile(r, cb, ce, ts.full, ts.rows_one);
    for (; r < r1; ++r) row_tile(r, cb, ce, ts.one_cols, ts.one_one);
  }
}

}  // namespace es::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace es::kernels {
HWY_EXPORT(ActRowBytesImpl);
HWY_EXPORT(ConvertActsImpl);
HWY_EXPORT(ActsToBlocksImpl);
HWY_EXPORT(MatMulRowsImpl);

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
