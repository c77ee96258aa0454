// Float operations rounded once, as the CPU build rounds them. Vulkan lets fma() round twice and
// division and sqrt miss the nearest float; GPUs fuse fma in hardware, but a software driver
// (lavapipe) splits it. Three builds of every program:
// - ES_F64 (the _f64 programs, for devices that are CPUs): fma, division, sqrt, exp, tanh and the
//   sums the CPU takes in double go through doubles: the product of two floats is exact there,
//   and the one double rounding before the float one changes a result only where it lands on a
//   float rounding tie (rare).
// - ES_F64 and ES_HW_FMA (_mixed, for GPUs with doubles whose fma a probe found fused): the
//   same but fma, which stays the hardware's (doubles are slow on GPUs; fma is in every chain).
// - neither (the native programs, for GPUs without doubles): the hardware's fma, exp and tanh;
//   division, sqrt and the double sums from integer arithmetic (softfloat.glsl), rounded as the
//   CPU's.
#ifndef ES_EXACT_GLSL
#define ES_EXACT_GLSL

#ifdef ES_F64
// Sums the CPU build takes in double (WIDE; softfloat.glsl's in the native builds).
#define WIDE double
WIDE WideOf(float x) {
  return double(x);
}
WIDE WideOfUint(uint n) {
  return double(n);
}
WIDE WideAdd(WIDE a, WIDE b) {
  return a + b;
}
float WideToFloat(WIDE a) {
  return float(a);
}
float WideDivToFloat(WIDE a, WIDE b) {
  return float(a / b);
}
#ifndef ES_HW_FMA
float Fma(float a, float b, float c) {
  return float(double(a) * double(b) + double(c));
}
#endif
float Div(float a, float b) {
  return float(double(a) / double(b));
}
float Sqrt(float a) {
  return float(sqrt(double(a)));
}
// exp and tanh as libm's (glibc's expf is correctly rounded; tanhf within an ulp): a double
// exp to about 1e-16 (2^n e^r, |r| <= ln2 / 2, Taylor to degree 13), rounded once to float.
double ExpD(double x) {
  const double n = roundEven(x * 1.4426950408889634);
  const double r = (x - n * 0.6931471805599453) - n * 2.3190468138462996e-17;
  double t = 1.0;
  for (int k = 13; k >= 1; --k) t = 1.0 + t * r / double(k);
  return ldexp(t, int(n));
}
float ExpF(float x) {
  if (x < -104.0) return 0.0;
  if (x > 89.0) return 1.0 / 0.0;
  return float(ExpD(double(x)));
}
float TanhF(float x) {
  const double a = abs(double(x));
  double t;
  if (a < 1e-4) {
    t = a * (1.0 - a * a / 3.0);
  } else if (a > 10.0) {
    t = 1.0;
  } else {
    const double e = ExpD(2.0 * a);
    t = (e - 1.0) / (e + 1.0);
  }
  return x < 0.0 ? float(-t) : float(t);
}
#else
#extension GL_GOOGLE_include_directive : enable
#include "softfloat.glsl"
#define WIDE Wide
#define ES_HW_FMA  // the hardware's fma, as the mixed builds
float Div(float a, float b) {
  return DivExact(a, b);
}
float Sqrt(float a) {
  return SqrtExact(a);
}
float ExpF(float x) {
  return exp(x);
}
// tanh to about an ulp where it matters: near +-1, 1 + tanh(u) cancels (GELU's small negative
// values), and drivers' tanh is a few ulps off there, so past 0.5 it is 1 - 2 / (e^2a + 1), one
// rounding from the nearest float; past 10 it is 1 in float (and e^2a would overflow).
float TanhF(float x) {
  const float a = abs(x);
  if (a < 0.5) return tanh(x);
  const float t = 1.0 - Div(2.0, exp(2.0 * min(a, 10.0)) + 1.0);
  return x < 0.0 ? -t : t;
}
#endif

#ifdef ES_HW_FMA
float Fma(float a, float b, float c) {
  return fma(a, b, c);
}
#endif

// A 512-bit vector's lane sum as the CPU build's _mm512_reduce_add_ps takes it: lanes i + 8,
// then + 4, + 2, + 1.
float Sum16(float a[16]) {
  for (uint w = 8u; w >= 1u; w >>= 1)
    for (uint i = 0u; i < w; ++i) a[i] = a[i] + a[i + w];
  return a[0];
}

// exp as ggml's vectorised expf computes it (the reference build uses it for SiLU and softmax):
// n = round(x / ln2) by adding 1.5 * 2^23, b = x - n ln2 in two fused steps, a degree-5
// polynomial in b by fused multiply-adds, the result j 2^n scaled in two exact steps; |n| > 192
// gives 0 or inf.
float ExpGgml(float x) {
  // precise: (x c + r) - r rounds x c to an integer only if the compiler keeps both steps (Mesa
  // folds it to x c otherwise, as an "inexact" expression).
  const float r = 12582912.0;  // 0x1.8p23
  precise const float z = Fma(x, uintBitsToFloat(0x3fb8aa3bu), r);
  precise const float n = z - r;
  precise const float b =
      Fma(-n, uintBitsToFloat(0x35bfbe8eu), Fma(-n, uintBitsToFloat(0x3f317200u), x));
  const float u = b * b;
  const float j = Fma(Fma(Fma(uintBitsToFloat(0x3c072010u), b, uintBitsToFloat(0x3d2b9f17u)), u,
                          Fma(uintBitsToFloat(0x3e2aaf33u), b, uintBitsToFloat(0x3efffedbu))),
                      u, Fma(uintBitsToFloat(0x3f7ffff6u), b, 1.0));
  if (abs(n) > 192.0) return n > 0.0 ? 1.0 / 0.0 : 0.0;
  const int ni = int(n);
  const int n1 = ni >> 1, n2 = ni - n1;
  return (j * intBitsToFloat((n1 + 127) << 23)) * intBitsToFloat((n2 + 127) << 23);
}

#endif
