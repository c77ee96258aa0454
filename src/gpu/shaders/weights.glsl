// Reading a weight row of any supported type, four elements at a time. The weights are bound as
// 32-bit words (binding 0) and addressed in bytes: blocks of 18 or 34 bytes do not keep 32-bit
// alignment, and word loads work on every Vulkan device (8- and 16-bit storage are optional).
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
  return unpackHalf2x16(U16At(b)).x;
}
vec4 Bytes(uint q) {  // four unsigned bytes
  return vec4(q & 0xFFu, (q >> 8) & 0xFFu, (q >> 16) & 0xFFu, q >> 24);
}
vec4 SignedBytes(uint q) {
  return vec4(bitfieldExtract(int(q), 0, 8), bitfieldExtract(int(q), 8, 8),
              bitfieldExtract(int(q), 16, 8), bitfieldExtract(int(q), 24, 8));
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
  return vec4(unpackHalf2x16(U32At(b)), unpackHalf2x16(U32At(b + 4u)));
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
  if (j < 4u) {
    sc = U8At(base + 4u + j) & 63u;
    mn = U8At(base + 8u + j) & 63u;
  } else {
    sc = (U8At(base + 8u + j) & 15u) | ((U8At(base + 4u + j - 4u) >> 6) << 4);
    mn = (U8At(base + 8u + j) >> 4) | ((U8At(base + 4u + j) >> 6) << 4);
  }
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
#else
#error "weights.glsl: define the weight type (TYPE_F32, TYPE_Q4_0, ...)"
#endif
