// Float-weight kernels (F32, F16, BF16), and F16's interleaved group tiles on AVX-512. Part of
// kernels_matmul.cpp's Highway translation unit: included once per target inside
// es::kernels::HWY_NAMESPACE (hence no include guard), after the definitions it uses (Tile,
// PrefetchAhead, Sum). Defines ES_F16_X16: whether this target has the F16 group tiles.

// Float weights: one vector of N elements per step; the tail past the last full vector is
// added in Finish.
template <class Loader>
struct FloatKernel {
  using Acc = DF;
  // One accumulator per output in every tile shape, so that decode and prompt rows give the same
  // result (with 16 lanes this is also llama.cpp's order for rows of a multiple of 16).
  static constexpr bool kOrdered = true;
  const TileArgs& t;
  int64_t N;
  explicit FloatKernel(const TileArgs& args) : t(args), N(static_cast<int64_t>(hn::Lanes(DF()))) {}
  int64_t Steps() const { return t.n / N; }
  const float* X(int c) const { return reinterpret_cast<const float*>(t.a + c * t.as); }
  template <int R, int C>
  HWY_INLINE void Step(int64_t s, VF (&acc)[R][C]) const {
    const DF df;
    const Loader load;
    VF wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load(df, t.w + r * t.wrb, s * N);
    for (int c = 0; c < C; ++c) {
      const VF xv = hn::LoadU(df, X(c) + s * N);
      for (int r = 0; r < R; ++r) acc[r][c] = hn::MulAdd(wv[r], xv, acc[r][c]);
    }
  }
  float Finish(int r, int c, VF acc) const {
    float sum = Sum(DF(), acc);
    // A fused chain, written out: left to the compiler, contraction varied between builds
    // (sanitizers) and rows, and the GPU's shader takes this order.
    for (int64_t i = Steps() * N; i < t.n; ++i)
      sum = std::fma(Loader::One(t.w + r * t.wrb, i), X(c)[i], sum);
    return sum;
  }
};

struct LoadF32 {
  HWY_INLINE VF operator()(DF df, const uint8_t* row, int64_t k) const {
    return hn::LoadU(df, reinterpret_cast<const float*>(row) + k);
  }
  static float One(const uint8_t* row, int64_t k) { return reinterpret_cast<const float*>(row)[k]; }
};
struct LoadF16 {
  HWY_INLINE VF operator()(DF df, const uint8_t* row, int64_t k) const {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + k));
  }
  static float One(const uint8_t* row, int64_t k) {
    return F16ToF32(reinterpret_cast<const f16_t*>(row)[k]);
  }
};
struct LoadBF16 {
  HWY_INLINE VF operator()(DF df, const uint8_t* row, int64_t k) const {
    const hn::Rebind<hwy::bfloat16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::bfloat16_t*>(row) + k));
  }
  static float One(const uint8_t* row, int64_t k) {
    return BF16ToF32(reinterpret_cast<const bf16_t*>(row)[k]);
  }
};

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define ES_F16_X16 1
// F16 interleaved in groups of 16 rows (Interleave16): per 32-element block, the 16 rows' 64-byte
// pieces one after another, so that 16 rows stream as one sequential read (several row-major
// rows at once measured slower than one, and one row alone is bound by its FMA chain). Each row
// keeps FloatKernel's single accumulator over 16-lane vectors in order and its final Sum, so
// results are bit-identical to the row-major tiles. C activation rows per pass over 16 rows
// (C == 1, decode), 8 (C <= 3) or 4: the accumulators must fit 32 registers, and wider tiles
// convert each weight vector for more columns.
// The tile over one group, `Elem` the group's element type (f16 as stored, or float from a
// panel): weight vector (b, r, half) is row r's elements 32b + 16 half.. of the group.
template <int C, class Elem>
HWY_INLINE void GroupTile(const TileArgs& t, const Elem* group) {
  const DF df;
  static_assert(hn::MaxLanes(DF()) == 16, "the layout's 32-byte pieces are one 16-lane vector");
  constexpr int kRows = C == 1 ? 16 : C <= 3 ? 8 : 4;
  const int64_t nb = t.n / 32;
  for (int h = 0; h < 16; h += kRows) {
    VF acc[kRows][C];
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = hn::Zero(df);
    for (int64_t b = 0; b < nb; ++b) {
      const Elem* g = group + static_cast<size_t>(b) * 16 * 32;
      if constexpr (C == 1)
        PrefetchAhead(reinterpret_cast<const uint8_t*>(g), 16 * 32 * sizeof(Elem));
      for (int half = 0; half < 2; ++half) {
        VF x[C];
        for (int c = 0; c < C; ++c)
          x[c] = hn::LoadU(df, reinterpret_cast<const float*>(t.a + c * t.as) + 32 * b + 16 * half);
        for (int r = 0; r < kRows; ++r) {
          VF w;
          if constexpr (std::is_same_v<Elem, float>)
            w = hn::Load(df, g + 32 * (h + r) + 16 * half);
          else
            w = hn::PromoteTo(
                df, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(), g + 32 * (h + r) + 16 * half));
          for (int c = 0; c < C; ++c) acc[r][c] = hn::MulAdd(w, x[c], acc[r][c]);
        }
      }
    }
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < C; ++c) t.y[c * t.ldy + h + r] = Sum(df, acc[r][c]);
  }
}
template <int C>
HWY_NOINLINE void F16x16Tile(const TileArgs& t) {
  GroupTile<C>(t, reinterpret_cast<const hwy::float16_t*>(t.w));
}

// A prompt's column block meets each group of 16 F16 rows many times: F16x16Tile converts every
// weight vector again for each tile of C columns, and on Intel the conversions take FMA ports.
// There (detail::UseF16Panel), from kF16PanelMinCols columns a group is converted once into an
// F32 panel of the same layout that the tiles read instead; the products and their order are
// F16x16Tile's (bit-identical).
constexpr int64_t kF16PanelMinCols = 12;
const float* F16Panel(const uint8_t* g, int64_t n) {
  thread_local hwy::AlignedFreeUniquePtr<float[]> panel;
  thread_local int64_t panel_n = 0;
  if (panel_n < n) panel = hwy::AllocateAligned<float>(static_cast<size_t>(16 * n)), panel_n = n;
  const DF df;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const auto* h = reinterpret_cast<const hwy::float16_t*>(g);
  for (int64_t i = 0; i < 16 * n; i += 16)
    hn::Store(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, panel.get() + i);
  return panel.get();
}
// t.w: the panel.
template <int C>
HWY_NOINLINE void F16PanelTile(const TileArgs& t) {
  GroupTile<C>(t, reinterpret_cast<const float*>(t.w));
}
#else
#define ES_F16_X16 0
#endif
