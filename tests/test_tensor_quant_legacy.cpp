// Reference codecs of Q4_1, Q5_0, Q5_1, IQ4_NL and Q8_1: dequantization of hand-built blocks,
// llama.cpp's quantization rules and round trips. (Their reference dot products are checked with
// the other types' in test_tensor_quant's VecDotRef.MatchesDequantizedDot; that whole files equal
// llama-quantize's bytes in test_quantize's QuantizeFile.LegacyTypesEqualLlamaQuantizeBytes.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "edgeshard/error.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"
#include "test_util.h"

namespace {

using es::TensorType;

constexpr TensorType kLegacy[] = {TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1,
                                  TensorType::kIQ4_NL, TensorType::kMXFP4};

using es::test::Gaussian;
std::vector<uint8_t> Quantize(TensorType t, const std::vector<float>& x) {
  return es::test::QuantizeRef(t, x);
}
std::vector<float> Dequantize(TensorType t, const void* src, int64_t n) {
  return es::test::DequantizeRef(t, src, n);
}

// Nibble bytes: element j (< 16) = j, element 16 + j = 15 - j.
void RampNibbles(uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
}
int RampNibble(int e) {
  return e < 16 ? e : 31 - e;
}

TEST(TypesLegacy, TraitsAndNames) {
  for (TensorType t : kLegacy) {
    EXPECT_TRUE(es::Traits(t).supported) << es::TypeName(t);
    EXPECT_EQ(es::Traits(t).block_elems, 32);
  }
  EXPECT_EQ(es::Traits(TensorType::kQ4_1).block_bytes, 20);
  EXPECT_EQ(es::Traits(TensorType::kQ5_0).block_bytes, 22);
  EXPECT_EQ(es::Traits(TensorType::kQ5_1).block_bytes, 24);
  EXPECT_EQ(es::Traits(TensorType::kIQ4_NL).block_bytes, 18);
  EXPECT_EQ(es::Traits(TensorType::kQ8_1).block_bytes, 36);
  EXPECT_EQ(es::ParseTypeName("iq4_nl"), TensorType::kIQ4_NL);
  EXPECT_EQ(static_cast<uint32_t>(TensorType::kIQ4_NL), 20u);
  EXPECT_TRUE(es::GetTypeTraits(20));
}

TEST(DequantizeLegacy, Q4_1) {
  es::BlockQ4_1 b;
  b.d = es::F32ToF16(0.5f);
  b.m = es::F32ToF16(-1.0f);
  RampNibbles(b.qs);
  const auto y = Dequantize(TensorType::kQ4_1, &b, 32);
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[e], 0.5f * RampNibble(e) - 1.0f) << e;
}

TEST(DequantizeLegacy, Q5_0HighBitsAndOffset) {
  es::BlockQ5_0 b;
  b.d = es::F32ToF16(0.25f);
  const uint32_t qh = 0xAAAAAAAAu;  // odd elements carry the fifth bit
  std::memcpy(b.qh, &qh, 4);
  RampNibbles(b.qs);
  const auto y = Dequantize(TensorType::kQ5_0, &b, 32);
  for (int e = 0; e < 32; ++e)
    EXPECT_EQ(y[e], 0.25f * ((RampNibble(e) | ((e & 1) << 4)) - 16)) << e;
}

TEST(DequantizeLegacy, Q5_1) {
  es::BlockQ5_1 b;
  b.d = es::F32ToF16(0.5f);
  b.m = es::F32ToF16(2.0f);
  const uint8_t qh[4] = {0xFF, 0xFF, 0x00, 0x01};  // elements 0..15 and 24
  std::memcpy(b.qh, qh, 4);
  RampNibbles(b.qs);
  const auto y = Dequantize(TensorType::kQ5_1, &b, 32);
  for (int e = 0; e < 32; ++e) {
    const int high = (e < 16 || e == 24) ? 16 : 0;
    EXPECT_EQ(y[e], 0.5f * (RampNibble(e) | high) + 2.0f) << e;
  }
}

TEST(DequantizeLegacy, IQ4_NLUsesTheNonLinearTable) {
  es::BlockIQ4_NL b;
  b.d = es::F32ToF16(0.125f);
  RampNibbles(b.qs);
  const int8_t table[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                            1,    13,   25,  38,  53,  69,  89,  113};
  const auto y = Dequantize(TensorType::kIQ4_NL, &b, 32);
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[e], 0.125f * table[RampNibble(e)]) << e;
}

TEST(DequantizeLegacy, MXFP4UsesAPowerOfTwoAndTheFp4Levels) {
  es::BlockMXFP4 b;
  b.e = 126;  // half of 2^(126 - 127): 0.25
  RampNibbles(b.qs);
  const int8_t doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  const auto y = Dequantize(TensorType::kMXFP4, &b, 32);
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[e], 0.25f * doubled[RampNibble(e)]) << e;
  EXPECT_EQ(es::Traits(TensorType::kMXFP4).block_bytes, 17);
  EXPECT_EQ(es::ParseTypeName("mxfp4"), TensorType::kMXFP4);
  EXPECT_EQ(static_cast<uint32_t>(TensorType::kMXFP4), 39u);
  // E8M0 halves, the subnormal ends included.
  EXPECT_EQ(es::E8M0Half(0), std::ldexp(1.0f, -128));
  EXPECT_EQ(es::E8M0Half(1), std::ldexp(1.0f, -127));
  EXPECT_EQ(es::E8M0Half(128), 1.0f);
  EXPECT_EQ(es::E8M0Half(254), std::ldexp(1.0f, 126));
}

// llama.cpp's rule: the scale maps the block's largest magnitude into [4, 8) (doubled levels up
// to 12) and every value takes its nearest level.
TEST(QuantizeLegacy, MXFP4ScaleAndNearestLevels) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto x = Gaussian(32, 700 + seed, 3.0f);
    const auto q = Quantize(TensorType::kMXFP4, x);
    const auto& b = *reinterpret_cast<const es::BlockMXFP4*>(q.data());
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    const float d = es::E8M0Half(b.e);
    EXPECT_GE(amax / (2 * d), 4.0f) << seed;
    EXPECT_LT(amax / (2 * d), 8.0f) << seed;
    const auto y = Dequantize(TensorType::kMXFP4, q.data(), 32);
    const int8_t doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    for (int e = 0; e < 32; ++e)
      for (int8_t l : doubled) ASSERT_LE(std::fabs(y[e] - x[e]), std::fabs(l * d - x[e])) << e;
  }
}

TEST(QuantizeQ8_1, SumIsScaleTimesQuantSum) {
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = 0.37f * static_cast<float>(i % 32) - 3.0f;
  std::fill(x.begin() + 32, x.end(), 0.0f);  // a zero block
  const auto q = Quantize(TensorType::kQ8_1, x);
  const auto* b = reinterpret_cast<const es::BlockQ8_1*>(q.data());
  float amax = 0;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  int sum = 0;
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(b[0].qs[i], static_cast<int>(std::nearbyint(x[i] * (127.0f / amax)))) << i;
    sum += b[0].qs[i];
  }
  EXPECT_EQ(b[0].d, es::F32ToF16(amax / 127.0f));
  // s uses d before its f16 rounding (llama.cpp's x86 quantize_row_q8_1).
  EXPECT_EQ(b[0].s, es::F32ToF16(amax / 127.0f * static_cast<float>(sum)));
  EXPECT_EQ(b[1].d, 0);
  EXPECT_EQ(b[1].s, 0);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(b[1].qs[i], 0);
}

TEST(QuantizeLegacy, MinMaxTypesKeepTheRangeEnds) {
  // Q4_1/Q5_1: min maps to 0, max to 15/31 (up to the f16 rounding of d and m).
  auto x = Gaussian(32, 5, 1.0f);
  const float lo = *std::min_element(x.begin(), x.end());
  const float hi = *std::max_element(x.begin(), x.end());
  for (TensorType t : {TensorType::kQ4_1, TensorType::kQ5_1}) {
    const auto y = Dequantize(t, Quantize(t, x).data(), 32);
    EXPECT_NEAR(*std::min_element(y.begin(), y.end()), lo, 2e-3f) << es::TypeName(t);
    EXPECT_NEAR(*std::max_element(y.begin(), y.end()), hi, 2e-2f) << es::TypeName(t);
  }
  // Q5_0: the value of largest magnitude maps to -16 * d exactly.
  x[7] = -4.0f;
  const auto q = Quantize(TensorType::kQ5_0, x);
  EXPECT_EQ(Dequantize(TensorType::kQ5_0, q.data(), 32)[7], -4.0f);
}

TEST(QuantizeLegacy, RoundTripErrorPerType) {
  const int64_t n = 4096;
  const auto x = Gaussian(n, 21, 0.02f);
  struct Bound {
    TensorType t;
    double rel_rmse;
  };
  for (const Bound b : {Bound{TensorType::kQ4_1, 0.12}, Bound{TensorType::kQ5_0, 0.06},
                        Bound{TensorType::kQ5_1, 0.05}, Bound{TensorType::kIQ4_NL, 0.11},
                        Bound{TensorType::kMXFP4, 0.2}}) {
    const auto y = Dequantize(b.t, Quantize(b.t, x).data(), n);
    double err = 0, ref = 0;
    for (int64_t i = 0; i < n; ++i) {
      err += (y[i] - x[i]) * (y[i] - x[i]);
      ref += x[i] * x[i];
    }
    const double rel = std::sqrt(err / ref);
    std::printf("[ %-6s ] relative RMS error %.4f\n", es::TypeName(b.t), rel);
    EXPECT_LE(rel, b.rel_rmse) << es::TypeName(b.t);
    EXPECT_GT(rel, 0.0) << es::TypeName(b.t);
  }
}

TEST(QuantizeLegacy, ZeroAndConstantBlocks) {
  std::vector<float> x(96, 0.0f);
  std::fill(x.begin() + 32, x.begin() + 64, 0.75f);                     // constant block
  for (int i = 64; i < 96; ++i) x[i] = 1e-20f * static_cast<float>(i);  // below IQ4_NL's epsilon
  for (TensorType t : kLegacy) {
    const auto y = Dequantize(t, Quantize(t, x).data(), 96);
    for (int i = 0; i < 32; ++i) ASSERT_EQ(y[i], 0.0f) << es::TypeName(t) << " " << i;
    for (int i = 32; i < 64; ++i) ASSERT_NEAR(y[i], 0.75f, 2e-3f) << es::TypeName(t) << " " << i;
    for (int i = 64; i < 96; ++i) ASSERT_NEAR(y[i], 0.0f, 1e-18f) << es::TypeName(t) << " " << i;
  }
}

TEST(QuantizeLegacy, IQ4_NLSearchBeatsTheMaxScale) {
  // The scale search never does worse (weighted by x^2) than mapping the largest value to -127.
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto x = Gaussian(32, 900 + seed, 1.0f);
    const auto y = Dequantize(TensorType::kIQ4_NL, Quantize(TensorType::kIQ4_NL, x).data(), 32);
    float amax = 0, max = 0;
    for (float v : x)
      if (std::fabs(v) > amax) amax = std::fabs(v), max = v;
    const int8_t table[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                              1,    13,   25,  38,  53,  69,  89,  113};
    const float d = max / -127.0f;
    double e_search = 0, e_max = 0;
    for (int i = 0; i < 32; ++i) {
      float best = table[0] * d;
      for (int8_t q : table)
        if (std::fabs(q * d - x[i]) < std::fabs(best - x[i])) best = q * d;
      const double w = double(x[i]) * x[i];
      e_search += w * (y[i] - x[i]) * (y[i] - x[i]);
      e_max += w * (best - x[i]) * (best - x[i]);
    }
    EXPECT_LE(e_search, e_max * 1.01 + 1e-6) << "seed " << seed;
  }
}

}  // namespace
