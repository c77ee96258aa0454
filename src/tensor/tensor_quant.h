// Reference (scalar, portable) conversions between float and the GGUF block formats.
// These define the numerics; SIMD kernels in kernels/ must agree with them bit for bit
// where integer arithmetic allows, and are tested against them.
#pragma once
#include <cstdint>

#include "tensor/tensor_types.h"

namespace es {

// Dequantizes `n` elements (a multiple of the type's block size) of type `t` at `src` into `dst`.
// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
// IQ4_XS (and Q8_K, Q8_1).
void DequantizeRowRef(TensorType t, const void* src, float* dst, int64_t n);

// Quantizes `n` floats into type `t`, with llama.cpp's reference rounding rules so files and
// activations match its bytes (IQ4_NL, IQ4_XS: llama-quantize's search without an importance
// matrix). Supported: F32, F16, BF16, Q8_0, Q8_1, Q8_K, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K,
// Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS.
void QuantizeRowRef(TensorType t, const float* src, void* dst, int64_t n);

// The type activations are converted to before a dot product with weights of type `w`
// (as llama.cpp does): F16->F16, BF16->BF16, F32->F32, Q4_0/Q5_0/IQ4_NL/Q8_0->Q8_0,
// Q4_1/Q5_1->Q8_1, the 256-element K-quants and IQ4_XS->Q8_K.
TensorType VecDotType(TensorType w);

// Reference dot product of one weight row (type w) with one activation row already converted
// to VecDotType(w). n elements.
float VecDotRef(TensorType w, const void* wrow, const void* xrow, int64_t n);

}  // namespace es
