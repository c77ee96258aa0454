#version 450
// softfloat.glsl's operations on arrays of operands, for tests against the CPU's doubles and
// floats (test_gpu_ops): op 0 float a / b, 1 sqrt(a), 2 double a + b, 3 float(double a / b).
// Operands and results as words: a float in one, a double in two (low, high).
#extension GL_GOOGLE_include_directive : enable
#include "softfloat.glsl"

layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer In { uint xin[]; };
layout(std430, binding = 1) writeonly buffer Out { uint xout[]; };
layout(push_constant) uniform Params {
  uint n, op;
} p;

Wide FromBits(uvec2 d) {  // a finite double's bits (low, high) as a Wide
  const uint be = (d.y >> 20) & 0x7FFu;
  uvec2 m = uvec2(d.x, d.y & 0xFFFFFu);
  if (be == 0u && m == uvec2(0u)) return Wide(uvec2(0u), 0, false);
  if (be != 0u) m.y |= 0x100000u;
  return PackWide(m, be == 0u ? -1074 : int(be) - 1075, (d.y >> 31) != 0u);
}
uvec2 ToBits(Wide w) {  // a normal double's bits
  if (w.m == uvec2(0u)) return uvec2(0u, w.neg ? 0x80000000u : 0u);
  const uint be = uint(w.e + 1075);
  return uvec2(w.m.x, (w.m.y & 0xFFFFFu) | (be << 20) | (w.neg ? 0x80000000u : 0u));
}

void main() {
  const uint i = gl_GlobalInvocationID.x;
  if (i >= p.n) return;
  if (p.op == 0u) {
    xout[i] = floatBitsToUint(DivExact(uintBitsToFloat(xin[2u * i]), uintBitsToFloat(xin[2u * i + 1u])));
  } else if (p.op == 1u) {
    xout[i] = floatBitsToUint(SqrtExact(uintBitsToFloat(xin[i])));
  } else {
    const Wide a = FromBits(uvec2(xin[4u * i], xin[4u * i + 1u]));
    const Wide b = FromBits(uvec2(xin[4u * i + 2u], xin[4u * i + 3u]));
    if (p.op == 2u) {
      const uvec2 r = ToBits(WideAdd(a, b));
      xout[2u * i] = r.x;
      xout[2u * i + 1u] = r.y;
    } else {
      xout[i] = floatBitsToUint(WideDivToFloat(a, b));
    }
  }
}
