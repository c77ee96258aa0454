#version 450
// Activations as llama.cpp's CPU matmuls see them, written back as floats for matmul.comp: rounded
// to f16 or bf16 (F16/BF16 weights), or quantized per 32 (Q8_0: the scale rounded to f16; Q8_0 and
// Q4_0 weights) or per 256 (Q8_K: Q4_K and Q6_K weights) and multiplied back by their scale. The
// integer sums of the CPU kernels then come out of the float products exactly.
#extension GL_GOOGLE_include_directive : enable
#include "f16.glsl"

layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Params {
  uint rows, cols, x_off, ldx, y_off, ldy;
  uint mode;  // 1: f16, 2: bf16, 3: Q8_0, 4: Q8_K
} p;

float RoundBf16(float v) {  // round to nearest even, as ggml's fp32 -> bf16
  uint u = floatBitsToUint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uintBitsToFloat((u | 0x00400000u) & 0xffff0000u);
  u = (u + (0x7fffu + ((u >> 16) & 1u))) & 0xffff0000u;
  return uintBitsToFloat(u);
}

void main() {
  const uint row = gl_WorkGroupID.y;
  const uint xo = p.x_off + row * p.ldx, yo = p.y_off + row * p.ldy;
  if (p.mode <= 2u) {
    for (uint i = gl_GlobalInvocationID.x; i < p.cols; i += gl_NumWorkGroups.x * 64u) {
      const float v = x[xo + i];
      y[yo + i] = p.mode == 1u ? F16Round(v) : RoundBf16(v);
    }
    return;
  }
  const uint block = p.mode == 3u ? 32u : 256u;
  const uint b = gl_GlobalInvocationID.x;  // one block per invocation
  if (b * block >= p.cols) return;
  const uint o = b * block;
  if (p.mode == 3u) {
    float amax = 0.0;
    for (uint i = 0u; i < block; ++i) amax = max(amax, abs(x[xo + o + i]));
    const float d = amax / 127.0;
    const float id = d != 0.0 ? 1.0 / d : 0.0;
    const float dh = F16Round(d);
    for (uint i = 0u; i < block; ++i) y[yo + o + i] = roundEven(x[xo + o + i] * id) * dh;
  } else {
    // The signed value of largest magnitude sets the scale: iscale = -127 / max, q <= 127.
    float amax = 0.0, mx = 0.0;
    for (uint i = 0u; i < block; ++i) {
      const float v = x[xo + o + i];
      if (abs(v) > amax) {
        amax = abs(v);
        mx = v;
      }
    }
    if (amax == 0.0) {
      for (uint i = 0u; i < block; ++i) y[yo + o + i] = 0.0;
      return;
    }
    const float iscale = -127.0 / mx;
    const float d = 1.0 / iscale;
    for (uint i = 0u; i < block; ++i) y[yo + o + i] = min(127.0, roundEven(iscale * x[xo + o + i])) * d;
  }
}
