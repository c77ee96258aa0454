// Quant unpacking of the non-linear 4-bit type IQ4_XS for GroupScaleKernel
// (kernels_matmul_kquants-inl.h, which includes this file inside es::kernels::HWY_NAMESPACE).

// IQ4_XS: group g's 32 elements are the low nibbles (elements 0..15) and high nibbles (16..31)
// of qs[16g ...], each an index into the 16 levels of kIQ4NLValues, looked up bytewise.
struct UnpackIQ4_XS {
  using Block = BlockIQ4_XS;
  static constexpr bool kMin = false;
  static void Scales(const Block& b, int* sc, int*) {
    for (int j = 0; j < 16; ++j) sc[j] = quant::IQ4XSScale(b, j / 2);  // per 16 for the kernel
  }
  static HWY_INLINE hn::Vec<D16B> Values(D16B d16, const Block& b, int g, size_t off) {
    const uint8_t* q = b.qs + 16 * g;
#if HWY_TARGET == HWY_SCALAR
    return hn::Set(d16, kIQ4NLValues[(q[off & 15] >> (off < 16 ? 0 : 4)) & 0x0F]);
#else
    const hn::Rebind<int8_t, D16B> d8;
    const hn::Rebind<uint8_t, D16B> du8;
    if constexpr (hn::MaxLanes(D16B()) == 32) {
      // All 32 elements at once; the 16-byte table repeated in both 128-bit halves.
      const hn::Half<decltype(du8)> dh;
      const auto v = hn::LoadU(dh, q);
      const auto idx = hn::Combine(du8, HighNibbles(dh, v), hn::And(v, hn::Set(dh, 15)));
      const hn::Half<decltype(d8)> dt;
      const auto t16 = hn::LoadU(dt, kIQ4NLValues);
      return hn::PromoteTo(d16,
                           hn::TableLookupBytes(hn::Combine(d8, t16, t16), hn::BitCast(d8, idx)));
    } else {
      const auto v = hn::LoadU(du8, q + (off & 15));
      const auto idx = off < 16 ? hn::And(v, hn::Set(du8, 15)) : HighNibbles(du8, v);
      const auto table = hn::LoadU(hn::Full128<int8_t>(), kIQ4NLValues);
      return hn::PromoteTo(d16, hn::TableLookupBytes(table, hn::BitCast(d8, idx)));
    }
#endif
  }
#if HWY_TARGET != HWY_SCALAR
  // High nibble of each byte (a 16-bit shift, then the low nibble).
  template <class D>
  static HWY_INLINE hn::Vec<D> HighNibbles(D d, hn::Vec<D> v) {
    const hn::Repartition<uint16_t, D> dw;
    return hn::And(hn::BitCast(d, hn::ShiftRight<4>(hn::BitCast(dw, v))), hn::Set(d, 15));
  }
#endif
};
