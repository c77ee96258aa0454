// Quantized MatMul kernels for 64-bit Arm CPUs with the dot-product (sdot) or int8 matrix
// multiply (smmla, i8mm) instructions, which Highway's NEON target does not use. They are chosen
// at run time from the CPU's features and give results bit-identical to the NEON kernels of
// kernels_matmul.cpp (the same exact integer per float lane, then the same float operations).
// Internal to the kernels; kernels_matmul.cpp's NEON code calls them.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"

namespace es::kernels::detail::arm {

enum class Variant { kNeon, kDotProd, kI8mm };
// The variant MatMul uses now: the best the CPU has, or the one SetMatMulVariantForTesting chose.
Variant Active();

// Offsets inside one converted activation row: the NEON layout (int16 quants at 0, f32 scales at
// d_off, Q8_K's int32 sums of 32 at sum_off) and, at q8_off, what the dot-product kernels read.
struct ActOffsets {
  size_t d_off = 0;
  size_t sum_off = 0;
  size_t q8_off = 0;
};

// Bytes a converted row of `n` elements for weights of type `w` needs beyond the NEON layout (a
// multiple of 64); 0 when the active variant has no kernel for `w`.
size_t ExtraActBytes(TensorType w, int64_t n);
// Fills that part of a converted row from its int16 quants.
void ConvertActRow(TensorType w, uint8_t* row, int64_t n, const ActOffsets& o);
// y[b * ldy + r] for weight rows [r0, r1) of a row-major `w` and all `batch` activation rows
// (`stride` bytes apart, converted with ExtraActBytes > 0).
void MatMulRows(const Matrix& w, const uint8_t* acts, size_t stride, const ActOffsets& o,
                int64_t batch, int64_t r0, int64_t r1, float* y, int64_t ldy);

}  // namespace es::kernels::detail::arm
