// Reading a weight row of any supported type, four elements at a time. The weights are bound as
// 32-bit words (binding 0) and addressed in bytes: blocks of 18 or 34 bytes do not keep 32-bit
// alignment, and word loads work on every Vulkan device (8- and 16-bit storage are optional).
#extension GL_GOOGLE_include_directive : enable
#include "f16.glsl"

layout(std430, binding = 0) readonly buffer Weights { uint w[]; };

uint U32At(uint b) {  // four bytes at any byte offset (the buffer is padded past its end)
  const uint s = (b & 3u) * 8u;
  const uint lo = w[b >> 2];
  return s == 0u ? lo : (lo >> s) | (w[(b >> 2) + 1u] << (32u - s));
}
uint U16At(uint b) {  // b even
  return (w[b >> 2] >> ((b & 2u) * 8u)) & 0xFFFFu;
}
uint U8At(uint b) {
  return (w[b >> 2] >> ((b & 3u) * 8u)) & 0xFFu;
}
float F16At(uint b) {
  return F16BitsToF32(U16At(b));
}
vec4 Bytes(uint q) {  // four unsigned bytes
  return vec4(q & 0xFFu, (q >> 8) & 0xFFu, (q >> 16) & 0xFFu, q >> 24);
}
vec4 SignedBytes(uint q) {
  return vec4(bitfieldExtract(int(q), 0, 8), bitfieldExtract(int(q), 8, 8),
              bitfieldExtract(int(q), 16, 8), bitfieldExtract(int(q), 24, 8));
}

// Q4_K's and Q5_K's 6-bit scale and min of sub-block j, packed in the 12 bytes at base + 4.
void ScaleMinK4(uint base, uint j, out uint sc, out uint mn) {
  if (j < 4u) {
    sc = U8At(base + 4u + j) & 63u;
    mn = U8At(base + 8u + j) & 63u;
  } else {
    sc = (U8At(base + 8u + j) & 15u) | ((U8At(base + 4u + j - 4u) >> 6) << 4);
    mn = (U8At(base + 8u + j) >> 4) | ((U8At(base + 4u + j) >> 6) << 4);
  }
}

#if defined(TYPE_F32)
vec4 Load4(uint rb, uint k) {
  const uint i = (rb >> 2) + k;
  return vec4(uintBitsToFloat(w[i]), uintBitsToFloat(w[i + 1u]), uintBitsToFloat(w[i + 2u]),
              uintBitsToFloat(w[i + 3u]));
}
#elif defined(TYPE_F16)
vec4 Load4(uint rb, uint k) {
  const uint b = rb + 2u * k;
  return vec4(F16PairToF32(U32At(b)), F16PairToF32(U32At(b + 4u)));
}
#elif defined(TYPE_BF16)
vec4 Load4(uint rb, uint k) {
  const uint b = rb + 2u * k;
  const uint p = U32At(b), q = U32At(b + 4u);
  return vec4(uintBitsToFloat(p << 16), uintBitsToFloat(p & 0xFFFF0000u),
              uintBitsToFloat(q << 16), uintBitsToFloat(q & 0xFFFF0000u));
}
#elif defined(TYPE_Q8_0)
// 34-byte blocks of 32: f16 scale, 32 int8.
vec4 Load4(uint rb, uint k) {
  const uint base = rb + 34u * (k >> 5);
  return F16At(base) * SignedBytes(U32At(base + 2u + (k & 31u)));
}
#elif defined(TYPE_Q4_0)
// 18-byte blocks of 32: f16 scale, 16 bytes; element j < 16 is byte j's low nibble, j >= 16 the
// high nibble of byte j - 16; value (q - 8) * d.
vec4 Load4(uint rb, uint k) {
  const uint base = rb + 18u * (k >> 5);
  const uint j = k & 31u;
  const uint q = (U32At(base + 2u + (j & 15u)) >> (j >= 16u ? 4u : 0u)) & 0x0F0F0F0Fu;
  return F16At(base) * (Bytes(q) - 8.0);
}
#elif defined(TYPE_Q4_K)
// 144-byte blocks of 256: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins for 8 sub-blocks
// of 32, 128 bytes of nibbles (64 elements per 32 bytes: low nibbles, then high).
vec4 Load4(uint rb, uint k) {
  const uint base = rb + 144u * (k >> 8);
  const uint e = k & 255u;
  const uint j = e >> 5;  // sub-block
  uint sc, mn;
  ScaleMinK4(base, j, sc, mn);
  const uint l = e & 63u;
  const uint q = (U32At(base + 16u + 32u * (e >> 6) + (l & 31u)) >> (l >= 32u ? 4u : 0u)) &
                 0x0F0F0F0Fu;
  return F16At(base) * float(sc) * Bytes(q) - F16At(base + 2u) * float(mn);
}
#elif defined(TYPE_Q6_K)
// 210-byte blocks of 256: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales (one
// per 16 elements), f16 d. Each half of 128 is four quarters of 32: quarter qd takes low or
// high nibbles of ql[32 * (qd & 1) + l] and bits 2 qd of qh[l].
vec4 Load4(uint rb, uint k) {
  const uint base = rb + 210u * (k >> 8);
  const uint e = k & 255u;
  const uint n = e >> 7;
  const uint qd = (e & 127u) >> 5;
  const uint l = e & 31u;
  const uint lo = (U32At(base + 64u * n + 32u * (qd & 1u) + l) >> (4u * (qd >> 1))) & 0x0F0F0F0Fu;
  const uint hi = (U32At(base + 128u + 32u * n + l) >> (2u * qd)) & 0x03030303u;
  const float sc = float(bitfieldExtract(int(U8At(base + 192u + 8u * n + (l >> 4) + 2u * qd)), 0, 8));
  return F16At(base + 208u) * sc * (Bytes(lo | (hi << 4)) - 32.0);
}
#elif defined(TYPE_Q4_1)
// 20-byte blocks of 32: f16 d, f16 m, 16 bytes of nibbles (as Q4_0); value d q + m.
vec4 Load4(uint rb, uint k) {
  const uint base = rb + 20u * (k >> 5);
  const uint j = k & 31u;
  const uint q = (U32At(base + 4u + (j & 15u)) >> (j >= 16u ? 4u : 0u)) & 0x0F0F0F0Fu;
  return F16At(base) * Bytes(q) + F16At(base + 2u);
}
#elif defined(TYPE_Q5_0) || defined(TYPE_Q5_1)
// Q5_0: 22-byte blocks of 32: f16 d, 32 fifth bits (qh), nibbles as Q4_0; value d (q - 16).
// Q5_1: 24-byte blocks: f16 d, f16 m, qh, nibbles; value d q + m.
#if defined(TYPE_Q5_0)
const uint kBlock = 22u, kQh = 2u;
#else
const uint kBlock = 24u, kQh = 4u;
#endif
vec4 Load4(uint rb, uint k) {
  const uint base = rb + kBlock * (k >> 5);
  const uint j = k & 31u;
  const uint lo = (U32At(base + kQh + 4u + (j & 15u)) >> (j >= 16u ? 4u : 0u)) & 0x0F0F0F0Fu;
  const uint hb = (U32At(base + kQh) >> j) & 15u;  // the 4 elements' fifth bits
  const uint hi = ((hb & 1u) | ((hb & 2u) << 7) | ((hb & 4u) << 14) | ((hb & 8u) << 21)) << 4;
#if defined(TYPE_Q5_0)
  return F16At(base) * (Bytes(lo | hi) - 16.0);
#else
  return F16At(base) * Bytes(lo | hi) + F16At(base + 2u);
#endif
}
#elif defined(TYPE_IQ4_NL) || defined(TYPE_IQ4_XS) || defined(TYPE_MXFP4)
// Nibbles index a table of levels: IQ4_NL's non-linear levels (18-byte blocks of 32: f16 d,
// nibbles as Q4_0), IQ4_XS's (136-byte blocks of 256: f16 d, 6-bit scales per 32 split in
// scales_h (u16) and scales_l[4], then 16 bytes of nibbles per 32), or MXFP4's E2M1 values
// (17-byte blocks of 32: an E8M0 exponent, nibbles as Q4_0; value level * 2^(e - 128)). 
#if defined(TYPE_MXFP4)
const float kLevels[16] = float[16](0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
#else
const float kLevels[16] =
    float[16](-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
#endif
vec4 Levels(uint q) {
  return vec4(kLevels[q & 15u], kLevels[(q >> 8) & 15u], kLevels[(q >> 16) & 15u],
              kLevels[(q >> 24) & 15u]);
}
vec4 Load4(uint rb, uint k) {
#if defined(TYPE_IQ4_XS)
  const uint base = rb + 136u * (k >> 8);
  const uint ib = (k & 255u) >> 5;
  const uint ls = ((U8At(base + 4u + (ib >> 1)) >> (4u * (ib & 1u))) & 15u) |
                  (((U16At(base + 2u) >> (2u * ib)) & 3u) << 4);
  const float dl = F16At(base) * (float(ls) - 32.0);
  const uint qs = base + 8u + 16u * ib;
#else
  const uint bytes = 18u;
#if defined(TYPE_MXFP4)
  const uint base = rb + 17u * (k >> 5);
  const uint e = U8At(base);
  // 2^(e - 128): E8M0 halved, as ggml scales E2M1 levels stored doubled. e = 0 is subnormal.
  const float dl = uintBitsToFloat(e < 2u ? 0x00200000u << e : (e - 1u) << 23);
  const uint qs = base + 1u;
#else
  const uint base = rb + bytes * (k >> 5);
  const float dl = F16At(base);
  const uint qs = base + 2u;
#endif
#endif
  const uint j = k & 31u;
  const uint q = U32At(qs + (j & 15u)) >> (j >= 16u ? 4u : 0u);
  return dl * Levels(q);
}
#elif defined(TYPE_Q5_K)
// 176-byte blocks of 256: f16 d, f16 dmin, 12 bytes of scales and mins (as Q4_K), 32 bytes of
// fifth bits (bit 2c or 2c+1 of qh[l] for chunk c's low or high nibbles), 128 bytes of nibbles.
vec4 Load4(uint rb, uint k) {
  const uint base = rb + 176u * (k >> 8);
  const uint e = k & 255u;
  const uint j = e >> 5;
  uint sc, mn;
  ScaleMinK4(base, j, sc, mn);
  const uint l = e & 63u, c = e >> 6;
  const uint hi4 = l >= 32u ? 4u : 0u;
  const uint lo = (U32At(base + 48u + 32u * c + (l & 31u)) >> hi4) & 0x0F0F0F0Fu;
  const uint hi = ((U32At(base + 16u + (l & 31u)) >> (2u * c + (hi4 >> 2))) & 0x01010101u) << 4;
  return F16At(base) * float(sc) * Bytes(lo | hi) - F16At(base + 2u) * float(mn);
}
#elif defined(TYPE_Q2_K)
// 84-byte blocks of 256: 16 bytes of 4-bit scale and min per 16, 64 bytes of 2-bit values (the
// half n's byte l holds elements l, l+32, l+64, l+96 of that half in bit pairs), f16 d, f16 dmin.
vec4 Load4(uint rb, uint k) {
  const uint base = rb + 84u * (k >> 8);
  const uint e = k & 255u;
  const uint n = e >> 7, j = (e >> 5) & 3u, l = e & 31u;
  const uint s = U8At(base + 8u * n + 2u * j + (l >> 4));
  const uint q = (U32At(base + 16u + 32u * n + l) >> (2u * j)) & 0x03030303u;
  return F16At(base + 80u) * float(s & 15u) * Bytes(q) - F16At(base + 82u) * float(s >> 4);
}
#elif defined(TYPE_Q3_K)
// 110-byte blocks of 256: 32 bytes of high bits (hmask), 64 bytes of 2-bit values (as Q2_K), 12
// bytes holding 16 6-bit scales, f16 d; value d (scale - 32) (q - (high bit ? 0 : 4)).
vec4 Load4(uint rb, uint k) {
  const uint base = rb + 110u * (k >> 8);
  const uint e = k & 255u;
  const uint n = e >> 7, j = (e >> 5) & 3u, l = e & 31u;
  const uint is = 8u * n + 2u * j + (l >> 4);
  const uint g = is >> 2, b = is & 3u;
  const uint low4 = g < 2u ? U8At(base + 96u + 4u * g + b) & 15u
                           : (U8At(base + 96u + 4u * (g - 2u) + b) >> 4) & 15u;
  const uint high2 = (U8At(base + 104u + b) >> (2u * g)) & 3u;
  const float dl = F16At(base + 108u) * (float(low4 | (high2 << 4)) - 32.0);
  const uint q = (U32At(base + 32u + 32u * n + l) >> (2u * j)) & 0x03030303u;
  const uint h = (U32At(base + l) >> (4u * n + j)) & 0x01010101u;
  return dl * (Bytes(q) - 4.0 + 4.0 * Bytes(h));
}
#else
#error "weights.glsl: define the weight type (TYPE_F32, TYPE_Q4_0, ...)"
#endif
