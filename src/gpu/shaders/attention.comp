#version 450
// Causal softmax attention of each row's query heads over its sequence's KV cache: one workgroup
// per (head, row), keys taken 64 at a time (one per invocation), in the CPU build's float order
// (kernels_attention.cpp, kernels_ops.cpp's softmax):
// - scores: the query (rounded to f16 for F16 keys) dotted with each key as the CPU's DotF16 /
//   DotF32 do, times the scale, then soft-capped as tanh(s * (1 / cap)) * cap;
// - softmax: the maximum over the keys (and the sink), e = ggml's exp(s - max), the keys' e summed
//   per chunk of 16 as one AVX-512 vector and the chunks added in double (WIDE), the sink's exp
//   after them; p = e * float(1 / sum), rounded to f16 for F16 values;
// - out[d] = fma(p, v[d], out[d]) key by key in order.
// Up to kCached keys (as many as the shared memory of the device holds) keep their scores (then
// exps) in shared memory between the passes; longer
// spans compute them again in each pass (the same numbers each time), so any context fits. GQA/MQA (n_head / n_head_kv query heads per KV head), sliding window,
// logit soft-cap and per-head sink logits.
#extension GL_GOOGLE_include_directive : enable
#include "exact.glsl"
#include "f16.glsl"

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
  uint pos_off;  // row r's position is pos[pos_off + r]
} p;

shared float qs[256];
shared float ps[64];
shared float chunk[4];
shared float stat[2];  // the maximum, then 1 / the denominator
layout(constant_id = 0) const uint kCached = 2048u;  // the device's share (gpu_device.cpp)
shared float cached[kCached];

float KeyAt(uint i) {  // element i of the key cache
  return p.k_f16 != 0u ? F16BitsToF32((kc[i >> 1] >> (16u * (i & 1u))) & 0xFFFFu)
                       : uintBitsToFloat(kc[i]);
}
float ValueAt(uint i) {
  return p.v_f16 != 0u ? F16BitsToF32((vc[i >> 1] >> (16u * (i & 1u))) & 0xFFFFu)
                       : uintBitsToFloat(vc[i]);
}
// p (f16-rounded) v and q k of f16 caches are exact in float: a plain add rounds as a fused one.
float MulAdd(bool f16, float a, float b, float c) {
  return f16 ? c + a * b : Fma(a, b, c);
}

// The CPU's dot products of the query in qs with the key at `base`: 16 lanes of fmas reduced as
// one vector, then any elements past the last 16 chained (F16 rows of a multiple of 16 and rows
// of 64 or more; F32 keys take two such accumulators over 32-element steps, added lane-wise
// first); F16 rows shorter than 64 and of other lengths sum float products in double.
float Dot(uint base) {
  const uint hd = p.head_dim;
  if (p.k_f16 != 0u && hd % 16u != 0u && hd < 64u) {
    WIDE s = WideOf(0.0);
    for (uint d = 0u; d < hd; ++d) s = WideAdd(s, WideOf(qs[d] * KeyAt(base + d)));
    return WideToFloat(s);
  }
  // Lane by lane: each lane's chain is its own, so the order within it is all that matters.
  float a0[16];
  const uint full = hd & ~15u;
  const uint pairs = p.k_f16 == 0u ? hd / 32u * 32u : 0u;  // F32: the two-accumulator steps
  for (uint l = 0u; l < 16u; ++l) {
    float x0 = 0.0, x1 = 0.0;
    uint d = l;
    for (; d < pairs; d += 32u) {
      x0 = Fma(qs[d], KeyAt(base + d), x0);
      x1 = Fma(qs[d + 16u], KeyAt(base + d + 16u), x1);
    }
    for (; d < full; d += 16u) x0 = MulAdd(p.k_f16 != 0u, qs[d], KeyAt(base + d), x0);
    a0[l] = p.k_f16 == 0u ? x0 + x1 : x0;
  }
  uint d = full;
  float s = Sum16(a0);
  for (; d < hd; ++d) s = MulAdd(p.k_f16 != 0u, qs[d], KeyAt(base + d), s);
  return s;
}

// The scaled (and soft-capped) score of key position pj.
float Score(uint pj, uint kvh) {
  const uint r = p.ring != 0u ? pj % p.ring : pj;
  float s = Dot(r * p.kv_dim + kvh * p.head_dim) * p.scale;
  if (p.softcap != 0.0) s = TanhF(s * Div(1.0, p.softcap)) * p.softcap;
  return s;
}

void main() {
  const uint h = gl_WorkGroupID.x, row = gl_WorkGroupID.y;
  const uint tid = gl_LocalInvocationID.x;
  const uint hd = p.head_dim;
  const uint kvh = h / (p.n_head / p.n_head_kv);
  const uint qo = p.q_off + row * p.q_stride + h * hd;
  // As llama.cpp's CPU build: F16 keys meet queries rounded to f16.
  for (uint d = tid; d < hd; d += 64u) qs[d] = p.k_f16 != 0u ? F16Round(q[qo + d]) : q[qo + d];
  barrier();
  const int at = pos[p.pos_off + row];
  const uint first = uint(p.window > 0u ? max(0, at + 1 - int(p.window)) : 0);
  const uint n_kv = uint(at + 1) - first;
  const bool cache = n_kv <= kCached;
  // Pass 1: the maximum, from the sink logit (or -inf) over every score.
  float m = p.has_sinks != 0u ? sinks[h] : -1.0 / 0.0;
  for (uint j = tid; j < n_kv; j += 64u) {
    const float s = Score(first + j, kvh);
    if (cache) cached[j] = s;
    m = max(m, s);
  }
  ps[tid] = m;
  barrier();
  if (tid == 0u) {
    for (uint k = 1u; k < 64u; ++k) m = max(m, ps[k]);
    stat[0] = m;
  }
  barrier();
  m = stat[0];
  // Pass 2: the denominator, chunk by chunk of 16 keys (a partial last chunk padded with zeros).
  WIDE sum = WideOf(0.0);
  for (uint t0 = 0u; t0 < n_kv; t0 += 64u) {
    const uint j = t0 + tid;
    float e = 0.0;
    if (j < n_kv) {
      e = ExpGgml((cache ? cached[j] : Score(first + j, kvh)) - m);
      if (cache) cached[j] = e;
    }
    ps[tid] = e;
    barrier();
    if (tid < 4u) {
      float e[16];
      for (uint k = 0u; k < 16u; ++k) e[k] = ps[16u * tid + k];
      chunk[tid] = Sum16(e);
    }
    barrier();
    if (tid == 0u)
      for (uint c = 0u; c < 4u && t0 + 16u * c < n_kv; ++c) sum = WideAdd(sum, WideOf(chunk[c]));
    barrier();
  }
  if (tid == 0u) {
    // A sink joins the denominator after the keys, with libm's exp (as the CPU's softmax).
    if (p.has_sinks != 0u) sum = WideAdd(sum, WideOf(ExpF(sinks[h] - m)));
    stat[1] = WideDivToFloat(WideOf(1.0), sum);
  }
  barrier();
  const float inv = stat[1];
  // Pass 3: out[d] = fma(p_j, v_j[d], out[d]) over the keys in order; dims tid, tid + 64, ...
  // (head_dim <= 256).
  float acc[4] = float[4](0, 0, 0, 0);
  for (uint t0 = 0u; t0 < n_kv; t0 += 64u) {
    const uint j = t0 + tid;
    float pj = 0.0;
    if (j < n_kv) {
      pj = (cache ? cached[j] : ExpGgml(Score(first + j, kvh) - m)) * inv;
      if (p.v_f16 != 0u) pj = F16Round(pj);
    }
    ps[tid] = pj;
    barrier();
    const uint cnt = min(64u, n_kv - t0);
    for (uint c = 0u; c < 4u; ++c) {
      const uint d = tid + 64u * c;
      if (d >= hd) break;
      float a = acc[c];
      for (uint k = 0u; k < cnt; ++k) {
        const uint pk = first + t0 + k;
        const uint r = p.ring != 0u ? pk % p.ring : pk;
        a = MulAdd(p.v_f16 != 0u, ps[k], ValueAt(r * p.kv_dim + kvh * hd + d), a);
      }
      acc[c] = a;
    }
    barrier();
  }
  const uint oo = p.o_off + row * p.o_stride + h * hd;
  for (uint c = 0u; c < 4u; ++c) {
    const uint d = tid + 64u * c;
    if (d < hd) o[oo + d] = acc[c];
  }
}
