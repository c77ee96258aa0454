// Doubles and correctly rounded division and sqrt from 32-bit integer arithmetic, for the native
// builds (GPUs without shaderFloat64): the CPU build sums some floats in double and divides and
// takes roots of floats rounded once, and these give the same bits. Used a few times per row
// (norms, softmax denominators, activation scales) or once per element (SiLU's division): few
// operations next to the matmuls'.
#ifndef ES_SOFTFLOAT_GLSL
#define ES_SOFTFLOAT_GLSL

// 64-bit unsigned integers as uvec2(low, high).
uvec2 Shl64(uvec2 a, uint s) {
  if (s == 0u) return a;
  if (s >= 64u) return uvec2(0u);
  if (s >= 32u) return uvec2(0u, a.x << (s - 32u));
  return uvec2(a.x << s, (a.y << s) | (a.x >> (32u - s)));
}
uvec2 Shr64(uvec2 a, uint s) {
  if (s == 0u) return a;
  if (s >= 64u) return uvec2(0u);
  if (s >= 32u) return uvec2(a.y >> (s - 32u), 0u);
  return uvec2((a.x >> s) | (a.y << (32u - s)), a.y >> s);
}
uvec2 Add64(uvec2 a, uvec2 b) {
  uint c;
  const uint lo = uaddCarry(a.x, b.x, c);
  return uvec2(lo, a.y + b.y + c);
}
uvec2 Sub64(uvec2 a, uvec2 b) {
  uint br;
  const uint lo = usubBorrow(a.x, b.x, br);
  return uvec2(lo, a.y - b.y - br);
}
bool Less64(uvec2 a, uvec2 b) {
  return a.y < b.y || (a.y == b.y && a.x < b.x);
}
uint Clz64(uvec2 a) {
  return a.y != 0u ? 31u - uint(findMSB(a.y)) : a.x != 0u ? 63u - uint(findMSB(a.x)) : 64u;
}

// A double: (-1)^neg m 2^e with m of 53 bits (2^52 <= m < 2^53), or m = 0 for zero.
struct Wide {
  uvec2 m;
  int e;
  bool neg;
};

// x 2^e (x != 0) rounded to a double, to nearest even: what a double operation's exact result
// becomes. x may carry a sticky bit in its lowest bit if at least 10 bits lie below its leading
// one's 53rd.
Wide PackWide(uvec2 x, int e, bool neg) {
  const uint z = Clz64(x);
  x = Shl64(x, z);
  uvec2 m = Shr64(x, 11u);
  const uint rem = x.x & 0x7FFu;
  if (rem > 0x400u || (rem == 0x400u && (m.x & 1u) != 0u)) m = Add64(m, uvec2(1u, 0u));
  int ex = e - int(z) + 11;
  if (m.y >= 0x200000u) {  // rounded up to 2^53
    m = Shr64(m, 1u);
    ex += 1;
  }
  return Wide(m, ex, neg);
}
Wide WideOf(float f) {
  const uint u = floatBitsToUint(f);
  const uint be = (u >> 23) & 255u, frac = u & 0x7FFFFFu;
  if (be == 0u && frac == 0u) return Wide(uvec2(0u), 0, false);
  // Normal: (2^23 + frac) 2^(be - 150); subnormal: frac 2^-149.
  const uint m = be == 0u ? frac : frac | 0x800000u;
  return PackWide(uvec2(m, 0u), be == 0u ? -149 : int(be) - 150, (u >> 31) != 0u);
}
Wide WideOfUint(uint n) {
  return n == 0u ? Wide(uvec2(0u), 0, false) : PackWide(uvec2(n, 0u), 0, false);
}
// a + b rounded once, as a double addition.
Wide WideAdd(Wide a, Wide b) {
  if (a.m == uvec2(0u)) return b;
  if (b.m == uvec2(0u)) return a;
  if (b.e > a.e || (b.e == a.e && Less64(a.m, b.m))) {  // a the larger in magnitude
    const Wide t = a;
    a = b;
    b = t;
  }
  // Both at 9 bits above the lowest (room for a carry at bit 62); the smaller shifted right,
  // the bits it loses kept as a sticky bit.
  const uint s = uint(a.e - b.e);
  const uvec2 wb = Shl64(b.m, 9u);
  uvec2 sb = Shr64(wb, s);
  if (Shl64(sb, s) != wb) sb.x |= 1u;
  const uvec2 wa = Shl64(a.m, 9u);
  const uvec2 x = a.neg == b.neg ? Add64(wa, sb) : Sub64(wa, sb);
  if (x == uvec2(0u)) return Wide(uvec2(0u), 0, false);
  return PackWide(x, a.e - 9, a.neg);
}
// A double rounded to float, to nearest even (results too small for a normal float are left to
// ldexp).
float WideToFloat(Wide a) {
  if (a.m == uvec2(0u)) return a.neg ? -0.0 : 0.0;
  uint m = Shr64(a.m, 29u).x;  // the top 24 of 53 bits
  const uint rem = a.m.x & 0x1FFFFFFFu;
  if (rem > 0x10000000u || (rem == 0x10000000u && (m & 1u) != 0u)) m += 1u;
  const float r = ldexp(float(m), a.e + 29);  // float(m) is exact (m <= 2^24)
  return a.neg ? -r : r;
}
// a / b rounded to a double, then to float: a double division's result converted as the CPU's.
float WideDivToFloat(Wide a, Wide b) {
  const bool neg = a.neg != b.neg;
  if (b.m == uvec2(0u)) return neg ? -1.0 / 0.0 : 1.0 / 0.0;
  if (a.m == uvec2(0u)) return neg ? -0.0 : 0.0;
  uvec2 ma = a.m;
  int e = a.e - b.e;
  if (Less64(ma, b.m)) {  // the quotient of the mantissas in [1, 2)
    ma = Shl64(ma, 1u);
    e -= 1;
  }
  // 55 quotient bits (one integral), the remainder as sticky.
  uvec2 q = uvec2(0u), r = ma;
  for (uint i = 0u; i < 55u; ++i) {
    q = Shl64(q, 1u);
    if (!Less64(r, b.m)) {
      r = Sub64(r, b.m);
      q.x |= 1u;
    }
    r = Shl64(r, 1u);
  }
  uvec2 m = Shr64(q, 2u);
  const uint g = q.x & 3u;
  if (g > 2u || (g == 2u && (r != uvec2(0u) || (m.x & 1u) != 0u))) m = Add64(m, uvec2(1u, 0u));
  int ex = e - 52;
  if (m.y >= 0x200000u) {
    m = Shr64(m, 1u);
    ex += 1;
  }
  return WideToFloat(Wide(m, ex, neg));
}

// a / b for floats, correctly rounded (to nearest even) by 25 steps of long division; zeros,
// infinities, NaNs and results outside the normal range are left to the device's division.
float DivExact(float a, float b) {
  const uint ua = floatBitsToUint(a), ub = floatBitsToUint(b);
  const uint ea = (ua >> 23) & 255u, eb = (ub >> 23) & 255u;
  if (ea == 0u || eb == 0u || ea == 255u || eb == 255u) return a / b;
  uint ma = (ua & 0x7FFFFFu) | 0x800000u;
  const uint mb = (ub & 0x7FFFFFu) | 0x800000u;
  int e = int(ea) - int(eb) + 127;
  if (ma < mb) {
    ma <<= 1;
    e -= 1;
  }
  uint q = 0u, r = ma;
  for (uint i = 0u; i < 25u; ++i) {  // 24 quotient bits and a guard bit
    q <<= 1;
    if (r >= mb) {
      r -= mb;
      q |= 1u;
    }
    r <<= 1;
  }
  uint m = q >> 1;
  if ((q & 1u) != 0u && (r != 0u || (m & 1u) != 0u)) m += 1u;
  if (m == 0x1000000u) {
    m >>= 1;
    e += 1;
  }
  if (e <= 0 || e >= 255) return a / b;
  return uintBitsToFloat(((ua ^ ub) & 0x80000000u) | (uint(e) << 23) | (m & 0x7FFFFFu));
}

// sqrt(x) for floats, correctly rounded: the device's root, then moved to the integer root r of
// the mantissa (scaled to 24 bits) with r^2 - r < R <= r^2 + r, exactly in 64 bits. Zero,
// negatives, subnormals, infinities and NaNs are left to the device.
float SqrtExact(float x) {
  const uint u = floatBitsToUint(x);
  const uint be = (u >> 23) & 255u;
  if ((u >> 31) != 0u || be == 0u || be == 255u) return sqrt(x);
  uint m = (u & 0x7FFFFFu) | 0x800000u;  // x = m 2^ex
  int ex = int(be) - 150;
  if ((ex & 1) != 0) {
    m <<= 1;
    ex -= 1;
  }
  // sqrt(x) = sqrt(m 2^2k) 2^(ex / 2 - k), with k making the root 24 bits: m < 2^24: k = 12.
  const uint k = m < 0x1000000u ? 12u : 11u;
  const uvec2 big = Shl64(uvec2(m, 0u), 2u * k);
  uint r = uint(roundEven(sqrt(float(m)) * float(1u << k)));
  for (uint i = 0u; i < 4u; ++i) {
    uint hi, lo;
    umulExtended(r, r, hi, lo);
    const uvec2 sq = uvec2(lo, hi);
    if (Less64(Add64(sq, uvec2(r, 0u)), big)) {
      r += 1u;  // R > r^2 + r
    } else if (!Less64(Sub64(sq, uvec2(r, 0u)), big)) {
      r -= 1u;  // R <= r^2 - r
    } else {
      break;
    }
  }
  return ldexp(float(r), ex / 2 - int(k));  // r <= 2^24: exact
}

#endif
