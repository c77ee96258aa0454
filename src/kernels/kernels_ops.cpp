// SIMD elementwise, reduction and conversion kernels (Highway, dispatched per CPU at run time).
#include "kernels/kernels_hwy.h"
// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kernels_ops.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/kernels.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"

HWY_BEFORE_NAMESPACE();
namespace es::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

const char* TargetNameImpl() {
  return hwy::TargetName(HWY_TARGET);
}

// ---------------------------------------------------------------------------------------------
// f16 <-> f32 with integer ops, exact on every target (Highway's emulated conversions truncate
// and mishandle inf/NaN; hardware F16C rounds to nearest even like this code).

// u32 lanes holding half bits (0..0xffff) -> f32.
template <class DF, class VU>
HWY_INLINE hn::Vec<DF> HalfBitsToF32(DF df, VU h) {
  const hn::RebindToUnsigned<DF> du;
  const auto sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(du, 0x8000u)));
  const auto em = hn::And(h, hn::Set(du, 0x7fffu));
  // Normal numbers: shift into place and rebias the exponent (15 -> 127).
  const auto normal = hn::Add(hn::ShiftLeft<13>(em), hn::Set(du, (127u - 15u) << 23));
  // Inf/NaN: exponent all ones.
  const auto special = hn::Or(hn::ShiftLeft<13>(em), hn::Set(du, 0x7f800000u));
  // Subnormals: mantissa * 2^-24, exact in f32.
  const auto sub =
      hn::BitCast(du, hn::Mul(hn::ConvertTo(df, hn::BitCast(hn::RebindToSigned<DF>(), em)),
                              hn::Set(df, 5.9604644775390625e-08f)));
  // Signed compares (x86 lacks unsigned ones); the values are below 2^31.
  const hn::RebindToSigned<DF> di;
  const auto iem = hn::BitCast(di, em);
  auto out = hn::IfThenElse(hn::RebindMask(du, hn::Gt(iem, hn::Set(di, 0x7bff))), special, normal);
  out = hn::IfThenElse(hn::RebindMask(du, hn::Lt(iem, hn::Set(di, 0x0400))), sub, out);
  return hn::BitCast(df, hn::Or(out, sign));
}

// f32 -> half bits in u32 lanes, round to nearest even; overflow -> inf; NaN -> quiet NaN.
template <class DF>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> F32ToHalfBits(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  const auto bits = hn::BitCast(du, v);
  const auto sign = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 0x8000u));
  const auto abs = hn::And(bits, hn::Set(du, 0x7fffffffu));
  const auto rebased = hn::Sub(abs, hn::Set(du, 0x38000000u));
  const auto odd = hn::And(hn::ShiftRight<13>(rebased), hn::Set(du, 1u));
  const auto normal = hn::ShiftRight<13>(hn::Add(rebased, hn::Add(hn::Set(du, 0xfffu), odd)));
  // Below 2^-14 the result is subnormal: adding 0.5f rounds to a multiple of 2^-24 (even ties).
  const auto absf = hn::BitCast(df, abs);
  const auto sub =
      hn::Sub(hn::BitCast(du, hn::Add(absf, hn::Set(df, 0.5f))), hn::Set(du, 0x3f000000u));
  const hn::RebindToSigned<DF> di;
  const auto iabs = hn::BitCast(di, abs);
  auto out = hn::IfThenElse(hn::RebindMask(du, hn::Lt(iabs, hn::Set(di, 0x38800000))), sub, normal);
  out = hn::IfThenElse(hn::RebindMask(du, hn::Gt(iabs, hn::Set(di, 0x477fefff))),
                       hn::Set(du, 0x7c00u), out);
  out = hn::IfThenElse(hn::RebindMask(du, hn::Gt(iabs, hn::Set(di, 0x7f800000))),
                       hn::Set(du, 0x7e00u), out);
  return hn::Or(out, sign);
}

void ConvertF16ToF32Impl(const f16_t* x, float* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Rebind<uint16_t, decltype(df)> d16;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(HalfBitsToF32(df, hn::PromoteTo(du, hn::LoadU(d16, x + i))), df, y + i);
  for (; i < n; ++i) y[i] = F16ToF32(x[i]);
}

void ConvertF32ToF16Impl(const float* x, f16_t* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<uint16_t, decltype(df)> d16;
  const hn::RebindToSigned<decltype(df)> di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto h = hn::BitCast(di, F32ToHalfBits(df, hn::LoadU(df, x + i)));
    hn::StoreU(hn::DemoteTo(d16, h), d16, y + i);
  }
  for (; i < n; ++i) y[i] = F32ToF16(x[i]);
}

// ---------------------------------------------------------------------------------------------
// Dequantization (bit-exact with DequantizeRowRef: same products, no fused multiply-add).

template <class DF>
HWY_INLINE hn::Vec<DF> U8ToF32(DF df, const uint8_t* p) {
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<uint8_t, DF> d8;
  return hn::ConvertTo(
      df, hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<DF>(), hn::LoadU(d8, p))));
}

void DequantizeRowImpl(TensorType t, const void* src, float* dst, int64_t n) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::RebindToUnsigned<decltype(df)> du;
  const size_t N = hn::Lanes(df);
  switch (t) {
    case TensorType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case TensorType::kF16:
      return ConvertF16ToF32Impl(static_cast<const f16_t*>(src), dst, n);
    case TensorType::kBF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      const hn::Rebind<uint16_t, decltype(df)> d16;
      int64_t i = 0;
      for (; i + static_cast<int64_t>(N) <= n; i += N)
        hn::StoreU(hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, s + i)))), df,
                   dst + i);
      for (; i < n; ++i) dst[i] = BF16ToF32(s[i]);
      return;
    }
    case TensorType::kQ8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(src);
      const hn::Rebind<int8_t, decltype(df)> d8;
      for (int64_t i = 0; i < n / kQK8_0; ++i) {
        const auto d = hn::Set(df, F16ToF32(b[i].d));
        for (size_t k = 0; k < kQK8_0; k += N) {
          const auto q = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, b[i].qs + k)));
          hn::StoreU(hn::Mul(d, q), df, dst + i * kQK8_0 + k);
        }
      }
      return;
    }
    case TensorType::kQ4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(src);
      const hn::Rebind<uint8_t, decltype(df)> d8;
      for (int64_t i = 0; i < n / kQK4_0; ++i) {
        const auto d = hn::Set(df, F16ToF32(b[i].d));
        for (size_t k = 0; k < kQK4_0 / 2; k += N) {
          const auto v = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(d8, b[i].qs + k)));
          const auto lo = hn::Sub(hn::And(v, hn::Set(di, 15)), hn::Set(di, 8));
          const auto hi = hn::Sub(hn::ShiftRight<4>(v), hn::Set(di, 8));
          hn::StoreU(hn::Mul(d, hn::ConvertTo(df, lo)), df, dst + i * kQK4_0 + k);
          hn::StoreU(hn::Mul(d, hn::ConvertTo(df, hi)), df, dst + i * kQK4_0 + kQK4_0 / 2 + k);
        }
      }
      return;
    }
    case TensorType::kQ4_K: {
      const auto* b = static_cast<const BlockQ4_K*>(src);
      const hn::Rebind<uint8_t, decltype(df)> d8;
      for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = F16ToF32(b[i].d), dmin = F16ToF32(b[i].dmin);
        const uint8_t* q = b[i].scales;
        for (int j = 0; j < 8; ++j) {
          const int sc = j < 4 ? (q[j] & 63) : ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
          const int m = j < 4 ? (q[j + 4] & 63) : ((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
          const auto ds = hn::Set(df, d * static_cast<float>(sc));
          const auto dm = hn::Set(df, dmin * static_cast<float>(m));
          for (size_t k = 0; k < 32; k += N) {
            auto v = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(d8, b[i].qs + 32 * (j / 2) + k)));
            v = (j & 1) ? hn::ShiftRight<4>(v) : hn::And(v, hn::Set(di, 15));
            hn::StoreU(hn::Sub(hn::Mul(ds, hn::ConvertTo(df, v)), dm), df,
                       dst + i * kQK_K + 32 * j + k);
          }
        }
      }
      return;
    }
    case TensorType::kQ6_K: {
      const auto* b = static_cast<const BlockQ6_K*>(src);
      const hn::Rebind<uint8_t, decltype(df)> d8;
      for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = F16ToF32(b[i].d);
        for (int qt = 0; qt < 8; ++qt) {
          const int h = qt / 4, k4 = qt % 4;
          for (size_t k = 0; k < 32; k += N) {
            auto lo = hn::BitCast(
                di, hn::PromoteTo(du, hn::LoadU(d8, b[i].ql + 64 * h + 32 * (k4 % 2) + k)));
            lo = k4 < 2 ? hn::And(lo, hn::Set(di, 15)) : hn::ShiftRight<4>(lo);
            auto hi = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(d8, b[i].qh + 32 * h + k)));
            hi = hn::And(hn::ShiftRightSame(hi, 2 * k4), hn::Set(di, 3));
            const auto q = hn::Sub(hn::Or(lo, hn::ShiftLeft<4>(hi)), hn::Set(di, 32));
            const int e = 32 * qt + static_cast<int>(k);
            // N <= 16 lanes divide the 16-element scale groups.
            const auto s = hn::Set(df, d * static_cast<float>(b[i].scales[e / 16]));
            hn::StoreU(hn::Mul(s, hn::ConvertTo(df, q)), df, dst + i * kQK_K + e);
          }
        }
      }
      return;
    }
    case TensorType::kQ8_K: {
      const auto* b = static_cast<const BlockQ8_K*>(src);
      const hn::Rebind<int8_t, decltype(df)> d8;
      for (int64_t i = 0; i < n / kQK_K; ++i) {
        const auto d = hn::Set(df, b[i].d);
        for (size_t k = 0; k < kQK_K; k += N)
          hn::StoreU(hn::Mul(d, hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, b[i].qs + k)))),
                     df, dst + i * kQK_K + k);
      }
      return;
    }
    default:
      DequantizeRowRef(t, src, dst, n);  // throws for unsupported types
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise and reductions.

void RmsNormImpl(const float* x, const float* w, float* y, int64_t n, float eps) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  double sum = 0.0;
  int64_t i = 0;
#if HWY_HAVE_FLOAT64 && HWY_TARGET != HWY_SCALAR
  {
    const hn::Half<decltype(df)> dh;
    const hn::Rebind<double, decltype(dh)> dd;
    auto acc0 = hn::Zero(dd), acc1 = hn::Zero(dd);
    for (; i + N <= n; i += N) {
      const auto v = hn::LoadU(df, x + i);
      const auto sq = hn::Mul(v, v);  // squared in f32, summed in f64, as ggml does
      acc0 = hn::Add(acc0, hn::PromoteTo(dd, hn::LowerHalf(dh, sq)));
      acc1 = hn::Add(acc1, hn::PromoteTo(dd, hn::UpperHalf(dh, sq)));
    }
    sum = hn::GetLane(hn::SumOfLanes(dd, hn::Add(acc0, acc1)));
  }
#endif
  for (; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  const auto vs = hn::Set(df, scale);
  i = 0;
  for (; i + N <= n; i += N) {
    auto v = hn::Mul(hn::LoadU(df, x + i), vs);
    if (w) v = hn::Mul(v, hn::LoadU(df, w + i));
    hn::StoreU(v, df, y + i);
  }
  for (; i < n; ++i) y[i] = w ? (x[i] * scale) * w[i] : x[i] * scale;
}

void AddImpl(float* x, const float* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::Add(hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, x + i);
  for (; i < n; ++i) x[i] += y[i];
}

// exp(x) with the arithmetic of ggml's vectorised expf (the reference build uses it for SiLU and
// softmax): n = round(x / ln2) by the 1.5 * 2^23 trick, b = x - n * ln2 in two fused steps,
// degree-5 polynomial in b by fused multiply-adds, result j * 2^n; |n| > 192 gives 0 or inf.
template <class DF>
HWY_INLINE hn::Vec<DF> ExpLikeGgml(DF df, hn::Vec<DF> x) {
  const hn::RebindToSigned<DF> di;
  const auto r = hn::Set(df, 0x1.8p23f);
  const auto z = hn::MulAdd(x, hn::Set(df, 0x1.715476p+0f), r);
  const auto n = hn::Sub(z, r);
  const auto b = hn::NegMulAdd(n, hn::Set(df, 0x1.7f7d1cp-20f),
                               hn::NegMulAdd(n, hn::Set(df, 0x1.62e4p-1f), x));
  const auto u = hn::Mul(b, b);
  const auto j = hn::MulAdd(
      hn::MulAdd(hn::MulAdd(hn::Set(df, 0x1.0e4020p-7f), b, hn::Set(df, 0x1.573e2ep-5f)), u,
                 hn::MulAdd(hn::Set(df, 0x1.555e66p-3f), b, hn::Set(df, 0x1.fffdb6p-2f))),
      u, hn::MulAdd(hn::Set(df, 0x1.ffffecp-1f), b, hn::Set(df, 1.0f)));
  // j * 2^n with one rounding: two exact power-of-two factors, each a normal float.
  const auto big = hn::Gt(hn::Abs(n), hn::Set(df, 192.0f));
  const auto ni = hn::ConvertTo(di, hn::IfThenZeroElse(big, n));
  const auto n1 = hn::ShiftRight<1>(ni);
  const auto n2 = hn::Sub(ni, n1);
  auto pow2 = [&](hn::Vec<decltype(di)> k) HWY_ATTR {
    return hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(k, hn::Set(di, 127))));
  };
  const auto res = hn::Mul(hn::Mul(j, pow2(n1)), pow2(n2));
  const auto alt = hn::IfThenElseZero(hn::Gt(n, hn::Zero(df)), hn::Set(df, HUGE_VALF));
  return hn::IfThenElse(big, alt, res);
}

// SiLU by ggml's vector exp for every element, the SiLU value rounded before the multiplication
// by `up` (two separate ops there). ggml uses libm expf for the last n % 16 elements of each row;
// this flat call does not see rows, and one rule for all elements keeps batched and
// token-by-token results identical.
void SiluMulImpl(float* gate, const float* up, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto one = hn::Set(df, 1.0f);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(df, gate + i);
    const auto silu = hn::Div(g, hn::Add(one, ExpLikeGgml(df, hn::Neg(g))));
    hn::StoreU(hn::Mul(silu, hn::LoadU(df, up + i)), df, gate + i);
  }
  if (i < n) {
    alignas(64) float g[hn::MaxLanes(df)] = {}, u[hn::MaxLanes(df)] = {};
    std::copy(gate + i, gate + n, g);
    std::copy(up + i, up + n, u);
    const auto gv = hn::Load(df, g);
    const auto silu = hn::Div(gv, hn::Add(one, ExpLikeGgml(df, hn::Neg(gv))));
    hn::Store(hn::Mul(silu, hn::Load(df, u)), df, g);
    std::copy(g, g + (n - i), gate + i);
  }
}

// Like ggml with its key count padded to a multiple of 16 (masked keys give exp = 0): the vector
// exp on chunks of 16, each chunk summed by pairwise halving (a[i] + a[i + 8], ...) and added in
// double; then x *= float(1 / sum).
void SoftmaxImpl(float* x, int64_t n, float sink) {
  if (n <= 0) return;
  const hn::CappedTag<float, 16> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  float max = sink;  // -INFINITY without a sink
  int64_t i0 = 0;
  if (n >= N) {
    auto vmax = hn::Set(df, max);
    for (; i0 + N <= n; i0 += N) vmax = hn::Max(vmax, hn::LoadU(df, x + i0));
    max = hn::GetLane(hn::MaxOfLanes(df, vmax));
  }
  for (int64_t i = i0; i < n; ++i) max = std::max(max, x[i]);
  if (max == -INFINITY) {  // everything masked: no distribution; report all zeros
    std::memset(x, 0, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  double sum = 0.0;
  const auto vm = hn::Set(df, max);
  for (int64_t c = 0; c < n; c += 16) {
    alignas(64) float e[16];
    const int64_t len = std::min<int64_t>(16, n - c);
    if (len == 16) {
      for (int64_t k = 0; k < 16; k += N) {
        const auto ek = ExpLikeGgml(df, hn::Sub(hn::LoadU(df, x + c + k), vm));
        hn::Store(ek, df, e + k);
        hn::StoreU(ek, df, x + c + k);
      }
    } else {
      alignas(64) float in[16];
      for (int k = 0; k < 16; ++k) in[k] = k < len ? x[c + k] - max : -INFINITY;
      for (int64_t k = 0; k < 16; k += N)
        hn::Store(ExpLikeGgml(df, hn::Load(df, in + k)), df, e + k);
      for (int64_t k = 0; k < len; ++k) x[c + k] = e[k];
    }
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    // One vector; Highway's lane sum is _mm512_reduce_add_ps, which halves in this order.
    sum += static_cast<double>(hn::GetLane(hn::SumOfLanes(df, hn::Load(df, e))));
    continue;
#endif
    for (int w = 8; w >= 1; w /= 2)
      for (int k = 0; k < w; ++k) e[k] = e[k] + e[k + w];
    sum += static_cast<double>(e[0]);
  }
  // A sink joins the denominator after the keys' sum, as ggml adds it.
  if (sink != -INFINITY) sum += static_cast<double>(std::exp(sink - max));
  const float inv = static_cast<float>(1.0 / sum);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(df, x + i), hn::Set(df, inv)), df, x + i);
  for (; i < n; ++i) x[i] *= inv;
}

// Per-thread cache of the cos/sin table: every head at one position shares it.
struct RopeCache {
  int64_t pos = -1;
  RopeParams p;
  std::vector<float> cos, sin;
  bool Matches(int64_t at, const RopeParams& q) const { return pos == at && p == q; }
};

// x0' = fma(x0, cos, -(x1 * sin)), x1' = fma(x0, sin, x1 * cos): the contraction GCC makes of
// ggml's scalar rotation in the reference build. The table follows ggml's cache: theta advances
// by theta_scale each pair, the factor divides it, and the float operations are ggml's, in order.
void RopeImpl(float* x, int64_t head_dim, int64_t pos, const RopeParams& p) {
  (void)head_dim;
  static thread_local RopeCache cache;
  const int64_t n_rot = p.n_rot;
  const int64_t half = n_rot / 2;
  if (!cache.Matches(pos, p)) {
    cache.cos.resize(static_cast<size_t>(half));
    cache.sin.resize(static_cast<size_t>(half));
    RopeTable(pos, p, cache.cos.data(), cache.sin.data());
    cache.pos = pos;
    cache.p = p;
  }
  const bool neox = p.neox;
  const float* cs = cache.cos.data();
  const float* sn = cache.sin.data();
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  if (neox) {
    for (; i + N <= half; i += N) {
      const auto a = hn::LoadU(df, x + i), b = hn::LoadU(df, x + half + i);
      const auto c = hn::LoadU(df, cs + i), s = hn::LoadU(df, sn + i);
      hn::StoreU(hn::MulAdd(a, c, hn::Neg(hn::Mul(b, s))), df, x + i);
      hn::StoreU(hn::MulAdd(a, s, hn::Mul(b, c)), df, x + half + i);
    }
    for (; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      x[i] = std::fma(a, cs[i], -(b * sn[i]));
      x[i + half] = std::fma(a, sn[i], b * cs[i]);
    }
  } else {
    for (; i + N <= half; i += N) {
      hn::Vec<decltype(df)> a, b;
      hn::LoadInterleaved2(df, x + 2 * i, a, b);
      const auto c = hn::LoadU(df, cs + i), s = hn::LoadU(df, sn + i);
      hn::StoreInterleaved2(hn::MulAdd(a, c, hn::Neg(hn::Mul(b, s))),
                            hn::MulAdd(a, s, hn::Mul(b, c)), df, x + 2 * i);
    }
    for (; i < half; ++i) {
      const float a = x[2 * i], b = x[2 * i + 1];
      x[2 * i] = std::fma(a, cs[i], -(b * sn[i]));
      x[2 * i + 1] = std::fma(a, sn[i], b * cs[i]);
    }
  }
}

}  // namespace es::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace es::kernels {
HWY_EXPORT(TargetNameImpl);
HWY_EXPORT(ConvertF16ToF32Impl);
HWY_EXPORT(ConvertF32ToF16Impl);
HWY_EXPORT(DequantizeRowImpl);
HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(AddImpl);
HWY_EXPORT(SiluMulImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(RopeImpl);

const char* ActiveTarget() {
  return HWY_DYNAMIC_DISPATCH(TargetNameImpl)();
}

std::vector<std::string> SupportedTargets() {
  std::vector<std::string> names;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) names.emplace_back(hwy::TargetName(t));
  return names;
}

void SetTargetForTesting(const std::string& name) {
  hwy::SetSupportedTargetsForTest(0);  // the list below must not be limited by an earlier call
  if (name.empty()) return;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) {
    if (name == hwy::TargetName(t)) {
      hwy::SetSupportedTargetsForTest(t);
      return;
    }
  }
  throw Error("SetTargetForTesting: SIMD target '" + name +
              "' is not compiled in or not supported here");
}

void DequantizeRow(TensorType t, const void* src, float* dst, int64_t n) {
  const int be = Traits(t).block_elems;
  if (n < 0 || n % be != 0)
    throw Error(std::string("DequantizeRow: ") + std::to_string(n) +
                " elements is not a multiple of " + TypeName(t) + "'s block size " +
                std::to_string(be));
  HWY_DYNAMIC_DISPATCH(DequantizeRowImpl)(t, src, dst, n);
}
void RmsNorm(const float* x, const float* w, float* y, int64_t n, float eps) {
  if (n <= 0) return;
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, w, y, n, eps);
}
void Add(float* x, const float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AddImpl)(x, y, n);
}
void SiluMul(float* gate, const float* up, int64_t n) {
  HWY_DYNAMIC_DISPATCH(SiluMulImpl)(gate, up, n);
}
void Softmax(float* x, int64_t n) {
  HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n, -INFINITY);
}
void SoftmaxWithSink(float* x, int64_t n, float sink) {
  HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n, sink);
}
void SoftCap(float* x, int64_t n, float cap) {
  const float inv = 1.0f / cap;
  for (int64_t i = 0; i < n; ++i) x[i] = std::tanh(x[i] * inv) * cap;
}
void Rope(float* x, int64_t head_dim, int64_t pos, const RopeParams& p) {
  if (p.n_rot <= 0 || p.n_rot % 2 != 0 || p.n_rot > head_dim)
    throw Error("Rope: rotated dims " + std::to_string(p.n_rot) +
                " must be even and at most the head size " + std::to_string(head_dim));
  HWY_DYNAMIC_DISPATCH(RopeImpl)(x, head_dim, pos, p);
}
void Rope(float* x, int64_t head_dim, int64_t n_rot, int64_t pos, float freq_base, bool neox,
          float freq_scale) {
  RopeParams p;
  p.n_rot = n_rot;
  p.base = freq_base;
  p.freq_scale = freq_scale;
  p.neox = neox;
  Rope(x, head_dim, pos, p);
}
void RopeTable(int64_t pos, const RopeParams& p, float* cos, float* sin) {
  const int64_t half = p.n_rot / 2;
  const float theta_scale = std::pow(p.base, -2.0f / static_cast<float>(p.n_rot));
  float mscale = p.attn_factor;
  if (p.ext_factor != 0.0f) mscale *= 1.0f + 0.1f * std::log(1.0f / p.freq_scale);
  float theta = static_cast<float>(pos);
  for (int64_t i = 0; i < half; ++i) {
    const float extrap = p.factors ? theta / p.factors[i] : theta;
    float t = p.freq_scale * extrap;  // exact when freq_scale is 1
    if (p.ext_factor != 0.0f) {
      const float y = (static_cast<float>(i) - p.corr_lo) / std::max(0.001f, p.corr_hi - p.corr_lo);
      const float mix = (1 - std::min(1.0f, std::max(0.0f, y))) * p.ext_factor;
      t = t * (1 - mix) + extrap * mix;
    }
    cos[i] = std::cos(t) * mscale;
    sin[i] = std::sin(t) * mscale;
    theta *= theta_scale;
  }
}
void RopeYarnCorrDims(int64_t n_rot, int64_t n_ctx_orig, float base, float beta_fast,
                      float beta_slow, float* lo, float* hi) {
  // The dim whose wavelength fits `turns` times in the training context.
  auto dim = [&](float turns) {
    return static_cast<float>(n_rot) *
           std::log(static_cast<float>(n_ctx_orig) / (turns * 2 * static_cast<float>(M_PI))) /
           (2 * std::log(base));
  };
  *lo = std::max(0.0f, std::floor(dim(beta_fast)));
  *hi = std::min(static_cast<float>(n_rot - 1), std::ceil(dim(beta_slow)));
}
void ConvertF32ToF16(const float* x, f16_t* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(ConvertF32ToF16Impl)(x, y, n);
}
void ConvertF16ToF32(const f16_t* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(ConvertF16ToF32Impl)(x, y, n);
}
}  // namespace es::kernels
#endif
