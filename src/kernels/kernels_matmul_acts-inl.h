// Activation rows: conversion to the layout each weight type multiplies with (Q8_0, Q8_1, Q8_K,
// f16/bf16 rounding), and back to blocks. Part of kernels_matmul.cpp's Highway translation unit:
// included once per target inside es::kernels::HWY_NAMESPACE (hence no include guard), after the
// definitions it uses.

// Scalar f16 -> f32 through the target's conversion (a single instruction with F16C).
HWY_INLINE float HalfToFloat(const f16_t* p) {
  const hn::CappedTag<float, 1> d1;
  const hn::Rebind<hwy::float16_t, decltype(d1)> dh1;
  return hn::GetLane(hn::PromoteTo(d1, hn::LoadU(dh1, reinterpret_cast<const hwy::float16_t*>(p))));
}

// ---------------------------------------------------------------------------------------------
// Activation conversion

// f32 -> nearest f16 -> f32 (round to nearest even, overflow to inf, NaN kept), integer ops only so
// that every target rounds like the F16C instruction.
template <class DF>
HWY_INLINE hn::Vec<DF> RoundThroughF16(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const auto bits = hn::BitCast(du, v);
  const auto sign = hn::And(bits, hn::Set(du, 0x80000000u));
  const auto abs = hn::AndNot(hn::Set(du, 0x80000000u), bits);
  // Normal range: round the mantissa to 10 bits, ties to even.
  const auto odd = hn::And(hn::ShiftRight<13>(abs), hn::Set(du, 1));
  const auto rounded =
      hn::And(hn::Add(abs, hn::Add(hn::Set(du, 0xfffu), odd)), hn::Set(du, 0xffffe000u));
  // Subnormal range (|v| < 2^-14): rounding to a multiple of 2^-24 is what adding 0.5f does.
  const auto absf = hn::BitCast(df, abs);
  const auto sub = hn::Sub(hn::Add(absf, hn::Set(df, 0.5f)), hn::Set(df, 0.5f));
  auto out = hn::IfThenElse(hn::RebindMask(du, hn::Lt(absf, hn::Set(df, 6.103515625e-05f))),
                            hn::BitCast(du, sub), rounded);
  // >= 65520 rounds to infinity; NaN stays (quiet) NaN.
  // (Signed compares: x86 lacks unsigned ones and |bits| < 2^31.)
  const auto iabs = hn::BitCast(di, abs);
  out = hn::IfThenElse(hn::RebindMask(du, hn::Gt(iabs, hn::Set(di, 0x477fefff))),
                       hn::Set(du, 0x7f800000u), out);
  out = hn::IfThenElse(hn::RebindMask(du, hn::Gt(iabs, hn::Set(di, 0x7f800000))),
                       hn::Set(du, 0x7fc00000u), out);
  return hn::BitCast(df, hn::Or(out, sign));
}

// f32 -> nearest bf16 -> f32 (ties to even, NaN kept).
template <class DF>
HWY_INLINE hn::Vec<DF> RoundThroughBF16(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  const auto bits = hn::BitCast(du, v);
  const auto odd = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1));
  auto out = hn::And(hn::Add(bits, hn::Add(hn::Set(du, 0x7fffu), odd)), hn::Set(du, 0xffff0000u));
  const auto nan = hn::Or(hn::And(bits, hn::Set(du, 0xffff0000u)), hn::Set(du, 0x00400000u));
  out = hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), nan, out);
  return hn::BitCast(df, out);
}

void ConvertFloatRow(TensorType w, const float* x, int64_t n, float* out) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  int64_t i = 0;
  for (; i + static_cast<int64_t>(N) <= n; i += N) {
    auto v = hn::LoadU(df, x + i);
    if (w == TensorType::kF16) v = RoundThroughF16(df, v);
    if (w == TensorType::kBF16) v = RoundThroughBF16(df, v);
    hn::StoreU(v, df, out + i);
  }
  for (; i < n; ++i) {
    float v = x[i];
    if (w == TensorType::kF16) v = F16ToF32(F32ToF16(v));
    if (w == TensorType::kBF16) v = BF16ToF32(F32ToBF16(v));
    out[i] = v;
  }
}

// Q8_0 as llama.cpp's x86 backend: d = amax/127 (stored as f16), q = round_even(x * 127/amax).
// Portable layout: int16 quants. VNNI layout: int8 quants, biased by +128 for row-major Q8_0
// weights (the unsigned operand of vpdpbusd), or unbiased with per-lane corrections of the
// unsigned weights' offsets for Q4_0 (-8 * sum; interleaved Q8_0, which MatMul converts as if
// for Q4_0, scales it by 16 to -128 * sum).
void ConvertRowQ8_0(TensorType w, const float* x, int64_t n, uint8_t* row, const ActLayout& l) {
  const hn::CappedTag<float, 16> df;
  const size_t N = hn::Lanes(df);
  auto* dst_d = reinterpret_cast<float*>(row + l.d_off);
#if ES_VNNI
  const hn::Rebind<int8_t, decltype(df)> d8;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const hn::RebindToSigned<decltype(df)> di;
  const bool biased = w == TensorType::kQ8_0;
  auto* dxl = reinterpret_cast<float*>(row + l.dxl_off);
#else
  (void)w;
  const hn::Rebind<int16_t, decltype(df)> d16;
  auto* q = reinterpret_cast<int16_t*>(row);
#endif
  for (int64_t b = 0; b < n / kQK8_0; ++b) {
    const float* xb = x + b * kQK8_0;
    auto vmax = hn::Zero(df);
    for (size_t k = 0; k < kQK8_0; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + k)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    const float d = F16ToF32(F32ToF16(amax / 127.0f));
    dst_d[b] = d;
    const auto vid = hn::Set(df, amax != 0.0f ? 127.0f / amax : 0.0f);
    for (size_t k = 0; k < kQK8_0; k += N) {
      const auto qi = hn::NearestInt(hn::Mul(hn::LoadU(df, xb + k), vid));
#if ES_VNNI
      if (biased) {
        hn::StoreU(hn::DemoteTo(du8, hn::Add(qi, hn::Set(di, 128))), du8, row + b * kQK8_0 + k);
      } else {
        hn::StoreU(hn::DemoteTo(d8, qi), d8, reinterpret_cast<int8_t*>(row) + b * kQK8_0 + k);
      }
#else
      hn::StoreU(hn::DemoteTo(d16, qi), d16, q + b * kQK8_0 + k);
#endif
    }
#if ES_VNNI
    std::fill(dxl + 8 * b, dxl + 8 * b + 8, d);
#endif
  }
#if ES_VNNI
  if (!biased) {
    const auto* q8 = reinterpret_cast<const int8_t*>(row);
    auto* corr = reinterpret_cast<int32_t*>(row + l.corr_off);
    for (int64_t g = 0; g < n / 4; ++g)
      corr[g] = -8 * (q8[4 * g] + q8[4 * g + 1] + q8[4 * g + 2] + q8[4 * g + 3]);
    auto* bcorr = reinterpret_cast<int32_t*>(row + l.bcorr_off);
    for (int64_t b = 0; b < n / 32; ++b) {
      int32_t sum = 0;
      for (int k = 0; k < 8; ++k) sum += corr[8 * b + k];
      bcorr[b] = sum;
    }
  }
#endif
}

// Q8_K as llama.cpp: the signed value of largest magnitude maps to -127; q = min(127,
// round_even(x * -127/max)); d = 1/iscale.
void ConvertRowQ8_K(const float* x, int64_t n, uint8_t* row, const ActLayout& l) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t N = hn::Lanes(df);
  auto* dst_d = reinterpret_cast<float*>(row + l.d_off);
#if ES_VNNI
  const hn::Rebind<int8_t, decltype(df)> dq;
  auto* q = reinterpret_cast<int8_t*>(row);
  auto* bs16 = reinterpret_cast<int16_t*>(row + l.bs16_off);
  auto* bs32 = reinterpret_cast<int16_t*>(row + l.bs32_off);
#else
  const hn::Rebind<int16_t, decltype(df)> dq;
  auto* q = reinterpret_cast<int16_t*>(row);
  auto* sums = reinterpret_cast<int32_t*>(row + l.sum_off);
#endif
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    auto vmax = hn::Zero(df);
    for (size_t k = 0; k < kQK_K; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + k)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    auto* qb = q + b * kQK_K;
    int32_t s16[16] = {};
    if (amax == 0.0f) {
      dst_d[b] = 0.0f;
      std::fill(qb, qb + kQK_K, 0);
    } else {
      // The first element reaching amax decides the sign, as in the scalar reference.
      float max = 0.0f;
      for (int j = 0; j < kQK_K; ++j) {
        if (std::fabs(xb[j]) == amax) {
          max = xb[j];
          break;
        }
      }
      const float iscale = -127.0f / max;
      const auto vis = hn::Set(df, iscale);
      for (int g = 0; g < kQK_K / 16; ++g) {
        auto acc = hn::Zero(di);
        for (size_t k = 0; k < 16; k += N) {
          auto qi = hn::NearestInt(hn::Mul(hn::LoadU(df, xb + 16 * g + k), vis));
          qi = hn::Min(qi, hn::Set(di, 127));
          acc = hn::Add(acc, qi);
          hn::StoreU(hn::DemoteTo(dq, qi), dq, qb + 16 * g + k);
        }
        s16[g] = hn::GetLane(hn::SumOfLanes(di, acc));
      }
      dst_d[b] = 1.0f / iscale;
    }
    for (int g = 0; g < 8; ++g) {
#if ES_VNNI
      bs16[b * 16 + 2 * g] = static_cast<int16_t>(s16[2 * g]);
      bs16[b * 16 + 2 * g + 1] = static_cast<int16_t>(s16[2 * g + 1]);
      bs32[b * 8 + g] = static_cast<int16_t>(s16[2 * g] + s16[2 * g + 1]);
#else
      sums[b * 8 + g] = s16[2 * g] + s16[2 * g + 1];
#endif
    }
  }
}

// Activation row for the legacy types: q = round_even(x * 127/amax) as int16, d = f16(amax/127)
// per block as f32, and for Q8_1 s = f16(d * sum(q)) as f32 (d before its f16 rounding, as
// llama.cpp's x86 quantize_row_q8_1).
void ConvertRowLegacy(TensorType w, const float* x, int64_t n, uint8_t* row, const ActLayout& l) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int16_t, decltype(df)> d16;
  const size_t N = hn::Lanes(df);
  const bool with_sum = VecDotType(w) == TensorType::kQ8_1;
  auto* q = reinterpret_cast<int16_t*>(row);
  auto* dst_d = reinterpret_cast<float*>(row + l.d_off);
  auto* dst_s = reinterpret_cast<float*>(row + l.sum_off);
  for (int64_t b = 0; b < n / kQK32; ++b) {
    const float* xb = x + b * kQK32;
    auto vmax = hn::Zero(df);
    for (size_t k = 0; k < kQK32; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + k)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    const float d = amax / 127.0f;
    dst_d[b] = F16ToF32(F32ToF16(d));
    const auto vid = hn::Set(df, amax != 0.0f ? 127.0f / amax : 0.0f);
    auto vsum = hn::Zero(di);
    for (size_t k = 0; k < kQK32; k += N) {
      const auto qi = hn::NearestInt(hn::Mul(hn::LoadU(df, xb + k), vid));
      vsum = hn::Add(vsum, qi);
      hn::StoreU(hn::DemoteTo(d16, qi), d16, q + b * kQK32 + k);
    }
    if (with_sum) {
      const float sum = static_cast<float>(hn::GetLane(hn::SumOfLanes(di, vsum)));
      dst_s[b] = F16ToF32(F32ToF16(d * sum));
    }
  }
}

// Repacks a converted row into BlockQ8_0 / BlockQ8_1 (tests compare bytes).
void LegacyActsToBlocks(TensorType w, const uint8_t* row, int64_t n, void* blocks) {
  const ActLayout l = LayoutFor(w, n);
  const auto* q = reinterpret_cast<const int16_t*>(row);
  const auto* d = reinterpret_cast<const float*>(row + l.d_off);
  const auto* s = reinterpret_cast<const float*>(row + l.sum_off);
  for (int64_t b = 0; b < n / kQK32; ++b) {
    int8_t* qs;
    if (VecDotType(w) == TensorType::kQ8_1) {
      auto& out = static_cast<BlockQ8_1*>(blocks)[b];
      out.d = F32ToF16(d[b]);
      out.s = F32ToF16(s[b]);
      qs = out.qs;
    } else {
      auto& out = static_cast<BlockQ8_0*>(blocks)[b];
      out.d = F32ToF16(d[b]);
      qs = out.qs;
    }
    for (int j = 0; j < kQK32; ++j) qs[j] = static_cast<int8_t>(q[b * kQK32 + j]);
  }
}

size_t ActRowBytesImpl(TensorType w, int64_t n) {
  return LayoutFor(w, n).bytes;
}

void ConvertActsImpl(TensorType w, const float* x, int64_t ldx, int64_t n, int64_t b0, int64_t b1,
                     uint8_t* dst, size_t stride) {
  const ActLayout l = LayoutFor(w, n);
  const TensorType vt = VecDotType(w);
  for (int64_t b = b0; b < b1; ++b) {
    const float* xr = x + b * ldx;
    uint8_t* row = dst + static_cast<size_t>(b) * stride;
    if (IsLegacyWeight(w)) {
      ConvertRowLegacy(w, xr, n, row, l);
    } else if (vt == TensorType::kQ8_0) {
      ConvertRowQ8_0(w, xr, n, row, l);
    } else if (vt == TensorType::kQ8_K) {
      ConvertRowQ8_K(xr, n, row, l);
    } else {
      ConvertFloatRow(w, xr, n, reinterpret_cast<float*>(row));
    }
#if ES_ARM_DOT
    if (l.arm_off) detail::arm::ConvertActRow(w, row, n, {l.d_off, l.sum_off, l.arm_off});
#endif
  }
}

// Quant j of a converted row.
HWY_INLINE int ActQuant(TensorType w, const uint8_t* row, int64_t j) {
#if ES_VNNI
  if (w == TensorType::kQ8_0) return static_cast<int>(row[j]) - 128;
  return reinterpret_cast<const int8_t*>(row)[j];
#else
  (void)w;
  return reinterpret_cast<const int16_t*>(row)[j];
#endif
}

// Repacks one converted row into the reference block format (tests compare bytes).
void ActsToBlocksImpl(TensorType w, const uint8_t* row, int64_t n, void* blocks) {
  if (IsLegacyWeight(w)) return LegacyActsToBlocks(w, row, n, blocks);
  const ActLayout l = LayoutFor(w, n);
  const auto* d = reinterpret_cast<const float*>(row + l.d_off);
  switch (VecDotType(w)) {
    case TensorType::kQ8_0: {
      auto* out = static_cast<BlockQ8_0*>(blocks);
      for (int64_t b = 0; b < n / kQK8_0; ++b) {
        out[b].d = F32ToF16(d[b]);
        for (int j = 0; j < kQK8_0; ++j)
          out[b].qs[j] = static_cast<int8_t>(ActQuant(w, row, b * kQK8_0 + j));
      }
      break;
    }
    case TensorType::kQ8_K: {
      auto* out = static_cast<BlockQ8_K*>(blocks);
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        out[b].d = d[b];
        for (int j = 0; j < kQK_K; ++j)
          out[b].qs[j] = static_cast<int8_t>(ActQuant(w, row, b * kQK_K + j));
        for (int g = 0; g < kQK_K / 16; ++g) {
