#version 450
// y = x / sqrt(mean(x^2) + eps) * w for `rows` rows of `dim` values: one workgroup per row, in
// the CPU build's order: squares rounded to float and summed in double (WIDE) in 16 lanes of
// elements 16c + l, lanes l and l + 8 added, then halved (+4, +2, +1), the elements past the
// last 16 added one by one; scale = 1 / sqrt(float(sum / dim) + eps); y = (x * scale) * w.
// Rows may be heads (QK-norm: dim = head size, the weight shared by every head). x and y may be
// the same buffer.
#extension GL_GOOGLE_include_directive : enable
#include "exact.glsl"

layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Y { float y[]; };
layout(std430, binding = 2) readonly buffer W { float w[]; };
layout(push_constant) uniform Params {
  uint rows, dim;
  uint x_off, x_stride, y_off, y_stride;
  uint rows_per_y;
  float eps;
} p;
shared WIDE lanes[16];
shared float scale_s;

void main() {
  const uint row = gl_WorkGroupID.y * p.rows_per_y + gl_WorkGroupID.x;
  const uint tid = gl_LocalInvocationID.x;
  if (row >= p.rows) return;  // uniform per workgroup
  const uint xo = p.x_off + row * p.x_stride, yo = p.y_off + row * p.y_stride;
  const uint full = p.dim & ~15u;
  if (tid < 16u) {
    WIDE a = WideOf(0.0);
    for (uint k = tid; k < full; k += 16u) {
      const float v = x[xo + k];
      a = WideAdd(a, WideOf(v * v));
    }
    lanes[tid] = a;
  }
  barrier();
  if (tid == 0u) {
    WIDE t[8];
    for (uint l = 0u; l < 8u; ++l) t[l] = WideAdd(lanes[l], lanes[l + 8u]);
    for (uint h = 4u; h >= 1u; h >>= 1)
      for (uint i = 0u; i < h; ++i) t[i] = WideAdd(t[i], t[i + h]);
    WIDE s = t[0];
    for (uint k = full; k < p.dim; ++k) {
      const float v = x[xo + k];
      s = WideAdd(s, WideOf(v * v));
    }
    const float mean = WideDivToFloat(s, WideOfUint(p.dim));
    scale_s = Div(1.0, Sqrt(mean + p.eps));
  }
  barrier();
  const float scale = scale_s;
  for (uint i = tid; i < p.dim; i += 64u) y[yo + i] = (x[xo + i] * scale) * w[i];
}
