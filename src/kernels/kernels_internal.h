// Entry points between the portable kernel front end (kernels.cpp) and the Highway-dispatched
// SIMD translation units. Not part of the public kernel contract.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"

namespace es::kernels::detail {

// Activations converted for weights of type `type`, one row of x per `stride` bytes. The layout
// inside a row belongs to the SIMD code (see kernels_matmul.cpp); callers only size and pass it.
struct Acts {
  const uint8_t* base = nullptr;
  size_t stride = 0;
  TensorType type = TensorType::kF32;
};

// The weight type whose activation conversion `w` takes: its own, except that interleaved Q8_0
// (stored unsigned, q + 128) takes the signed activations with offset corrections that Q4_0's
// unsigned nibbles take.
inline TensorType ActTypeFor(const Matrix& w) {
  return w.interleave && w.type == TensorType::kQ8_0 ? TensorType::kQ4_0 : w.type;
}

// Bytes one converted activation row of `n` elements needs for weights of type `w` (multiple of
// 64).
size_t ActRowBytes(TensorType w, int64_t n);
// Converts x rows [b0, b1) (row b at x + b * ldx) for weights of type `w` into dst rows.
void ConvertActs(TensorType w, const float* x, int64_t ldx, int64_t n, int64_t b0, int64_t b1,
                 uint8_t* dst, size_t stride);
// Test hook: repacks converted row `row` into the reference block format of VecDotType(w)
// (BlockQ8_0 / BlockQ8_K / f16 / bf16 / f32), to compare with QuantizeRowRef byte for byte.
void ActsToBlocks(TensorType w, const uint8_t* row, int64_t n, void* blocks);
// y[b * ldy + r] for weight rows [r0, r1) and all `batch` activation rows (acts.type must be
// ActTypeFor(w)).
void MatMulRows(const Matrix& w, const Acts& acts, int64_t batch, int64_t r0, int64_t r1, float* y,
                int64_t ldy);

}  // namespace es::kernels::detail
