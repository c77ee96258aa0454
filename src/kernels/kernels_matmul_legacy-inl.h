// Kernels for the 32-element block types beyond Q4_0/Q8_0: Q4_1, Q5_0, Q5_1, IQ4_NL and MXFP4. Part
// of kernels_matmul.cpp's Highway translation unit: included once per target inside
// es::kernels::HWY_NAMESPACE (hence no include guard), after the definitions it uses.
//
// Every target (AVX3_DL included, but for Q5_0, MXFP4 and IQ4_NL: Nib32Vnni) converts their
// activations to the int16 layout (LayoutFor, ConvertRowLegacy): Q8_0 quants for Q5_0/IQ4_NL/MXFP4,
// Q8_1 for Q4_1/Q5_1 (with s = d * sum(q) per block). The weights' values are unpacked to int16
// vectors once per block and row, in registers (scalar unpacking through memory measured 10-30x
// slower, on store forwarding), and multiplied with a 16x16->32 pairwise multiply-add; the float
// order is llama.cpp's (tensor_quant_legacy.cpp's VecDotRef).

// Fifth bits (Q5_0/Q5_1's qh, bit e for element e) of elements [off, off + Lanes), as 0 or 16.
HWY_INLINE hn::Vec<D16B> HighBits16(D16B d16, const uint8_t (&qh)[4], size_t off) {
  alignas(64) static constexpr int16_t kBit[32] = {
      1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, INT16_MIN,
      1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, INT16_MIN};
  uint32_t h;
  std::memcpy(&h, qh, 4);
  const auto lo = static_cast<int16_t>(h & 0xFFFF), hi = static_cast<int16_t>(h >> 16);
  auto bits = hn::Set(d16, off < 16 ? lo : hi);
#if HWY_TARGET != HWY_SCALAR
  if (hn::Lanes(d16) == 32) {
    const hn::Half<D16B> dh;
    bits = hn::Combine(d16, hn::Set(dh, hi), hn::Set(dh, lo));
  }
#endif
  const auto set = hn::Ne(hn::And(bits, hn::LoadU(d16, kBit + off)), hn::Zero(d16));
  return hn::IfThenElseZero(set, hn::Set(d16, 16));
}

// Unpackers: elements [off, off + Lanes) of a block as the int16 values the dot product
// multiplies (value = d * v, plus m for Q4_1/Q5_1).
struct UnpackQ4_1 {
  using Block = BlockQ4_1;
  HWY_INLINE hn::Vec<D16B> operator()(D16B d16, const Block& b, size_t off) const {
    return Nibbles16(d16, b.qs, off);
  }
};
struct UnpackQ5_0 {
  using Block = BlockQ5_0;
  HWY_INLINE hn::Vec<D16B> operator()(D16B d16, const Block& b, size_t off) const {
    const auto q = hn::Or(Nibbles16(d16, b.qs, off), HighBits16(d16, b.qh, off));
    return hn::Sub(q, hn::Set(d16, 16));
  }
};
struct UnpackQ5_1 {
  using Block = BlockQ5_1;
  HWY_INLINE hn::Vec<D16B> operator()(D16B d16, const Block& b, size_t off) const {
    return hn::Or(Nibbles16(d16, b.qs, off), HighBits16(d16, b.qh, off));
  }
};
// IQ4_NL and MXFP4: the nibble indexes a 16-entry table of int8 levels (kIQ4NLValues,
// kMXFP4Values). With 16 or 32 lanes, a byte shuffle per 128-bit block (the table repeated in
// each); narrower targets take a compare-select per level (the Highway in use has no 16-bit lane
// table lookup).
template <class B, const int8_t (&kLevels)[16]>
struct UnpackTable4 {
  using Block = B;
  HWY_INLINE hn::Vec<D16B> operator()(D16B d16, const Block& b, size_t off) const {
#if HWY_TARGET != HWY_SCALAR
    const size_t n = hn::Lanes(d16);
    if (n == 16 || n == 32) {
      const hn::Rebind<int8_t, D16B> d8;
      hn::Vec<decltype(d8)> idx;
      if (n == 32) {  // the 16 bytes' low nibbles are elements 0..15, high nibbles 16..31
        const hn::Half<decltype(d8)> dh;
        const hn::RebindToUnsigned<decltype(dh)> du;
        const auto q = hn::LoadU(du, b.qs);
        idx = hn::Combine(d8, hn::BitCast(dh, hn::ShiftRight<4>(q)),
                          hn::BitCast(dh, hn::And(q, hn::Set(du, 15))));
      } else {
        const hn::RebindToUnsigned<decltype(d8)> du;
        const auto q = hn::LoadU(du, b.qs);
        idx = hn::BitCast(d8, off < 16 ? hn::And(q, hn::Set(du, 15)) : hn::ShiftRight<4>(q));
      }
      return hn::PromoteTo(d16, hn::TableLookupBytes(hn::LoadDup128(d8, kLevels), idx));
    }
#endif
    const auto idx = Nibbles16(d16, b.qs, off);
    auto v = hn::Zero(d16);
    for (int k = 0; k < 16; ++k)
      v = hn::IfThenElse(hn::Eq(idx, hn::Set(d16, static_cast<int16_t>(k))),
                         hn::Set(d16, static_cast<int16_t>(kLevels[k])), v);
    return v;
  }
};
using UnpackIQ4_NL = UnpackTable4<BlockIQ4_NL, kIQ4NLValues>;
using UnpackMXFP4 = UnpackTable4<BlockMXFP4, kMXFP4Values>;

// One 32-element block per step. Per partial lane acc = fma(dw * dx, float(partial), acc) over
// blocks in order (as Q8_0Kernel); Q4_1/Q5_1 also chain msum = fma(m, s, msum) per output, added
// after the lane reduction.
template <class Unpack, int RMax, int CMax>
struct LegacyKernel : QuantKernelBase<typename Unpack::Block> {
  using Block = typename Unpack::Block;
  static constexpr bool kOrdered = true;
  static constexpr bool kMin = std::is_same_v<Block, BlockQ4_1> || std::is_same_v<Block, BlockQ5_1>;
  using Base = QuantKernelBase<Block>;
  using Base::t;
  using Base::W;
  using Base::XD;
  using Base::XQ;
  mutable float msum[RMax][CMax] = {};
  explicit LegacyKernel(const TileArgs& args) : Base(args) {}
  int64_t Steps() const { return t.n / kQK32; }
  float XS(int c, int64_t b) const {
    return reinterpret_cast<const float*>(t.a + c * t.as + t.l.sum_off)[b];
  }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const size_t N = hn::Lanes(d16);
    const Unpack unpack;
    float dw[R], m[R];
    hn::Vec<D16B> wv[R][kNV];
    for (int r = 0; r < R; ++r) {
      const Block& blk = W(r)[b];
      if constexpr (std::is_same_v<Block, BlockMXFP4>)
        dw[r] = E8M0Half(blk.e);
      else
        dw[r] = HalfToFloat(&blk.d);
      if constexpr (kMin) m[r] = HalfToFloat(&blk.m);
      for (size_t v = 0; v < kNV; ++v) wv[r][v] = unpack(d16, blk, v * N);
    }
    for (int c = 0; c < C; ++c) {
      hn::Vec<D16B> xv[kNV];
      for (size_t v = 0; v < kNV; ++v) xv[v] = hn::LoadU(d16, XQ(c) + b * kQK32 + v * N);
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        acc[r][c] = MulAddBlock(wv[r], xv, dw[r] * dx, acc[r][c]);
        if constexpr (kMin) msum[r][c] = std::fma(m[r], XS(c, b), msum[r][c]);
      }
    }
  }
  float Finish(int r, int c, hn::Vec<DFB> acc) const {
    if constexpr (kMin) return ReducePartials(acc) + msum[r][c];
    (void)r, (void)c;
    return ReducePartials(acc);
  }
};
template <int R, int C>
using Q4_1Kernel = LegacyKernel<UnpackQ4_1, R, C>;
template <int R, int C>
using Q5_0Kernel = LegacyKernel<UnpackQ5_0, R, C>;
template <int R, int C>
using Q5_1Kernel = LegacyKernel<UnpackQ5_1, R, C>;
template <int R, int C>
using IQ4_NLKernel = LegacyKernel<UnpackIQ4_NL, R, C>;
template <int R, int C>
using MXFP4Kernel = LegacyKernel<UnpackMXFP4, R, C>;
