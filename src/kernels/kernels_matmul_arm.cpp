// Quantized MatMul on 64-bit Arm with sdot (FEAT_DotProd) and smmla (FEAT_I8MM), and the
// run-time choice between them and Highway's NEON kernels (kernels_arm.h).
//
// Bit-identity with the NEON kernels: these keep, per output, the float operations of the NEON
// tiles in kernels_matmul.cpp. The integer each float lane receives must then be the same exact
// sum. On NEON the int16 multiply-adds leave lane i of a 32-element group holding the products
// of the elements e with e % 4 == i ("residue i"), so the Q8_0, Q4_K and Q6_K kernels here permute
// every 32-element group of weights and activations alike into residue order (byte 8i + k holds
// element i + 4k): an sdot over it gives residue i's two halves in lanes 2i and 2i + 1 (pairwise
// added afterwards), and smmla's 8-byte groups are whole residues. Q4_0 only needs each block's
// total. Tile shapes, the order of blocks, and Q4_K's two alternating accumulators in one- and
// two-output tiles follow the NEON driver.
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "kernels/kernels_arm.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <asm/hwcap.h>
#include <sys/auxv.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "kernels/kernels_internal.h"
#include "tensor/tensor_types.h"

namespace es::kernels {
namespace detail::arm {
namespace {

constexpr const char* kNames[] = {"neon", "dotprod", "i8mm"};

Variant Detect() {
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  if ((hw & HWCAP_ASIMDDP) && (hw2 & HWCAP2_I8MM)) return Variant::kI8mm;
  if (hw & HWCAP_ASIMDDP) return Variant::kDotProd;
  return Variant::kNeon;
}

std::atomic<int> g_forced{-1};  // SetMatMulVariantForTesting; -1: the CPU's best

constexpr size_t RoundUp64(size_t v) {
  return (v + 63) & ~size_t{63};
}

bool HasKernel(TensorType w) {
  return w == TensorType::kQ4_0 || w == TensorType::kQ8_0 || w == TensorType::kQ4_K ||
         w == TensorType::kQ6_K;
}

}  // namespace

Variant Active() {
  static const Variant best = Detect();
  const int f = g_forced.load(std::memory_order_relaxed);
  return f < 0 ? best : static_cast<Variant>(f);
}

size_t ExtraActBytes(TensorType w, int64_t n) {
  if (Active() == Variant::kNeon || !HasKernel(w)) return 0;
  const size_t un = static_cast<size_t>(n);
  // int8 quants; Q4_0 also each block's quant sum (its -8 offset's correction).
  return RoundUp64(un) + (w == TensorType::kQ4_0 ? RoundUp64(un / 32 * 4) : 0);
}

void ConvertActRow(TensorType w, uint8_t* row, int64_t n, const ActOffsets& o) {
  const auto* q = reinterpret_cast<const int16_t*>(row);
  auto* dst = reinterpret_cast<int8_t*>(row + o.q8_off);
  if (w == TensorType::kQ4_0) {
    auto* sums = reinterpret_cast<int32_t*>(row + o.q8_off + RoundUp64(static_cast<size_t>(n)));
    for (int64_t b = 0; b < n / 32; ++b) {
      int32_t s = 0;
      for (int e = 0; e < 32; ++e) s += dst[32 * b + e] = static_cast<int8_t>(q[32 * b + e]);
      sums[b] = s;
    }
    return;
  }
  for (int64_t g = 0; g < n / 32; ++g)
    for (int i = 0; i < 4; ++i)
      for (int k = 0; k < 8; ++k)
        dst[32 * g + 8 * i + k] = static_cast<int8_t>(q[32 * g + i + 4 * k]);
}

namespace {

// Everything below runs only where Active() chose it: sdot code for CPUs with FEAT_DotProd (all
// of them ARMv8.2 or later), the smmla tiles additionally with FEAT_I8MM.
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")

struct Args {
  const uint8_t* w;
  size_t wrb;
  const uint8_t* a;
  size_t as;
  int64_t n;
  float* y;
  int64_t ldy;
  ActOffsets o;
};

inline float Half(f16_t h) {
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// Residue order of a 32-byte group: byte 8i + k takes byte i + 4k.
alignas(16) constexpr uint8_t kResidue[32] = {0,  4,  8,  12, 16, 20, 24, 28, 1,  5,  9,
                                              13, 17, 21, 25, 29, 2,  6,  10, 14, 18, 22,
                                              26, 30, 3,  7,  11, 15, 19, 23, 27, 31};
inline void Residue32(const uint8_t* p, uint8x16_t& lo, uint8x16_t& hi) {
  const uint8x16x2_t t = {{vld1q_u8(p), vld1q_u8(p + 16)}};
  lo = vqtbl2q_u8(t, vld1q_u8(kResidue));
  hi = vqtbl2q_u8(t, vld1q_u8(kResidue + 16));
}

inline int32x4_t Dot(int8x16_t w, int8x16_t x) {
  return vdotq_s32(vdupq_n_s32(0), w, x);
}
// Residue sums [r0, r1, r2, r3] of one 32-element group from its two residue-ordered halves.
inline int32x4_t Residues(int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1) {
  return vpaddq_s32(Dot(w0, x0), Dot(w1, x1));
}
inline int8x16_t S8(uint8x16_t v) {
  return vreinterpretq_s8_u8(v);
}
// 64-bit halves of two registers side by side, smmla's two-row operand.
inline int8x16_t Lo2(int8x16_t a, int8x16_t b) {
  return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}
inline int8x16_t Hi2(int8x16_t a, int8x16_t b) {
  return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}

struct KernelBase {
  const Args& t;
  explicit KernelBase(const Args& args) : t(args) {}
  template <class Block>
  const Block& W(int r, int64_t b) const {
    return reinterpret_cast<const Block*>(t.w + r * t.wrb)[b];
  }
  const int8_t* XQ(int c) const {
    return reinterpret_cast<const int8_t*>(t.a + c * t.as + t.o.q8_off);
  }
  float XD(int c, int64_t b) const {
    return reinterpret_cast<const float*>(t.a + c * t.as + t.o.d_off)[b];
  }
};

inline void Zero(float& v) {
  v = 0.0f;
}
inline void Zero(float32x4_t& v) {
  v = vdupq_n_f32(0.0f);
}

// The NEON driver's tile (kernels_matmul.cpp Tile): one accumulator per output, or, for kernels
// without a fixed order, two alternating ones in tiles of one or two outputs.
template <int R, int C, class K>
void Tile(const Args& t) {
  K k(t);
  typename K::Acc acc[R][C];
  for (auto& row : acc)
    for (auto& v : row) Zero(v);
  const int64_t steps = k.Steps();
  int64_t s = 0;
  if constexpr (R * C <= 2 && !K::kOrdered) {
    typename K::Acc acc2[R][C];
    for (auto& row : acc2)
      for (auto& v : row) Zero(v);
    for (; s + 2 <= steps; s += 2) {
      k.template Step<R, C>(s, acc);
      k.template Step<R, C>(s + 1, acc2);
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = vaddq_f32(acc[r][c], acc2[r][c]);
  }
  for (; s < steps; ++s) k.template Step<R, C>(s, acc);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) t.y[c * t.ldy + r] = k.Finish(r, c, acc[r][c]);
}

// Q4_0: per block the exact sum of (q - 8) * x, then acc = fma(float(sum), dw * dx, acc).
struct Q4_0Dot : KernelBase {
  using Acc = float;
  static constexpr bool kOrdered = true;
  using KernelBase::KernelBase;
  int64_t Steps() const { return t.n / 32; }
  int32_t XSum(int c, int64_t b) const {
    return reinterpret_cast<const int32_t*>(XQ(c) + RoundUp64(static_cast<size_t>(t.n)))[b];
  }
  template <int R, int C>
  void Step(int64_t b, float (&acc)[R][C]) const {
    int8x16_t lo[R], hi[R];
    float dw[R];
    for (int r = 0; r < R; ++r) {
      const auto& blk = W<BlockQ4_0>(r, b);
      const uint8x16_t q = vld1q_u8(blk.qs);
      lo[r] = S8(vandq_u8(q, vdupq_n_u8(0x0F)));
      hi[r] = S8(vshrq_n_u8(q, 4));
      dw[r] = Half(blk.d);
    }
    for (int c = 0; c < C; ++c) {
      const int8x16_t x0 = vld1q_s8(XQ(c) + 32 * b), x1 = vld1q_s8(XQ(c) + 32 * b + 16);
      const int32_t off = 8 * XSum(c, b);
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        const int32_t sum = vaddvq_s32(vdotq_s32(Dot(lo[r], x0), hi[r], x1)) - off;
        acc[r][c] = std::fma(static_cast<float>(sum), dw[r] * dx, acc[r][c]);
      }
    }
  }
  float Finish(int, int, float acc) const { return acc; }
};

// Q8_0: per block the four residue sums; acc = fma(dw * dx, float(residues), acc) per lane.
struct Q8_0Dot : KernelBase {
  using Acc = float32x4_t;
  static constexpr bool kOrdered = true;
  using KernelBase::KernelBase;
  int64_t Steps() const { return t.n / 32; }
  template <int R, int C>
  void Step(int64_t b, float32x4_t (&acc)[R][C]) const {
    uint8x16_t w0[R], w1[R];
    float dw[R];
    for (int r = 0; r < R; ++r) {
      const auto& blk = W<BlockQ8_0>(r, b);
      Residue32(reinterpret_cast<const uint8_t*>(blk.qs), w0[r], w1[r]);
      dw[r] = Half(blk.d);
    }
    for (int c = 0; c < C; ++c) {
      const int8x16_t x0 = vld1q_s8(XQ(c) + 32 * b), x1 = vld1q_s8(XQ(c) + 32 * b + 16);
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        const int32x4_t p = Residues(S8(w0[r]), S8(w1[r]), x0, x1);
        acc[r][c] = vfmaq_f32(acc[r][c], vdupq_n_f32(dw[r] * dx), vcvtq_f32_s32(p));
      }
    }
  }
  float Finish(int, int, float32x4_t acc) const { return vaddvq_f32(acc); }
};

// Q4_K: per 256-element block, lane i sums scale_j * q * x over residue i of the eight sub-blocks
// j; the min terms go into a scalar per output, subtracted at the end.
template <int RMax, int CMax>
struct Q4KDot : KernelBase {
  using Acc = float32x4_t;
  static constexpr bool kOrdered = false;
  mutable float minsum[RMax][CMax] = {};
  using KernelBase::KernelBase;
  int64_t Steps() const { return t.n / kQK_K; }
  const int32_t* XS(int c) const {
    return reinterpret_cast<const int32_t*>(t.a + c * t.as + t.o.sum_off);
  }
  template <int R, int C>
  void Step(int64_t b, float32x4_t (&acc)[R][C]) const {
    int sc[R][8], mn[R][8];
    for (int r = 0; r < R; ++r) UnpackScalesQ4_K(W<BlockQ4_K>(r, b).scales, sc[r], mn[r]);
    int32x4_t s0[R][C], s1[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) s0[r][c] = s1[r][c] = vdupq_n_s32(0);
    for (int p = 0; p < 4; ++p) {  // sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles)
      int8x16_t lo0[R], lo1[R], hi0[R], hi1[R];
      for (int r = 0; r < R; ++r) {
        uint8x16_t q0, q1;
        Residue32(W<BlockQ4_K>(r, b).qs + 32 * p, q0, q1);
        lo0[r] = S8(vandq_u8(q0, vdupq_n_u8(0x0F)));
        lo1[r] = S8(vandq_u8(q1, vdupq_n_u8(0x0F)));
        hi0[r] = S8(vshrq_n_u8(q0, 4));
        hi1[r] = S8(vshrq_n_u8(q1, 4));
      }
      for (int c = 0; c < C; ++c) {
        const int8_t* x = XQ(c) + kQK_K * b + 64 * p;
        const int8x16_t xl0 = vld1q_s8(x), xl1 = vld1q_s8(x + 16);
        const int8x16_t xh0 = vld1q_s8(x + 32), xh1 = vld1q_s8(x + 48);
        for (int r = 0; r < R; ++r) {
          s0[r][c] = vmlaq_n_s32(s0[r][c], Dot(lo0[r], xl0), sc[r][2 * p]);
          s1[r][c] = vmlaq_n_s32(s1[r][c], Dot(lo1[r], xl1), sc[r][2 * p]);
          s0[r][c] = vmlaq_n_s32(s0[r][c], Dot(hi0[r], xh0), sc[r][2 * p + 1]);
          s1[r][c] = vmlaq_n_s32(s1[r][c], Dot(hi1[r], xh1), sc[r][2 * p + 1]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const auto& blk = W<BlockQ4_K>(r, b);
      const float d = Half(blk.d), dmin = Half(blk.dmin);
      for (int c = 0; c < C; ++c) {
        const float dx = XD(c, b);
        const int32x4_t isum = vpaddq_s32(s0[r][c], s1[r][c]);
        acc[r][c] = vfmaq_f32(acc[r][c], vcvtq_f32_s32(isum), vdupq_n_f32(d * dx));
        const int32_t* xs = XS(c) + b * 8;
        int msum = 0;
        for (int j = 0; j < 8; ++j) msum += mn[r][j] * xs[j];
        minsum[r][c] = std::fma(dmin * dx, static_cast<float>(msum), minsum[r][c]);  // as x86
      }
    }
  }
  float Finish(int r, int c, float32x4_t acc) const { return vaddvq_f32(acc) - minsum[r][c]; }
};

// Q6_K: lane i sums scale * (q - 32) * x over residue i of the eight 32-element groups; the
// groups' halves have their own scales, which the sdot lanes keep apart (lanes 2i: elements
// i..i+12 of the group, 2i + 1: i+16..i+28).
struct Q6KDot : KernelBase {
  using Acc = float32x4_t;
  static constexpr bool kOrdered = true;
  using KernelBase::KernelBase;
  int64_t Steps() const { return t.n / kQK_K; }
  template <int R, int C>
  void Step(int64_t b, float32x4_t (&acc)[R][C]) const {
    int32x4_t s0[R][C], s1[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) s0[r][c] = s1[r][c] = vdupq_n_s32(0);
    for (int h = 0; h < 2; ++h) {
      uint8x16_t ql[R][2][2], qh[R][2];
      for (int r = 0; r < R; ++r) {
        const auto& blk = W<BlockQ6_K>(r, b);
        Residue32(blk.ql + 64 * h, ql[r][0][0], ql[r][0][1]);
        Residue32(blk.ql + 64 * h + 32, ql[r][1][0], ql[r][1][1]);
        Residue32(blk.qh + 32 * h, qh[r][0], qh[r][1]);
      }
      for (int k = 0; k < 4; ++k) {
        const int g = 4 * h + k;
        int8x16_t v[R][2];
        int32x4_t scale[R];
        for (int r = 0; r < R; ++r) {
          const auto& blk = W<BlockQ6_K>(r, b);
          const int32_t sab[4] = {blk.scales[2 * g], blk.scales[2 * g + 1], blk.scales[2 * g],
                                  blk.scales[2 * g + 1]};
          scale[r] = vld1q_s32(sab);
          for (int half = 0; half < 2; ++half) {
            const uint8x16_t l = ql[r][k % 2][half];
            const uint8x16_t lo = k < 2 ? vandq_u8(l, vdupq_n_u8(0x0F)) : vshrq_n_u8(l, 4);
            const uint8x16_t hi = vandq_u8(
                vshlq_u8(qh[r][half], vdupq_n_s8(static_cast<int8_t>(-2 * k))), vdupq_n_u8(3));
            v[r][half] = vsubq_s8(S8(vorrq_u8(lo, vshlq_n_u8(hi, 4))), vdupq_n_s8(32));
          }
        }
        for (int c = 0; c < C; ++c) {
          const int8_t* x = XQ(c) + kQK_K * b + 32 * g;
          const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
          for (int r = 0; r < R; ++r) {
            s0[r][c] = vmlaq_s32(s0[r][c], Dot(v[r][0], x0), scale[r]);
            s1[r][c] = vmlaq_s32(s1[r][c], Dot(v[r][1], x1), scale[r]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = Half(W<BlockQ6_K>(r, b).d);
      for (int c = 0; c < C; ++c) {
        const int32x4_t isum = vpaddq_s32(s0[r][c], s1[r][c]);
        acc[r][c] = vfmaq_f32(acc[r][c], vdupq_n_f32(XD(c, b) * d), vcvtq_f32_s32(isum));
      }
    }
  }
  float Finish(int, int, float32x4_t acc) const { return vaddvq_f32(acc); }
};

#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod+i8mm")

// i8mm tiles of 2 weight rows x 2 activation rows: one smmla gives the four outputs' sums over
// an 8-element group, lanes (r0 c0, r0 c1, r1 c0, r1 c1); every lane keeps its own float chain.
inline float32x4_t ScaleProducts(float dw0, float dw1, float dx0, float dx1) {
  const float32x4_t w = vcombine_f32(vdup_n_f32(dw0), vdup_n_f32(dw1));
  const float32x2_t x2 = vset_lane_f32(dx1, vdup_n_f32(dx0), 1);
  return vmulq_f32(w, vcombine_f32(x2, x2));
}
inline void Store2x2(const Args& t, int c0, float32x4_t v) {
  t.y[c0 * t.ldy] = vgetq_lane_f32(v, 0);
  t.y[(c0 + 1) * t.ldy] = vgetq_lane_f32(v, 1);
  t.y[c0 * t.ldy + 1] = vgetq_lane_f32(v, 2);
  t.y[(c0 + 1) * t.ldy + 1] = vgetq_lane_f32(v, 3);
}

// Q4_0, 2 x 2: the block's four 8-element groups are elements 0-7, 8-15 (low nibbles) and 16-23,
// 24-31 (high nibbles).
void Q4_0MmlaTile(const Args& t) {
  const Q4_0Dot k(t);
  float32x4_t acc = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < k.Steps(); ++b) {
    const auto& b0 = k.W<BlockQ4_0>(0, b);
    const auto& b1 = k.W<BlockQ4_0>(1, b);
    const uint8x16_t q0 = vld1q_u8(b0.qs), q1 = vld1q_u8(b1.qs);
    const int8x16_t lo0 = S8(vandq_u8(q0, vdupq_n_u8(0x0F))), hi0 = S8(vshrq_n_u8(q0, 4));
    const int8x16_t lo1 = S8(vandq_u8(q1, vdupq_n_u8(0x0F))), hi1 = S8(vshrq_n_u8(q1, 4));
    const int8x16_t xa0 = vld1q_s8(k.XQ(0) + 32 * b), xb0 = vld1q_s8(k.XQ(0) + 32 * b + 16);
    const int8x16_t xa1 = vld1q_s8(k.XQ(1) + 32 * b), xb1 = vld1q_s8(k.XQ(1) + 32 * b + 16);
    int32x4_t m = vdupq_n_s32(0);
    m = vmmlaq_s32(m, Lo2(lo0, lo1), Lo2(xa0, xa1));
    m = vmmlaq_s32(m, Hi2(lo0, lo1), Hi2(xa0, xa1));
    m = vmmlaq_s32(m, Lo2(hi0, hi1), Lo2(xb0, xb1));
    m = vmmlaq_s32(m, Hi2(hi0, hi1), Hi2(xb0, xb1));
    const int32x2_t off = vset_lane_s32(8 * k.XSum(1, b), vdup_n_s32(8 * k.XSum(0, b)), 1);
    m = vsubq_s32(m, vcombine_s32(off, off));
    const float32x4_t dd = ScaleProducts(Half(b0.d), Half(b1.d), k.XD(0, b), k.XD(1, b));
    acc = vfmaq_f32(acc, vcvtq_f32_s32(m), dd);
  }
  Store2x2(t, 0, acc);
}

// Q8_0, 2 x C (C even): residue i of a block is one 8-element group, so smmla i gives residue i
// of the four outputs; the accumulators stay in that transposed form until the end.
template <int C>
void Q8_0MmlaTile(const Args& t) {
  const Q8_0Dot k(t);
  float32x4_t acc[C / 2][4];
  for (auto& pair : acc)
    for (auto& v : pair) v = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < k.Steps(); ++b) {
    const auto& b0 = k.W<BlockQ8_0>(0, b);
    const auto& b1 = k.W<BlockQ8_0>(1, b);
    uint8x16_t p0, p1, q0, q1;
    Residue32(reinterpret_cast<const uint8_t*>(b0.qs), p0, p1);
    Residue32(reinterpret_cast<const uint8_t*>(b1.qs), q0, q1);
    const int8x16_t w[4] = {Lo2(S8(p0), S8(q0)), Hi2(S8(p0), S8(q0)), Lo2(S8(p1), S8(q1)),
                            Hi2(S8(p1), S8(q1))};
    const float dw0 = Half(b0.d), dw1 = Half(b1.d);
    for (int j = 0; j < C / 2; ++j) {
      const int8_t* x0 = k.XQ(2 * j) + 32 * b;
      const int8_t* x1 = k.XQ(2 * j + 1) + 32 * b;
      const int8x16_t xa0 = vld1q_s8(x0), xb0 = vld1q_s8(x0 + 16);
      const int8x16_t xa1 = vld1q_s8(x1), xb1 = vld1q_s8(x1 + 16);
      const int8x16_t x[4] = {Lo2(xa0, xa1), Hi2(xa0, xa1), Lo2(xb0, xb1), Hi2(xb0, xb1)};
      const float32x4_t dd = ScaleProducts(dw0, dw1, k.XD(2 * j, b), k.XD(2 * j + 1, b));
      for (int i = 0; i < 4; ++i)
        acc[j][i] = vfmaq_f32(acc[j][i], dd, vcvtq_f32_s32(vmmlaq_s32(vdupq_n_s32(0), w[i], x[i])));
    }
  }
  for (int j = 0; j < C / 2; ++j) {
    // Transpose: output o's residues are lane o of acc[j][0..3].
    const float32x4_t t0 = vtrn1q_f32(acc[j][0], acc[j][1]), t1 = vtrn2q_f32(acc[j][0], acc[j][1]);
    const float32x4_t t2 = vtrn1q_f32(acc[j][2], acc[j][3]), t3 = vtrn2q_f32(acc[j][2], acc[j][3]);
    auto f64 = [](float32x4_t v) { return vreinterpretq_f64_f32(v); };
    const float32x4_t o[4] = {vreinterpretq_f32_f64(vzip1q_f64(f64(t0), f64(t2))),
                              vreinterpretq_f32_f64(vzip1q_f64(f64(t1), f64(t3))),
                              vreinterpretq_f32_f64(vzip2q_f64(f64(t0), f64(t2))),
                              vreinterpretq_f32_f64(vzip2q_f64(f64(t1), f64(t3)))};
    Store2x2(t, 2 * j,
             float32x4_t{vaddvq_f32(o[0]), vaddvq_f32(o[1]), vaddvq_f32(o[2]), vaddvq_f32(o[3])});
  }
}

#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")

using TileFn = void (*)(const Args&);
struct TileSet {
  TileFn full, rows_one, one_cols, one_one;
  int R, C;
  TileFn decode = nullptr;  // none: decode runs one_one per row, as the NEON target's kernels
  int D = 1;
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

// The NEON target's shapes (kernels_matmul.cpp TilesFor without kWide): Q4_K's results depend
// on them. i8mm replaces the full tiles.
TileSet TilesFor(TensorType t, Variant v) {
  const bool mmla = v == Variant::kI8mm;
  switch (t) {
    case TensorType::kQ4_0: {
      TileSet ts = MakeTiles<2, 2, Q4_0Dot>();
      if (mmla) ts.full = &Q4_0MmlaTile;
      return ts;
    }
    case TensorType::kQ8_0: {
      TileSet ts = MakeTiles<2, 4, Q8_0Dot>();
      if (mmla) ts.full = &Q8_0MmlaTile<4>;
      return ts;
    }
    case TensorType::kQ4_K:
      return MakeTiles<2, 4, Q4KDot>();
    default:
      return MakeTiles<2, 4, Q6KDot>();
  }
}

#pragma GCC pop_options

}  // namespace

void MatMulRows(const Matrix& w, const uint8_t* acts, size_t stride, const ActOffsets& o,
                int64_t batch, int64_t r0, int64_t r1, float* y, int64_t ldy) {
  const TileSet ts = TilesFor(w.type, Active());
  Args t{nullptr, w.row_bytes, nullptr, stride, w.cols, nullptr, ldy, o};
  WalkTiles(t, ts, static_cast<const uint8_t*>(w.data), w.row_bytes, acts, stride, batch, r0, r1, y,
            ldy);
}

}  // namespace detail::arm

std::vector<std::string> MatMulVariants() {
  std::vector<std::string> names;
  const int best = static_cast<int>(detail::arm::Detect());
  for (int v = best; v >= 0; --v) names.emplace_back(detail::arm::kNames[v]);
  return names;
}

const char* ActiveMatMulVariant() {
  return detail::arm::kNames[static_cast<int>(detail::arm::Active())];
}

void SetMatMulVariantForTesting(const std::string& name) {
  if (name.empty()) {
    detail::arm::g_forced.store(-1);
    return;
  }
  const int best = static_cast<int>(detail::arm::Detect());
  for (int v = 0; v <= best; ++v) {
    if (name == detail::arm::kNames[v]) {
      detail::arm::g_forced.store(v);
      return;
    }
  }
  throw Error("SetMatMulVariantForTesting: MatMul variant '" + name +
              "' is not built for or not supported by this CPU");
}

}  // namespace es::kernels

#else  // not aarch64: the Highway target's own kernels are the only variant

namespace es::kernels {
std::vector<std::string> MatMulVariants() {
  return {"highway"};
}
const char* ActiveMatMulVariant() {
  return "highway";
}
void SetMatMulVariantForTesting(const std::string& name) {
  if (!name.empty() && name != "highway")
    throw Error("SetMatMulVariantForTesting: MatMul variant '" + name +
                "' is not built for or not supported by this CPU");
}
}  // namespace es::kernels

#endif
