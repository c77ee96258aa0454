// Quantized-weight tile kernels: the int16 unpacking of each block type and the kernels Tile()
// drives. Part of kernels_matmul.cpp's Highway translation unit: included once per target inside
// es::kernels::HWY_NAMESPACE (hence no include guard), after the definitions it uses.

// Base for the integer kernels: int16 activation quants and f32 scales of C activation rows.
template <class Block>
struct QuantKernelBase {
  using Acc = DFB;
  const TileArgs& t;
  explicit QuantKernelBase(const TileArgs& args) : t(args) {}
  const Block* W(int r) const { return reinterpret_cast<const Block*>(t.w + r * t.wrb); }
  const int16_t* XQ(int c) const { return reinterpret_cast<const int16_t*>(t.a + c * t.as); }
  float XD(int c, int64_t b) const {
    return reinterpret_cast<const float*>(t.a + c * t.as + t.l.d_off)[b];
  }
  float Finish(int, int, hn::Vec<DFB> acc) const { return Sum(DFB(), acc); }
};

// Q8_0 weights: elements [off, off + Lanes) of a block as int16.
struct UnpackQ8_0 {
  using Block = BlockQ8_0;
  HWY_INLINE hn::Vec<D16B> operator()(D16B d16, const Block& b, size_t off) const {
    const hn::Rebind<int8_t, D16B> d8;
    return hn::PromoteTo(d16, hn::LoadU(d8, b.qs + off));
  }
};
// Nibbles of a 16-byte array as int16: elements [off, off + Lanes) of the 32 that the low (< 16)
// and high (16..31) nibbles hold.
HWY_INLINE hn::Vec<D16B> Nibbles16(D16B d16, const uint8_t* qs, size_t off) {
#if HWY_TARGET != HWY_SCALAR
  if (hn::Lanes(d16) == 32) {
    const hn::Half<D16B> dh;
    const hn::Rebind<uint8_t, decltype(dh)> d8;
    const auto v = hn::PromoteTo(dh, hn::LoadU(d8, qs));
    return hn::Combine(d16, hn::ShiftRight<4>(v), hn::And(v, hn::Set(dh, 15)));
  }
#endif
  const hn::Rebind<uint8_t, D16B> d8;
  const auto v = hn::PromoteTo(d16, hn::LoadU(d8, qs + (off & 15)));
  return off < 16 ? hn::And(v, hn::Set(d16, 15)) : hn::ShiftRight<4>(v);
}
// Q4_0 weights: value q - 8.
struct UnpackQ4_0 {
  using Block = BlockQ4_0;
  HWY_INLINE hn::Vec<D16B> operator()(D16B d16, const Block& b, size_t off) const {
    return hn::Sub(Nibbles16(d16, b.qs, off), hn::Set(d16, 8));
  }
};

// Int32 pair sums of one 32-element group (kNV vectors; lane i of vector v holds elements
// 2i, 2i+1 of v's part) -> one vector holding, per lane, the sum of four adjacent elements
// 4l..4l+3 ("partial l", the int32 lane of llama.cpp's x86 kernels). Lane of partial l:
// PartialLane(l). Targets with more than two vectors per group (128-bit and scalar) mix partials
// (kExact8 false) and are reduced in any order.
constexpr bool kExact8 = kNV <= 2;
constexpr size_t PartialLane(int l) {
  return kNV == 1 ? 2 * l : (l < 4 ? 2 * l : 2 * (l - 4) + 1);
}
HWY_INLINE hn::Vec<D32B> Partials8(const hn::Vec<D32B> (&s)[kNV]) {
#if HWY_TARGET == HWY_SCALAR
  if constexpr (false) {
#else
  if constexpr (kNV == 1) {
    return hn::Add(s[0], hn::Shuffle2301(s[0]));
  } else if constexpr (kNV == 2) {
    return hn::OddEven(hn::Add(s[1], hn::Shuffle2301(s[1])), hn::Add(s[0], hn::Shuffle2301(s[0])));
#endif
  } else {
    auto sum = s[0];
    for (size_t v = 1; v < kNV; ++v) sum = hn::Add(sum, s[v]);
    return sum;
  }
}
// One 32-element block of int16 weights w and activations x: acc = fma(scale, float(partial l),
// acc) per partial lane.
HWY_INLINE hn::Vec<DFB> MulAddBlock(const hn::Vec<D16B> (&w)[kNV], const hn::Vec<D16B> (&x)[kNV],
                                    float scale, hn::Vec<DFB> acc) {
  const D32B d32;
  const DFB df;
  hn::Vec<D32B> s[kNV];
  for (size_t v = 0; v < kNV; ++v) {
    auto s1 = hn::Zero(d32);
    s[v] = hn::ReorderWidenMulAccumulate(d32, w[v], x[v], hn::Zero(d32), s1);
    s[v] = hn::Add(s[v], s1);
  }
  return hn::MulAdd(hn::Set(df, scale), hn::ConvertTo(df, Partials8(s)), acc);
}
// Final reduction of a partial-lane accumulator.
HWY_INLINE float ReducePartials(hn::Vec<DFB> acc) {
  if constexpr (kExact8) {
    alignas(64) float lanes[hn::MaxLanes(DFB())];
    hn::Store(acc, DFB(), lanes);
    float a[8];
    for (int l = 0; l < 8; ++l) a[l] = lanes[PartialLane(l)];
    return Hsum8(a);
  } else {
    return Sum(DFB(), acc);
  }
}

// Q8_0 weights against Q8_0 activations: one 32-element block per step; per partial lane
// acc = fma(dw * dx, float(partial), acc) over blocks in order.
template <class Unpack>
struct Q8_0Kernel : QuantKernelBase<typename Unpack::Block> {
  static constexpr bool kOrdered = true;
  using Base = QuantKernelBase<typename Unpack::Block>;
  using Base::Base;
  using Base::t;
  using Base::W;
  using Base::XD;
  using Base::XQ;
  int64_t Steps() const { return t.n / 32; }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const size_t N = hn::Lanes(d16);
    const Unpack unpack;
    float dw[R];
    hn::Vec<D16B> wv[R][kNV];
    for (int r = 0; r < R; ++r) {
      const auto& blk = W(r)[b];
      dw[r] = HalfToFloat(&blk.d);
      for (size_t v = 0; v < kNV; ++v) wv[r][v] = unpack(d16, blk, v * N);
    }
    for (int c = 0; c < C; ++c) {
      hn::Vec<D16B> xv[kNV];
      for (size_t v = 0; v < kNV; ++v) xv[v] = hn::LoadU(d16, XQ(c) + b * 32 + v * N);
      const float dx = XD(c, b);
      for (int r = 0; r < R; ++r) acc[r][c] = MulAddBlock(wv[r], xv, dw[r] * dx, acc[r][c]);
    }
  }
  float Finish(int, int, hn::Vec<DFB> acc) const { return ReducePartials(acc); }
};

// Q4_0 weights against Q8_0 activations: per block one exact integer sum, and one accumulator per
// output: acc = fma(float(isum), dw * dx, acc) over blocks in order. A step takes G blocks (one
// per int32 lane) and reduces their lane sums together; the ordered chains of the R x C outputs
// interleave.
struct Q4_0Kernel : QuantKernelBase<BlockQ4_0> {
  using Acc = hn::CappedTag<float, 1>;
  static constexpr bool kOrdered = true;
  static constexpr size_t G = hn::MaxLanes(D32B());
  using QuantKernelBase::QuantKernelBase;
  int64_t nb() const { return t.n / 32; }
  // The last step may hold fewer than G blocks (absent blocks count as zeros in the reduction).
  int64_t Steps() const { return (nb() + static_cast<int64_t>(G) - 1) / static_cast<int64_t>(G); }
  template <int R, int C>
  HWY_INLINE void Step(int64_t s, hn::Vec<Acc> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const Acc d1;
    const size_t N = hn::Lanes(d16);
    const UnpackQ4_0 unpack;
    const int64_t b0 = s * static_cast<int64_t>(G);
    const size_t count = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(G), nb() - b0));
    // Unpacked once per step, reused for every activation row.
    alignas(64) int16_t wq[R][G][32];
    float dw[R][G];
    for (int r = 0; r < R; ++r) {
      for (size_t j = 0; j < count; ++j) {
        const auto& blk = W(r)[b0 + static_cast<int64_t>(j)];
        dw[r][j] = HalfToFloat(&blk.d);
        for (size_t v = 0; v < kNV; ++v) hn::Store(unpack(d16, blk, v * N), d16, wq[r][j] + v * N);
      }
    }
    alignas(64) float fi[R][C][G];
    for (int c = 0; c < C; ++c) {
      const int16_t* xq = XQ(c) + b0 * 32;
      for (int r = 0; r < R; ++r) {
        hn::Vec<D32B> bs[G];
        for (size_t j = 0; j < G; ++j) {
          auto s0 = hn::Zero(d32), s1 = hn::Zero(d32);
          if (j < count) {
            for (size_t v = 0; v < kNV; ++v)
              s0 = hn::ReorderWidenMulAccumulate(d32, hn::Load(d16, wq[r][j] + v * N),
                                                 hn::LoadU(d16, xq + 32 * j + v * N), s0, s1);
          }
          bs[j] = hn::Add(s0, s1);
        }
        hn::Store(hn::ConvertTo(df, ReduceBlocks(d32, bs)), df, fi[r][c]);
      }
    }
    // The R x C ordered chains, interleaved.
    for (size_t j = 0; j < count; ++j) {
      for (int c = 0; c < C; ++c) {
        const float dx = XD(c, b0 + static_cast<int64_t>(j));
        for (int r = 0; r < R; ++r)
          acc[r][c] = hn::MulAdd(hn::Set(d1, fi[r][c][j]), hn::Set(d1, dw[r][j] * dx), acc[r][c]);
      }
    }
  }
  float Finish(int, int, hn::Vec<Acc> acc) const { return hn::GetLane(acc); }
};

// Q4_K: 8 sub-blocks of 32 with 6-bit scale and min. Sub-block j holds nibble plane (j & 1) of
// qs[32 * (j / 2) ...]. One 256-element block per step; the min terms are summed separately
// as scalars and subtracted in Finish.
HWY_INLINE hn::Vec<D16B> NibblesQ4_K(D16B d16, const BlockQ4_K& b, int j, size_t off) {
  const hn::Rebind<uint8_t, D16B> d8;
  const auto v = hn::PromoteTo(d16, hn::LoadU(d8, b.qs + 32 * (j / 2) + off));
  return (j & 1) ? hn::ShiftRight<4>(v) : hn::And(v, hn::Set(d16, 15));
}

struct Q4KKernelBase : QuantKernelBase<BlockQ4_K> {
  using QuantKernelBase::QuantKernelBase;
  int64_t Steps() const { return t.n / kQK_K; }
  const int32_t* XS(int c) const {
    return reinterpret_cast<const int32_t*>(t.a + c * t.as + t.l.sum_off);
  }
};

template <int RMax, int CMax>
struct Q4KKernel : Q4KKernelBase {
  mutable float minsum[RMax][CMax] = {};
  using Q4KKernelBase::Q4KKernelBase;
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const size_t N = hn::Lanes(d16);
    int sc[R][8], mn[R][8];
    for (int r = 0; r < R; ++r) UnpackScalesQ4_K(W(r)[b].scales, sc[r], mn[r]);
    hn::Vec<D32B> s0[R][C], s1[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) s0[r][c] = s1[r][c] = hn::Zero(d32);
    for (int j = 0; j < 8; ++j) {
      hn::Vec<D16B> wv[R][kNV];
      for (int r = 0; r < R; ++r)
        for (size_t v = 0; v < kNV; ++v) wv[r][v] = NibblesQ4_K(d16, W(r)[b], j, v * N);
      for (int c = 0; c < C; ++c) {
        const int16_t* xj = XQ(c) + b * kQK_K + 32 * j;
        for (size_t v = 0; v < kNV; ++v) {
          const auto xv = hn::LoadU(d16, xj + v * N);
          for (int r = 0; r < R; ++r) {
            // q * x <= 15 * 127 fits int16; the scale multiply widens to int32.
            const auto p = hn::Mul(wv[r][v], xv);
            s0[r][c] = hn::ReorderWidenMulAccumulate(
                d32, p, hn::Set(d16, static_cast<int16_t>(sc[r][j])), s0[r][c], s1[r][c]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = HalfToFloat(&W(r)[b].d), dmin = HalfToFloat(&W(r)[b].dmin);
      for (int c = 0; c < C; ++c) {
        const float dx = XD(c, b);
        acc[r][c] = hn::MulAdd(hn::ConvertTo(df, hn::Add(s0[r][c], s1[r][c])), hn::Set(df, d * dx),
                               acc[r][c]);
        const int32_t* xs = XS(c) + b * 8;
        int msum = 0;
        for (int j = 0; j < 8; ++j) msum += mn[r][j] * xs[j];
        minsum[r][c] = std::fma(dmin * dx, static_cast<float>(msum), minsum[r][c]);  // as VNNI
      }
    }
  }
  float Finish(int r, int c, hn::Vec<DFB> acc) const { return Sum(DFB(), acc) - minsum[r][c]; }
};

// Q6_K: elements 32k .. 32k+31 of a 128-element half h (k = 0..3) take nibble (k >= 2) of
// ql[64h + 32(k % 2) + l] and bits 2k, 2k+1 of qh[32h + l]; value q - 32; scale per 16.
HWY_INLINE hn::Vec<D16B> ValuesQ6_K(D16B d16, const BlockQ6_K& b, int t, size_t off) {
  const hn::Rebind<uint8_t, D16B> d8;
  const int h = t / 4, k = t % 4;
  auto lo = hn::PromoteTo(d16, hn::LoadU(d8, b.ql + 64 * h + 32 * (k % 2) + off));
  lo = k < 2 ? hn::And(lo, hn::Set(d16, 15)) : hn::ShiftRight<4>(lo);
  auto hi = hn::PromoteTo(d16, hn::LoadU(d8, b.qh + 32 * h + off));
  hi = hn::And(hn::ShiftRightSame(hi, 2 * k), hn::Set(d16, 3));
  return hn::Sub(hn::Or(lo, hn::ShiftLeft<4>(hi)), hn::Set(d16, 32));
}

// Scale of each lane for elements [32t + off, + Lanes): the first 16 use scales[2t], the rest
// scales[2t + 1].
HWY_INLINE hn::Vec<D16B> ScalesQ6_K(D16B d16, const BlockQ6_K& b, int t, size_t off) {
#if HWY_TARGET != HWY_SCALAR
  if (hn::Lanes(d16) == 32) {
    const hn::Half<D16B> dh;
    return hn::Combine(d16, hn::Set(dh, b.scales[2 * t + 1]), hn::Set(dh, b.scales[2 * t]));
  }
#endif
  return hn::Set(d16, b.scales[2 * t + (off >= 16 ? 1 : 0)]);
}

// Per block, each partial lane (four adjacent elements of every 32-element group) sums
// scale * (q - 32) * x over the eight groups; acc = fma(dw * dx, float(lane), acc) per block.
struct Q6KKernel : QuantKernelBase<BlockQ6_K> {
  static constexpr bool kOrdered = true;
  using QuantKernelBase::QuantKernelBase;
  int64_t Steps() const { return t.n / kQK_K; }
  template <int R, int C>
  HWY_INLINE void Step(int64_t b, hn::Vec<DFB> (&acc)[R][C]) const {
    const D16B d16;
    const D32B d32;
    const DFB df;
    const size_t N = hn::Lanes(d16);
    hn::Vec<D32B> s0[R][C][kNV], s1[R][C][kNV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c)
        for (size_t v = 0; v < kNV; ++v) s0[r][c][v] = s1[r][c][v] = hn::Zero(d32);
    for (int q = 0; q < 8; ++q) {
      hn::Vec<D16B> wv[R][kNV], sv[R][kNV];
      for (int r = 0; r < R; ++r) {
        for (size_t v = 0; v < kNV; ++v) {
          wv[r][v] = ValuesQ6_K(d16, W(r)[b], q, v * N);
          sv[r][v] = ScalesQ6_K(d16, W(r)[b], q, v * N);
        }
      }
      for (int c = 0; c < C; ++c) {
        const int16_t* xj = XQ(c) + b * kQK_K + 32 * q;
        for (size_t v = 0; v < kNV; ++v) {
          const auto xv = hn::LoadU(d16, xj + v * N);
          for (int r = 0; r < R; ++r) {
            // (q - 32) * x <= 32 * 127 fits int16.
            const auto p = hn::Mul(wv[r][v], xv);
            s0[r][c][v] = hn::ReorderWidenMulAccumulate(d32, p, sv[r][v], s0[r][c][v], s1[r][c][v]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = HalfToFloat(&W(r)[b].d);
      for (int c = 0; c < C; ++c) {
        hn::Vec<D32B> sum[kNV];
        for (size_t v = 0; v < kNV; ++v) sum[v] = hn::Add(s0[r][c][v], s1[r][c][v]);
        acc[r][c] =
            hn::MulAdd(hn::Set(df, XD(c, b) * d), hn::ConvertTo(df, Partials8(sum)), acc[r][c]);
      }
    }
  }
  float Finish(int, int, hn::Vec<DFB> acc) const { return ReducePartials(acc); }
};
