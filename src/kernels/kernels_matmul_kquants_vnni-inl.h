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
  // The 16 scales come from SWAR on two words, not 16 scalar unpacks (they dominated decode), and
  // the offset's share comes off once per block from the activations' sums of 16 (GroupVnni's
  // nsc against BS16).
  static constexpr bool kVectorScales = true;
  hn::Vec<DU16> low[2] = {HalfShifts(0, 2), HalfShifts(4, 6)};
  hn::Vec<DU16> high[4] = {HalfShifts(0, 1), HalfShifts(2, 3), HalfShifts(4, 5), HalfShifts(6, 7)};
  BytesQ3_K() {}  // written out: see HalfShifts
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
  // Scale g - 32 in int32 lane g: the low nibble from byte g % 8 (high nibble for g >= 8), two
  // bits from byte 8 + g % 4 at 2 * (g / 4), as quant::Q3KScale.
  static HWY_INLINE V32 Scales(const Block& b) {
    uint64_t lo;
    uint32_t h;
    std::memcpy(&lo, b.scales, 8);
    std::memcpy(&h, b.scales + 8, 4);
    const uint64_t m2 = 0x03030303u, m4 = 0x0F0F0F0F0F0F0F0Full;
    const uint64_t h0 = (h & m2) | (((h >> 2) & m2) << 32);
    const uint64_t h1 = ((h >> 4) & m2) | (((h >> 6) & m2) << 32);
    const uint64_t s0 = (lo & m4) | (h0 << 4), s1 = ((lo >> 4) & m4) | (h1 << 4);
    const hn::Full128<uint64_t> d64;
    const auto bytes = hn::InterleaveLower(d64, hn::Set(d64, s0), hn::Set(d64, s1));
    return hn::Sub(hn::PromoteTo(D32(), hn::BitCast(hn::Full128<uint8_t>(), bytes)),
                   hn::Set(D32(), 32));
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
  static constexpr bool kVectorScales = false;
  BytesQ2_K() {}  // written out: see HalfShifts
  HWY_INLINE VU8 operator()(const Block& b, int j) const { return TwoBits(b.qs, j); }
};

// IQ4_XS: quarter j is groups 2j and 2j + 1, i.e. 128-bit pieces: low and high nibbles of
// qs[32j ..] then of qs[32j + 16 ..]; each nibble looks up its level + 128 (vpshufb per piece).
struct BytesIQ4_XS {
  using Block = BlockIQ4_XS;
  using Unpack = UnpackIQ4_XS;
  static constexpr int kOffset = 128;
  static constexpr bool kVectorScales = false;
  hn::Vec<DU16> shifts = QuarterShifts();
  VU8 levels = Levels();
  BytesIQ4_XS() {}  // written out: see HalfShifts
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

// kExact (IQ4_XS, which has no mins): each block's sum reduced to an exact integer and one FMA per
// block into a chain per output, the float steps of IQ4_XSx16Tile (the interleaved layout), so
// both layouts give bit-identical results.
template <int RMax, int CMax, class B, bool kExact = false>
struct GroupVnni : KVnniBase {
  B bytes;
  hn::Indices512<int32_t> pat[4] = {GroupIndices(0, 4), GroupIndices(4, 4), GroupIndices(8, 4),
                                    GroupIndices(12, 4)};
  static constexpr bool kMin = B::Unpack::kMin;
  static_assert(!(kExact && kMin), "exact block sums are for types without mins");
  // One accumulator per output in every tile shape (decode too): a token's outputs do not depend
  // on whether it came alone or in a prompt.
  static constexpr bool kOrdered = true;
  mutable float minsum[RMax][CMax] = {};
  mutable float sums[RMax][CMax] = {};  // kExact: the chains
  explicit GroupVnni(const TileArgs& args) : KVnniBase(args) {}
  const typename B::Block* W(int r) const {
    return reinterpret_cast<const typename B::Block*>(t.w + r * t.wrb);
  }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, VF (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const D32 d32;
    const DF df;
    const hn::Full256<int16_t> d16x16;
    constexpr bool kVec = B::kVectorScales;
    VU8 q[R][4];
    V32 sc[R][4];
    // kVec: -kOffset x the 16 scales as int16 in the low 256 bits; one DotPairs with the 16 sums
    // of 16 activations (bs16) takes the offset's share off the block.
    V32 nsc[R];
    int mn[R][16];
    float d[R];
    for (int r = 0; r < R; ++r) {
      const auto& blk = W(r)[b];
      V32 all;
      if constexpr (kVec) {
        all = B::Scales(blk);
        const auto n16 =
            hn::DemoteTo(hn::Rebind<int16_t, D32>(), hn::Mul(all, hn::Set(d32, -B::kOffset)));
        nsc[r] = hn::BitCast(d32, hn::ZeroExtendVector(hn::ScalableTag<int16_t>(), n16));
      } else {
        alignas(64) int32_t s16[16];
        int s[16];
        B::Unpack::Scales(blk, s, mn[r]);
        for (int g = 0; g < 16; ++g) s16[g] = s[g];
        all = hn::Load(d32, s16);
      }
      for (int j = 0; j < 4; ++j) {
        sc[r][j] = hn::TableLookupLanes(all, pat[j]);
        // DotPairs multiplies the high int16 halves too: keep the scale's low half only.
        if constexpr (kVec) sc[r][j] = hn::And(sc[r][j], hn::Set(d32, 0xFFFF));
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
        if constexpr (B::kOffset != 0 && !kVec)
          off[j] = DotBytes(hn::Zero(d32), hn::Set(du8, B::kOffset), x[j]);
      }
      V32 bs16;
      if constexpr (kVec)
        bs16 = hn::BitCast(
            d32, hn::ZeroExtendVector(hn::ScalableTag<int16_t>(), hn::LoadU(d16x16, BS16(c, b))));
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        V32 isum = hn::Zero(d32);
        if constexpr (kVec) {
          // Lane sums of four (q + 4) x fit int16 (|sum| <= 4 x 7 x 128): vpdpwssd takes them.
          isum = DotPairs(isum, nsc[r], bs16);
          for (int j = 0; j < 4; ++j)
            isum = DotPairs(isum, DotBytes(hn::Zero(d32), q[r][j], x[j]), sc[r][j]);
        } else {
          for (int j = 0; j < 4; ++j) {
            V32 lanes = DotBytes(hn::Zero(d32), q[r][j], x[j]);
            if constexpr (B::kOffset != 0) lanes = hn::Sub(lanes, off[j]);
            isum = hn::Add(isum, hn::Mul(lanes, sc[r][j]));
          }
        }
        if constexpr (kExact)
          sums[r][c] = ChainBlock(isum, d[r] * dx, sums[r][c]);
        else
          acc[r][c] = hn::MulAdd(hn::ConvertTo(df, isum), hn::Set(df, d[r] * dx), acc[r][c]);
        if constexpr (kMin) {
          const int16_t* bs = BS16(c, b);
          int msum = 0;
          for (int g = 0; g < 16; ++g) msum += mn[r][g] * bs[g];
          // Fused, written out (what optimized builds contracted it to; sanitizer builds did not).
          minsum[r][c] =
              std::fma(HalfToFloat(&W(r)[b].dmin) * dx, static_cast<float>(msum), minsum[r][c]);
        }
      }
    }
  }
  float Finish(int r, int c, VF acc) const {
    if constexpr (kExact) return sums[r][c];
    return Sum(DF(), acc) - minsum[r][c];
  }
};

template <int R, int C>
using Q3KVnni = GroupVnni<R, C, BytesQ3_K>;
template <int R, int C>
using Q2KVnni = GroupVnni<R, C, BytesQ2_K>;
template <int R, int C>
using IQ4XSVnni = GroupVnni<R, C, BytesIQ4_XS, true>;

// The 16 f16 values in the low halves of v's int32 lanes (one per row of an interleaved group),
// as floats.
HWY_INLINE VF LowHalvesToFloat(V32 v) {
  const DF df;
  return hn::PromoteTo(df,
                       hn::BitCast(hn::Rebind<hwy::float16_t, DF>(),
                                   hn::TruncateTo(hn::Rebind<uint16_t, DF>(),
                                                  hn::BitCast(hn::RebindToUnsigned<D32>(), v))));
}

// Block index b's group of 16 interleaved rows of `Block`s, and its vector k (dword k of each row).
template <class Block>
HWY_INLINE const uint8_t* GroupAt(const TileArgs& t, int64_t b) {
  return t.w + static_cast<size_t>(b) * 16 * sizeof(Block);
}
HWY_INLINE V32 GroupVector(const uint8_t* g, int k) {
  return hn::LoadU(D32(), reinterpret_cast<const int32_t*>(g + 64 * k));
}

// Q4_K and Q5_K interleaved in groups of 16 rows (Interleave16): per block index, one vector per
// dword of the row's block (36 for Q4_K, 44 for Q5_K); vector k holds dword k of every row as its
// int32 lane r: k = 0 the f16 pair (d, dmin), 1-3 the packed six-bit scales and mins, then (Q5_K)
// 4-11 the fifth bits qh, then the nibble bytes: vector kQs + 8p + i holds bytes 32p + 4i..+3,
// whose low nibbles are elements 4i..4i+3 of sub-block 2p and high nibbles those of sub-block
// 2p + 1; Q5_K's qh byte 4i + e holds their fifth bits as bits 2p and 2p + 1. A dot product with
// one broadcast activation dword adds four products into each row's own lane, so lane r ends a
// block with row r's exact integer sums, and the float steps per row and block are KMinVnni's:
// results are bit-identical to the row-major kernel. C activation rows share each unpack.
template <int C, class Block>
HWY_NOINLINE void KMinx16Tile(const TileArgs& t) {
  constexpr bool kFifthBit = std::is_same_v<Block, BlockQ5_K>;
  constexpr int kQs = kFifthBit ? 12 : 4;  // first vector of nibble bytes
  // DotPairs needs each partial sum to fit int16: 16 products of nibbles (<= 15 x 128) do, 8 of
  // five-bit values (<= 31 x 128) do. kRun dot products of 4 per partial, kChains partials per
  // half of a sub-block pair.
  constexpr int kRun = kFifthBit ? 2 : 4, kChains = 8 / kRun;
  const D8 d8;
  const DU8 du8;
  const D32 d32;
  const DF df;
  const int64_t nb = t.n / kQK_K;
  const VU8 low = hn::Set(du8, 0x0F), bit4 = hn::Set(du8, 0x10);
  const V32 byte = hn::Set(d32, 0xFF);
  const V32 six = hn::Set(d32, 0x3F3F3F3F), four = hn::Set(d32, 0x0F0F0F0F),
            top = hn::Set(d32, 0x30303030);
  VF acc[C], mins[C];
  for (int c = 0; c < C; ++c) acc[c] = mins[c] = hn::Zero(df);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* g = GroupAt<Block>(t, b);
    if constexpr (C == 1) PrefetchAhead(g, 16 * sizeof(Block));
    const V32 h = GroupVector(g, 0), u0 = GroupVector(g, 1), u1 = GroupVector(g, 2),
              u2 = GroupVector(g, 3);
    const VF dw = LowHalvesToFloat(h), dmin = LowHalvesToFloat(hn::ShiftRight<16>(h));
    // Bytes j of sc[0] and j - 4 of sc[1]: scale j; likewise the mins (as in UnpackScalesQ4_K).
    const V32 sc[2] = {hn::And(u0, six),
                       hn::Or(hn::And(u2, four), hn::And(hn::ShiftRight<2>(u0), top))};
    const V32 mn[2] = {hn::And(u1, six), hn::Or(hn::And(hn::ShiftRight<4>(u2), four),
                                                hn::And(hn::ShiftRight<2>(u1), top))};
    V32 isum[C];
    for (int c = 0; c < C; ++c) isum[c] = hn::Zero(d32);
    for (int p = 0; p < 4; ++p) {
      // Scales of sub-blocks 2p and 2p + 1, each alone in its lane's low int16 (DotPairs).
      const V32 s_lo = hn::And(hn::ShiftRightSame(sc[p / 2], 16 * (p % 2)), byte);
      const V32 s_hi = hn::And(hn::ShiftRightSame(sc[p / 2], 16 * (p % 2) + 8), byte);
      VU8 lo[8], hi[8];
      for (int i = 0; i < 8; ++i) {
        const VU8 raw = hn::LoadU(du8, g + 64 * (kQs + 8 * p + i));
        lo[i] = hn::And(raw, low);
        hi[i] = HighNibbles(raw);
        if constexpr (kFifthBit) {
          // Bits 2p and 2p + 1 of each qh byte moved to bit 4 (32-bit shifts: the mask drops
          // what crosses bytes).
          const auto qh = hn::BitCast(hn::RebindToUnsigned<D32>(), GroupVector(g, 4 + i));
          const auto at4 = [&](int bit) {
            return hn::BitCast(
                du8, bit <= 4 ? hn::ShiftLeftSame(qh, 4 - bit) : hn::ShiftRightSame(qh, bit - 4));
          };
          lo[i] = hn::OrAnd(lo[i], at4(2 * p), bit4);
          hi[i] = hn::OrAnd(hi[i], at4(2 * p + 1), bit4);
        }
      }
      for (int c = 0; c < C; ++c) {
        const auto* xq = reinterpret_cast<const int32_t*>(t.a + c * t.as) + 64 * b + 16 * p;
        // The high int16 of each partial is its sign, met by the scale's zero high half.
        V32 s[kChains], u[kChains];
        for (int k = 0; k < kChains; ++k) {
          s[k] = u[k] = hn::Zero(d32);
          for (int j = 0; j < kRun; ++j) {
            const int i = kRun * k + j;
            s[k] = DotBytes(s[k], lo[i], hn::BitCast(d8, hn::Set(d32, xq[i])));
            u[k] = DotBytes(u[k], hi[i], hn::BitCast(d8, hn::Set(d32, xq[8 + i])));
          }
        }
        for (int k = 0; k < kChains; ++k) isum[c] = DotPairs(isum[c], s[k], s_lo);
        for (int k = 0; k < kChains; ++k) isum[c] = DotPairs(isum[c], u[k], s_hi);
      }
    }
    // Mins of sub-blocks 2k and 2k + 1 as the int16 pair of each lane, against the activations'
    // sums of 32 (bs32), two per dword.
    V32 mp[4];
    for (int k = 0; k < 4; ++k) {
      const V32 m = hn::ShiftRightSame(mn[k / 2], 16 * (k % 2));
      mp[k] = hn::Or(hn::And(m, byte), hn::ShiftLeft<8>(hn::And(m, hn::Set(d32, 0xFF00))));
    }
    for (int c = 0; c < C; ++c) {
      const uint8_t* a = t.a + c * t.as;
      const auto* bs = reinterpret_cast<const int32_t*>(a + t.l.bs32_off) + 4 * b;
      V32 msum = hn::Zero(d32);
      for (int k = 0; k < 4; ++k) msum = DotPairs(msum, mp[k], hn::Set(d32, bs[k]));
      const VF dx = hn::Set(df, reinterpret_cast<const float*>(a + t.l.d_off)[b]);
      acc[c] = hn::MulAdd(hn::ConvertTo(df, isum[c]), hn::Mul(dw, dx), acc[c]);
      mins[c] = hn::MulAdd(hn::ConvertTo(df, msum), hn::Mul(dmin, dx), mins[c]);
    }
  }
  for (int c = 0; c < C; ++c) hn::StoreU(hn::Sub(acc[c], mins[c]), df, t.y + c * t.ldy);
}

// IQ4_XS interleaved in groups of 16 rows (Interleave16), as Q4_K above: vector k holds dword k of
// every row's 136-byte block; k = 0 is (d, scales_h), 1 scales_l, 2 + 4g + i the nibble bytes
// 16g + 4i..+3 of sub-block g (low nibbles its elements 4i..4i+3, high nibbles 16 + 4i..). Each
// nibble looks up its level + 128 (unsigned, for vpdpbusd); 128 times the sub-block's activation
// sum comes off once per sub-block for all 16 rows. Per row and block: the exact integer sum, one
// FMA; bit-identical to the row-major kernel (GroupVnni with kExact).
template <int C>
HWY_NOINLINE void IQ4_XSx16Tile(const TileArgs& t) {
  const D8 d8;
  const DU8 du8;
  const D32 d32;
  const DF df;
  const int64_t nb = t.n / kQK_K;
  const VU8 low = hn::Set(du8, 0x0F);
  const VU8 levels = BytesIQ4_XS::Levels();
  VF acc[C];
  for (int c = 0; c < C; ++c) acc[c] = hn::Zero(df);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* g = GroupAt<BlockIQ4_XS>(t, b);
    if constexpr (C == 1) PrefetchAhead(g, 16 * sizeof(BlockIQ4_XS));
    const V32 h = GroupVector(g, 0), sl = GroupVector(g, 1);
    const VF dw = LowHalvesToFloat(h);
    V32 isum[C];
    for (int c = 0; c < C; ++c) isum[c] = hn::Zero(d32);
    for (int sb = 0; sb < 8; ++sb) {
      // Six-bit scale of sub-block sb, minus 32: four bits of scales_l, two of scales_h.
      const V32 sc = hn::Sub(
          hn::Or(hn::And(hn::ShiftRightSame(sl, 4 * sb), hn::Set(d32, 0x0F)),
                 hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(h, 16 + 2 * sb), hn::Set(d32, 3)))),
          hn::Set(d32, 32));
      VU8 lo[4], hi[4];
      for (int i = 0; i < 4; ++i) {
        const VU8 raw = hn::LoadU(du8, g + 64 * (2 + 4 * sb + i));
        lo[i] = hn::TableLookupBytes(levels, hn::And(raw, low));
        hi[i] = hn::TableLookupBytes(levels, HighNibbles(raw));
      }
      for (int c = 0; c < C; ++c) {
        const uint8_t* a = t.a + c * t.as;
        const auto* xq = reinterpret_cast<const int32_t*>(a) + 64 * b + 8 * sb;
        const int16_t bs = reinterpret_cast<const int16_t*>(a + t.l.bs32_off)[8 * b + sb];
        V32 s0 = hn::Set(d32, -128 * static_cast<int32_t>(bs)), s1 = hn::Zero(d32);
        for (int i = 0; i < 4; ++i) {
          s0 = DotBytes(s0, lo[i], hn::BitCast(d8, hn::Set(d32, xq[i])));
          s1 = DotBytes(s1, hi[i], hn::BitCast(d8, hn::Set(d32, xq[4 + i])));
        }
        isum[c] = hn::Add(isum[c], hn::Mul(hn::Add(s0, s1), sc));
      }
    }
    for (int c = 0; c < C; ++c) {
      const float dx = reinterpret_cast<const float*>(t.a + c * t.as + t.l.d_off)[b];
      acc[c] = hn::MulAdd(hn::ConvertTo(df, isum[c]), hn::Mul(dw, hn::Set(df, dx)), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) hn::StoreU(acc[c], df, t.y + c * t.ldy);
}
