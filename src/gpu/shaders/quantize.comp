#version 450
// Activations as llama.cpp's CPU matmuls see them: rounded to f16 or bf16 (F16/BF16 weights,
// written back as floats), or quantized per 32 (Q8_0, Q8_1) or per 256 (Q8_K) with the CPU
// quantizers' arithmetic and packed for matmul.comp, which sums their products exactly in integers.
// Packed blocks, in 32-bit words: Q8_0 [d, 8 words of int8]; Q8_1 [d, s, 8 words]; Q8_K [d, 64
// words]. d (and s) as floats holding the values the CPU's blocks hold (f16-rounded for Q8_0/Q8_1).
#extension GL_GOOGLE_include_directive : enable
#include "exact.glsl"
#include "f16.glsl"

layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { uint y[]; };
layout(push_constant) uniform Params {
  uint rows, cols, x_off, ldx, y_off, ldy;
  uint mode;  // 1: f16, 2: bf16, 3: Q8_0, 4: Q8_K, 5: Q8_1
} p;

float RoundBf16(float v) {  // round to nearest even, as ggml's fp32 -> bf16
  uint u = floatBitsToUint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uintBitsToFloat((u | 0x00400000u) & 0xffff0000u);
  u = (u + (0x7fffu + ((u >> 16) & 1u))) & 0xffff0000u;
  return uintBitsToFloat(u);
}

uint Pack4(ivec4 q) {
  return uint(q.x & 255) | (uint(q.y & 255) << 8) | (uint(q.z & 255) << 16) | (uint(q.w) << 24);
}

void main() {
  const uint row = gl_WorkGroupID.y;
  const uint xo = p.x_off + row * p.ldx, yo = p.y_off + row * p.ldy;
  if (p.mode <= 2u) {
    for (uint i = gl_GlobalInvocationID.x; i < p.cols; i += gl_NumWorkGroups.x * 64u) {
      const float v = x[xo + i];
      y[yo + i] = floatBitsToUint(p.mode == 1u ? F16Round(v) : RoundBf16(v));
    }
    return;
  }
  const uint block = p.mode == 4u ? 256u : 32u;
  const uint b = gl_GlobalInvocationID.x;  // one block per invocation
  if (b * block >= p.cols) return;
  const uint o = xo + b * block;
  if (p.mode == 4u) {
    // The signed value of largest magnitude sets the scale: iscale = -127 / max, q <= 127.
    const uint yb = yo + 65u * b;
    float amax = 0.0, mx = 0.0;
    for (uint i = 0u; i < block; ++i) {
      const float v = x[o + i];
      if (abs(v) > amax) {
        amax = abs(v);
        mx = v;
      }
    }
    if (amax == 0.0) {
      for (uint i = 0u; i <= 64u; ++i) y[yb + i] = 0u;
      return;
    }
    const float iscale = Div(-127.0, mx);
    y[yb] = floatBitsToUint(Div(1.0, iscale));
    for (uint i = 0u; i < 64u; ++i) {
      const vec4 v = vec4(x[o + 4u * i], x[o + 4u * i + 1u], x[o + 4u * i + 2u], x[o + 4u * i + 3u]);
      y[yb + 1u + i] = Pack4(ivec4(min(vec4(127.0), roundEven(iscale * v))));
    }
    return;
  }
  // Q8_0 and Q8_1: d = amax / 127 stored as f16, quants round(x * 127 / amax).
  const uint q1 = p.mode == 5u ? 1u : 0u;
  const uint yb = yo + (9u + q1) * b;
  float amax = 0.0;
  for (uint i = 0u; i < block; ++i) amax = max(amax, abs(x[o + i]));
  const float d = Div(amax, 127.0);
  const float id = amax != 0.0 ? Div(127.0, amax) : 0.0;
  int sum = 0;
  for (uint i = 0u; i < 8u; ++i) {
    const vec4 v = vec4(x[o + 4u * i], x[o + 4u * i + 1u], x[o + 4u * i + 2u], x[o + 4u * i + 3u]);
    const ivec4 q = ivec4(roundEven(v * id));
    sum += q.x + q.y + q.z + q.w;
    y[yb + 1u + q1 + i] = Pack4(q);
  }
  y[yb] = floatBitsToUint(F16Round(d));
  if (q1 != 0u) y[yb + 1u] = floatBitsToUint(F16Round(d * float(sum)));
}
