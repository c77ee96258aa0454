// Tile kernels of the 256-element super-block types with a scale per 16 or 32 elements that
// have no kernels of their own in kernels_matmul_blocks-inl.h: Q2_K, Q3_K, Q5_K (and IQ4_XS,
// whose quant unpacking is in kernels_matmul_iquants-inl.h). Part of kernels_matmul.cpp's Highway
// translation unit: included once per target inside es::kernels::HWY_NAMESPACE (hence no include
// guard), after the definitions it uses.
//
// One design on every target: weights unpacked to int16, activation quants read as int16 (the
// AVX3_DL layout holds them as int8 and they are widened here), (q * x) * scale summed exactly in
// int32 per lane, and per block acc = fma(float(lanes), d * dx, acc) (minus dmin * dx times the
// exact min sums for the types with mins), reduced in Finish.

// Activation quants [k, k + Lanes) of one converted Q8_K row as int16.
HWY_INLINE hn::Vec<D16B> LoadActs16(D16B d16, const uint8_t* row, int64_t k) {
#if ES_VNNI
  const hn::Rebind<int8_t, D16B> d8;
  return hn::PromoteTo(d16, hn::LoadU(d8, reinterpret_cast<const int8_t*>(row) + k));
#else
  return hn::LoadU(d16, reinterpret_cast<const int16_t*>(row) + k);
#endif
}

// Lane scales for elements [32g + off, + Lanes) from 16 per-16-element values: vectors of at most
// 16 lanes never straddle two groups of 16; 32 lanes take two.
HWY_INLINE hn::Vec<D16B> LaneScales(D16B d16, const int* s16, int g, size_t off) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(D16B()) == 32) {
    const hn::Half<D16B> dh;
    return hn::Combine(d16, hn::Set(dh, static_cast<int16_t>(s16[2 * g + 1])),
                       hn::Set(dh, static_cast<int16_t>(s16[2 * g])));
  }
#endif
  return hn::Set(d16, static_cast<int16_t>(s16[2 * g + (off >= 16 ? 1 : 0)]));
}

// Bytes [off, off + Lanes) of p as int16.
HWY_INLINE hn::Vec<D16B> LoadBytes16(D16B d16, const uint8_t* p) {
  const hn::Rebind<uint8_t, D16B> d8;
  return hn::PromoteTo(d16, hn::LoadU(d8, p));
}

// Per type: Block, kMin (value d * sc * q - dmin * mn), Scales() unpacking one block's 16 scales
// and mins per 16 elements, Values() the quants of elements [32g + off, + Lanes) of group g.
struct UnpackQ5_K {
  using Block = BlockQ5_K;
  static constexpr bool kMin = true;
  static void Scales(const Block& b, int* sc, int* mn) {
    int s8[8], m8[8];
    UnpackScalesQ4_K(b.scales, s8, m8);
    for (int j = 0; j < 16; ++j) sc[j] = s8[j / 2], mn[j] = m8[j / 2];
  }
  // Nibble plane g & 1 of qs[32 (g / 2) + l], fifth bit: bit g of qh[l].
  static HWY_INLINE hn::Vec<D16B> Values(D16B d16, const Block& b, int g, size_t off) {
    auto lo = LoadBytes16(d16, b.qs + 32 * (g / 2) + off);
    lo = (g & 1) ? hn::ShiftRight<4>(lo) : hn::And(lo, hn::Set(d16, 15));
    const auto hi = hn::And(hn::ShiftRightSame(LoadBytes16(d16, b.qh + off), g), hn::Set(d16, 1));
    return hn::Or(lo, hn::ShiftLeft<4>(hi));
  }
};

// Q2_K and Q3_K: bits 2k, 2k+1 of qs[32h + l] for group g = 4h + k.
HWY_INLINE hn::Vec<D16B> TwoBits16(D16B d16, const uint8_t* qs, int g, size_t off) {
  return hn::And(hn::ShiftRightSame(LoadBytes16(d16, qs + 32 * (g / 4) + off), 2 * (g % 4)),
                 hn::Set(d16, 3));
}

struct UnpackQ2_K {
  using Block = BlockQ2_K;
  static constexpr bool kMin = true;
  static void Scales(const Block& b, int* sc, int* mn) {
    for (int j = 0; j < 16; ++j) sc[j] = b.scales[j] & 0x0F, mn[j] = b.scales[j] >> 4;
  }
  static HWY_INLINE hn::Vec<D16B> Values(D16B d16, const Block& b, int g, size_t off) {
    return TwoBits16(d16, b.qs, g, off);
  }
};

struct UnpackQ3_K {
  using Block = BlockQ3_K;
  static constexpr bool kMin = false;
  static void Scales(const Block& b, int* sc, int*) {
    for (int j = 0; j < 16; ++j) sc[j] = quant::Q3KScale(b.scales, j);
  }
  // Two low bits plus the high bit (bit g of hmask[l]) at 4, minus 4.
  static HWY_INLINE hn::Vec<D16B> Values(D16B d16, const Block& b, int g, size_t off) {
    const auto hi =
        hn::And(hn::ShiftRightSame(LoadBytes16(d16, b.hmask + off), g), hn::Set(d16, 1));
    return hn::Sub(hn::Or(TwoBits16(d16, b.qs, g, off), hn::ShiftLeft<2>(hi)), hn::Set(d16, 4));
  }
};

#include "kernels/kernels_matmul_iquants-inl.h"  // NOLINT(build/include)

template <class U>
struct GroupScaleKernel : QuantKernelBase<typename U::Block> {
  using Base = QuantKernelBase<typename U::Block>;
  using Base::Base;
  using Base::t;
  using Base::W;
  using Base::XD;
  int64_t Steps() const { return t.n / kQK_K; }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const size_t N = hn::Lanes(d16);
    int sc[R][16], mn[R][16];
    for (int r = 0; r < R; ++r) U::Scales(W(r)[b], sc[r], mn[r]);
    hn::Vec<D32B> s0[R][C], s1[R][C], m0[R][C], m1[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) s0[r][c] = s1[r][c] = m0[r][c] = m1[r][c] = hn::Zero(d32);
    for (int g = 0; g < 8; ++g) {
      hn::Vec<D16B> wv[R][kNV], sv[R][kNV], mv[R][kNV];
      for (int r = 0; r < R; ++r) {
        for (size_t v = 0; v < kNV; ++v) {
          wv[r][v] = U::Values(d16, W(r)[b], g, v * N);
          sv[r][v] = LaneScales(d16, sc[r], g, v * N);
          if constexpr (U::kMin) mv[r][v] = LaneScales(d16, mn[r], g, v * N);
        }
      }
      for (int c = 0; c < C; ++c) {
        const uint8_t* xrow = t.a + c * t.as;
        for (size_t v = 0; v < kNV; ++v) {
          const auto xv = LoadActs16(d16, xrow, b * kQK_K + 32 * g + static_cast<int64_t>(v * N));
          for (int r = 0; r < R; ++r) {
            // |q * x| <= 127 * 127 fits int16; the scale multiply widens to int32.
            const auto p = hn::Mul(wv[r][v], xv);
            s0[r][c] = hn::ReorderWidenMulAccumulate(d32, p, sv[r][v], s0[r][c], s1[r][c]);
            if constexpr (U::kMin)
              m0[r][c] = hn::ReorderWidenMulAccumulate(d32, xv, mv[r][v], m0[r][c], m1[r][c]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = HalfToFloat(&W(r)[b].d);
      for (int c = 0; c < C; ++c) {
        const float dx = XD(c, b);
        acc[r][c] = hn::MulAdd(hn::ConvertTo(df, hn::Add(s0[r][c], s1[r][c])), hn::Set(df, d * dx),
                               acc[r][c]);
        if constexpr (U::kMin) {
          const float dmin = HalfToFloat(&W(r)[b].dmin);
          acc[r][c] = hn::NegMulAdd(hn::ConvertTo(df, hn::Add(m0[r][c], m1[r][c])),
                                    hn::Set(df, dmin * dx), acc[r][c]);
        }
      }
    }
  }
};
