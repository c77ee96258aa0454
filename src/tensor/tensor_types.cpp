#include "tensor/tensor_types.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <stdexcept>

namespace es {
namespace {

struct Entry {
  uint32_t id;
  TypeTraits traits;
};

constexpr std::array<Entry, 18> kTypes = {{
    {0, {"F32", 1, 4, true}},
    {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 18, true}},
    {3, {"Q4_1", 32, 20, true}},
    {6, {"Q5_0", 32, 22, true}},
    {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},
    {9, {"Q8_1", 32, 36, false}},
    {10, {"Q2_K", 256, 84, true}},
    {11, {"Q3_K", 256, 110, true}},
    {12, {"Q4_K", 256, 144, true}},
    {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},
    {15, {"Q8_K", 256, 292, false}},
    {20, {"IQ4_NL", 32, 18, true}},
    {23, {"IQ4_XS", 256, 136, true}},
    {30, {"BF16", 1, 2, true}},
    {39, {"MXFP4", 32, 17, true}},
}};

}  // namespace

std::optional<TypeTraits> GetTypeTraits(uint32_t type_id) {
  for (const auto& e : kTypes)
    if (e.id == type_id) return e.traits;
  return std::nullopt;
}

const TypeTraits& Traits(TensorType t) {
  for (const auto& e : kTypes)
    if (e.id == static_cast<uint32_t>(t)) return e.traits;
  throw std::logic_error("unknown tensor type id");
}

size_t RowBytes(TensorType t, int64_t n) {
  const auto& tr = Traits(t);
  return static_cast<size_t>(n / tr.block_elems) * tr.block_bytes;
}

std::optional<TensorType> ParseTypeName(const std::string& name) {
  std::string up = name;
  std::transform(up.begin(), up.end(), up.begin(), [](unsigned char c) { return std::toupper(c); });
  for (const auto& e : kTypes)
    if (up == e.traits.name) return static_cast<TensorType>(e.id);
  return std::nullopt;
}

float F16ToF32(f16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

f16_t F32ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) return static_cast<f16_t>(sign | (abs > 0x7f800000 ? 0x7e00 : 0x7c00));
  if (abs >= 0x477ff000) return static_cast<f16_t>(sign | 0x7c00);  // >= 65520 rounds to inf
  if (abs >= 0x38800000) {  // normal half: rebias exponent, round mantissa half to even
    const uint32_t v = abs - 0x38000000u;
    return static_cast<f16_t>(sign | ((v + 0xfff + ((v >> 13) & 1)) >> 13));
  }
  // Subnormal half: the ulp of 0.5f is 2^-24, the half subnormal unit, so the FPU's add rounds.
  float af;
  std::memcpy(&af, &abs, 4);
  const float r = af + 0.5f;
  uint32_t rb;
  std::memcpy(&rb, &r, 4);
  return static_cast<f16_t>(sign | (rb - 0x3f000000u));
}

bf16_t F32ToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<bf16_t>((u >> 16) | 64);  // quiet NaN
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<bf16_t>(u >> 16);
}

}  // namespace es
