#version 450
// mode 0: y[i] += x[i % period] for i < n: residual additions (period n) and biases (period =
// row width). mode 1: y[i] *= x[i / period]: a factor per row (period = row width), or one for all
// (period n).
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Y { float y[]; };
layout(push_constant) uniform Params {
  uint n, period, x_off, y_off, groups_x, mode;
} p;

void main() {
  const uint i = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (i >= p.n) return;
  if (p.mode == 0u)
    y[p.y_off + i] += x[p.x_off + i % p.period];
  else
    y[p.y_off + i] *= x[p.x_off + i / p.period];
}
