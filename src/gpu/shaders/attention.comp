#version 450
// Causal softmax attention of each row's query heads over its sequence's KV cache: one workgroup
// per (head, row). Keys are taken 64 at a time (one per invocation), with a running maximum and
// sum (online softmax), so any context length fits. GQA/MQA (n_head / n_head_kv query heads per
// KV head), sliding window, logit soft-cap and per-head sink logits.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer K { uint kc[]; };
layout(std430, binding = 2) readonly buffer V { uint vc[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer P { int pos[]; };
layout(std430, binding = 5) readonly buffer S { float sinks[]; };
layout(push_constant) uniform Params {
  uint n_head, n_head_kv, head_dim, q_stride, kv_dim;
  uint q_off, o_off, o_stride;
  uint k_f16, v_f16;
  uint window, ring;  // 0: none
  float scale, softcap;  // softcap 0: none
  uint has_sinks;
} p;

shared float qs[256];
shared float ps[64];

float KeyAt(uint r, uint d) {
  const uint i = r * p.kv_dim + d;
  return p.k_f16 != 0u ? unpackHalf2x16(kc[i >> 1])[i & 1u] : uintBitsToFloat(kc[i]);
}
float ValueAt(uint r, uint d) {
  const uint i = r * p.kv_dim + d;
  return p.v_f16 != 0u ? unpackHalf2x16(vc[i >> 1])[i & 1u] : uintBitsToFloat(vc[i]);
}

void main() {
  const uint h = gl_WorkGroupID.x, row = gl_WorkGroupID.y;
  const uint tid = gl_LocalInvocationID.x;
  const uint hd = p.head_dim;
  const uint kvh = h / (p.n_head / p.n_head_kv);
  const uint qo = p.q_off + row * p.q_stride + h * hd;
  for (uint d = tid; d < hd; d += 64u) qs[d] = q[qo + d];
  barrier();
  const int at = pos[row];
  const int first = p.window > 0u ? max(0, at + 1 - int(p.window)) : 0;
  const uint n_kv = uint(at + 1 - first);
  float m = -1.0 / 0.0, l = 0.0;
  float acc[4] = float[4](0, 0, 0, 0);  // dims tid, tid + 64, ... (head_dim <= 256)
  for (uint t0 = 0u; t0 < n_kv; t0 += 64u) {
    const uint j = t0 + tid;
    float s = -1.0 / 0.0;
    if (j < n_kv) {
      const uint pj = uint(first) + j;
      const uint r = p.ring != 0u ? pj % p.ring : pj;
      float dotv = 0.0;
      for (uint d = 0u; d < hd; ++d) dotv += qs[d] * KeyAt(r, kvh * hd + d);
      s = dotv * p.scale;
      if (p.softcap != 0.0) s = tanh(s / p.softcap) * p.softcap;
    }
    ps[tid] = s;
    barrier();
    float tmax = m;
    const uint cnt = min(64u, n_kv - t0);
    for (uint k = 0u; k < cnt; ++k) tmax = max(tmax, ps[k]);
    barrier();
    const float e = j < n_kv ? exp(s - tmax) : 0.0;
    ps[tid] = e;
    barrier();
    const float f = exp(m - tmax);  // 0 on the first tile (m = -inf)
    float tsum = 0.0;
    for (uint k = 0u; k < cnt; ++k) tsum += ps[k];
    l = l * f + tsum;
    for (uint c = 0u; c < 4u; ++c) {
      const uint d = tid + 64u * c;
      if (d >= hd) break;
      float a = acc[c] * f;
      for (uint k = 0u; k < cnt; ++k) {
        const uint pk = uint(first) + t0 + k;
        const uint r = p.ring != 0u ? pk % p.ring : pk;
        a += ps[k] * ValueAt(r, kvh * hd + d);
      }
      acc[c] = a;
    }
    m = tmax;
    barrier();
  }
  if (p.has_sinks != 0u) l += exp(sinks[h] - m);
  const uint oo = p.o_off + row * p.o_stride + h * hd;
  for (uint c = 0u; c < 4u; ++c) {
    const uint d = tid + 64u * c;
    if (d < hd) o[oo + d] = acc[c] / l;
  }
}
