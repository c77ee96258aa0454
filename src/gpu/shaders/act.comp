#version 450
// gate = act(gate) * up elementwise: SiLU (SwiGLU) or GELU's tanh form (GeGLU), with the
// roundings of llama.cpp's CPU build (SiLU: x / (1 + exp(-x)) with ggml's vector exp).
#extension GL_GOOGLE_include_directive : enable
#include "exact.glsl"
#include "f16.glsl"

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
    a = Div(x, 1.0 + ExpGgml(-x));
  } else if (x <= -10.0) {
    a = 0.0;
  } else if (x >= 10.0) {
    a = x;
  } else {
    // As llama.cpp's CPU build looks GELU up in a table of f16 inputs and outputs: the input and
    // the result rounded to f16.
    const float k = 0.79788456080286535587989211986876;
    const float xr = F16Round(x);
    a = F16Round(0.5 * xr * (1.0 + TanhF(k * xr * Fma(0.044715 * xr, xr, 1.0))));
  }
  g[p.g_off + i] = a * u[p.u_off + i];
}
