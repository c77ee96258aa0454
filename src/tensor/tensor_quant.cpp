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

using quant::Hsum8;
using quant::RoundEven;
using quant::kGroupMaxEps;
using quant::UnpackScaleMinK4;

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
  quant::DequantScaleMinK4(b, y, nb, Q4KNibble);
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

void QuantQ4_K(const float* x, BlockQ4_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    uint8_t L[kQK_K];
    quant::QuantizeScaleMinK(x, 15, -1.0f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l)
        y[i].qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  }
}

// Fits x ~ scale * (L - nmax) with L - nmax in [-nmax, nmax - 1], weights x^2, trying inverse
// scales around -nmax / max and keeping the one that maximises the fitted energy. Used for the
// symmetric Q6_K sub-blocks. Returns the scale (0 for an all-zero group).
float FitScaleSymmetric(int n, int nmax, const float* x, int8_t* L) {
  float amax;
  const float max = quant::SignedMax(x, n, &amax);
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
  return quant::DotScaleMinK4(w, x, nb, Q4KNibble);
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
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ5_K:
      return quant::DequantizeKQuant(t, src, dst, n);
    case TensorType::kIQ4_XS:
      return quant::DequantizeIQuant(t, src, dst, n);
    default:
      if (!quant::IsLegacy(t)) Unsupported(t, "DequantizeRowRef");
      return quant::DequantLegacy(t, src, dst, n / kQK32);
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
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ5_K:
      return quant::QuantizeKQuant(t, src, dst, n);
    case TensorType::kIQ4_XS:
      return quant::QuantizeIQuant(t, src, dst, n);
    default:
      if (!quant::IsLegacy(t)) Unsupported(t, "QuantizeRowRef");
      return quant::QuantLegacy(t, src, dst, n / kQK32);
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
    case TensorType::kMXFP4:
      return TensorType::kQ8_0;
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
      return TensorType::kQ8_1;
    case TensorType::kQ4_K:
    case TensorType::kQ6_K:
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ5_K:
    case TensorType::kIQ4_XS:
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
    case TensorType::kMXFP4:
      return quant::DotLegacy(w, wrow, xrow, n / kQK32);
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ5_K:
      return quant::DotKQuant(w, wrow, xrow, n);
    case TensorType::kIQ4_XS:
      return quant::DotIQuant(w, wrow, xrow, n);
    default:
      Unsupported(w, "VecDotRef");
  }
}

}  // namespace es
