#version 450
// y[i] += x[i % period] * scale for i < n: residual additions (period n), biases (period = row
// width) and scaled copies into a zeroed y.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Y { float y[]; };
layout(push_constant) uniform Params {
  uint n, period, x_off, y_off, groups_x;
} p;

void main() {
  const uint i = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (i >= p.n) return;
  y[p.y_off + i] += x[p.x_off + i % p.period];
}
