#version 450
// Writes `rows` key (or value) rows of kv_dim floats into a cache at each row's position (modulo
// the ring of a sliding-window layer), as f16 pairs or f32 words.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer C { uint c[]; };
layout(std430, binding = 2) readonly buffer P { int pos[]; };
layout(push_constant) uniform Params {
  uint rows, kv_dim, x_off, x_stride, f16, ring;
} p;

void main() {
  const uint row = gl_WorkGroupID.y;
  const uint at = p.ring != 0u ? uint(pos[row]) % p.ring : uint(pos[row]);
  const uint xo = p.x_off + row * p.x_stride;
  if (p.f16 != 0u) {
    const uint i = gl_GlobalInvocationID.x * 2u;
    if (i >= p.kv_dim) return;
    c[(at * p.kv_dim + i) >> 1] = packHalf2x16(vec2(x[xo + i], x[xo + i + 1u]));
  } else {
    const uint i = gl_GlobalInvocationID.x;
    if (i >= p.kv_dim) return;
    c[at * p.kv_dim + i] = floatBitsToUint(x[xo + i]);
  }
}
