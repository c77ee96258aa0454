// SIMD matrix multiplication for the GGUF weight types, compiled once per Highway target and
// dispatched at run time.
//
// Activations are converted once per row of x (ConvertActs) into a target-private layout:
//   F32/F16/BF16 weights: the f32 values as the dot product sees them (rounded through f16/bf16).
//   Q8_0/Q4_0 weights:    Q8_0 quantization; K-quant and IQ4_XS weights: Q8_K quantization.
//   Q5_0/IQ4_NL/MXFP4:    Q8_0, Q4_1/Q5_1 weights: Q8_1 quantization, int16 on every target
//                         (kernels_matmul_legacy-inl.h) but AVX3_DL's Q5_0, MXFP4 and IQ4_NL, which
//                         take Q4_0's.
// Two integer designs:
//   * Portable (every target but AVX3_DL): quants widened to int16 once per activation row, so
//     each target multiplies with a 16x16->32 pairwise multiply-add (pmaddwd on x86).
//   * AVX3_DL (AVX-512 VNNI): int8 quants and 8x8->32 dot products of four bytes (vpdpbusd),
//     two 32-element blocks per 512-bit vector; per-lane scale patterns and exact integer
//     corrections are precomputed with the activations.
// Integer sums are exact; each block's sum is scaled in f32 and accumulated per lane, as
// llama.cpp does. Q2_K/Q3_K/Q5_K/IQ4_XS kernels live in kernels_matmul_kquants-inl.h (int16,
// every target; IQ4_XS unpacking in kernels_matmul_iquants-inl.h) and
// kernels_matmul_kquants_vnni-inl.h (AVX3_DL; Q5_K shares Q4_K's VNNI kernel).
//
// Weight rows are processed in tiles of R rows x C activation rows so that each weight block is
// loaded and unpacked once and applied to C activation rows (prompt processing), and each
// activation block is loaded once for R weight rows. Decode streams one weight row at a time, or
// (AVX3_DL's row-major 32-element nibble types and Q4_K/Q5_K, as MoE experts are) 16 rows a block
// at a time. Q4_0, Q8_0, Q4_K, Q5_K and IQ4_XS on AVX3_DL and F16 on AVX3 are the exception: the
// model copies them into groups of 16 interleaved rows (Interleave16), which 16-row kernels read as
// a single stream for decode and prompt alike. This file is the driver (activation layouts, tiles,
// dispatch, the interleaved layout); the kernels live in one -inl.h per encoding family: floats,
// blocks (Q8_0/Q4_0/Q4_K/Q6_K), legacy 32-blocks, k-quants, i-quants, and their AVX-512 VNNI
// versions.
// Tiles are arrays of vectors: no SVE target (kernels_hwy.h).
#define ES_HWY_NEON_ONLY
#include "kernels/kernels_hwy.h"
// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kernels_matmul.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "edgeshard/error.h"
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "kernels/kernels_arm.h"
#include "kernels/kernels_internal.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_quant_internal.h"
#include "tensor/tensor_types.h"

#ifndef ES_KERNELS_MATMUL_ONCE
#define ES_KERNELS_MATMUL_ONCE
namespace es::kernels::detail {
namespace {
constexpr size_t RoundUp64(size_t v) {
  return (v + 63) & ~size_t{63};
}
// Byte offsets inside one converted activation row (quants start at offset 0).
struct ActLayout {
  size_t d_off = 0;      // float scale per block
  size_t sum_off = 0;    // int16 path, Q8_K: int32 sums of 32 quants; Q8_1: f32 s per block
  size_t dxl_off = 0;    // VNNI, Q8_0: float scale per int32 lane (8 per block)
  size_t corr_off = 0;   // VNNI, Q8_0: int32 -8 * (sum of 4 quants) per lane, for Q4_0
  size_t bcorr_off = 0;  // VNNI, Q8_0: int32 -8 * (sum of the block's 32 quants), for Q4_0
  size_t bs16_off = 0;   // VNNI, Q8_K: int16 sums of 16 quants
  size_t bs32_off = 0;   // VNNI, Q8_K: int16 sums of 32 quants
  size_t arm_off = 0;    // NEON with sdot: what kernels_matmul_arm.cpp reads (0: nothing)
  size_t bytes = 0;
};
}  // namespace
}  // namespace es::kernels::detail
#endif

HWY_BEFORE_NAMESPACE();
namespace es::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::ActLayout;
using detail::RoundUp64;
using detail::UnpackScalesQ4_K;
using detail::WalkTiles;

#undef ES_VNNI
#if HWY_TARGET == HWY_AVX3_DL
#define ES_VNNI 1
#else
#define ES_VNNI 0
#endif
// Weight types whose activations take the int16 layout on this target: AVX3_DL's Q5_0, MXFP4 and
// IQ4_NL kernels (Nib32Vnni) read Q4_0's int8 layout instead.
constexpr bool IsLegacyWeight(TensorType w) {
  const bool nib32 = w == TensorType::kQ5_0 || w == TensorType::kMXFP4 || w == TensorType::kIQ4_NL;
  return w == TensorType::kQ4_1 || w == TensorType::kQ5_1 || (nib32 && !ES_VNNI);
}
// 64-bit Arm's NEON target hands the quantized types to the sdot/i8mm kernels where the CPU has
// them (kernels_arm.h).
#undef ES_ARM_DOT
#if HWY_TARGET == HWY_NEON && HWY_ARCH_ARM_A64
#define ES_ARM_DOT 1
#else
#define ES_ARM_DOT 0
#endif

ActLayout LayoutFor(TensorType w, int64_t n) {
  ActLayout l;
  const size_t un = static_cast<size_t>(n);
  if (IsLegacyWeight(w)) {  // int16 quants, f32 d and (Q8_1) f32 s per block
    l.d_off = RoundUp64(un * 2);
    l.sum_off = RoundUp64(l.d_off + un / kQK32 * 4);
    l.bytes = RoundUp64(l.sum_off + un / kQK32 * 4);
    return l;
  }
  switch (VecDotType(w)) {
    case TensorType::kQ8_0:
#if ES_VNNI
      l.d_off = RoundUp64(un);
      l.dxl_off = RoundUp64(l.d_off + un / 32 * 4);
      l.corr_off = RoundUp64(l.dxl_off + un / 32 * 8 * 4);
      l.bcorr_off = RoundUp64(l.corr_off + un / 4 * 4);
      l.bytes = RoundUp64(l.bcorr_off + un / 32 * 4);
#else
      l.d_off = RoundUp64(un * 2);
      l.bytes = RoundUp64(l.d_off + un / kQK8_0 * 4);
#endif
      break;
    case TensorType::kQ8_K:
#if ES_VNNI
      l.d_off = RoundUp64(un);
      l.bs16_off = RoundUp64(l.d_off + un / kQK_K * 4);
      l.bs32_off = RoundUp64(l.bs16_off + un / 16 * 2);
      l.bytes = RoundUp64(l.bs32_off + un / 32 * 2);
#else
      l.d_off = RoundUp64(un * 2);
      l.sum_off = RoundUp64(l.d_off + un / kQK_K * 4);
      l.bytes = RoundUp64(l.sum_off + un / 32 * 4);
#endif
      break;
    default:
      l.bytes = RoundUp64(un * 4);
      break;
  }
#if ES_ARM_DOT
  if (const size_t extra = detail::arm::ExtraActBytes(w, n)) l.arm_off = l.bytes, l.bytes += extra;
#endif
  return l;
}

#include "kernels/kernels_matmul_acts-inl.h"  // NOLINT(build/include)

#if ES_VNNI
out[b].bsums[g] = reinterpret_cast<const int16_t*>(row + l.bs16_off)[b * 16 + g];
#else
int s = 0;
for (int j = 0; j < 16; ++j) s += out[b].qs[16 * g + j];
out[b].bsums[g] = static_cast<int16_t>(s);
#endif
}
}
break;
}
case TensorType::kF16: {
  auto* out = static_cast<f16_t*>(blocks);
  for (int64_t i = 0; i < n; ++i) out[i] = F32ToF16(reinterpret_cast<const float*>(row)[i]);
  break;
}
case TensorType::kBF16: {
  auto* out = static_cast<bf16_t*>(blocks);
  for (int64_t i = 0; i < n; ++i) out[i] = F32ToBF16(reinterpret_cast<const float*>(row)[i]);
  break;
}
default:
  std::memcpy(blocks, row, static_cast<size_t>(n) * 4);
  }
  }

#if ES_VNNI
// Highway's AVX3_DL target string lacks avx512vnni although its CPU check requires it.
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif

  // ---------------------------------------------------------------------------------------------
  // Tiles: y[c * ldy + r] for R weight rows starting at w (row_bytes apart) and C activation rows
  // starting at a (stride apart). A kernel K walks the rows in steps (a vector or a block) and
  // accumulates into R x C f32 vectors; Tile() drives it. Single-output tiles (decode) alternate
  // two accumulator sets so that consecutive steps do not wait on each other's FMA.

  struct TileArgs {
    const uint8_t* w;
    size_t wrb;
    const uint8_t* a;
    size_t as;
    int64_t n;
    float* y;
    int64_t ldy;
    ActLayout l;
  };

  using DF = hn::ScalableTag<float>;
  using VF = hn::Vec<DF>;
  // Int16 tag covering at most one 32-element block, and the matching int32/f32 tags.
  using D16B = hn::CappedTag<int16_t, 32>;
  using D32B = hn::Repartition<int32_t, D16B>;
  using DFB = hn::Repartition<float, D16B>;
  constexpr size_t kNV = 32 / hn::MaxLanes(D16B());  // int16 vectors per 32 elements

  template <class D>
  HWY_INLINE float Sum(D d, hn::Vec<D> v) {
    return hn::GetLane(hn::SumOfLanes(d, v));
  }

  // Lane sums of several int32 vectors of consecutive blocks: a level adds adjacent lanes and
  // halves the vector count, so M vectors of M lanes become one vector with lane j = sum of vector
  // j's lanes (the order of the blocks is kept). Integer sums are exact, so the order is free.
  template <class D, size_t M>
  HWY_INLINE hn::Vec<D> ReduceBlocks(D d, hn::Vec<D> (&v)[M]) {
#if HWY_TARGET != HWY_SCALAR
    if constexpr (M > 1) {
      for (size_t m = M; m > 1; m /= 2)
        for (size_t j = 0; j < m / 2; ++j)
          v[j] = hn::Add(hn::ConcatEven(d, v[2 * j + 1], v[2 * j]),
                         hn::ConcatOdd(d, v[2 * j + 1], v[2 * j]));
    }
#else
    (void)d;
    static_assert(M == 1, "one lane per vector");
#endif
    return v[0];
  }

  // llama.cpp's x86 reduction of eight lane sums: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
  HWY_INLINE float Hsum8(const float* a) {
    const float h0 = a[0] + a[4], h1 = a[1] + a[5], h2 = a[2] + a[6], h3 = a[3] + a[7];
    return (h0 + h2) + (h1 + h3);
  }

  // Kernels with kOrdered keep llama.cpp's order of float operations per output; single-output
  // tiles then get no second accumulator set (FMA latency is hidden by other outputs instead).
  template <class K, class = void>
  struct IsOrdered : std::false_type {};
  template <class K>
  struct IsOrdered<K, std::void_t<decltype(K::kOrdered)>> : std::bool_constant<K::kOrdered> {};

  // Decode reads every weight once, and one thread's read rate is bound by the misses it has in
  // flight, which the out-of-order window (hundreds of instructions per block) keeps few: decode
  // kernels ask for the bytes about kPrefetchBytes on, line by line, as they reach each block
  // (tinyllama Q5_K_M decode on Zen 5, 1 thread: 24 -> 50 t/s). Rows follow each other in memory,
  // so a row-major tile's requests past its row's end fetch the next row's start.
  constexpr size_t kPrefetchBytes = 6144;
  // How far ahead a kernel reading `block_bytes` per step asks: whole steps, past kPrefetchBytes.
  HWY_INLINE size_t PrefetchDistance(size_t block_bytes) {
    return (kPrefetchBytes / block_bytes + 1) * block_bytes;
  }
  HWY_INLINE void PrefetchLines(const uint8_t* p, size_t bytes) {
    for (size_t l = 0; l < bytes; l += 64) __builtin_prefetch(p + l);
  }
  // For kernels whose block size is a constant (the division folds away).
  HWY_INLINE void PrefetchAhead(const uint8_t* g, size_t block_bytes) {
    PrefetchLines(g + PrefetchDistance(block_bytes), block_bytes);
  }

  template <int R, int C, class K>
  HWY_NOINLINE void Tile(const TileArgs& t) {
    K k(t);
    using Acc = typename K::Acc;
    using VA = hn::Vec<Acc>;
    const Acc da;
    VA acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = hn::Zero(da);
    const int64_t steps = k.Steps();
    // Decode (one row, one column): the weight bytes each step reads, and how far ahead to ask
    // for them (computed once here: the step size is known only at run time).
    const size_t step_bytes = R * C == 1 && steps > 0 ? t.wrb / static_cast<size_t>(steps) : 0;
    const size_t distance = step_bytes > 0 ? PrefetchDistance(step_bytes) : 0;
    auto ahead = [&](int64_t s) {
      if constexpr (R * C == 1)
        PrefetchLines(t.w + static_cast<size_t>(s) * step_bytes + distance, step_bytes);
    };
    int64_t s = 0;
    if constexpr (R * C <= 2 && !IsOrdered<K>::value) {
      VA acc2[R][C];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc2[r][c] = hn::Zero(da);
      for (; s + 2 <= steps; s += 2) {
        ahead(s);
        k.template Step<R, C>(s, acc);
        ahead(s + 1);
        k.template Step<R, C>(s + 1, acc2);
      }
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = hn::Add(acc[r][c], acc2[r][c]);
    }
    for (; s < steps; ++s) {
      ahead(s);
      k.template Step<R, C>(s, acc);
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) t.y[c * t.ldy + r] = k.Finish(r, c, acc[r][c]);
  }

#include "kernels/kernels_matmul_blocks-inl.h"   // NOLINT(build/include)
#include "kernels/kernels_matmul_floats-inl.h"   // NOLINT(build/include)
#include "kernels/kernels_matmul_kquants-inl.h"  // NOLINT(build/include)
#include "kernels/kernels_matmul_legacy-inl.h"   // NOLINT(build/include)

#if ES_VNNI
#include "kernels/kernels_matmul_vnni-inl.h"  // NOLINT(build/include)
// After the VNNI helpers it uses:
#include "kernels/kernels_matmul_kquants_vnni-inl.h"  // NOLINT(build/include)
#endif                                                // ES_VNNI

  // ---------------------------------------------------------------------------------------------
  // Driver: tiles over [r0, r1) x [0, batch).

  using TileFn = void (*)(const TileArgs&);
  struct TileSet {
    TileFn full;      // R x C
    TileFn rows_one;  // R x 1
    TileFn one_cols;  // 1 x C
    TileFn one_one;   // 1 x 1 (also the decode kernel: one weight row streams at a time)
    int R, C;
    TileFn decode = nullptr;  // D x 1 for batch 1 where the kernel keeps D rows' chains in lanes
    int D = 1;
    // Interleaved matrices (Matrix::interleave 16): 16 rows x x16_width[i] activation rows, widest
    // first, the last of width 1.
    TileFn x16[3] = {nullptr, nullptr, nullptr};
    int x16_width[3] = {0, 0, 0};
    void SetX16(std::initializer_list<std::pair<TileFn, int>> tiles) {
      int i = 0;
      for (const auto& [fn, width] : tiles) x16[i] = fn, x16_width[i++] = width;
    }
  };

  template <int R, int C, template <int, int> class KT>
  TileSet MakeTiles() {
    return {&Tile<R, C, KT<R, C>>,
            &Tile<R, 1, KT<R, 1>>,
            &Tile<1, C, KT<1, C>>,
            &Tile<1, 1, KT<1, 1>>,
            R,
            C};
  }
  template <int R, int C, class K>
  TileSet MakeTiles() {
    return {&Tile<R, C, K>, &Tile<R, 1, K>, &Tile<1, C, K>, &Tile<1, 1, K>, R, C};
  }

#if ES_VNNI
  // Q4_0, Q5_0, MXFP4 and IQ4_NL: row-major tiles and the 16-row row-major decoder.
  template <class Block, template <int, int> class KT>
  TileSet Nib32Tiles() {
    TileSet ts = MakeTiles<4, 4, KT>();
    ts.decode = &DecodeNib32x16<Block>;
    ts.D = 16;
    return ts;
  }
  // Q4_K and Q5_K (scales and mins): row-major tiles, the 16-row row-major decoder, and the tiles
  // of the interleaved layout.
  template <class Block, template <int, int> class KT>
  TileSet KMinTiles() {
    TileSet ts = MakeTiles<3, 8, KT>();
    ts.decode = &DecodeKMinx16<Block>;
    ts.D = 16;
    ts.SetX16(
        {{&KMinx16Tile<8, Block>, 8}, {&KMinx16Tile<4, Block>, 4}, {&KMinx16Tile<1, Block>, 1}});
    return ts;
  }
#endif

  // Tile shapes measured on Zen 5 (AVX3_DL) and its AVX2 fallback, batch 256-512: the accumulators
  // must fit the register file (32 vector registers on AVX-512, 16 on AVX2).
  TileSet TilesFor(TensorType t) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    constexpr bool kWide = true;
#else
    constexpr bool kWide = false;
#endif
    switch (t) {
      case TensorType::kF32:
        return kWide ? MakeTiles<6, 4, FloatKernel<LoadF32>>()
                     : MakeTiles<2, 4, FloatKernel<LoadF32>>();
      case TensorType::kF16: {
        TileSet ts = kWide ? MakeTiles<6, 4, FloatKernel<LoadF16>>()
                           : MakeTiles<4, 2, FloatKernel<LoadF16>>();
#if ES_F16_X16
        ts.SetX16({{&F16x16Tile<6>, 6}, {&F16x16Tile<4>, 4}, {&F16x16Tile<1>, 1}});
#endif
        return ts;
      }
      case TensorType::kBF16:
        return kWide ? MakeTiles<6, 4, FloatKernel<LoadBF16>>()
                     : MakeTiles<4, 2, FloatKernel<LoadBF16>>();
      case TensorType::kQ4_1:
        return kWide ? MakeTiles<4, 4, Q4_1Kernel>() : MakeTiles<2, 4, Q4_1Kernel>();
#if ES_VNNI
      case TensorType::kQ5_0:
        return Nib32Tiles<BlockQ5_0, Q5_0Vnni>();
#else
      case TensorType::kQ5_0:
        return kWide ? MakeTiles<4, 4, Q5_0Kernel>() : MakeTiles<2, 4, Q5_0Kernel>();
#endif
      case TensorType::kQ5_1:
        return kWide ? MakeTiles<4, 4, Q5_1Kernel>() : MakeTiles<2, 4, Q5_1Kernel>();
#if ES_VNNI
      case TensorType::kIQ4_NL:
        return Nib32Tiles<BlockIQ4_NL, IQ4_NLVnni>();
#else
      case TensorType::kIQ4_NL:
        return kWide ? MakeTiles<4, 4, IQ4_NLKernel>() : MakeTiles<2, 4, IQ4_NLKernel>();
#endif
#if ES_VNNI
      case TensorType::kMXFP4:
        return Nib32Tiles<BlockMXFP4, MXFP4Vnni>();
#else
      case TensorType::kMXFP4:
        return kWide ? MakeTiles<4, 4, MXFP4Kernel>() : MakeTiles<2, 4, MXFP4Kernel>();
#endif
#if ES_VNNI
      case TensorType::kQ8_0: {
        TileSet ts = MakeTiles<4, 4, Q8_0Vnni>();
        // Eight accumulators per activation row: two rows fill the register file.
        ts.SetX16({{&Q8_0x16Tile<2>, 2}, {&Q8_0x16Tile<1>, 1}});
        return ts;
      }
      case TensorType::kQ4_0: {
        // Decode: 16 consecutive rows (one contiguous stream) with their ordered per-block chains
        // in the 16 lanes of one vector, one FMA per block for all of them, instead of 16 scalar
        // latency-bound chains one row after another.
        TileSet ts = Nib32Tiles<BlockQ4_0, Q4_0Vnni>();
        ts.SetX16({{&Q4_0x16Tile<8>, 8}, {&Q4_0x16Tile<4>, 4}, {&Q4_0x16Tile<1>, 1}});
        return ts;
      }
      case TensorType::kQ4_K:
        return KMinTiles<BlockQ4_K, Q4KVnni>();
      case TensorType::kQ6_K:
        return MakeTiles<3, 8, Q6KVnni>();
      case TensorType::kQ5_K:
        return KMinTiles<BlockQ5_K, Q5KVnni>();
      case TensorType::kQ3_K:
        return MakeTiles<3, 8, Q3KVnni>();
      case TensorType::kQ2_K:
        return MakeTiles<3, 8, Q2KVnni>();
      case TensorType::kIQ4_XS: {
        TileSet ts = MakeTiles<3, 8, IQ4XSVnni>();
        ts.SetX16({{&IQ4_XSx16Tile<8>, 8}, {&IQ4_XSx16Tile<4>, 4}, {&IQ4_XSx16Tile<1>, 1}});
        return ts;
      }
#else
      case TensorType::kQ8_0:
        return kWide ? MakeTiles<4, 4, Q8_0Kernel<UnpackQ8_0>>()
                     : MakeTiles<2, 4, Q8_0Kernel<UnpackQ8_0>>();
      case TensorType::kQ4_0:
        return kWide ? MakeTiles<4, 4, Q4_0Kernel>() : MakeTiles<2, 2, Q4_0Kernel>();
      case TensorType::kQ4_K:
        return MakeTiles<2, 4, Q4KKernel>();
      case TensorType::kQ6_K:
        return MakeTiles<2, 4, Q6KKernel>();
      case TensorType::kQ5_K:
        return MakeTiles<2, 4, GroupScaleKernel<UnpackQ5_K>>();
      case TensorType::kQ3_K:
        return MakeTiles<2, 4, GroupScaleKernel<UnpackQ3_K>>();
      case TensorType::kQ2_K:
        return MakeTiles<2, 4, GroupScaleKernel<UnpackQ2_K>>();
      case TensorType::kIQ4_XS:
        return MakeTiles<2, 4, GroupScaleKernel<UnpackIQ4_XS>>();
#endif
      default:
        return {nullptr, nullptr, nullptr, nullptr, 1, 1};
    }
  }

  void MatMulRowsImpl(const Matrix& w, const detail::Acts& acts, int64_t batch, int64_t r0,
                      int64_t r1, float* y, int64_t ldy) {
#if ES_ARM_DOT
    if (const ActLayout l = LayoutFor(acts.type, w.cols); l.arm_off) {
      detail::arm::MatMulRows(w, acts.base, acts.stride, {l.d_off, l.sum_off, l.arm_off}, batch, r0,
                              r1, y, ldy);
      return;
    }
#endif
    const TileSet ts = TilesFor(w.type);
    TileArgs t;
    t.wrb = w.row_bytes;
    t.as = acts.stride;
    t.n = w.cols;
    t.ldy = ldy;
    t.l = LayoutFor(acts.type, w.cols);
    if (w.interleave) {
      const auto* wbase = static_cast<const uint8_t*>(w.data);
      // Row ranges are whole groups of 16 (the caller splits work in units of 16 rows).
      constexpr int64_t kColBlock = 64;
#if ES_F16_X16
      const bool panel = w.type == TensorType::kF16 && detail::UseF16Panel();
#endif
      for (int64_t cb = 0; cb < batch; cb += kColBlock) {
        const int64_t ce = std::min(batch, cb + kColBlock);
        for (int64_t r = r0; r < r1; r += 16) {
          t.w = wbase + static_cast<size_t>(r) * w.row_bytes;
          int64_t c = cb;
          const TileFn* tiles = ts.x16;
          const int* widths = ts.x16_width;
#if ES_F16_X16
          static constexpr TileFn kPanelTiles[3] = {&F16PanelTile<6>, &F16PanelTile<4>,
                                                    &F16PanelTile<1>};
          static constexpr int kPanelWidths[3] = {6, 4, 1};
          if (panel && ce - cb >= kF16PanelMinCols) {
            t.w = reinterpret_cast<const uint8_t*>(F16Panel(t.w, w.cols));
            tiles = kPanelTiles;
            widths = kPanelWidths;
          }
#endif
          for (int i = 0; i < 3 && tiles[i]; ++i) {
            for (; c + widths[i] <= ce; c += widths[i]) {
              t.a = acts.base + static_cast<size_t>(c) * acts.stride;
              t.y = y + c * ldy + r;
              tiles[i](t);
            }
          }
        }
      }
      return;
    }
    WalkTiles(t, ts, static_cast<const uint8_t*>(w.data), w.row_bytes, acts.base, acts.stride,
              batch, r0, r1, y, ldy);
  }

  bool PrefersInterleavedImpl(TensorType t) {
    return (ES_VNNI != 0 &&
            (t == TensorType::kQ4_0 || t == TensorType::kQ8_0 || t == TensorType::kQ4_K ||
             t == TensorType::kQ5_K || t == TensorType::kIQ4_XS)) ||
           (ES_F16_X16 != 0 && t == TensorType::kF16);
  }

#if ES_VNNI
#pragma GCC pop_options
#endif
#undef ES_F16_X16
#undef ES_ARM_DOT

  }  // namespace es::kernels::HWY_NAMESPACE
  HWY_AFTER_NAMESPACE();

#if HWY_ONCE
  namespace es::kernels {
  HWY_EXPORT(ActRowBytesImpl);
  HWY_EXPORT(ConvertActsImpl);
  HWY_EXPORT(ActsToBlocksImpl);
  HWY_EXPORT(MatMulRowsImpl);
  HWY_EXPORT(PrefersInterleavedImpl);

  bool PrefersInterleaved(TensorType t) {
    return HWY_DYNAMIC_DISPATCH(PrefersInterleavedImpl)(t);
  }

  namespace {
  std::atomic<int> g_f16_panel{-1};  // SetF16PromptForTesting; -1: by the CPU's vendor
  }                                  // namespace
  void SetF16PromptForTesting(const std::string& mode) {
    if (mode != "" && mode != "panel" && mode != "direct")
      throw Error("SetF16PromptForTesting: unknown mode '" + mode +
                  "' (use \"panel\", \"direct\" or \"\" for the CPU's choice)");
    g_f16_panel = mode == "" ? -1 : mode == "panel" ? 1 : 0;
  }
  namespace detail {
  bool UseF16Panel() {
    if (const int forced = g_f16_panel.load(std::memory_order_relaxed); forced >= 0) return forced;
#if defined(__x86_64__) || defined(__i386__)
    // Intel cores run the F16 -> F32 conversion on the FMA ports, so a tile converting its own
    // weights loses FMA slots (a Xeon, 2048x768 F16 by 512 rows, 1 thread: 91-93 GFLOP/s
    // converting in the tile, 97-99 from the panel). Zen 5 runs it on other pipes, where the
    // panel's conversion pass and stores cost more than they save (tinyllama-1.1b F16 pp512,
    // 1 thread: 75 t/s with the panel, 98 without).
    static const bool intel = __builtin_cpu_is("intel");
    return intel;
#else
    return false;
#endif
  }
  }  // namespace detail

  namespace {
  constexpr int kGroup = 16;  // rows per interleaved group

  // One block index of a 16-row group in Interleave16's layout. Q4_0/Q8_0: row r's f16 scale at
  // byte 2r, its quant dword j at 2 * 16 + 64j + 4r; Q8_0 quants are stored with the sign bit
  // flipped (q + 128). Q4_K, Q5_K, IQ4_XS: dword j of row r's whole block at 64j + 4r. F16: row r's
  // 64 bytes (32 elements) at 64r.
  struct GroupBlock {
    int64_t elems = 32;      // elements per row and block
    size_t scale_bytes = 0;  // per row and block, leading the row's block
    size_t quant_bytes = 0;  // per row and block; 0: the type has no interleaved layout
    size_t piece = 0;        // bytes of one row kept together (the rows alternate per piece)
    uint8_t flip = 0;
    explicit GroupBlock(TensorType t) {
      if (t == TensorType::kQ4_0) scale_bytes = 2, quant_bytes = sizeof(BlockQ4_0::qs), piece = 4;
      if (t == TensorType::kQ8_0)
        scale_bytes = 2, quant_bytes = sizeof(BlockQ8_0::qs), piece = 4, flip = 0x80;
      if (t == TensorType::kQ4_K) elems = kQK_K, quant_bytes = sizeof(BlockQ4_K), piece = 4;
      if (t == TensorType::kQ5_K) elems = kQK_K, quant_bytes = sizeof(BlockQ5_K), piece = 4;
      if (t == TensorType::kIQ4_XS) elems = kQK_K, quant_bytes = sizeof(BlockIQ4_XS), piece = 4;
      if (t == TensorType::kF16) quant_bytes = piece = 32 * sizeof(f16_t);
    }
    size_t row_block_bytes() const { return scale_bytes + quant_bytes; }
    size_t bytes() const { return kGroup * row_block_bytes(); }
    // Copies row r's block between its row-major bytes and the group block, either way.
    void Copy(int r, bool into_group, const uint8_t* from, uint8_t* to) const {
      auto move = [&](size_t row_off, size_t group_off, size_t n) {
        uint8_t* d = to + (into_group ? group_off : row_off);
        std::memcpy(d, from + (into_group ? row_off : group_off), n);
        return d;
      };
      const size_t rr = static_cast<size_t>(r);
      if (scale_bytes) move(0, scale_bytes * rr, scale_bytes);
      for (size_t j = 0; j < quant_bytes / piece; ++j) {
        uint8_t* d = move(scale_bytes + piece * j,
                          scale_bytes * kGroup + kGroup * piece * j + piece * rr, piece);
        for (size_t e = 0; flip && e < piece; ++e) d[e] ^= flip;
      }
    }
  };
  }  // namespace

  Matrix Interleave16(const Matrix& w, void* out) {
    const GroupBlock gb(w.type);
    if (gb.quant_bytes == 0 || w.interleave != 0 || w.rows % kGroup != 0 || w.cols % gb.elems != 0)
      throw Error(
          "Interleave16: needs a row-major Q4_0, Q8_0, Q4_K, Q5_K, IQ4_XS or F16 matrix of 16k "
          "rows and whole blocks");
    const auto* src = static_cast<const uint8_t*>(w.data);
    auto* dst = static_cast<uint8_t*>(out);
    for (int64_t g = 0; g < w.rows / kGroup; ++g) {
      const uint8_t* rows = src + static_cast<size_t>(g) * kGroup * w.row_bytes;
      uint8_t* grp = dst + static_cast<size_t>(g) * kGroup * w.row_bytes;
      for (int64_t b = 0; b < w.cols / gb.elems; ++b)
        for (int r = 0; r < kGroup; ++r)
          gb.Copy(r, true, rows + r * w.row_bytes + static_cast<size_t>(b) * gb.row_block_bytes(),
                  grp + static_cast<size_t>(b) * gb.bytes());
    }
    Matrix m = w;
    m.data = out;
    m.interleave = kGroup;
    return m;
  }

  void DequantizeMatrixRow(const Matrix& w, int64_t row, float* dst) {
    if (row < 0 || row >= w.rows) throw Error("DequantizeMatrixRow: row out of range");
    const auto* base = static_cast<const uint8_t*>(w.data);
    if (!w.interleave) {
      DequantizeRow(w.type, base + static_cast<size_t>(row) * w.row_bytes, dst, w.cols);
      return;
    }
    // Gather the row's blocks back from its group.
    const GroupBlock gb(w.type);
    const int r = static_cast<int>(row % kGroup);
    const uint8_t* grp = base + static_cast<size_t>(row - r) * w.row_bytes;
    // Room for one row's block of any type GroupBlock lays out.
    alignas(4) uint8_t blk[std::max({sizeof(BlockQ4_K), sizeof(BlockQ5_K), sizeof(BlockIQ4_XS),
                                     32 * sizeof(f16_t), sizeof(BlockQ8_0), sizeof(BlockQ4_0)})];
    if (gb.row_block_bytes() > sizeof(blk))
      throw Error("DequantizeMatrixRow: no room for this type's interleaved block");
    for (int64_t b = 0; b < w.cols / gb.elems; ++b) {
      gb.Copy(r, false, grp + static_cast<size_t>(b) * gb.bytes(), blk);
      DequantizeRow(w.type, blk, dst + gb.elems * b, gb.elems);
    }
  }

  bool CanInterleave(const Matrix& w) {
    return PrefersInterleaved(w.type) && w.interleave == 0 && w.rows % kGroup == 0 &&
           w.cols % GroupBlock(w.type).elems == 0;
  }

  namespace detail {
  size_t ActRowBytes(TensorType w, int64_t n) {
    return HWY_DYNAMIC_DISPATCH(ActRowBytesImpl)(w, n);
  }
  void ConvertActs(TensorType w, const float* x, int64_t ldx, int64_t n, int64_t b0, int64_t b1,
                   uint8_t* dst, size_t stride) {
    HWY_DYNAMIC_DISPATCH(ConvertActsImpl)(w, x, ldx, n, b0, b1, dst, stride);
  }
  void ActsToBlocks(TensorType w, const uint8_t* row, int64_t n, void* blocks) {
    HWY_DYNAMIC_DISPATCH(ActsToBlocksImpl)(w, row, n, blocks);
  }
  void MatMulRows(const Matrix& w, const Acts& acts, int64_t batch, int64_t r0, int64_t r1,
                  float* y, int64_t ldy) {
    HWY_DYNAMIC_DISPATCH(MatMulRowsImpl)(w, acts, batch, r0, r1, y, ldy);
  }
  }  // namespace detail
  }  // namespace es::kernels
#endif
