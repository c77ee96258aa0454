// Helpers shared by the scalar reference codecs (tensor_quant*.cpp); not a public interface.
#pragma once
#include <cmath>
#include <cstdint>

#include "tensor/tensor_types.h"

namespace es::quant {

// Groups whose largest magnitude is below this quantize to all zeros (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Rounds to the nearest integer, ties to even (the FPU's default mode); this is what ggml's
// nearest_int() and the AVX round instruction do, so activation bytes match llama.cpp.
inline int RoundEven(float v) {
  return static_cast<int>(std::nearbyint(v));
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

// Fits x ~ scale * L + min with L in [0, nmax] (min <= 0) by weighted least squares, trying a
// range of candidate inverse scales around nmax / (max - min) and keeping the best (squared or,
// with use_mad, absolute error). Returns the scale; *neg_min receives -min. n <= 32.
float FitScaleMin(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                  float rmin, float rdelta, int nstep, bool use_mad = false);

// Q4_K/Q5_K's sub-block search and the 6-bit quantization of its 8 scales and mins into
// d, dmin and the packed bytes; L receives each sub-block's quants against the stored scales.
void QuantizeScaleMinK(const float* x, int nmax, float rmin, int nstep, f16_t* d, f16_t* dmin,
                       uint8_t* scales, uint8_t* L);

// The 16 levels of the non-linear 4-bit quants (IQ4_XS; ggml's kvalues_iq4nl), ascending.
extern const int8_t kIQ4NonLinear[16];

// Entry points for the types in tensor_quant_kquants.cpp (Q2_K, Q3_K, Q5_K) and
// tensor_quant_iquants.cpp (IQ4_XS); n is a multiple of 256.
void DequantizeKQuant(TensorType t, const void* src, float* dst, int64_t n);
void QuantizeKQuant(TensorType t, const float* src, void* dst, int64_t n);
float DotKQuant(TensorType t, const void* w, const void* x, int64_t n);
void DequantizeIQuant(TensorType t, const void* src, float* dst, int64_t n);
void QuantizeIQuant(TensorType t, const float* src, void* dst, int64_t n);
float DotIQuant(TensorType t, const void* w, const void* x, int64_t n);

}  // namespace es::quant
