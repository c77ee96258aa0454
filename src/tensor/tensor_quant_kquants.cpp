// Scalar reference codecs of the 2-, 3- and 5-bit K-quants (Q2_K, Q3_K, Q5_K) and the scale
// searches they share with Q4_K. The quantizers follow llama.cpp's reference quantizers
// (quantize_row_qN_K_ref) operation for operation, so files match its bytes.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "edgeshard/error.h"
#include "tensor/tensor_quant_internal.h"

namespace es::quant {

void PackScaleMinK4(const uint8_t* scales, const uint8_t* mins, uint8_t* q) {
  std::fill(q, q + kKScaleBytes, 0);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      q[j] = scales[j];
      q[j + 4] = mins[j];
    } else {
      q[j + 4] = static_cast<uint8_t>((scales[j] & 0x0F) | ((mins[j] & 0x0F) << 4));
      q[j - 4] |= static_cast<uint8_t>((scales[j] >> 4) << 6);
      q[j] |= static_cast<uint8_t>((mins[j] >> 4) << 6);
    }
  }
}

float FitScaleMin(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                  float rmin, float rdelta, int nstep, bool use_mad) {
  float lo = x[0], hi = x[0], sum_w = w[0], sum_x = w[0] * x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0) lo = 0;
  if (hi == lo) {
    std::fill(L, L + n, 0);
    *neg_min = -lo;
    return 0.0f;
  }
  auto error = [use_mad](float diff) { return use_mad ? std::fabs(diff) : diff * diff; };
  float iscale = nmax / (hi - lo);
  float scale = 1.0f / iscale;
  float best_err = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(RoundEven(iscale * (x[i] - lo)), 0, nmax);
    L[i] = static_cast<uint8_t>(l);
    best_err += w[i] * error(scale * l + lo - x[i]);
  }
  uint8_t trial[32];
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * step + nmax) / (hi - lo);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(RoundEven(iscale * (x[i] - lo)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det <= 0) continue;
    float s = (sum_w * sum_xl - sum_x * sum_l) / det;
    float m = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (m > 0) {
      m = 0;
      s = sum_xl / sum_l2;
    }
    float err = 0;
    for (int i = 0; i < n; ++i) err += w[i] * error(s * trial[i] + m - x[i]);
    if (err < best_err) {
      std::copy(trial, trial + n, L);
      best_err = err;
      scale = s;
      lo = m;
    }
  }
  *neg_min = -lo;
  return scale;
}

void QuantizeScaleMinK(const float* x, int nmax, float rmin, int nstep, f16_t* d, f16_t* dmin,
                       uint8_t* packed, uint8_t* L) {
  float scales[8], mins[8], weights[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    // Weight larger magnitudes more, relative to the sub-block's RMS.
    const float av = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av + std::fabs(xs[l]);
    scales[j] = FitScaleMin(32, nmax, xs, weights, L + 32 * j, &mins[j], rmin, 0.1f, nstep);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = static_cast<uint8_t>(std::clamp(RoundEven(inv_scale * scales[j]), 0, 63));
    lm[j] = static_cast<uint8_t>(std::clamp(RoundEven(inv_min * mins[j]), 0, 63));
  }
  PackScaleMinK4(ls, lm, packed);
  *d = F32ToF16(max_scale / 63.0f);
  *dmin = F32ToF16(max_min / 63.0f);
  // Requantize against the scales actually stored (after 6-bit and f16 rounding).
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    UnpackScaleMinK4(j, packed, &sc, &m);
    const float ds = F16ToF32(*d) * sc;
    if (ds == 0.0f) continue;
    const float dm = F16ToF32(*dmin) * m;
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] =
          static_cast<uint8_t>(std::clamp(RoundEven((x[32 * j + l] + dm) / ds), 0, nmax));
  }
}

namespace {

// Q2_K and Q3_K keep two bits of element e (e = 128h + 32k + l) at bits 2k, 2k+1 of
// qs[32h + l].
inline int TwoBits(const uint8_t* qs, int e) {
  const int h = e / 128, k = (e % 128) / 32, l = e % 32;
  return (qs[32 * h + l] >> (2 * k)) & 3;
}
void PackTwoBits(const uint8_t* L, uint8_t* qs) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* p = L + 128 * h + l;
      qs[32 * h + l] = static_cast<uint8_t>(p[0] | (p[32] << 2) | (p[64] << 4) | (p[96] << 6));
    }
}

// Q3_K: element e's high bit is bit e / 32 of hmask[e % 32]; set means +4 (value q - 4).
inline int Q3KValue(const BlockQ3_K& b, int e) {
  return TwoBits(b.qs, e) + 4 * ((b.hmask[e % 32] >> (e / 32)) & 1) - 4;
}

// Q5_K: sub-block j = e / 32 takes nibble plane j & 1 of qs[32 (j / 2) + l] and bit j of qh[l].
inline int Q5KValue(const BlockQ5_K& b, int e) {
  const int j = e / 32, l = e % 32;
  return ((b.qs[32 * (j / 2) + l] >> (4 * (j & 1))) & 0x0F) | (((b.qh[l] >> j) & 1) << 4);
}

void DequantQ2_K(const BlockQ2_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(b[i].d), dmin = F16ToF32(b[i].dmin);
    for (int e = 0; e < kQK_K; ++e) {
      const int sc = b[i].scales[e / 16];
      const float dl = d * (sc & 0x0F), ml = dmin * (sc >> 4);
      y[i * kQK_K + e] = dl * TwoBits(b[i].qs, e) - ml;
    }
  }
}

void DequantQ3_K(const BlockQ3_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(b[i].d);
    for (int e = 0; e < kQK_K; ++e)
      y[i * kQK_K + e] = d * Q3KScale(b[i].scales, e / 16) * Q3KValue(b[i], e);
  }
}

void DequantQ5_K(const BlockQ5_K* b, float* y, int64_t nb) {
  DequantScaleMinK4(b, y, nb, Q5KValue);
}

void QuantQ2_K(const float* x, BlockQ2_K* y, int64_t nb) {
  constexpr float kQ4Scale = 15.0f;
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    uint8_t L[kQK_K];
    float scales[16], mins[16], weights[16];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] =
          FitScaleMin(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    BlockQ2_K& b = y[i];
    std::fill(std::begin(b.scales), std::end(b.scales), 0);
    b.d = F32ToF16(0.0f);
    b.dmin = F32ToF16(0.0f);
    if (max_scale > 0) {
      const float iscale = kQ4Scale / max_scale;
      for (int j = 0; j < 16; ++j)
        b.scales[j] = static_cast<uint8_t>(RoundEven(iscale * scales[j]));
      b.d = F32ToF16(max_scale / kQ4Scale);
    }
    if (max_min > 0) {
      const float iscale = kQ4Scale / max_min;
      for (int j = 0; j < 16; ++j)
        b.scales[j] |= static_cast<uint8_t>(RoundEven(iscale * mins[j]) << 4);
      b.dmin = F32ToF16(max_min / kQ4Scale);
    }
    for (int j = 0; j < 16; ++j) {
      const float d = F16ToF32(b.d) * (b.scales[j] & 0x0F);
      if (d == 0.0f) continue;
      const float dm = F16ToF32(b.dmin) * (b.scales[j] >> 4);
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = static_cast<uint8_t>(std::clamp(RoundEven((x[16 * j + l] + dm) / d), 0, 3));
    }
    PackTwoBits(L, b.qs);
  }
}

// Symmetric fit of 16 values to L in [-4, 3] (weights x^2): start from -4 / max and move single
// elements to the level that raises the fitted energy, up to five passes (ggml's make_q3_quants
// with rmse). L receives the levels + 4, or all zeros for a group below kGroupMaxEps.
float FitScaleQ3(const float* x, int8_t* L) {
  constexpr int n = 16, nmax = 4;
  float amax;
  const float max = quant::SignedMax(x, n, &amax);
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  const float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(RoundEven(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int pass = 0; pass < 5; ++pass) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx <= 0) continue;
      float sl2 = suml2 - w * L[i] * L[i];
      const int nl = std::clamp(RoundEven(x[i] * sl2 / slx), -nmax, nmax - 1);
      if (nl == L[i]) continue;
      slx += w * x[i] * nl;
      sl2 += w * nl * nl;
      if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = static_cast<int8_t>(nl);
        sumlx = slx;
        suml2 = sl2;
        ++changed;
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

void QuantQ3_K(const float* x, BlockQ3_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    int8_t L[kQK_K];
    float scales[16];
    for (int j = 0; j < 16; ++j) scales[j] = FitScaleQ3(x + 16 * j, L + 16 * j);
    float amax;
    const float max_scale = SignedMax(scales, 16, &amax);
    BlockQ3_K& b = y[i];
    std::memset(b.scales, 0, sizeof(b.scales));
    b.d = F32ToF16(0.0f);
    if (max_scale != 0.0f) {
      const float iscale = -32.0f / max_scale;
      for (int j = 0; j < 16; ++j) {
        const int l = std::clamp(RoundEven(iscale * scales[j]), -32, 31) + 32;
        if (j < 8)
          b.scales[j] = static_cast<uint8_t>(l & 0x0F);
        else
          b.scales[j - 8] |= static_cast<uint8_t>((l & 0x0F) << 4);
        b.scales[8 + j % 4] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
      }
      b.d = F32ToF16(1.0f / iscale);
    }
    for (int j = 0; j < 16; ++j) {
      const float d = F16ToF32(b.d) * Q3KScale(b.scales, j);
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = static_cast<int8_t>(std::clamp(RoundEven(x[16 * j + l] / d), -4, 3) + 4);
    }
    std::memset(b.hmask, 0, sizeof(b.hmask));
    uint8_t low[kQK_K];
    for (int e = 0; e < kQK_K; ++e) {
      if (L[e] > 3) b.hmask[e % 32] |= static_cast<uint8_t>(1 << (e / 32));
      low[e] = static_cast<uint8_t>(L[e] > 3 ? L[e] - 4 : L[e]);
    }
    PackTwoBits(low, b.qs);
  }
}

void QuantQ5_K(const float* x, BlockQ5_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    uint8_t L[kQK_K];
    QuantizeScaleMinK(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
    std::memset(y[i].qh, 0, sizeof(y[i].qh));
    for (int e = 0; e < kQK_K; ++e) {
      const int j = e / 32, l = e % 32;
      if (j % 2 == 0) y[i].qs[32 * (j / 2) + l] = 0;
      y[i].qs[32 * (j / 2) + l] |= static_cast<uint8_t>((L[e] & 0x0F) << (4 * (j & 1)));
      y[i].qh[l] |= static_cast<uint8_t>((L[e] >> 4) << j);
    }
  }
}

// Dot products: the scales (and mins) of each type's groups for DotGroupsQ8K.
float DotQ2_K(const BlockQ2_K* w, const BlockQ8_K* x, int64_t nb) {
  return DotGroupsQ8K<16>(
      w, x, nb, [](const BlockQ2_K& b, int e) { return TwoBits(b.qs, e); },
      [](const BlockQ2_K& b, int g) { return b.scales[g] & 0x0F; },
      [](const BlockQ2_K& b, int g) { return b.scales[g] >> 4; });
}

float DotQ3_K(const BlockQ3_K* w, const BlockQ8_K* x, int64_t nb) {
  return DotGroupsQ8K<16>(
      w, x, nb, Q3KValue, [](const BlockQ3_K& b, int g) { return Q3KScale(b.scales, g); }, nullptr);
}

float DotQ5_K(const BlockQ5_K* w, const BlockQ8_K* x, int64_t nb) {
  return quant::DotScaleMinK4(w, x, nb, Q5KValue);
}

}  // namespace

void DequantizeKQuant(TensorType t, const void* src, float* dst, int64_t n) {
  const int64_t nb = n / kQK_K;
  switch (t) {
    case TensorType::kQ2_K:
      return DequantQ2_K(static_cast<const BlockQ2_K*>(src), dst, nb);
    case TensorType::kQ3_K:
      return DequantQ3_K(static_cast<const BlockQ3_K*>(src), dst, nb);
    case TensorType::kQ5_K:
      return DequantQ5_K(static_cast<const BlockQ5_K*>(src), dst, nb);
    default:
      throw Error(std::string("DequantizeKQuant: not a K-quant: ") + TypeName(t));
  }
}

void QuantizeKQuant(TensorType t, const float* src, void* dst, int64_t n) {
  const int64_t nb = n / kQK_K;
  switch (t) {
    case TensorType::kQ2_K:
      return QuantQ2_K(src, static_cast<BlockQ2_K*>(dst), nb);
    case TensorType::kQ3_K:
      return QuantQ3_K(src, static_cast<BlockQ3_K*>(dst), nb);
    case TensorType::kQ5_K:
      return QuantQ5_K(src, static_cast<BlockQ5_K*>(dst), nb);
    default:
      throw Error(std::string("QuantizeKQuant: not a K-quant: ") + TypeName(t));
  }
}

float DotKQuant(TensorType t, const void* w, const void* x, int64_t n) {
  const int64_t nb = n / kQK_K;
  const auto* xb = static_cast<const BlockQ8_K*>(x);
  switch (t) {
    case TensorType::kQ2_K:
      return DotQ2_K(static_cast<const BlockQ2_K*>(w), xb, nb);
    case TensorType::kQ3_K:
      return DotQ3_K(static_cast<const BlockQ3_K*>(w), xb, nb);
    case TensorType::kQ5_K:
      return DotQ5_K(static_cast<const BlockQ5_K*>(w), xb, nb);
    default:
      throw Error(std::string("DotKQuant: not a K-quant: ") + TypeName(t));
  }
}

}  // namespace es::quant
