#version 450
// gate = act(gate) * up elementwise: SiLU (SwiGLU) or GELU's tanh form (GeGLU).
layout(local_size_x = 256) in;
layout(std430, binding = 0) buffer G { float g[]; };
layout(std430, binding = 1) readonly buffer U { float u[]; };
layout(push_constant) uniform Params {
  uint n, kind, groups_x;  // kind 0: SiLU, 1: GELU (tanh)
  uint g_off, u_off;
} p;

void main() {
  const uint i = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (i >= p.n) return;
  const float x = g[p.g_off + i];
  float a;
  if (p.kind == 0u) {
    a = x / (1.0 + exp(-x));
  } else {
    const float k = 0.79788456080286535587989211986876;
    a = x > 10.0 ? x : x < -10.0 ? 0.0 : 0.5 * x * (1.0 + tanh(k * x * (1.0 + 0.044715 * x * x)));
  }
  g[p.g_off + i] = a * u[p.u_off + i];
}
