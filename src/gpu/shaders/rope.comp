#version 450
// Rotary embedding of `heads` heads per row from a table of (cos, sin) per row and rotated pair
// (made on the CPU with the model's RoPE variant: scaling, YaRN, frequency factors): pairs
// (i, i + n_rot/2) (NEOX) or (2i, 2i + 1); dims past n_rot unchanged.
#extension GL_GOOGLE_include_directive : enable
#include "exact.glsl"

layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer T { vec2 cs[]; };  // [row][n_rot / 2]
layout(push_constant) uniform Params {
  uint rows, heads, head_dim, n_rot;
  uint x_off, x_stride;  // floats; heads follow one another within a row
  uint neox;
} p;

void main() {
  const uint half_rot = p.n_rot / 2u;
  const uint i = gl_GlobalInvocationID.x;  // pair
  const uint h = gl_WorkGroupID.y, row = gl_WorkGroupID.z;
  if (i >= half_rot) return;
  const vec2 t = cs[row * half_rot + i];
  const uint base = p.x_off + row * p.x_stride + h * p.head_dim;
  const uint a = base + (p.neox != 0u ? i : 2u * i);
  const uint b = a + (p.neox != 0u ? half_rot : 1u);
  const float xa = x[a], xb = x[b];
  // As the CPU: fma(a, cos, -(b sin)), fma(a, sin, b cos).
  x[a] = Fma(xa, t.x, -(xb * t.y));
  x[b] = Fma(xa, t.y, xb * t.x);
}
