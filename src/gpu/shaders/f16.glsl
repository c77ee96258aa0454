// IEEE half-precision conversions done in integer arithmetic: round to nearest even, subnormals
// kept. GLSL leaves packHalf2x16's rounding to the implementation, and software drivers flush
// half subnormals, which moves results away from the CPU build's.
#ifndef ES_F16_GLSL
#define ES_F16_GLSL

uint F32ToF16Bits(float f) {
  const uint x = floatBitsToUint(f);
  const uint sign = (x >> 16) & 0x8000u;
  const uint ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN, inf
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504
  if (ax < 0x38800000u)  // below 2^-14: a subnormal half, in units of 2^-24 (exact scaling)
    return sign | uint(roundEven(uintBitsToFloat(ax) * 16777216.0));
  uint h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint rest = ax & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0u)) h += 1u;  // may carry: still right
  return sign | h;
}

float F16BitsToF32(uint h) {
  const uint sign = (h & 0x8000u) << 16;
  const uint e = (h >> 10) & 0x1fu;
  const uint m = h & 0x3ffu;
  if (e == 0u) {
    const float v = float(m) * 5.9604644775390625e-8;  // m * 2^-24
    return sign != 0u ? -v : v;
  }
  if (e == 31u) return uintBitsToFloat(sign | 0x7f800000u | (m << 13));
  return uintBitsToFloat(sign | ((e + 112u) << 23) | (m << 13));
}

float F16Round(float v) {
  return F16BitsToF32(F32ToF16Bits(v));
}
vec2 F16PairToF32(uint w) {  // two halves of a 32-bit word, low first
  return vec2(F16BitsToF32(w & 0xFFFFu), F16BitsToF32(w >> 16));
}
uint F32PairToF16(float a, float b) {
  return F32ToF16Bits(a) | (F32ToF16Bits(b) << 16);
}

#endif
