// Element types of GGUF tensors and their block layouts (bit-exact with the GGUF/ggml format).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

namespace es {

// Numeric ids are the on-disk ggml type ids.
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ4_NL = 20,
  kIQ4_XS = 23,
  kBF16 = 30,
  kMXFP4 = 39,
};

struct TypeTraits {
  const char* name;
  int block_elems;  // elements per block
  int block_bytes;  // bytes per block
  bool supported;   // edgeshard can compute with it
};

// nullopt for ids that are not ggml types at all.
std::optional<TypeTraits> GetTypeTraits(uint32_t type_id);
const TypeTraits& Traits(TensorType t);
inline const char* TypeName(TensorType t) {
  return Traits(t).name;
}
// Bytes of one row of `n` elements; n must be a multiple of the block size.
size_t RowBytes(TensorType t, int64_t n);
// Parses names such as "q4_0", "Q4_K", "f16" (case-insensitive).
std::optional<TensorType> ParseTypeName(const std::string& name);

constexpr int kQK4_0 = 32;
constexpr int kQK32 = 32;  // block size of Q4_1, Q5_0, Q5_1, Q8_1, IQ4_NL and MXFP4
constexpr int kQK8_0 = 32;
constexpr int kQK_K = 256;
constexpr int kKScaleBytes = 12;

using f16_t = uint16_t;
using bf16_t = uint16_t;

#pragma pack(push, 1)
struct BlockQ4_0 {
  f16_t d;
  uint8_t qs[kQK4_0 / 2];  // low nibbles: elements 0..15, high nibbles: 16..31
};
struct BlockQ8_0 {
  f16_t d;
  int8_t qs[kQK8_0];
};
struct BlockQ4_1 {
  f16_t d;
  f16_t m;                // value = d * q + m
  uint8_t qs[kQK32 / 2];  // nibbles as in Q4_0
};
struct BlockQ5_0 {
  f16_t d;
  uint8_t qh[4];          // bit e (little-endian uint32): fifth bit of element e
  uint8_t qs[kQK32 / 2];  // low four bits as Q4_0's nibbles; value = d * (q - 16)
};
struct BlockQ5_1 {
  f16_t d;
  f16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK32 / 2];
};
// Activation blocks for Q4_1/Q5_1 dot products: s = d * sum(qs), with d before f16 rounding.
struct BlockQ8_1 {
  f16_t d;
  f16_t s;
  int8_t qs[kQK32];
};
// Nibbles as in Q4_0, each an index into kIQ4NLValues; value = d * kIQ4NLValues[q].
struct BlockIQ4_NL {
  f16_t d;
  uint8_t qs[kQK32 / 2];
};
// OCP microscaling FP4: an E8M0 power-of-two scale and 32 E2M1 values as nibbles (laid out as
// Q4_0's); value = kMXFP4Values[q] * 2^(e - 128) (the table holds twice the E2M1 values).
struct BlockMXFP4 {
  uint8_t e;
  uint8_t qs[kQK32 / 2];
};
struct BlockQ4_K {
  f16_t d;
  f16_t dmin;
  uint8_t scales[kKScaleBytes];  // 8 six-bit scales and 8 six-bit mins, packed
  uint8_t qs[kQK_K / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  f16_t d;
};
// Q2_K: 16 groups of 16; value d * (scale & 15) * q - dmin * (scale >> 4), q two bits.
struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];  // per group: 4-bit scale (low nibble), 4-bit min (high nibble)
  uint8_t qs[kQK_K / 4];
  f16_t d;
  f16_t dmin;
};
// Q3_K: 16 groups of 16; value d * (scale - 32) * (q - 4), q = two low bits | high bit << 2.
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[kKScaleBytes];  // 16 six-bit scales, packed
  f16_t d;
};
// Q5_K: Q4_K's scales and mins with a fifth bit per quant in qh.
struct BlockQ5_K {
  f16_t d;
  f16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
// IQ4_XS: 8 groups of 32 with a 6-bit scale; quants index the 16-entry non-linear IQ4_NL table.
struct BlockIQ4_XS {
  f16_t d;
  uint16_t scales_h;             // high 2 bits of group scale ib at bits 2ib..2ib+1
  uint8_t scales_l[kQK_K / 64];  // low 4 bits, two groups per byte
  uint8_t qs[kQK_K / 2];
};
// Activation blocks for K-quant dot products (never stored in files).
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
#pragma pack(pop)
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockIQ4_XS) == 136);
static_assert(sizeof(BlockMXFP4) == 17);

// IQ4_NL's 16 non-linear levels (the GGUF format's table).
inline constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// E2M1's 16 values, doubled to integers (0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives).
inline constexpr int8_t kMXFP4Values[16] = {0, 1,  2,  3,  4,  6,  8,  12,
                                            0, -1, -2, -3, -4, -6, -8, -12};

// Half of an E8M0 scale, 2^(e - 128), the factor MXFP4's doubled values are multiplied by
// (e 0 and 1 are the subnormals 2^-128 and 2^-127).
inline float E8M0Half(uint8_t e) {
  const uint32_t bits = e < 2 ? uint32_t{0x00200000} << e : uint32_t(e - 1) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// IEEE half <-> float, round-to-nearest-even (matches F16C hardware conversion).
float F16ToF32(f16_t h);
f16_t F32ToF16(float f);
inline float BF16ToF32(bf16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round-to-nearest-even; NaN stays NaN.
bf16_t F32ToBF16(float f);

}  // namespace es
