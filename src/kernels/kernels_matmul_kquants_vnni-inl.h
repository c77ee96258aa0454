// AVX-512 VNNI kernels of Q3_K, Q2_K and IQ4_XS (compiled for the AVX3_DL target only). Part of
// kernels_matmul.cpp's Highway translation unit: included once per target inside
// es::kernels::HWY_NAMESPACE (hence no include guard), after kernels_matmul_vnni-inl.h and
// kernels_matmul_kquants-inl.h, whose definitions it uses.
//
// One 64-element vector per quarter j of a block: unsigned bytes u = value + kOffset, so that
// vpdpbusd sums four u * x per int32 lane; the offset's share (kOffset times the lane's four
// activations) is subtracted exactly, and the lane's scale (one per 16 elements, lane i of quarter
// j in group 4j + i / 4) multiplies it in int32. Per block acc = fma(float(isum), d * dx, acc);
// Q2_K's mins meet the precomputed sums of 16 activations.

// Q3_K: two bits at bit 2k of qs[32h + l] and the high bit (bit g of hmask[l]) for group g = 4h + k
// of 32; quarter j holds groups 2j (lower half) and 2j + 1 (upper half). u = q + 4 in 0..7.
struct BytesQ3_K {
  using Block = BlockQ3_K;
  using Unpack = UnpackQ3_K;
  static constexpr int kOffset = 4;
  hn::Vec<DU16> low[2] = {HalfShifts(0, 2), HalfShifts(4, 6)};
  hn::Vec<DU16> high[4] = {HalfShifts(0, 1), HalfShifts(2, 3), HalfShifts(4, 5), HalfShifts(6, 7)};
  static HWY_INLINE VU8 Both(const uint8_t* p) {
    const hn::Half<DU8> dh;
    const auto v = hn::LoadU(dh, p);
    return hn::Combine(DU8(), v, v);
  }
  HWY_INLINE VU8 TwoBits(const uint8_t* qs, int j) const {
    const DU16 du16;
    const VU8 v = Both(qs + 32 * (j / 2));
    return hn::And(hn::BitCast(DU8(), hn::BitCast(du16, v) >> low[j % 2]), hn::Set(DU8(), 3));
  }
  HWY_INLINE VU8 operator()(const Block& b, int j) const {
    const DU8 du8;
    const DU16 du16;
    const auto bit =
        hn::And(hn::BitCast(du8, hn::BitCast(du16, Both(b.hmask)) >> high[j]), hn::Set(du8, 1));
    // Only bit 0 of each byte is set, so the 16-bit shift keeps bytes apart.
    return hn::Or(TwoBits(b.qs, j), hn::BitCast(du8, hn::ShiftLeft<2>(hn::BitCast(du16, bit))));
  }
};

// Q2_K: the two bits alone (u = q, no offset); mins per 16 elements.
struct BytesQ2_K : BytesQ3_K {
  using Block = BlockQ2_K;
  using Unpack = UnpackQ2_K;
  static constexpr int kOffset = 0;
  HWY_INLINE VU8 operator()(const Block& b, int j) const { return TwoBits(b.qs, j); }
};

// IQ4_XS: quarter j is groups 2j and 2j + 1, i.e. 128-bit pieces: low and high nibbles of
// qs[32j ..] then of qs[32j + 16 ..]; each nibble looks up its level + 128 (vpshufb per piece).
struct BytesIQ4_XS {
  using Block = BlockIQ4_XS;
  using Unpack = UnpackIQ4_XS;
  static constexpr int kOffset = 128;
  hn::Vec<DU16> shifts = QuarterShifts();
  VU8 levels = Levels();
  static HWY_NOINLINE hn::Vec<DU16> QuarterShifts() {
    const hn::Half<DU16> dh;
    const hn::Half<decltype(dh)> dq;
    const auto v = hn::Combine(dh, hn::Set(dq, 4), hn::Set(dq, 0));
    return hn::Combine(DU16(), v, v);
  }
  static HWY_NOINLINE VU8 Levels() {
    alignas(16) uint8_t t[16];
    for (int i = 0; i < 16; ++i) t[i] = static_cast<uint8_t>(kIQ4NLValues[i] + 128);
    return hn::LoadDup128(DU8(), t);
  }
  HWY_INLINE VU8 operator()(const Block& b, int j) const {
    const DU8 du8;
    const hn::Half<DU8> dh;
    const hn::Half<decltype(dh)> dq;
    const auto a = hn::LoadU(dq, b.qs + 32 * j), c = hn::LoadU(dq, b.qs + 32 * j + 16);
    const VU8 v = hn::Combine(du8, hn::Combine(dh, c, c), hn::Combine(dh, a, a));
    const auto idx = hn::And(hn::BitCast(du8, hn::BitCast(DU16(), v) >> shifts), hn::Set(du8, 15));
    return hn::TableLookupBytes(levels, idx);
  }
};

template <int RMax, int CMax, class B>
struct GroupVnni : KVnniBase {
  B bytes;
  hn::Indices512<int32_t> pat[4] = {GroupIndices(0, 4), GroupIndices(4, 4), GroupIndices(8, 4),
                                    GroupIndices(12, 4)};
  static constexpr bool kMin = B::Unpack::kMin;
  mutable float minsum[RMax][CMax] = {};
  using KVnniBase::KVnniBase;
  const typename B::Block* W(int r) const {
    return reinterpret_cast<const typename B::Block*>(t.w + r * t.wrb);
  }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, VF (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const D32 d32;
    const DF df;
    VU8 q[R][4];
    V32 sc[R][4];
    int mn[R][16];
    float d[R];
    for (int r = 0; r < R; ++r) {
      const auto& blk = W(r)[b];
      alignas(64) int32_t s16[16];
      int s[16];
      B::Unpack::Scales(blk, s, mn[r]);
      for (int g = 0; g < 16; ++g) s16[g] = s[g];
      const V32 all = hn::Load(d32, s16);
      for (int j = 0; j < 4; ++j) {
        sc[r][j] = hn::TableLookupLanes(all, pat[j]);
        q[r][j] = bytes(blk, j);
      }
      d[r] = HalfToFloat(&blk.d);
    }
    for (int c = 0; c < C; ++c) {
      const int8_t* xb = X(c, b);
      V8 x[4];
      V32 off[4];
      for (int j = 0; j < 4; ++j) {
        x[j] = hn::Load(d8, xb + 64 * j);
        if constexpr (B::kOffset != 0)
          off[j] = DotBytes(hn::Zero(d32), hn::Set(du8, B::kOffset), x[j]);
      }
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        V32 isum = hn::Zero(d32);
        for (int j = 0; j < 4; ++j) {
          V32 lanes = DotBytes(hn::Zero(d32), q[r][j], x[j]);
          if constexpr (B::kOffset != 0) lanes = hn::Sub(lanes, off[j]);
          isum = hn::Add(isum, hn::Mul(lanes, sc[r][j]));
        }
        acc[r][c] = hn::MulAdd(hn::ConvertTo(df, isum), hn::Set(df, d[r] * dx), acc[r][c]);
        if constexpr (kMin) {
          const int16_t* bs = BS16(c, b);
          int msum = 0;
          for (int g = 0; g < 16; ++g) msum += mn[r][g] * bs[g];
          minsum[r][c] += HalfToFloat(&W(r)[b].dmin) * dx * static_cast<float>(msum);
        }
      }
    }
  }
  float Finish(int r, int c, VF acc) const { return Sum(DF(), acc) - minsum[r][c]; }
};

template <int R, int C>
using Q3KVnni = GroupVnni<R, C, BytesQ3_K>;
template <int R, int C>
using Q2KVnni = GroupVnni<R, C, BytesQ2_K>;
template <int R, int C>
using IQ4XSVnni = GroupVnni<R, C, BytesIQ4_XS>;
