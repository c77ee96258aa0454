#version 450
// y[b][r] = sum_k W[r][k] x[b][k] for weight rows r of one type (weights.glsl), activations and
// results in f32. One workgroup per row and up to 8 batch rows: each of its 64 invocations
// takes every 64th group of 4 columns, then the workgroup adds the 64 partial sums pairwise.
#extension GL_GOOGLE_include_directive : enable
#include "weights.glsl"

layout(local_size_x = 64) in;
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Params {
  uint rows, cols, batch;
  uint ldx, ldy;       // floats between batch rows of x and y
  uint x_off, y_off;   // in floats
  uint row_bytes, w_off;  // bytes per weight row; byte offset of row 0 in binding 0
  uint rows_per_y;     // workgroups along y cover rows_per_y * gl_NumWorkGroups.y rows
} p;

const uint kBatch = 8u;
shared float partial[64 * kBatch];

void main() {
  const uint row = gl_WorkGroupID.y * p.rows_per_y + gl_WorkGroupID.x;
  const uint tid = gl_LocalInvocationID.x;
  const uint b0 = gl_WorkGroupID.z * kBatch;
  const uint nb = min(kBatch, p.batch - b0);
  float acc[kBatch] = float[kBatch](0, 0, 0, 0, 0, 0, 0, 0);
  if (row < p.rows) {
    const uint rb = p.w_off + row * p.row_bytes;
    for (uint k = tid * 4u; k < p.cols; k += 256u) {
      const vec4 wv = Load4(rb, k);
      for (uint b = 0u; b < nb; ++b) {
        const uint xo = p.x_off + (b0 + b) * p.ldx + k;
        acc[b] += dot(wv, vec4(x[xo], x[xo + 1u], x[xo + 2u], x[xo + 3u]));
      }
    }
  }
  // Only the nb batch rows this workgroup has (a decode step: one) are reduced.
  for (uint b = 0u; b < nb; ++b) partial[b * 64u + tid] = acc[b];
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (tid < s)
      for (uint b = 0u; b < nb; ++b) partial[b * 64u + tid] += partial[b * 64u + tid + s];
    barrier();
  }
  if (row < p.rows && tid < nb) y[p.y_off + (b0 + tid) * p.ldy + row] = partial[tid * 64u];
}
