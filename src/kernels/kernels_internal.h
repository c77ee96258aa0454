// Entry points between the portable kernel front end (kernels.cpp) and the Highway-dispatched
// SIMD translation units. Not part of the public kernel contract.
#pragma once
#include <algorithm>
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
// Whether F16 prompt tiles on AVX-512 read an F32 panel of each group (converted once per column
// block) rather than converting the weights in the tile: the CPU's choice, or the forced one
// (SetF16PromptForTesting). Both give bit-identical results.
bool UseF16Panel();
// Test hook: repacks converted row `row` into the reference block format of VecDotType(w)
// (BlockQ8_0 / BlockQ8_K / f16 / bf16 / f32), to compare with QuantizeRowRef byte for byte.
void ActsToBlocks(TensorType w, const uint8_t* row, int64_t n, void* blocks);
// y[b * ldy + r] for weight rows [r0, r1) and all `batch` activation rows (acts.type must be
// ActTypeFor(w)).
void MatMulRows(const Matrix& w, const Acts& acts, int64_t batch, int64_t r0, int64_t r1, float* y,
                int64_t ldy);

// The walk of a row-major MatMul over weight rows [r0, r1) and activation rows [0, batch), shared
// by the Highway kernels and the Arm dot-product ones (whose results must not differ, and Q4_K's
// depend on the tile shapes). `t` holds a tile's arguments: w, a, y pointers set here. `ts`:
// tile functions taking `t` (full R x C, rows_one R x 1, one_cols 1 x C, one_one 1 x 1, and
// optionally decode, D rows x 1).
template <class Args, class Tiles>
void WalkTiles(Args& t, const Tiles& ts, const uint8_t* wbase, size_t row_bytes,
               const uint8_t* acts, size_t stride, int64_t batch, int64_t r0, int64_t r1, float* y,
               int64_t ldy) {
  auto at_row = [&](int64_t r) { return wbase + static_cast<size_t>(r) * row_bytes; };
  if (batch == 1) {
    // Decode: one row at a time. Streaming several rows at once interleaves DRAM streams and
    // measured 2-4x slower than a single sequential stream per thread; the 16-row decoders read
    // a group of 16 rows block by block, but prefetch the next group as one stream.
    t.a = acts;
    int64_t r = r0;
    if (ts.decode) {
      // The decoders prefetch a group ahead, which a range's first group starts without (ranges
      // are chunks of a ParallelFor): ask for it all at once rather than miss row by row.
      if (r + ts.D <= r1) {
        const uint8_t* g = at_row(r);
        for (size_t l = 0; l < static_cast<size_t>(ts.D) * row_bytes; l += 64)
          __builtin_prefetch(g + l);
      }
      for (; r + ts.D <= r1; r += ts.D) {
        t.w = at_row(r);
        t.y = y + r;
        ts.decode(t);
      }
    }
    for (; r < r1; ++r) {
      t.w = at_row(r);
      t.y = y + r;
      ts.one_one(t);
    }
    return;
  }
  // Column blocks keep a slab of activations in L2 while every weight tile passes over it.
  constexpr int64_t kColBlock = 64;
  auto row_tile = [&](int64_t r, int64_t cb, int64_t ce, auto cols_fn, auto one_fn) {
    t.w = at_row(r);
    int64_t c = cb;
    for (; c + ts.C <= ce; c += ts.C) {
      t.a = acts + static_cast<size_t>(c) * stride;
      t.y = y + c * ldy + r;
      cols_fn(t);
    }
    for (; c < ce; ++c) {
      t.a = acts + static_cast<size_t>(c) * stride;
      t.y = y + c * ldy + r;
      one_fn(t);
    }
  };
  for (int64_t cb = 0; cb < batch; cb += kColBlock) {
    const int64_t ce = std::min(batch, cb + kColBlock);
    int64_t r = r0;
    for (; r + ts.R <= r1; r += ts.R) row_tile(r, cb, ce, ts.full, ts.rows_one);
    for (; r < r1; ++r) row_tile(r, cb, ce, ts.one_cols, ts.one_one);
  }
}

// Q4_K's eight 6-bit scales and mins from its 12 packed bytes.
inline void UnpackScalesQ4_K(const uint8_t* q, int* sc, int* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = q[j] & 63;
    mn[j] = q[j + 4] & 63;
    sc[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
    mn[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
  }
}

}  // namespace es::kernels::detail
