// AVX-512 VNNI kernels (compiled for the AVX3_DL target only). Part of kernels_matmul.cpp's Highway
// translation unit: included once per target inside es::kernels::HWY_NAMESPACE (hence no include
// guard), after the definitions it uses.

// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI kernels. Int32 lane i of a dot product covers bytes 4i..4i+3, so with blocks laid
// out contiguously, lanes map to fixed element groups and per-lane scale patterns apply.

using D8 = hn::ScalableTag<int8_t>;
using DU8 = hn::ScalableTag<uint8_t>;
using DU16 = hn::ScalableTag<uint16_t>;
using D32 = hn::ScalableTag<int32_t>;
using V8 = hn::Vec<D8>;
using VU8 = hn::Vec<DU8>;
using V32 = hn::Vec<D32>;

// acc[i] += sum_k a[4i + k] * b[4i + k], a unsigned bytes, b signed bytes (vpdpbusd).
HWY_INLINE V32 DotBytes(V32 acc, VU8 a, V8 b) {
  return V32{_mm512_dpbusd_epi32(acc.raw, a.raw, b.raw)};
}
// acc[i] += lo16(a[i]) * lo16(b[i]) + hi16(a[i]) * hi16(b[i]) (vpdpwssd). Used with b holding
// a scale in its low half and 0 in its high half, and a an int32 that fits in int16.
HWY_INLINE V32 DotPairs(V32 acc, V32 a, V32 b) {
  return V32{_mm512_dpwssd_epi32(acc.raw, a.raw, b.raw)};
}

// High nibbles of every byte of v, as bytes 0..15.
HWY_INLINE VU8 HighNibbles(VU8 v) {
  const DU8 du8;
  return hn::And(hn::BitCast(du8, hn::ShiftRight<4>(hn::BitCast(DU16(), v))), hn::Set(du8, 0x0F));
}
// One block of an ordered per-output chain: acc = fma(float(exact sum of isum's lanes), scale,
// acc).
HWY_INLINE float ChainBlock(V32 isum, float scale, float acc) {
  return std::fma(static_cast<float>(hn::GetLane(hn::SumOfLanes(D32(), isum))), scale, acc);
}

// Kernel objects whose members hold vectors write their constructors out: GCC compiles an implicit
// (inherited or defaulted) constructor without the target's attributes, so a member initializer
// calling a vector-returning function (HalfShifts, GroupIndices) then reads its result by the
// wrong calling convention: wrong shifts and scale patterns below -O3, where nothing inlines it.

// Per-lane shift counts for 16-bit lanes: `lo` in the lower 256 bits, `hi` in the upper.
HWY_NOINLINE hn::Vec<DU16> HalfShifts(int lo, int hi) {
  const DU16 d;
  const hn::Half<DU16> dh;
  return hn::Combine(d, hn::Set(dh, static_cast<uint16_t>(hi)),
                     hn::Set(dh, static_cast<uint16_t>(lo)));
}

// Lane patterns for scales: lane i takes source lane (i / group) + base; group is 4 or 8. Built
// per kernel object (per weight row in decode), so without divisions or memory round trips.
HWY_NOINLINE hn::Indices512<int32_t> GroupIndices(int base, int group) {
  const D32 d;
  const auto lane = hn::ShiftRightSame(hn::Iota(d, 0), group == 8 ? 3 : 2);
  return hn::IndicesFromVec(d, hn::Add(lane, hn::Set(d, base)));
}

struct VnniBase {
  using Acc = DF;
  const TileArgs& t;
  explicit VnniBase(const TileArgs& args) : t(args) {}
  const uint8_t* XQ(int c) const { return t.a + c * t.as; }
  float XD(int c, int64_t b) const {
    return reinterpret_cast<const float*>(t.a + c * t.as + t.l.d_off)[b];
  }
  const float* DXL(int c) const {
    return reinterpret_cast<const float*>(t.a + c * t.as + t.l.dxl_off);
  }
};

// Accumulator of eight partial lanes (four adjacent products each), as llama.cpp's x86 kernels.
using DF8 = hn::Full256<float>;

// Q8_0 weights x (q + 128) activations: two blocks per step. sum(w * x) = sum(w * (x + 128)) -
// 128 * sum(w); the second term is computed per weight row and seeds the accumulator.
// Lanes 0-7 of a step hold the partials of its first block, 8-15 those of the second; both
// blocks go into the same eight lanes, in order.
struct Q8_0Vnni : VnniBase {
  using Acc = DF8;
  static constexpr bool kOrdered = true;
  using VnniBase::VnniBase;
  int64_t nb() const { return t.n / 32; }
  int64_t Steps() const { return nb() / 2; }
  const BlockQ8_0* W(int r) const { return reinterpret_cast<const BlockQ8_0*>(t.w + r * t.wrb); }
  template <int R, int C>
  HWY_INLINE void Step(int64_t s, hn::Vec<DF8> (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const D32 d32;
    const DF df;
    const hn::Half<D8> d8h;
    const hn::Half<DF> dfh;
    V8 w[R];
    V32 seed[R];
    VF dw[R];
    for (int r = 0; r < R; ++r) {
      const BlockQ8_0* blk = W(r) + 2 * s;
      w[r] = hn::Combine(d8, hn::LoadU(d8h, blk[1].qs), hn::LoadU(d8h, blk[0].qs));
      seed[r] = hn::Neg(DotBytes(hn::Zero(d32), hn::Set(du8, 0x80), w[r]));
      dw[r] = hn::Combine(df, hn::Set(dfh, HalfToFloat(&blk[1].d)),
                          hn::Set(dfh, HalfToFloat(&blk[0].d)));
    }
    for (int c = 0; c < C; ++c) {
      const VU8 xu = hn::Load(du8, XQ(c) + 64 * s);
      const VF dx = hn::Load(df, DXL(c) + 16 * s);
      for (int r = 0; r < R; ++r) {
        const VF p = hn::ConvertTo(df, DotBytes(seed[r], xu, w[r]));
        const VF d = hn::Mul(dw[r], dx);
        acc[r][c] = hn::MulAdd(hn::LowerHalf(DF8(), d), hn::LowerHalf(DF8(), p), acc[r][c]);
        acc[r][c] = hn::MulAdd(hn::UpperHalf(DF8(), d), hn::UpperHalf(DF8(), p), acc[r][c]);
      }
    }
  }
  float Finish(int r, int c, hn::Vec<DF8> acc) const {
    alignas(32) float a[8];
    hn::Store(acc, DF8(), a);
    if (nb() % 2) {  // odd block count: the last block in scalar code
      const int64_t b = nb() - 1;
      const BlockQ8_0& blk = W(r)[b];
      const float d = HalfToFloat(&blk.d) * XD(c, b);
      for (int l = 0; l < 8; ++l) {
        int p = 0;
        for (int j = 4 * l; j < 4 * l + 4; ++j)
          p += blk.qs[j] * (static_cast<int>(XQ(c)[32 * b + j]) - 128);
        a[l] = std::fma(d, static_cast<float>(p), a[l]);
      }
    }
    return Hsum8(a);
  }
};

// The f16 in the low (kHigh: high) half of each int32 lane, as f32.
template <bool kHigh = false>
HWY_INLINE VF HalvesToFloat(V32 v) {
  if constexpr (kHigh) v = hn::ShiftRight<16>(v);
  return VF{_mm512_cvtph_ps(_mm512_cvtepi32_epi16(v.raw))};
}

// Q4_0 weights (unsigned nibbles) x int8 activations, the -8 offset being the precomputed
// per-lane correction that seeds each dot product. One accumulator per output, in block order:
// a step takes 16 blocks (eight dot products of two blocks), reduces them to one integer per block
// and chains acc = fma(float(isum), dw * dx, acc).
// Full tiles of 16 outputs keep the 16 chains in the lanes of one vector instead: the integer sums
// of one block for all 16 outputs are reduced together, so each block costs one vector FMA.
// Q5_0 (Block BlockQ5_0) is the same with a fifth bit from qh (unsigned values 0..31) and twice
// the correction (-16 * sum); MXFP4 looks its nibbles up in its levels plus 16 (unsigned 4..28,
// the same correction) and scales by E8M0; IQ4_NL looks them up in its levels plus 128 (1..241,
// -128 * sum). Their exact block sums replace llama.cpp's eight float partials, so they differ
// from VecDotRef in the last bits, as Q4_0 does here.
template <class Block, int RMax, int CMax>
struct Nib32Vnni : VnniBase {
  using Acc = hn::CappedTag<float, 1>;
  static constexpr bool kOrdered = true;
  static constexpr int kG = 16;  // blocks per step
  static constexpr bool kLanes = RMax * CMax == 16;
  mutable VF acc16 = hn::Zero(DF());  // kLanes: lane r * CMax + c is output (r, c)
  hn::Vec<DU16> shifts = HalfShifts(0, 0);
  static constexpr bool kQ5 = std::is_same_v<Block, BlockQ5_0>;
  static constexpr bool kMX = std::is_same_v<Block, BlockMXFP4>;
  static constexpr bool kNL = std::is_same_v<Block, BlockIQ4_NL>;
  // The unsigned values' offset as Q4_0's 8 (the activations' corrections) shifted left by this.
  static constexpr int kSeedShift = kNL ? 4 : kQ5 || kMX ? 1 : 0;
  // MXFP4's and IQ4_NL's levels plus their offset (16, 128), for a byte lookup.
  struct Levels {
    alignas(16) uint8_t v[16];
  };
  static constexpr Levels MakeLevels() {
    Levels l{};
    for (int i = 0; i < 16; ++i)
      l.v[i] = static_cast<uint8_t>(kNL ? kIQ4NLValues[i] + 128 : kMXFP4Values[i] + 16);
    return l;
  }
  static constexpr Levels kLevels = MakeLevels();
  static HWY_INLINE float Scale(const Block& b) {
    if constexpr (kMX)
      return E8M0Half(b.e);
    else
      return HalfToFloat(&b.d);
  }
  // Scale() of 16 blocks, their first four bytes given as the int32 lanes of v.
  static HWY_INLINE VF Scales(V32 v) {
    if constexpr (kMX) {
      const D32 d32;
      const V32 e = hn::And(v, hn::Set(d32, 0xFF));
      const V32 normal = hn::ShiftLeft<23>(hn::Sub(e, hn::Set(d32, 1)));
      const V32 sub = V32{_mm512_sllv_epi32(_mm512_set1_epi32(0x00200000), e.raw)};
      return hn::BitCast(DF(), hn::IfThenElse(hn::Lt(e, hn::Set(d32, 2)), sub, normal));
    }
    return HalvesToFloat(v);
  }
  explicit Nib32Vnni(const TileArgs& args) : VnniBase(args) {
    // Each 128-bit block holds one copy of a block's 16 bytes: low nibbles in copies 0 and 2,
    // high nibbles in copies 1 and 3.
    alignas(64) uint16_t sh[32];
    for (int i = 0; i < 32; ++i) sh[i] = ((i / 8) % 2) ? 4 : 0;
    shifts = hn::Load(DU16(), sh);
  }
  int64_t nb() const { return t.n / 32; }
  // The last step may hold fewer than 16 blocks: absent pairs are zeros, and an odd last block
  // pairs with zero weights (its partner's lanes are not used).
  int64_t Steps() const { return (nb() + kG - 1) / kG; }
  const Block* W(int r) const { return reinterpret_cast<const Block*>(t.w + r * t.wrb); }
  const int32_t* Corr(int c) const {
    return reinterpret_cast<const int32_t*>(t.a + c * t.as + t.l.corr_off);
  }
  // The seed of a dot product of two blocks: the weights' offset times the activations' sums.
  HWY_INLINE V32 Seed(const int32_t* corr) const {
    const V32 c = hn::Load(D32(), corr);
    return hn::ShiftLeft<kSeedShift>(c);
  }
  // The seed's sum over one block b (its eight lanes), for kernels that add it after reducing.
  HWY_INLINE int32_t BlockSeed(int64_t b) const {
    const int32_t c = reinterpret_cast<const int32_t*>(t.a + t.l.bcorr_off)[b];
    return c * (1 << kSeedShift);
  }
  // Values of blk[0] (and blk[1] when `two`) as unsigned bytes, laid out for DotBytes against
  // two blocks of activation quants: low nibbles in 128-bit copies 0 and 2, high in 1 and 3, so
  // byte i is element i of the pair (Q5_0's fifth bits are qh's bits in that order).
  HWY_INLINE VU8 Nibbles(const Block* blk, bool two) const {
    const DU8 du8;
    const DU16 du16;
    const VU8 hi = two ? hn::LoadDup128(du8, blk[1].qs) : hn::Zero(du8);
    const VU8 v = hn::ConcatUpperLower(du8, hi, hn::LoadDup128(du8, blk[0].qs));
    const VU8 q = hn::And(hn::BitCast(du8, hn::BitCast(du16, v) >> shifts), hn::Set(du8, 0x0F));
    if constexpr (kMX || kNL) return hn::TableLookupBytes(hn::LoadDup128(du8, kLevels.v), q);
    if constexpr (kQ5) {
      uint32_t h0, h1 = 0;
      std::memcpy(&h0, blk[0].qh, 4);
      if (two) std::memcpy(&h1, blk[1].qh, 4);
      const __mmask64 bits = static_cast<uint64_t>(h0) | static_cast<uint64_t>(h1) << 32;
      return VU8{_mm512_or_si512(q.raw, _mm512_maskz_set1_epi8(bits, 16))};
    }
    return q;
  }
  template <int R, int C>
  HWY_INLINE void Step(int64_t s, hn::Vec<Acc> (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const D32 d32;
    const DF df;
    const Acc d1;
    const int64_t b0 = s * kG;
    const int count = static_cast<int>(std::min<int64_t>(kG, nb() - b0));
    const int pairs = (count + 1) / 2;
    // Unpacked once per step, reused for every activation row.
    alignas(64) uint8_t q[R][kG / 2][64];
    float dw[R][kG];
    for (int r = 0; r < R; ++r) {
      for (int k = 0; k < pairs; ++k) {
        const Block* blk = W(r) + b0 + 2 * k;
        const bool two = 2 * k + 1 < count;
        hn::Store(Nibbles(blk, two), du8, q[r][k]);
        dw[r][2 * k] = Scale(blk[0]);
        if (two) dw[r][2 * k + 1] = Scale(blk[1]);
      }
    }
    if constexpr (kLanes && R == RMax && C == CMax) {
      StepLanes<R, C>(b0, count, pairs, q, dw);
      return;
    }
    alignas(64) float fi[R][C][kG];
    for (int c = 0; c < C; ++c) {
      // Reads stay inside the converted row: quants and corrections are padded to 64 bytes.
      const auto* xq = reinterpret_cast<const int8_t*>(XQ(c)) + 32 * b0;
      const int32_t* corr = Corr(c) + 8 * b0;
      for (int r = 0; r < R; ++r) {
        V32 v[kG / 2];
        for (int k = 0; k < kG / 2; ++k)
          v[k] = k < pairs ? DotBytes(Seed(corr + 16 * k), hn::Load(du8, q[r][k]),
                                      hn::Load(d8, xq + 64 * k))
                           : hn::Zero(d32);
        hn::Store(hn::ConvertTo(df, ReduceBlocks(d32, v)), df, fi[r][c]);
      }
    }
    // The R x C ordered chains, interleaved.
    for (int j = 0; j < count; ++j) {
      for (int c = 0; c < C; ++c) {
        const float dx = XD(c, b0 + j);
        for (int r = 0; r < R; ++r)
          acc[r][c] = hn::MulAdd(hn::Set(d1, fi[r][c][j]), hn::Set(d1, dw[r][j] * dx), acc[r][c]);
      }
    }
  }
  // Sums of one pair of blocks for the 16 outputs: three halving levels leave, per output, the two
  // block sums in adjacent lanes; even lanes are the first block, odd lanes the second.
  template <int R, int C>
  HWY_INLINE void StepLanes(int64_t b0, int count, int pairs, const uint8_t (&q)[R][kG / 2][64],
                            const float (&dw)[R][kG]) const {
    const D8 d8;
    const DU8 du8;
    const D32 d32;
    const DF df;
    alignas(64) int32_t ir[16], ic[16];
    for (int i = 0; i < 16; ++i) {
      ir[i] = i / C;
      ic[i] = i % C;
    }
    const auto idx_r = hn::SetTableIndices(df, ir);
    const auto idx_c = hn::SetTableIndices(df, ic);
    alignas(64) float dwt[kG][16] = {}, dxt[kG][16] = {};
    for (int j = 0; j < count; ++j) {
      for (int r = 0; r < R; ++r) dwt[j][r] = dw[r][j];
      for (int c = 0; c < C; ++c) dxt[j][c] = XD(c, b0 + j);
    }
    auto dd = [&](int j) HWY_ATTR {
      return hn::Mul(hn::TableLookupLanes(hn::Load(df, dwt[j]), idx_r),
                     hn::TableLookupLanes(hn::Load(df, dxt[j]), idx_c));
    };
    for (int k = 0; k < pairs; ++k) {
      V32 v[16];
      for (int c = 0; c < C; ++c) {
        const auto* xq = reinterpret_cast<const int8_t*>(XQ(c)) + 32 * (b0 + 2 * k);
        const V8 x = hn::Load(d8, xq);
        const V32 corr = Seed(Corr(c) + 8 * (b0 + 2 * k));
        for (int r = 0; r < R; ++r) v[r * C + c] = DotBytes(corr, hn::Load(du8, q[r][k]), x);
      }
      for (int m = 16; m > 2; m /= 2)
        for (int j = 0; j < m / 2; ++j)
          v[j] = hn::Add(hn::ConcatEven(d32, v[2 * j + 1], v[2 * j]),
                         hn::ConcatOdd(d32, v[2 * j + 1], v[2 * j]));
      acc16 = hn::MulAdd(hn::ConvertTo(df, hn::ConcatEven(d32, v[1], v[0])), dd(2 * k), acc16);
      if (2 * k + 1 < count)
        acc16 = hn::MulAdd(hn::ConvertTo(df, hn::ConcatOdd(d32, v[1], v[0])), dd(2 * k + 1), acc16);
    }
  }
  float Finish(int r, int c, hn::Vec<Acc> acc) const {
    if constexpr (kLanes) {
      alignas(64) float l[16];
      hn::Store(acc16, DF(), l);
      return l[r * CMax + c];
    }
    return hn::GetLane(acc);
  }
};
template <int R, int C>
using Q4_0Vnni = Nib32Vnni<BlockQ4_0, R, C>;
template <int R, int C>
using Q5_0Vnni = Nib32Vnni<BlockQ5_0, R, C>;
template <int R, int C>
using MXFP4Vnni = Nib32Vnni<BlockMXFP4, R, C>;
template <int R, int C>
using IQ4_NLVnni = Nib32Vnni<BlockIQ4_NL, R, C>;

// Reductions of 16 rows' int32 lanes into one vector whose lane r is row r's, for the 16-row
// decoders: in-lane unpacks per four rows as they come (cheap, and few live registers), then few
// cross-lane shuffles. Integer sums are exact, so the order is free.
// v[0..3] -> 128-bit lane L holds (sum of 128-bit lane L of v[0], ... of v[3]).
HWY_INLINE V32 Sum4InLanes(const V32* v) {
  const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(v[0].raw, v[1].raw),
                                      _mm512_unpackhi_epi32(v[0].raw, v[1].raw));
  const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2].raw, v[3].raw),
                                      _mm512_unpackhi_epi32(v[2].raw, v[3].raw));
  return V32{_mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd))};
}
// 128-bit lanes [a0 + a1, a2 + a3, b0 + b1, b2 + b3].
HWY_INLINE __m512i AddLanePairs(V32 a, V32 b) {
  return _mm512_add_epi32(_mm512_shuffle_i32x4(a.raw, b.raw, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(a.raw, b.raw, _MM_SHUFFLE(3, 1, 3, 1)));
}
// w[g] = Sum4InLanes of rows 4g..4g+3 -> lane r = sum of row r's 16 lanes (ReduceBlocks' result).
HWY_INLINE V32 SumRows16(const V32 (&w)[4]) {
  return V32{AddLanePairs(V32{AddLanePairs(w[0], w[1])}, V32{AddLanePairs(w[2], w[3])})};
}
// The same for rows holding two blocks (lanes 0-7, 8-15): lane r of *s0 = row r's first block,
// of *s1 its second.
HWY_INLINE void SumRowPairs16(const V32 (&w)[4], V32* s0, V32* s1) {
  const __m512i x = AddLanePairs(w[0], w[1]), y = AddLanePairs(w[2], w[3]);
  *s0 = V32{_mm512_shuffle_i32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0))};
  *s1 = V32{_mm512_shuffle_i32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1))};
}
// v[g] holding rows 4g..4g+3 in its 128-bit lanes 0..3: lane 4g + i = sum of that 128-bit lane.
HWY_INLINE V32 SumRowQuads16(const V32 (&v)[4]) {
  // Sum4InLanes leaves row 4g + i in lane 4i + g.
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return V32{_mm512_permutexvar_epi32(idx, Sum4InLanes(v).raw)};
}

// The first four bytes at byte `off` of each of the 16 rows (a block's scales), for the step to
// read back as one vector after its dot products. Scalar loads and stores issued early measured
// faster than a 16-lane gather (Zen 5, MoE experts: Q4_0 decode 24 -> 27 GB/s, 1 thread), and by
// the time of the vector load the stores have left the store buffer.
HWY_INLINE void BlockHeads(const TileArgs& t, size_t off, int32_t (&out)[16]) {
  for (int r = 0; r < 16; ++r) std::memcpy(&out[r], t.w + r * t.wrb + off, 4);
}
// The prefetch of decoders that read 16 rows' blocks in turn: step s of `steps` asks for its
// share of the next group of 16 rows (contiguous, 16 * row_bytes from the group), so each line is
// asked for once, a group ahead (rows of a few KiB, as MoE experts have, take a whole group to
// pass one prefetch distance). The share is computed once per group, not per step.
struct NextGroupPrefetch {
  const uint8_t* next;
  size_t share;
  NextGroupPrefetch(const TileArgs& t, int64_t steps)
      : next(t.w + 16 * t.wrb),
        share((16 * t.wrb / static_cast<size_t>(steps) + 63) & ~size_t{63}) {}
  HWY_INLINE void Step(int64_t s) const {
    PrefetchLines(next + static_cast<size_t>(s) * share, share);
  }
};

// Decode of 16 consecutive row-major Q4_0 (Q5_0, MXFP4, IQ4_NL) rows, a pair of blocks at a time
// for all rows: the 16 dot products share the pair's activations, and SumRowPairs16 leaves the 16
// rows' sums of each block in the lanes of one vector, so that one FMA per block advances the 16
// ordered chains. The float operations per row are Nib32Vnni's 1x1 tile's.
template <class Block>
HWY_NOINLINE void DecodeNib32x16(const TileArgs& t) {
  using K = Nib32Vnni<Block, 1, 1>;
  const K k(t);
  const D8 d8;
  const D32 d32;
  const DF df;
  const int64_t nb = k.nb();
  const auto* xq = reinterpret_cast<const int8_t*>(k.XQ(0));
  const NextGroupPrefetch prefetch(t, (nb + 1) / 2);
  VF acc = hn::Zero(df);
  for (int64_t b = 0; b < nb; b += 2) {
    const bool two = b + 1 < nb;
    prefetch.Step(b / 2);
    alignas(64) int32_t sc0[16], sc1[16];
    BlockHeads(t, b * sizeof(Block), sc0);
    BlockHeads(t, (two ? b + 1 : b) * sizeof(Block), sc1);
    // Reads stay inside the converted row: quants and corrections are padded to 64 bytes.
    const V8 x = hn::Load(d8, xq + 32 * b);
    V32 w4[4];
    for (int g = 0; g < 4; ++g) {
      V32 v[4];
      for (int i = 0; i < 4; ++i)
        v[i] = DotBytes(hn::Zero(d32), k.Nibbles(k.W(4 * g + i) + b, two), x);
      w4[g] = Sum4InLanes(v);
    }
    V32 s0, s1;
    SumRowPairs16(w4, &s0, &s1);
    // The weights' offset times the activations' sums: the same for every row.
    s0 = hn::Add(s0, hn::Set(d32, k.BlockSeed(b)));
    if (two) s1 = hn::Add(s1, hn::Set(d32, k.BlockSeed(b + 1)));
    const VF dw0 = K::Scales(hn::Load(d32, sc0));
    acc = hn::MulAdd(hn::ConvertTo(df, s0), hn::Mul(dw0, hn::Set(df, k.XD(0, b))), acc);
    if (two) {
      const VF dw1 = K::Scales(hn::Load(d32, sc1));
      acc = hn::MulAdd(hn::ConvertTo(df, s1), hn::Mul(dw1, hn::Set(df, k.XD(0, b + 1))), acc);
    }
  }
  hn::StoreU(acc, df, t.y);
}

// Q4_0 interleaved in groups of 16 rows (Interleave16): per block index, the 16 rows' scales
// (f16, 32 bytes) then four 64-byte vectors; vector j holds, as its int32 lane r, bytes 4j..4j+3
// of row r's nibble array. Its low nibbles are elements 4j..4j+3 of every row, its high nibbles
// elements 16+4j..16+4j+3, so a dot product against one broadcast dword of activations adds
// four products into each row's own lane: eight of them leave lane r holding row r's exact block
// sum, with no reduction across lanes. The float steps per row and block are those of Q4_0Vnni
// (convert, scale product, FMA in block order), so results are bit-identical to the row-major
// kernels. C activation rows share each unpack.
template <int C>
HWY_NOINLINE void Q4_0x16Tile(const TileArgs& t) {
  const DU8 du8;
  const DU16 du16;
  const D32 d32;
  const DF df;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const int64_t nb = t.n / 32;
  constexpr size_t kGroupBlock = 16 * sizeof(BlockQ4_0);
  VF acc[C];
  for (int c = 0; c < C; ++c) acc[c] = hn::Zero(df);
  const VU8 low = hn::Set(du8, 0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* g = t.w + static_cast<size_t>(b) * kGroupBlock;
    if constexpr (C == 1) PrefetchAhead(g, kGroupBlock);
    const VF dw = hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(g)));
    VU8 lo[4], hi[4];
    for (int v = 0; v < 4; ++v) {
      const VU8 raw = hn::LoadU(du8, g + 32 + 64 * v);
      lo[v] = hn::And(raw, low);
      hi[v] = HighNibbles(raw);
    }
    for (int c = 0; c < C; ++c) {
      const uint8_t* a = t.a + c * t.as;
      const auto* xq = reinterpret_cast<const int32_t*>(a) + 8 * b;
      const int32_t bcorr = reinterpret_cast<const int32_t*>(a + t.l.bcorr_off)[b];
      // Two chains (low and high nibbles) so that consecutive dot products overlap.
      V32 s0 = hn::Set(d32, bcorr), s1 = hn::Zero(d32);
      for (int k = 0; k < 4; ++k) {
        s0 = DotBytes(s0, lo[k], hn::BitCast(D8(), hn::Set(d32, xq[k])));
        s1 = DotBytes(s1, hi[k], hn::BitCast(D8(), hn::Set(d32, xq[4 + k])));
      }
      const VF sum = hn::ConvertTo(df, hn::Add(s0, s1));  // lane r: row r's block sum
      const float dx = reinterpret_cast<const float*>(a + t.l.d_off)[b];
      acc[c] = hn::MulAdd(sum, hn::Mul(dw, hn::Set(df, dx)), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) hn::StoreU(acc[c], df, t.y + c * t.ldy);
}

// Q8_0 interleaved like Q4_0 above: per block index the 16 rows' scales, then eight 64-byte
// vectors, vector k holding bytes 4k..4k+3 (partial k) of every row's quants as its int32 lane r,
// stored with the sign bit flipped (q + 128, the unsigned operand of vpdpbusd). A dot product of
// vector k with a broadcast dword of activations, seeded with -128 * that dword's sum, is partial k
// of all 16 rows at once, so llama.cpp's order (per row, eight partial accumulators,
// acc_k = fma(dw * dx, float(partial_k), acc_k) over blocks, then the hsum8 tree) runs with the
// eight accumulators as vectors whose lanes are the rows.
template <int C>
HWY_NOINLINE void Q8_0x16Tile(const TileArgs& t) {
  const D8 d8;
  const DU8 du8;
  const D32 d32;
  const DF df;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const int64_t nb = t.n / 32;
  constexpr size_t kGroupBlock = 16 * sizeof(BlockQ8_0);
  VF acc[C][8];
  for (int c = 0; c < C; ++c)
    for (int k = 0; k < 8; ++k) acc[c][k] = hn::Zero(df);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* g = t.w + static_cast<size_t>(b) * kGroupBlock;
    if constexpr (C == 1) PrefetchAhead(g, kGroupBlock);
    const VF dw = hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(g)));
    VU8 w[8];
    for (int k = 0; k < 8; ++k) w[k] = hn::LoadU(du8, g + 32 + 64 * k);
    for (int c = 0; c < C; ++c) {
      const uint8_t* a = t.a + c * t.as;
      const auto* xq = reinterpret_cast<const int32_t*>(a) + 8 * b;
      const auto* corr = reinterpret_cast<const int32_t*>(a + t.l.corr_off) + 8 * b;
      const float dx = reinterpret_cast<const float*>(a + t.l.d_off)[b];
      const VF d = hn::Mul(dw, hn::Set(df, dx));
      for (int k = 0; k < 8; ++k) {
        // corr holds -8 * sum for Q4_0's nibbles; the q + 128 bytes need -128 * sum.
        const V32 p =
            DotBytes(hn::Set(d32, 16 * corr[k]), w[k], hn::BitCast(d8, hn::Set(d32, xq[k])));
        acc[c][k] = hn::MulAdd(d, hn::ConvertTo(df, p), acc[c][k]);
      }
    }
  }
  for (int c = 0; c < C; ++c) {
    const VF* a = acc[c];
    const VF sum = hn::Add(hn::Add(hn::Add(a[0], a[4]), hn::Add(a[2], a[6])),
                           hn::Add(hn::Add(a[1], a[5]), hn::Add(a[3], a[7])));
    hn::StoreU(sum, df, t.y + c * t.ldy);
  }
}

struct KVnniBase : VnniBase {
  using VnniBase::VnniBase;
  int64_t Steps() const { return t.n / kQK_K; }
  const int8_t* X(int c, int64_t b) const {
    return reinterpret_cast<const int8_t*>(t.a + c * t.as) + b * kQK_K;
  }
  const int16_t* BS16(int c, int64_t b) const {
    return reinterpret_cast<const int16_t*>(t.a + c * t.as + t.l.bs16_off) + b * 16;
  }
  const int16_t* BS32(int c, int64_t b) const {
    return reinterpret_cast<const int16_t*>(t.a + c * t.as + t.l.bs32_off) + b * 8;
  }
};

// Q4_K: 64 elements per vector (the 32 bytes of nibbles for sub-blocks 2p and 2p + 1, low nibbles
// in the lower half); int32 lanes 0-7 belong to sub-block 2p, 8-15 to 2p + 1. The six-bit scales
// multiply the lane sums (which fit int16) with vpdpwssd; the mins meet the precomputed sums of
// 32 activations. Q5_K (Block BlockQ5_K) adds its fifth bits from qh: bit 2p (lower half) and
// 2p + 1 (upper half) of the same 32 bytes, moved to bit 4.
// Per output and block, the scaled sum and the min sum are reduced to exact integers, then two
// ordered chains acc = fma(float(sum), d * dx, acc) and mins = fma(float(min sum), dmin * dx,
// mins) give acc - mins: the float steps of KMinx16Tile, which reads them interleaved, so both
// layouts give bit-identical results.
template <int RMax, int CMax, class Block>
struct KMinVnni : KVnniBase {
  static constexpr bool kFifthBit = std::is_same_v<Block, BlockQ5_K>;
  static constexpr bool kOrdered = true;
  using D32x4 = hn::Full128<int32_t>;
  // The two chains per output (the tile's vector accumulators are not used).
  mutable float sums[RMax][CMax] = {}, minsums[RMax][CMax] = {};
  hn::Vec<DU16> shifts = HalfShifts(0, 4);
  hn::Indices512<int32_t> pat[4] = {GroupIndices(0, 8), GroupIndices(2, 8), GroupIndices(4, 8),
                                    GroupIndices(6, 8)};
  hn::Vec<DU16> hshifts[4] = {HalfShifts(0, 1), HalfShifts(2, 3), HalfShifts(4, 5),
                              HalfShifts(6, 7)};
  explicit KMinVnni(const TileArgs& args) : KVnniBase(args) {}
  const Block* W(int r) const { return reinterpret_cast<const Block*>(t.w + r * t.wrb); }
  // The 8 six-bit scales and mins as bytes of two 64-bit words (no round trip through memory:
  // a vector load of freshly stored scalars would stall on store forwarding).
  static HWY_INLINE void ScaleMinBytes(const uint8_t* q, uint64_t* sc, uint64_t* mn) {
    uint32_t u0, u1, u2;
    std::memcpy(&u0, q, 4);
    std::memcpy(&u1, q + 4, 4);
    std::memcpy(&u2, q + 8, 4);
    const uint32_t sc_lo = u0 & 0x3f3f3f3fu, mn_lo = u1 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    *sc = sc_lo | (static_cast<uint64_t>(sc_hi) << 32);
    *mn = mn_lo | (static_cast<uint64_t>(mn_hi) << 32);
  }
  // Block blk's nibbles (with Q5_K's fifth bits) as four vectors of 64 bytes, their scales as
  // int32 lanes in the low int16 of each lane (DotPairs), and its mins as bytes of *mn64.
  HWY_INLINE void Unpack(const Block& blk, VU8 (&q)[4], V32 (&sc)[4], uint64_t* mn64) const {
    const DU8 du8;
    const hn::Half<DU8> du8h;
    const DU16 du16;
    const D32 d32;
    const hn::Full128<uint64_t> d64x2;
    const hn::Full128<uint8_t> d8x16;
    uint64_t sc64;
    ScaleMinBytes(blk.scales, &sc64, mn64);
    const V32 all = hn::PromoteTo(d32, hn::BitCast(d8x16, hn::Set(d64x2, sc64)));
    for (int p = 0; p < 4; ++p) {
      sc[p] = hn::TableLookupLanes(all, pat[p]);
      const auto half = hn::LoadU(du8h, blk.qs + 32 * p);
      const VU8 v = hn::Combine(du8, half, half);
      q[p] = hn::And(hn::BitCast(du8, hn::BitCast(du16, v) >> shifts), hn::Set(du8, 0x0F));
      if constexpr (kFifthBit) {
        const auto qh = hn::LoadU(du8h, blk.qh);
        const VU8 h = hn::Combine(du8, qh, qh);
        const auto bit =
            hn::And(hn::BitCast(du8, hn::BitCast(du16, h) >> hshifts[p]), hn::Set(du8, 1));
        // Only bit 0 of each byte is set, so the 16-bit shift keeps bytes apart.
        q[p] = hn::Or(q[p], hn::BitCast(du8, hn::ShiftLeft<4>(hn::BitCast(du16, bit))));
      }
    }
  }
  // Activation block xb (Q8_K quants) as four vectors of 64 bytes.
  static HWY_INLINE void LoadX(const int8_t* xb, V8 (&x)[4]) {
    for (int p = 0; p < 4; ++p) x[p] = hn::Load(D8(), xb + 64 * p);
  }
  // The scaled integer sums of one block against its activations x, per lane (exact).
  static HWY_INLINE V32 BlockSum(const VU8 (&q)[4], const V32 (&sc)[4], const V8 (&x)[4]) {
    const D32 d32;
    V32 isum = hn::Zero(d32);
    for (int p = 0; p < 4; ++p) isum = DotPairs(isum, DotBytes(hn::Zero(d32), q[p], x[p]), sc[p]);
    return isum;
  }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, VF (&)[R][C]) const {
    const hn::Full128<uint64_t> d64x2;
    const hn::Full128<uint8_t> d8x16;
    const hn::Full64<uint8_t> d8x8;
    const hn::Full128<int16_t> d16x8;
    const D32x4 d32x4;
    VU8 q[R][4];
    V32 sc[R][4];
    hn::Vec<decltype(d16x8)> mins[R];
    float d[R], dmin[R];
    for (int r = 0; r < R; ++r) {
      const Block& blk = W(r)[b];
      uint64_t mn64;
      Unpack(blk, q[r], sc[r], &mn64);
      const auto mbytes = hn::LowerHalf(d8x8, hn::BitCast(d8x16, hn::Set(d64x2, mn64)));
      mins[r] = hn::BitCast(d16x8, hn::PromoteTo(hn::Full128<uint16_t>(), mbytes));
      d[r] = HalfToFloat(&blk.d);
      dmin[r] = HalfToFloat(&blk.dmin);
    }
    for (int c = 0; c < C; ++c) {
      V8 x[4];  // once per column: the rows' sums below share them
      LoadX(X(c, b), x);
      const auto bs = hn::Load(d16x8, BS32(c, b));
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        sums[r][c] = ChainBlock(BlockSum(q[r], sc[r], x), d[r] * dx, sums[r][c]);
        auto m1 = hn::Zero(d32x4);
        const auto m0 = hn::ReorderWidenMulAccumulate(d32x4, mins[r], bs, hn::Zero(d32x4), m1);
        minsums[r][c] =
            std::fma(static_cast<float>(hn::GetLane(hn::SumOfLanes(d32x4, hn::Add(m0, m1)))),
                     dmin[r] * dx, minsums[r][c]);
      }
    }
  }
  float Finish(int r, int c, VF) const { return sums[r][c] - minsums[r][c]; }
};

// Decode (one activation row) of 16 consecutive row-major Q4_K or Q5_K rows, a block at a time
// for all rows, as DecodeNib32x16: the rows share the block's activations, SumRows16 leaves
// the 16 rows' scaled sums (and min sums) in the lanes of one vector, and one FMA each per block
// advances the two ordered chains of all rows. The float steps per row are KMinVnni's, so
// results are bit-identical to its tiles (and to KMinx16Tile on the interleaved layout).
template <class Block>
HWY_NOINLINE void DecodeKMinx16(const TileArgs& t) {
  const KMinVnni<1, 1, Block> k(t);
  const D32 d32;
  const DF df;
  const hn::Full512<int16_t> d16;
  const hn::Full256<uint64_t> d64x4;
  const int64_t nb = k.Steps();
  const NextGroupPrefetch prefetch(t, nb);
  VF acc = hn::Zero(df), mins = hn::Zero(df);
  for (int64_t b = 0; b < nb; ++b) {
    alignas(64) int32_t heads[16];  // d and dmin, adjacent f16s at the start of a block
    BlockHeads(t, b * sizeof(Block), heads);
    V8 x[4];
    k.LoadX(k.X(0, b), x);
    prefetch.Step(b);
    V32 w4[4], mv[4];
    uint64_t mn[16];
    for (int g = 0; g < 4; ++g) {
      V32 v[4];
      for (int i = 0; i < 4; ++i) {
        VU8 q[4];
        V32 sc[4];
        k.Unpack(k.W(4 * g + i)[b], q, sc, &mn[4 * g + i]);
        v[i] = k.BlockSum(q, sc, x);
      }
      w4[g] = Sum4InLanes(v);
    }
    // Four rows' eight mins (int16) against the block's eight activation sums of 32 each: lanes
    // 4i..4i+3 of mv[g] are row 4g + i's.
    // (The mins are assembled in registers: a vector load of just-stored scalars would stall.)
    const auto bs = hn::BitCast(d32, hn::LoadDup128(d16, k.BS32(0, b)));
    for (int g = 0; g < 4; ++g) {
      const auto m8 =
          hn::BitCast(hn::Full256<uint8_t>(),
                      hn::Vec<decltype(d64x4)>{_mm256_set_epi64x(
                          static_cast<int64_t>(mn[4 * g + 3]), static_cast<int64_t>(mn[4 * g + 2]),
                          static_cast<int64_t>(mn[4 * g + 1]), static_cast<int64_t>(mn[4 * g]))});
      const auto m16 = hn::PromoteTo(hn::RebindToUnsigned<decltype(d16)>(), m8);
      mv[g] = DotPairs(hn::Zero(d32), hn::BitCast(d32, m16), bs);
    }
    const V32 ddm = hn::Load(d32, heads);
    const VF dx = hn::Set(df, k.XD(0, b));
    acc = hn::MulAdd(hn::ConvertTo(df, SumRows16(w4)), hn::Mul(HalvesToFloat(ddm), dx), acc);
    mins = hn::MulAdd(hn::ConvertTo(df, SumRowQuads16(mv)), hn::Mul(HalvesToFloat<true>(ddm), dx),
                      mins);
  }
  hn::StoreU(hn::Sub(acc, mins), df, t.y);
}

template <int R, int C>
using Q4KVnni = KMinVnni<R, C, BlockQ4_K>;
template <int R, int C>
using Q5KVnni = KMinVnni<R, C, BlockQ5_K>;

// Q6_K: 64 elements per vector, assembled from 64 bytes of ql and 32 bytes of qh (duplicated in
// both halves and shifted per half); unsigned values 0..63. Lanes of 16 elements share a scale;
// the -32 offset is subtracted per int32 lane (32 * the sum of its four activations), so that
// every lane holds sum (q - 32) * x of its four elements. Per block, partial lane l (elements
// 4l..4l+3 of each 32-element group, scaled) is summed over the eight groups and
// acc = fma(dw * dx, float(lane), acc), as llama.cpp's x86 kernel.
struct Q6KVnni : KVnniBase {
  using Acc = DF8;
  static constexpr bool kOrdered = true;
  hn::Vec<DU16> shl_a = HalfShifts(4, 2);
  hn::Vec<DU16> shr_b = HalfShifts(0, 2);
  hn::Indices512<int32_t> pat[4] = {GroupIndices(0, 4), GroupIndices(4, 4), GroupIndices(8, 4),
                                    GroupIndices(12, 4)};
  explicit Q6KVnni(const TileArgs& args) : KVnniBase(args) {}
  const BlockQ6_K* W(int r) const { return reinterpret_cast<const BlockQ6_K*>(t.w + r * t.wrb); }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DF8> (&acc)[R][C]) const {
    const D8 d8;
    const DU8 du8;
    const hn::Half<DU8> du8h;
    const DU16 du16;
    const D32 d32;
    const hn::Full256<int32_t> d32x8;
    const hn::Rebind<int8_t, D32> d8x16;
    VU8 q[R][4];
    V32 sc[R][4];
    float d[R];
    const VU8 m0f = hn::Set(du8, 0x0F), m30 = hn::Set(du8, 0x30);
    for (int r = 0; r < R; ++r) {
      const BlockQ6_K& blk = W(r)[b];
      const V32 all = hn::PromoteTo(d32, hn::LoadU(d8x16, blk.scales));
      // Keep only the low 16 bits: DotPairs multiplies the high halves too.
      for (int j = 0; j < 4; ++j)
        sc[r][j] = hn::And(hn::TableLookupLanes(all, pat[j]), hn::Set(d32, 0xFFFF));
      for (int h = 0; h < 2; ++h) {
        const VU8 ql = hn::LoadU(du8, blk.ql + 64 * h);
        const auto qh_half = hn::LoadU(du8h, blk.qh + 32 * h);
        const auto qh = hn::BitCast(du16, hn::Combine(du8, qh_half, qh_half));
        q[r][2 * h] = hn::OrAnd(hn::And(ql, m0f), hn::BitCast(du8, qh << shl_a), m30);
        q[r][2 * h + 1] =
            hn::OrAnd(hn::And(hn::BitCast(du8, hn::ShiftRight<4>(hn::BitCast(du16, ql))), m0f),
                      hn::BitCast(du8, qh >> shr_b), m30);
      }
      d[r] = HalfToFloat(&blk.d);
    }
    for (int c = 0; c < C; ++c) {
      const int8_t* xb = X(c, b);
      V8 x[4];
      V32 off[4];
      for (int j = 0; j < 4; ++j) {
        x[j] = hn::Load(d8, xb + 64 * j);
        off[j] = DotBytes(hn::Zero(d32), hn::Set(du8, 32), x[j]);
      }
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        V32 isum = hn::Zero(d32);
        for (int j = 0; j < 4; ++j)
          isum = DotPairs(isum, hn::Sub(DotBytes(hn::Zero(d32), q[r][j], x[j]), off[j]), sc[r][j]);
        const auto lanes = hn::Add(hn::LowerHalf(d32x8, isum), hn::UpperHalf(d32x8, isum));
        acc[r][c] = hn::MulAdd(hn::Set(DF8(), dx * d[r]), hn::ConvertTo(DF8(), lanes), acc[r][c]);
      }
    }
  }
  float Finish(int, int, hn::Vec<DF8> acc) const {
    alignas(32) float a[8];
    hn::Store(acc, DF8(), a);
    return Hsum8(a);
  }
};
