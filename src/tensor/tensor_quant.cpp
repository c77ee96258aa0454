// Scalar reference codecs for the GGUF block formats. Written for clarity: these define the
// numerics that the SIMD kernels are tested against.
#include "tensor/tensor_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "tensor/tensor_quant_internal.h"

namespace es {
namespace {

using quant_detail::Hsum8;
using quant_detail::RoundEven;

inline float Half(f16_t h) {
  return F16ToF32(h);
}

void CheckMultiple(TensorType t, int64_t n, const char* what) {
  const int be = Traits(t).block_elems;
  if (n < 0 || n % be != 0)
    throw Error(std::string(what) + ": row length " + std::to_string(n) + " is not a multiple of " +
                TypeName(t) + "'s block size " + std::to_string(be));
}

[[noreturn]] void Unsupported(TensorType t, const char* what) {
  throw Error(std::string(what) + ": tensor type " + TypeName(t) + " is not supported");
}

// Q4_K packs 8 six-bit scales and 8 six-bit mins into 12 bytes: bytes 0..3 hold scales 0..3
// (low 6 bits) and the top 2 bits of scales 4..7; bytes 4..7 likewise for mins; bytes 8..11 hold
// the low 4 bits of scale (low nibble) and min (high nibble) for sub-blocks 4..7.
inline void UnpackScaleMinK4(int j, const uint8_t* q, int* scale, int* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

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

// Element e of a Q4_K block: sub-block j = e / 32 lives in the 32-byte group j / 2, in the low
// nibble for even j and the high nibble for odd j.
inline int Q4KNibble(const BlockQ4_K& b, int e) {
  const int j = e / 32;
  const uint8_t byte = b.qs[(j / 2) * 32 + e % 32];
  return (j & 1) ? (byte >> 4) : (byte & 0x0F);
}

// Element e of a Q6_K block as an unsigned 6-bit value (0..63). Each 128-element half uses 64
// bytes of ql and 32 of qh; within a half, quarter k (32 elements) takes the low (k < 2) or high
// nibble of ql[32 * (k % 2) + l] and bits 2k..2k+1 of qh[l].
inline int Q6KValue(const BlockQ6_K& b, int e) {
  const int h = e / 128, k = (e % 128) / 32, l = e % 32;
  const uint8_t lo = b.ql[64 * h + 32 * (k % 2) + l];
  const int low4 = (k < 2) ? (lo & 0x0F) : (lo >> 4);
  const int high2 = (b.qh[32 * h + l] >> (2 * k)) & 3;
  return low4 | (high2 << 4);
}

// ---- dequantization ----

void DequantQ8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d);
    for (int j = 0; j < kQK8_0; ++j) y[i * kQK8_0 + j] = d * b[i].qs[j];
  }
}

void DequantQ4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      y[i * kQK4_0 + j] = d * ((b[i].qs[j] & 0x0F) - 8);
      y[i * kQK4_0 + j + kQK4_0 / 2] = d * ((b[i].qs[j] >> 4) - 8);
    }
  }
}

void DequantQ4_K(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d), dmin = Half(b[i].dmin);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      UnpackScaleMinK4(j, b[i].scales, &sc, &m);
      const float ds = d * sc, dm = dmin * m;
      for (int l = 0; l < 32; ++l) {
        const int e = 32 * j + l;
        y[i * kQK_K + e] = ds * Q4KNibble(b[i], e) - dm;
      }
    }
  }
}

void DequantQ6_K(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d);
    for (int e = 0; e < kQK_K; ++e)
      y[i * kQK_K + e] = d * b[i].scales[e / 16] * (Q6KValue(b[i], e) - 32);
  }
}

void DequantQ8_K(const BlockQ8_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i)
    for (int j = 0; j < kQK_K; ++j) y[i * kQK_K + j] = b[i].d * b[i].qs[j];
}

// ---- quantization ----

// Q8_0 as llama.cpp's x86 CPU backend quantizes activations: d = amax/127 stored as f16, values
// scaled by 127/amax (not 1/d) and rounded to nearest, ties to even.
void QuantQ8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    y[i].d = F32ToF16(d);
    for (int j = 0; j < kQK8_0; ++j) y[i].qs[j] = static_cast<int8_t>(RoundEven(x[j] * id));
  }
}

// Q8_K: the scale comes from the signed value of largest magnitude, which maps to -127.
void QuantQ8_K(const float* x, BlockQ8_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK_K; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    if (amax == 0.0f) {
      y[i].d = 0.0f;
      std::fill(std::begin(y[i].qs), std::end(y[i].qs), 0);
      std::fill(std::begin(y[i].bsums), std::end(y[i].bsums), 0);
      continue;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < kQK_K; ++j)
      y[i].qs[j] = static_cast<int8_t>(std::min(127, RoundEven(iscale * x[j])));
    for (int g = 0; g < kQK_K / 16; ++g) {
      int s = 0;
      for (int l = 0; l < 16; ++l) s += y[i].qs[16 * g + l];
      y[i].bsums[g] = static_cast<int16_t>(s);
    }
    y[i].d = 1.0f / iscale;
  }
}

// Q4_0 (llama.cpp's reference quantizer): the value of largest magnitude maps to -8 exactly,
// others to round(x/d) + 8 clamped to 15 (truncation of x/d + 8.5 is rounding for these values).
void QuantQ4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK4_0) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK4_0; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const int q1 =
          std::min(15, static_cast<int>(static_cast<int8_t>(x[j + kQK4_0 / 2] * id + 8.5f)));
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

constexpr float kGroupMaxEps = 1e-15f;

// Fits x ~ scale * L + min with L in [0, nmax] (min <= 0) by weighted least squares, trying a
// range of candidate inverse scales around nmax / (max - min) and keeping the best. Returns the
// scale; *neg_min receives -min. This is the asymmetric search used for Q4_K sub-blocks.
float FitScaleMin(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                  float rmin, float rdelta, int nstep) {
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
  float iscale = nmax / (hi - lo);
  float scale = 1.0f / iscale;
  float best_err = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(RoundEven(iscale * (x[i] - lo)), 0, nmax);
    L[i] = static_cast<uint8_t>(l);
    const float diff = scale * l + lo - x[i];
    best_err += w[i] * (diff * diff);
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
    for (int i = 0; i < n; ++i) {
      const float diff = s * trial[i] + m - x[i];
      err += w[i] * (diff * diff);
    }
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

void QuantQ4_K(const float* x, BlockQ4_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    uint8_t L[kQK_K];
    float scales[8], mins[8], weights[32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      const float* xs = x + 32 * j;
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
      // Weight larger magnitudes more, relative to the sub-block's RMS.
      const float av = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av + std::fabs(xs[l]);
      scales[j] = FitScaleMin(32, 15, xs, weights, L + 32 * j, &mins[j], -1.0f, 0.1f, 20);
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
    PackScaleMinK4(ls, lm, y[i].scales);
    y[i].d = F32ToF16(max_scale / 63.0f);
    y[i].dmin = F32ToF16(max_min / 63.0f);
    // Requantize against the scales actually stored (after 6-bit and f16 rounding).
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      UnpackScaleMinK4(j, y[i].scales, &sc, &m);
      const float d = Half(y[i].d) * sc;
      if (d == 0.0f) continue;
      const float dm = Half(y[i].dmin) * m;
      for (int l = 0; l < 32; ++l)
        L[32 * j + l] =
            static_cast<uint8_t>(std::clamp(RoundEven((x[32 * j + l] + dm) / d), 0, 15));
    }
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l)
        y[i].qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  }
}

// Fits x ~ scale * (L - nmax) with L - nmax in [-nmax, nmax - 1], weights x^2, trying inverse
// scales around -nmax / max and keeping the one that maximises the fitted energy. Used for the
// symmetric Q6_K sub-blocks. Returns the scale (0 for an all-zero group).
float FitScaleSymmetric(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  auto fit = [&](float iscale, float* sumlx, float* suml2) {
    *sumlx = 0;
    *suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(RoundEven(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      *sumlx += w * x[i] * l;
      *suml2 += w * l * l;
    }
  };
  auto assign = [&](float iscale) {
    for (int i = 0; i < n; ++i)
      L[i] = static_cast<int8_t>(nmax + std::clamp(RoundEven(iscale * x[i]), -nmax, nmax - 1));
  };
  float iscale = -nmax / max;
  float sumlx, suml2;
  fit(iscale, &sumlx, &suml2);
  assign(iscale);
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    iscale = -(nmax + 0.1f * step) / max;
    fit(iscale, &sumlx, &suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      assign(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void QuantQ6_K(const float* x, BlockQ6_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    int8_t L[kQK_K];
    float scales[16];
    float max_scale = 0, max_abs = 0;
    for (int s = 0; s < 16; ++s) {
      scales[s] = FitScaleSymmetric(16, 32, x + 16 * s, L + 16 * s);
      if (std::fabs(scales[s]) > max_abs) {
        max_abs = std::fabs(scales[s]);
        max_scale = scales[s];
      }
    }
    BlockQ6_K& b = y[i];
    if (max_abs < kGroupMaxEps) {
      std::memset(&b, 0, sizeof(b));
      continue;
    }
    const float iscale = -128.0f / max_scale;
    b.d = F32ToF16(1.0f / iscale);
    for (int s = 0; s < 16; ++s)
      b.scales[s] = static_cast<int8_t>(std::min(127, RoundEven(iscale * scales[s])));
    for (int s = 0; s < 16; ++s) {
      const float d = Half(b.d) * b.scales[s];
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; ++l)
        L[16 * s + l] = static_cast<int8_t>(std::clamp(RoundEven(x[16 * s + l] / d), -32, 31) + 32);
    }
    std::memset(b.ql, 0, sizeof(b.ql));
    std::memset(b.qh, 0, sizeof(b.qh));
    for (int e = 0; e < kQK_K; ++e) {
      const int h = e / 128, k = (e % 128) / 32, l = e % 32;
      const int v = L[e];
      uint8_t& lo = b.ql[64 * h + 32 * (k % 2) + l];
      lo |= static_cast<uint8_t>(k < 2 ? (v & 0x0F) : ((v & 0x0F) << 4));
      b.qh[32 * h + l] |= static_cast<uint8_t>((v >> 4) << (2 * k));
    }
  }
}

// ---- dot products ----

// The order of float operations follows llama.cpp's x86 kernels (which produced the reference
// logits): eight lanes of four adjacent products, acc[l] = fma(d, lane, acc[l]) per block, then
// Hsum8.
float DotQ8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t nb) {
  float acc[8] = {};
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(w[i].d) * Half(x[i].d);
    for (int l = 0; l < 8; ++l) {
      int p = 0;
      for (int j = 4 * l; j < 4 * l + 4; ++j) p += w[i].qs[j] * x[i].qs[j];
      acc[l] = std::fma(d, static_cast<float>(p), acc[l]);
    }
  }
  return Hsum8(acc);
}

float DotQ4_0(const BlockQ4_0* w, const BlockQ8_0* x, int64_t nb) {
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int isum = 0;
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      isum += ((w[i].qs[j] & 0x0F) - 8) * x[i].qs[j];
      isum += ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + kQK4_0 / 2];
    }
    // One accumulator, one fused multiply-add per block (llama.cpp's x86 Q4_0 order).
    sum = std::fma(static_cast<float>(isum), Half(w[i].d) * Half(x[i].d), sum);
  }
  return sum;
}

float DotQ4_K(const BlockQ4_K* w, const BlockQ8_K* x, int64_t nb) {
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int isum = 0, msum = 0;
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      UnpackScaleMinK4(j, w[i].scales, &sc, &m);
      int s = 0;
      for (int l = 0; l < 32; ++l) s += Q4KNibble(w[i], 32 * j + l) * x[i].qs[32 * j + l];
      isum += sc * s;
      msum += m * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);
    }
    const float d = Half(w[i].d) * x[i].d, dmin = Half(w[i].dmin) * x[i].d;
    sum += d * static_cast<float>(isum) - dmin * static_cast<float>(msum);
  }
  return sum;
}

// Lane l sums scale * (q - 32) * x over elements 4l..4l+3 of each 32-element group; lanes are
// accumulated per block with fma and reduced as in DotQ8_0.
float DotQ6_K(const BlockQ6_K* w, const BlockQ8_K* x, int64_t nb) {
  float acc[8] = {};
  for (int64_t i = 0; i < nb; ++i) {
    int lane[8] = {};
    for (int g = 0; g < 8; ++g) {
      for (int l = 0; l < 8; ++l) {
        const int e = 32 * g + 4 * l;
        int p = 0;
        for (int k = 0; k < 4; ++k) p += (Q6KValue(w[i], e + k) - 32) * x[i].qs[e + k];
        lane[l] += w[i].scales[e / 16] * p;
      }
    }
    const float d = x[i].d * Half(w[i].d);
    for (int l = 0; l < 8; ++l) acc[l] = std::fma(d, static_cast<float>(lane[l]), acc[l]);
  }
  return Hsum8(acc);
}

}  // namespace

void DequantizeRowRef(TensorType t, const void* src, float* dst, int64_t n) {
  CheckMultiple(t, n, "DequantizeRowRef");
  switch (t) {
    case TensorType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case TensorType::kF16: {
      const auto* s = static_cast<const f16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(s[i]);
      return;
    }
    case TensorType::kBF16: {
      const auto* s = static_cast<const bf16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = BF16ToF32(s[i]);
      return;
    }
    case TensorType::kQ8_0:
      return DequantQ8_0(static_cast<const BlockQ8_0*>(src), dst, n / kQK8_0);
    case TensorType::kQ4_0:
      return DequantQ4_0(static_cast<const BlockQ4_0*>(src), dst, n / kQK4_0);
    case TensorType::kQ4_K:
      return DequantQ4_K(static_cast<const BlockQ4_K*>(src), dst, n / kQK_K);
    case TensorType::kQ6_K:
      return DequantQ6_K(static_cast<const BlockQ6_K*>(src), dst, n / kQK_K);
    case TensorType::kQ8_K:
      return DequantQ8_K(static_cast<const BlockQ8_K*>(src), dst, n / kQK_K);
    default:
      if (!quant_detail::IsLegacy(t)) Unsupported(t, "DequantizeRowRef");
      return quant_detail::DequantLegacy(t, src, dst, n / kQK32);
  }
}

void QuantizeRowRef(TensorType t, const float* src, void* dst, int64_t n) {
  CheckMultiple(t, n, "QuantizeRowRef");
  switch (t) {
    case TensorType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case TensorType::kF16: {
      auto* d = static_cast<f16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = F32ToF16(src[i]);
      return;
    }
    case TensorType::kBF16: {
      auto* d = static_cast<bf16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = F32ToBF16(src[i]);
      return;
    }
    case TensorType::kQ8_0:
      return QuantQ8_0(src, static_cast<BlockQ8_0*>(dst), n / kQK8_0);
    case TensorType::kQ8_K:
      return QuantQ8_K(src, static_cast<BlockQ8_K*>(dst), n / kQK_K);
    case TensorType::kQ4_0:
      return QuantQ4_0(src, static_cast<BlockQ4_0*>(dst), n / kQK4_0);
    case TensorType::kQ4_K:
      return QuantQ4_K(src, static_cast<BlockQ4_K*>(dst), n / kQK_K);
    case TensorType::kQ6_K:
      return QuantQ6_K(src, static_cast<BlockQ6_K*>(dst), n / kQK_K);
    default:
      if (!quant_detail::IsLegacy(t)) Unsupported(t, "QuantizeRowRef");
      return quant_detail::QuantLegacy(t, src, dst, n / kQK32);
  }
}

TensorType VecDotType(TensorType w) {
  switch (w) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16:
      return w;
    case TensorType::kQ4_0:
    case TensorType::kQ8_0:
    case TensorType::kQ5_0:
    case TensorType::kIQ4_NL:
      return TensorType::kQ8_0;
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
      return TensorType::kQ8_1;
    case TensorType::kQ4_K:
    case TensorType::kQ6_K:
      return TensorType::kQ8_K;
    default:
      Unsupported(w, "VecDotType");
  }
}

float VecDotRef(TensorType w, const void* wrow, const void* xrow, int64_t n) {
  CheckMultiple(w, n, "VecDotRef");
  switch (w) {
    case TensorType::kF32: {
      const auto* a = static_cast<const float*>(wrow);
      const auto* b = static_cast<const float*>(xrow);
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
      return static_cast<float>(s);
    }
    case TensorType::kF16: {
      const auto* a = static_cast<const f16_t*>(wrow);
      const auto* b = static_cast<const f16_t*>(xrow);
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += static_cast<double>(F16ToF32(a[i])) * F16ToF32(b[i]);
      return static_cast<float>(s);
    }
    case TensorType::kBF16: {
      const auto* a = static_cast<const bf16_t*>(wrow);
      const auto* b = static_cast<const bf16_t*>(xrow);
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += static_cast<double>(BF16ToF32(a[i])) * BF16ToF32(b[i]);
      return static_cast<float>(s);
    }
    case TensorType::kQ8_0:
      return DotQ8_0(static_cast<const BlockQ8_0*>(wrow), static_cast<const BlockQ8_0*>(xrow),
                     n / kQK8_0);
    case TensorType::kQ4_0:
      return DotQ4_0(static_cast<const BlockQ4_0*>(wrow), static_cast<const BlockQ8_0*>(xrow),
                     n / kQK4_0);
    case TensorType::kQ4_K:
      return DotQ4_K(static_cast<const BlockQ4_K*>(wrow), static_cast<const BlockQ8_K*>(xrow),
                     n / kQK_K);
    case TensorType::kQ6_K:
      return DotQ6_K(static_cast<const BlockQ6_K*>(wrow), static_cast<const BlockQ8_K*>(xrow),
                     n / kQK_K);
    case TensorType::kQ4_1:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
    case TensorType::kIQ4_NL:
      return quant_detail::DotLegacy(w, wrow, xrow, n / kQK32);
    default:
      Unsupported(w, "VecDotRef");
  }
}

}  // namespace es
