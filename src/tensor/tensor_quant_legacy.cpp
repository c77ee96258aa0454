// Scalar reference codecs for the 32-element block types besides Q4_0/Q8_0: Q4_1, Q5_0, Q5_1,
// IQ4_NL, MXFP4, and the Q8_1 activations that Q4_1/Q5_1 weights multiply with. Rounding rules are
// llama.cpp's reference quantizers' (so files match its bytes) and dot products follow the order
// of float operations of its x86 CPU backend (docs/fidelity.md).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "tensor/tensor_quant.h"
#include "tensor/tensor_quant_internal.h"

namespace es::quant {
namespace {

inline float Half(f16_t h) {
  return F16ToF32(h);
}

inline uint32_t HighBits(const uint8_t (&qh)[4]) {
  uint32_t v;
  std::memcpy(&v, qh, 4);  // little-endian, as the file stores it
  return v;
}

// Nibble of element e (< 32): low nibbles hold elements 0..15, high nibbles 16..31.
inline int Nibble(const uint8_t* qs, int e) {
  return e < 16 ? (qs[e] & 0x0F) : (qs[e - 16] >> 4);
}

// The integers a block's elements are (value = d * v, plus m for Q4_1/Q5_1), as the dot products
// multiply them.
template <class Block>
void BlockValues(const Block& b, int* v);
template <>
void BlockValues(const BlockQ4_1& b, int* v) {
  for (int e = 0; e < kQK32; ++e) v[e] = Nibble(b.qs, e);
}
template <>
void BlockValues(const BlockQ5_0& b, int* v) {
  const uint32_t qh = HighBits(b.qh);
  for (int e = 0; e < kQK32; ++e) v[e] = (Nibble(b.qs, e) | (((qh >> e) & 1) << 4)) - 16;
}
template <>
void BlockValues(const BlockQ5_1& b, int* v) {
  const uint32_t qh = HighBits(b.qh);
  for (int e = 0; e < kQK32; ++e) v[e] = Nibble(b.qs, e) | (((qh >> e) & 1) << 4);
}
template <>
void BlockValues(const BlockIQ4_NL& b, int* v) {
  for (int e = 0; e < kQK32; ++e) v[e] = kIQ4NLValues[Nibble(b.qs, e)];
}
template <>
void BlockValues(const BlockMXFP4& b, int* v) {
  for (int e = 0; e < kQK32; ++e) v[e] = kMXFP4Values[Nibble(b.qs, e)];
}

// The factor a block's integers are multiplied by: its f16 d, or MXFP4's power of two.
template <class Block>
float Scale(const Block& b) {
  if constexpr (std::is_same_v<Block, BlockMXFP4>)
    return E8M0Half(b.e);
  else
    return Half(b.d);
}

template <class Block>
constexpr bool kHasMin = std::is_same_v<Block, BlockQ4_1> || std::is_same_v<Block, BlockQ5_1>;

// ---- dequantization (d * v, then + m: two roundings, as ggml's scalar code) ----

template <class Block>
void Dequant(const Block* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK32) {
    int v[kQK32];
    BlockValues(b[i], v);
    const float d = Scale(b[i]);
    for (int e = 0; e < kQK32; ++e) {
      y[e] = static_cast<float>(v[e]) * d;
      if constexpr (kHasMin<Block>) y[e] += Half(b[i].m);
    }
  }
}

void DequantQ8_1(const BlockQ8_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK32)
    for (int e = 0; e < kQK32; ++e) y[e] = Half(b[i].d) * b[i].qs[e];
}

// ---- quantization ----

inline void PackNibbles(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQK32 / 2; ++j)
    qs[j] = static_cast<uint8_t>((L[j] & 0x0F) | (L[j + 16] << 4));
}
inline void PackHighBits(const uint8_t* L, uint8_t (&qh)[4]) {
  uint32_t h = 0;
  for (int e = 0; e < kQK32; ++e) h |= static_cast<uint32_t>((L[e] >> 4) & 1) << e;
  std::memcpy(qh, &h, 4);
}

// Q4_1 / Q5_1: min and max of the block map to 0 and 2^bits - 1; q = (x - min) / d + 0.5 truncated
// (Q4_1 clamps to 15; Q5_1, like llama.cpp, does not need to).
template <class Block, int kBits>
void QuantMinMax(const float* x, Block* y, int64_t nb) {
  constexpr int kMax = (1 << kBits) - 1;
  for (int64_t i = 0; i < nb; ++i, x += kQK32) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int e = 0; e < kQK32; ++e) {
      lo = std::min(lo, x[e]);
      hi = std::max(hi, x[e]);
    }
    const float d = (hi - lo) / kMax;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    y[i].m = F32ToF16(lo);
    uint8_t L[kQK32];
    for (int e = 0; e < kQK32; ++e) {
      const float v = (x[e] - lo) * id + 0.5f;
      if constexpr (kBits == 4)
        L[e] = static_cast<uint8_t>(std::min(kMax, static_cast<int>(static_cast<int8_t>(v))));
      else
        L[e] = static_cast<uint8_t>(v);
    }
    PackNibbles(L, y[i].qs);
    if constexpr (kBits == 5) PackHighBits(L, y[i].qh);
  }
}

// Q5_0: the value of largest magnitude maps to -16; q = trunc(x / d + 16.5) clamped to 31.
void QuantQ5_0(const float* x, BlockQ5_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK32) {
    float amax = 0.0f, max = 0.0f;
    for (int e = 0; e < kQK32; ++e) {
      if (amax < std::fabs(x[e])) {
        amax = std::fabs(x[e]);
        max = x[e];
      }
    }
    const float d = max / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    uint8_t L[kQK32];
    for (int e = 0; e < kQK32; ++e)
      L[e] = static_cast<uint8_t>(
          std::min(31, static_cast<int>(static_cast<int8_t>(x[e] * id + 16.5f))));
    PackNibbles(L, y[i].qs);
    PackHighBits(L, y[i].qh);
  }
}

// IQ4_NL as llama-quantize writes it without an importance matrix: FitGroupIQ4's scale (the
// search IQ4_XS runs per group), then each value's nearest level.
void QuantIQ4_NL(const float* x, BlockIQ4_NL* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK32) {
    const float d = FitGroupIQ4(x);
    y[i].d = F32ToF16(d);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint8_t L[kQK32];
    for (int e = 0; e < kQK32; ++e) L[e] = static_cast<uint8_t>(NearestLevelIQ4(id * x[e]));
    PackNibbles(L, y[i].qs);
  }
}

// MXFP4 as llama.cpp's reference quantizer writes it: the scale puts the block's largest
// magnitude in [4, 8) x 2^(e - 127) (e = floor(log2(amax)) - 2 + 127, through an int as x86
// converts it), then each value takes the nearest level, the first of equals.
void QuantMXFP4(const float* x, BlockMXFP4* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK32) {
    float amax = 0.0f;
    for (int e = 0; e < kQK32; ++e) amax = std::max(amax, std::fabs(x[e]));
    const uint8_t e8 =
        amax > 0.0f
            ? static_cast<uint8_t>(static_cast<int>(std::floor(std::log2(amax)) - 2.0f + 127.0f))
            : 0;
    const float d = E8M0Half(e8);
    y[i].e = e8;
    uint8_t L[kQK32];
    for (int e = 0; e < kQK32; ++e) {
      int best = 0;
      float best_err = std::fabs(static_cast<float>(kMXFP4Values[0]) * d - x[e]);
      for (int k = 1; k < 16; ++k) {
        const float err = std::fabs(static_cast<float>(kMXFP4Values[k]) * d - x[e]);
        if (err < best_err) best = k, best_err = err;
      }
      L[e] = static_cast<uint8_t>(best);
    }
    PackNibbles(L, y[i].qs);
  }
}

// Q8_1 as llama.cpp's x86 backend quantizes activations: Q8_0's rounding (d = amax/127 stored as
// f16, q = round_even(x * 127/amax)) plus s = f16(d * sum(q)) with d before its f16 rounding.
void QuantQ8_1(const float* x, BlockQ8_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK32) {
    float amax = 0.0f;
    for (int e = 0; e < kQK32; ++e) amax = std::max(amax, std::fabs(x[e]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int e = 0; e < kQK32; ++e) {
      y[i].qs[e] = static_cast<int8_t>(RoundEven(x[e] * id));
      sum += y[i].qs[e];
    }
    y[i].d = F32ToF16(d);
    y[i].s = F32ToF16(d * static_cast<float>(sum));
  }
}

// ---- dot products ----

// llama.cpp's x86 order (vec_dot and its tinyBLAS matmul alike): eight int32 lanes of four
// adjacent products per block, acc[l] = fma(dw * dx, lane, acc[l]) over blocks, the hsum8 tree;
// Q4_1/Q5_1 add m * s per block in a scalar fma chain, added last.
template <class Block, class XBlock>
float Dot(const Block* w, const XBlock* x, int64_t nb) {
  float acc[8] = {};
  float msum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int v[kQK32];
    BlockValues(w[i], v);
    // MXFP4: llama.cpp multiplies x's d by w's scale; the product is the same either way.
    const float d = Scale(w[i]) * Half(x[i].d);
    for (int l = 0; l < 8; ++l) {
      int p = 0;
      for (int e = 4 * l; e < 4 * l + 4; ++e) p += v[e] * x[i].qs[e];
      acc[l] = std::fma(d, static_cast<float>(p), acc[l]);
    }
    if constexpr (kHasMin<Block>) msum = std::fma(Half(w[i].m), Half(x[i].s), msum);
  }
  if constexpr (kHasMin<Block>) return Hsum8(acc) + msum;
  return Hsum8(acc);
}

}  // namespace

bool IsLegacy(TensorType t) {
  return t == TensorType::kQ4_1 || t == TensorType::kQ5_0 || t == TensorType::kQ5_1 ||
         t == TensorType::kIQ4_NL || t == TensorType::kMXFP4 || t == TensorType::kQ8_1;
}

void DequantLegacy(TensorType t, const void* src, float* dst, int64_t nb) {
  switch (t) {
    case TensorType::kQ4_1:
      return Dequant(static_cast<const BlockQ4_1*>(src), dst, nb);
    case TensorType::kQ5_0:
      return Dequant(static_cast<const BlockQ5_0*>(src), dst, nb);
    case TensorType::kQ5_1:
      return Dequant(static_cast<const BlockQ5_1*>(src), dst, nb);
    case TensorType::kIQ4_NL:
      return Dequant(static_cast<const BlockIQ4_NL*>(src), dst, nb);
    case TensorType::kMXFP4:
      return Dequant(static_cast<const BlockMXFP4*>(src), dst, nb);
    default:
      return DequantQ8_1(static_cast<const BlockQ8_1*>(src), dst, nb);
  }
}

void QuantLegacy(TensorType t, const float* src, void* dst, int64_t nb) {
  switch (t) {
    case TensorType::kQ4_1:
      return QuantMinMax<BlockQ4_1, 4>(src, static_cast<BlockQ4_1*>(dst), nb);
    case TensorType::kQ5_0:
      return QuantQ5_0(src, static_cast<BlockQ5_0*>(dst), nb);
    case TensorType::kQ5_1:
      return QuantMinMax<BlockQ5_1, 5>(src, static_cast<BlockQ5_1*>(dst), nb);
    case TensorType::kIQ4_NL:
      return QuantIQ4_NL(src, static_cast<BlockIQ4_NL*>(dst), nb);
    case TensorType::kMXFP4:
      return QuantMXFP4(src, static_cast<BlockMXFP4*>(dst), nb);
    default:
      return QuantQ8_1(src, static_cast<BlockQ8_1*>(dst), nb);
  }
}

float DotLegacy(TensorType w, const void* wrow, const void* xrow, int64_t nb) {
  const auto* x8_0 = static_cast<const BlockQ8_0*>(xrow);
  const auto* x8_1 = static_cast<const BlockQ8_1*>(xrow);
  switch (w) {
    case TensorType::kQ4_1:
      return Dot(static_cast<const BlockQ4_1*>(wrow), x8_1, nb);
    case TensorType::kQ5_0:
      return Dot(static_cast<const BlockQ5_0*>(wrow), x8_0, nb);
    case TensorType::kQ5_1:
      return Dot(static_cast<const BlockQ5_1*>(wrow), x8_1, nb);
    case TensorType::kMXFP4:
      return Dot(static_cast<const BlockMXFP4*>(wrow), x8_0, nb);
    default:
      return Dot(static_cast<const BlockIQ4_NL*>(wrow), x8_0, nb);
  }
}

}  // namespace es::quant
