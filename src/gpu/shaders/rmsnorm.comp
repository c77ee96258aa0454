#version 450
// y = x / sqrt(mean(x^2) + eps) * w for `rows` rows of `dim` values: one workgroup per row.
// Rows may be heads (QK-norm: dim = head size, the weight shared by every head). x and y may be
// the same buffer.
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
shared float partial[64];

void main() {
  const uint row = gl_WorkGroupID.y * p.rows_per_y + gl_WorkGroupID.x;
  const uint tid = gl_LocalInvocationID.x;
  if (row >= p.rows) return;  // uniform per workgroup
  const uint xo = p.x_off + row * p.x_stride, yo = p.y_off + row * p.y_stride;
  float s = 0.0;
  for (uint i = tid; i < p.dim; i += 64u) s += x[xo + i] * x[xo + i];
  partial[tid] = s;
  barrier();
  for (uint h = 32u; h > 0u; h >>= 1) {
    if (tid < h) partial[tid] += partial[tid + h];
    barrier();
  }
  const float scale = 1.0 / sqrt(partial[0] / float(p.dim) + p.eps);
  for (uint i = tid; i < p.dim; i += 64u) y[yo + i] = x[xo + i] * scale * w[i];
}
