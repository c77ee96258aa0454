// Float operations rounded once, as the CPU build rounds them. Vulkan lets fma() round twice and
// division and sqrt miss the nearest float; GPUs fuse fma in hardware, but a software driver
// (lavapipe) splits it. Built with ES_F64 (the _f64 programs, for devices that are CPUs), the
// three go through doubles: the product of two floats is exact there, and the one double rounding
// before the float one changes a result only at a float tie (about 2^-29 of cases).
#ifndef ES_EXACT_GLSL
#define ES_EXACT_GLSL

#ifdef ES_F64
float Fma(float a, float b, float c) {
  return float(double(a) * double(b) + double(c));
}
float Div(float a, float b) {
  return float(double(a) / double(b));
}
float Sqrt(float a) {
  return float(sqrt(double(a)));
}
#else
float Fma(float a, float b, float c) {
  return fma(a, b, c);
}
float Div(float a, float b) {
  return a / b;
}
float Sqrt(float a) {
  return sqrt(a);
}
#endif

#endif
