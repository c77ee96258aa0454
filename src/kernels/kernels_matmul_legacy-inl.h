// Kernels for the 32-element block types beyond Q4_0/Q8_0: Q4_1, Q5_0, Q5_1 and IQ4_NL. Part of
// kernels_matmul.cpp's Highway translation unit: included once per target inside
// es::kernels::HWY_NAMESPACE (hence no include guard), after the definitions it uses.
//
// Every target (AVX3_DL included) converts their activations to the int16 layout (LayoutFor,
// ConvertRowLegacy): Q8_0 quants for Q5_0/IQ4_NL, Q8_1 for Q4_1/Q5_1 (with s = d * sum(q) per
// block). The weights'
// values are unpacked to int16 once per block and row, and multiplied with a 16x16->32 pairwise
// multiply-add; the float order is llama.cpp's (tensor_quant_legacy.cpp's VecDotRef).

// A block's 32 values as the dot product multiplies them (value = d * v, + m for Q4_1/Q5_1).
HWY_INLINE void LegacyValues(const BlockQ4_1& b, int16_t* v) {
  for (int j = 0; j < 16; ++j) v[j] = b.qs[j] & 15, v[j + 16] = b.qs[j] >> 4;
}
HWY_INLINE uint32_t LegacyHighBits(const uint8_t (&qh)[4]) {
  uint32_t h;
  std::memcpy(&h, qh, 4);
  return h;
}
template <int kOffset, class Block>
HWY_INLINE void LegacyValues5(const Block& b, int16_t* v) {
  const uint32_t h = LegacyHighBits(b.qh);
  for (int j = 0; j < 16; ++j) {
    v[j] = static_cast<int16_t>(((b.qs[j] & 15) | (((h >> j) & 1) << 4)) - kOffset);
    v[j + 16] = static_cast<int16_t>(((b.qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4)) - kOffset);
  }
}
HWY_INLINE void LegacyValues(const BlockQ5_0& b, int16_t* v) {
  LegacyValues5<16>(b, v);
}
HWY_INLINE void LegacyValues(const BlockQ5_1& b, int16_t* v) {
  LegacyValues5<0>(b, v);
}
HWY_INLINE void LegacyValues(const BlockIQ4_NL& b, int16_t* v) {
  for (int j = 0; j < 16; ++j)
    v[j] = kIQ4NLValues[b.qs[j] & 15], v[j + 16] = kIQ4NLValues[b.qs[j] >> 4];
}

// One 32-element block per step. Per partial lane acc = fma(dw * dx, float(partial), acc) over
// blocks in order (as Q8_0Kernel); Q4_1/Q5_1 also chain msum = fma(m, s, msum) per output, added
// after the lane reduction.
template <class Block, int RMax, int CMax>
struct LegacyKernel : QuantKernelBase<Block> {
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
    alignas(64) int16_t wq[R][kQK32];
    float dw[R];
    for (int r = 0; r < R; ++r) {
      dw[r] = HalfToFloat(&W(r)[b].d);
      LegacyValues(W(r)[b], wq[r]);
    }
    for (int c = 0; c < C; ++c) {
      hn::Vec<D16B> xv[kNV];
      for (size_t v = 0; v < kNV; ++v) xv[v] = hn::LoadU(d16, XQ(c) + b * kQK32 + v * N);
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) {
        hn::Vec<D16B> wv[kNV];
        for (size_t v = 0; v < kNV; ++v) wv[v] = hn::Load(d16, wq[r] + v * N);
        acc[r][c] = MulAddBlock(wv, xv, dw[r] * dx, acc[r][c]);
        if constexpr (kMin) msum[r][c] = std::fma(HalfToFloat(&W(r)[b].m), XS(c, b), msum[r][c]);
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
using Q4_1Kernel = LegacyKernel<BlockQ4_1, R, C>;
template <int R, int C>
using Q5_0Kernel = LegacyKernel<BlockQ5_0, R, C>;
template <int R, int C>
using Q5_1Kernel = LegacyKernel<BlockQ5_1, R, C>;
template <int R, int C>
using IQ4_NLKernel = LegacyKernel<BlockIQ4_NL, R, C>;
