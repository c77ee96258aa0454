#version 450
// Writes `rows` key (or value) rows of kv_dim floats into a cache at each row's position (modulo
// the ring of a sliding-window layer), as f16 pairs or f32 words.
#extension GL_GOOGLE_include_directive : enable
#include "f16.glsl"

layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer C { uint c[]; };
layout(std430, binding = 2) readonly buffer P { int pos[]; };
layout(push_constant) uniform Params {
  uint rows, kv_dim, x_off, x_stride, f16, ring;
  uint pos_off;  // row r's position is pos[pos_off + r]
} p;

void main() {
  const uint row = gl_WorkGroupID.y;
  const uint at0 = uint(pos[p.pos_off + row]);
  const uint at = p.ring != 0u ? at0 % p.ring : at0;
  const uint xo = p.x_off + row * p.x_stride;
  if (p.f16 != 0u) {
    const uint i = gl_GlobalInvocationID.x * 2u;
    if (i >= p.kv_dim) return;
    c[(at * p.kv_dim + i) >> 1] = F32PairToF16(x[xo + i], x[xo + i + 1u]);
  } else {
    const uint i = gl_GlobalInvocationID.x;
    if (i >= p.kv_dim) return;
    c[at * p.kv_dim + i] = floatBitsToUint(x[xo + i]);
  }
}
