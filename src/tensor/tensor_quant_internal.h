// Helpers shared by the scalar reference codecs (tensor_quant*.cpp); not a public interface.
#pragma once
#include <cmath>
#include <cstdint>

#include "tensor/tensor_types.h"

namespace es::quant_detail {

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

}  // namespace es::quant_detail
