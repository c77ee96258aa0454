// Helpers shared by the scalar reference codecs (tensor_quant*.cpp); not a public interface.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tensor/tensor_types.h"

namespace es::quant {

// Groups whose largest magnitude is below this quantize to all zeros (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Rounds to the nearest integer, ties to even (the FPU's default mode); this is what ggml's
// nearest_int() and the AVX round instruction do, so activation bytes match llama.cpp.
inline int RoundEven(float v) {
  return static_cast<int>(std::nearbyint(v));
}

// llama.cpp's x86 reduction of eight lane sums: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
inline float Hsum8(const float* a) {
  const float h0 = a[0] + a[4], h1 = a[1] + a[5], h2 = a[2] + a[6], h3 = a[3] + a[7];
  return (h0 + h2) + (h1 + h3);
}

// The 32-element block types of tensor_quant_legacy.cpp: Q4_1, Q5_0, Q5_1, IQ4_NL and the Q8_1
// activations. nb is the number of blocks.
bool IsLegacy(TensorType t);
void DequantLegacy(TensorType t, const void* src, float* dst, int64_t nb);
void QuantLegacy(TensorType t, const float* src, void* dst, int64_t nb);
// Weights of type w against activations of VecDotType(w).
float DotLegacy(TensorType w, const void* wrow, const void* xrow, int64_t nb);

// The first of the n values of largest magnitude (its sign kept); *amax receives the magnitude.
inline float SignedMax(const float* x, int n, float* amax) {
  float max = 0;
  *amax = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > *amax) {
      *amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  return max;
}

// Q4_K/Q5_K pack 8 six-bit scales and 8 six-bit mins into 12 bytes: bytes 0..3 hold scales 0..3
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
void PackScaleMinK4(const uint8_t* scales, const uint8_t* mins, uint8_t* q);

// Q3_K's 16 six-bit scales (stored + 32): low nibbles in bytes 0..7 (groups 0..7 low, 8..15
// high), the top two bits of group j at bits 2(j / 4) of byte 8 + j % 4.
inline int Q3KScale(const uint8_t* s, int j) {
  const int low = j < 8 ? (s[j] & 0x0F) : (s[j - 8] >> 4);
  return (low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}

// IQ4_XS group ib's scale (stored + 32): low 4 bits in nibble ib % 2 of scales_l[ib / 2], high 2
// bits at bits 2ib of scales_h.
inline int IQ4XSScale(const BlockIQ4_XS& b, int ib) {
  return (((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((b.scales_h >> (2 * ib)) & 3) << 4)) -
         32;
}

// Fits x ~ scale * L + min with L in [0, nmax] (min <= 0) by weighted least squares, trying a
// range of candidate inverse scales around nmax / (max - min) and keeping the best (squared or,
// with use_mad, absolute error). Returns the scale; *neg_min receives -min. n <= 32.
float FitScaleMin(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                  float rmin, float rdelta, int nstep, bool use_mad = false);

// Q4_K/Q5_K's sub-block search and the 6-bit quantization of its 8 scales and mins into
// d, dmin and the packed bytes; L receives each sub-block's quants against the stored scales.
void QuantizeScaleMinK(const float* x, int nmax, float rmin, int nstep, f16_t* d, f16_t* dmin,
                       uint8_t* scales, uint8_t* L);

// Index of the IQ4_NL level (kIQ4NLValues) nearest v, by bisection as ggml does.
int NearestLevelIQ4(float v);
// IQ4_NL/IQ4_XS: the scale of one group of 32 values as llama-quantize picks it without an
// importance matrix (weights x^2, least squares over 15 trial inverse scales); 0 for a group
// below kGroupMaxEps.
float FitGroupIQ4(const float* x);

// Dot product with Q8_K activations of a 256-element type with a scale per group of kGroup
// elements (and a min, unless min is nullptr): per block exact integer sums of
// scale * sum(q * x) and min * sum(x), scaled in f32 as d * dx and dmin * dx.
// value(block, e) is element e's quant, scale(block, g) and min(block, g) group g's.
template <int kGroup, class Block, class Value, class Scale, class Min>
float DotGroupsQ8K(const Block* w, const BlockQ8_K* x, int64_t nb, Value value, Scale scale,
                   Min min) {
  constexpr bool kHasMin = !std::is_same_v<Min, std::nullptr_t>;
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int isum = 0, msum = 0;
    for (int g = 0; g < kQK_K / kGroup; ++g) {
      int s = 0;
      for (int l = 0; l < kGroup; ++l) s += value(w[i], kGroup * g + l) * x[i].qs[kGroup * g + l];
      isum += scale(w[i], g) * s;
      if constexpr (kHasMin) {
        int xs = 0;  // Q8_K keeps sums of 16 activations
        for (int k = 0; k < kGroup / 16; ++k) xs += x[i].bsums[kGroup / 16 * g + k];
        msum += min(w[i], g) * xs;
      }
    }
    const float d = F16ToF32(w[i].d) * x[i].d;
    if constexpr (kHasMin)
      sum += d * static_cast<float>(isum) - F16ToF32(w[i].dmin) * x[i].d * static_cast<float>(msum);
    else
      sum += d * static_cast<float>(isum);
  }
  return sum;
}

// DotGroupsQ8K of Q4_K/Q5_K blocks: 8 groups of 32 with the packed 6-bit scales and mins.
template <class Block, class Value>
float DotScaleMinK4(const Block* w, const BlockQ8_K* x, int64_t nb, Value value) {
  auto get = [](const Block& b, int j, bool min) {
    int sc, m;
    UnpackScaleMinK4(j, b.scales, &sc, &m);
    return min ? m : sc;
  };
  return DotGroupsQ8K<32>(
      w, x, nb, value, [&](const Block& b, int j) { return get(b, j, false); },
      [&](const Block& b, int j) { return get(b, j, true); });
}

// Dequantization of Q4_K/Q5_K blocks: d * scale * q - dmin * min per group of 32.
template <class Block, class Value>
void DequantScaleMinK4(const Block* b, float* y, int64_t nb, Value value) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(b[i].d), dmin = F16ToF32(b[i].dmin);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      UnpackScaleMinK4(j, b[i].scales, &sc, &m);
      const float ds = d * sc, dm = dmin * m;
      for (int l = 0; l < 32; ++l) y[i * kQK_K + 32 * j + l] = ds * value(b[i], 32 * j + l) - dm;
    }
  }
}

// Entry points for the types in tensor_quant_kquants.cpp (Q2_K, Q3_K, Q5_K) and
// tensor_quant_iquants.cpp (IQ4_XS); n is a multiple of 256.
void DequantizeKQuant(TensorType t, const void* src, float* dst, int64_t n);
void QuantizeKQuant(TensorType t, const float* src, void* dst, int64_t n);
float DotKQuant(TensorType t, const void* w, const void* x, int64_t n);
void DequantizeIQuant(TensorType t, const void* src, float* dst, int64_t n);
void QuantizeIQuant(TensorType t, const float* src, void* dst, int64_t n);
float DotIQuant(TensorType t, const void* w, const void* x, int64_t n);

}  // namespace es::quant
