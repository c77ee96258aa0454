#version 450
// Causal softmax attention of each row's query heads over its sequence's KV cache: one workgroup
// per (head, row). Keys are taken 64 at a time (one per invocation) in two passes: the maximum
// and denominator (online), then the normalised probabilities times the values, so any context
// length fits and the probabilities are the CPU build's (f16-rounded for F16 values). GQA/MQA
// (n_head / n_head_kv query heads per KV head), sliding window, logit soft-cap and per-head sink
// logits.
#extension GL_GOOGLE_include_directive : enable
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
shared float stat[2];  // the running maximum and denominator

float KeyAt(uint r, uint d) {
  const uint i = r * p.kv_dim + d;
  return p.k_f16 != 0u ? F16PairToF32(kc[i >> 1])[i & 1u] : uintBitsToFloat(kc[i]);
}
float ValueAt(uint r, uint d) {
  const uint i = r * p.kv_dim + d;
  return p.v_f16 != 0u ? F16PairToF32(vc[i >> 1])[i & 1u] : uintBitsToFloat(vc[i]);
}

// The scaled (and soft-capped) score of key position pj against the query in qs.
float Score(uint pj, uint kvh) {
  const uint r = p.ring != 0u ? pj % p.ring : pj;
  float dotv = 0.0;
  const uint base = r * p.kv_dim + kvh * p.head_dim;
  if (p.k_f16 != 0u && (base & 1u) == 0u && (p.head_dim & 1u) == 0u) {
    // Two dimensions per word of f16 keys, decoded once: the same sums in the same order.
    for (uint d = 0u; d < p.head_dim; d += 2u) {
      const vec2 k2 = F16PairToF32(kc[(base + d) >> 1]);
      dotv += qs[d] * k2.x;
      dotv += qs[d + 1u] * k2.y;
    }
  } else {
    for (uint d = 0u; d < p.head_dim; ++d) dotv += qs[d] * KeyAt(r, kvh * p.head_dim + d);
  }
  float s = dotv * p.scale;
  if (p.softcap != 0.0) s = tanh(s / p.softcap) * p.softcap;
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
  const int first = p.window > 0u ? max(0, at + 1 - int(p.window)) : 0;
  const uint n_kv = uint(at + 1 - first);
  // Pass 1: the scores' maximum and the softmax denominator, 64 keys at a time.
  // The maximum starts at the sink logit, as the CPU's softmax takes it (same values, and the
  // probabilities then round to f16 as there).
  float m = p.has_sinks != 0u ? sinks[h] : -1.0 / 0.0, l = 0.0;
  for (uint t0 = 0u; t0 < n_kv; t0 += 64u) {
    const uint j = t0 + tid;
    float s = -1.0 / 0.0;
    if (j < n_kv) s = Score(uint(first) + j, kvh);
    ps[tid] = s;
    barrier();
    // One invocation folds the tile in (every one would compute the same numbers in the same
    // order; a software driver runs all 64), the others read the result.
    if (tid == 0u) {
      const uint cnt = min(64u, n_kv - t0);
      float tmax = m;
      for (uint k = 0u; k < cnt; ++k) tmax = max(tmax, ps[k]);
      float tsum = 0.0;
      for (uint k = 0u; k < cnt; ++k) tsum += exp(ps[k] - tmax);
      stat[0] = tmax;
      stat[1] = l * exp(m - tmax) + tsum;  // exp(-inf) = 0 on the first tile
    }
    barrier();
    m = stat[0];
    l = stat[1];
  }
  if (p.has_sinks != 0u) l += exp(sinks[h] - m);
  const float inv = 1.0 / l;
  // Pass 2: normalised probabilities (rounded to f16 for F16 values, as llama.cpp's CPU build
  // weights them) times the values.
  // Dims tid, tid + 64, ... (head_dim <= 256); with f16 values two neighbours per invocation
  // (2 tid, 2 tid + 1, then + 128), each word decoded once: the same sums in the same order.
  const bool pairs = p.v_f16 != 0u && (hd & 1u) == 0u && (p.kv_dim & 1u) == 0u;
  float acc[4] = float[4](0, 0, 0, 0);
  for (uint t0 = 0u; t0 < n_kv; t0 += 64u) {
    const uint j = t0 + tid;
    float pj = 0.0;
    if (j < n_kv) {
      pj = exp(Score(uint(first) + j, kvh) - m) * inv;
      if (p.v_f16 != 0u) pj = F16Round(pj);
    }
    ps[tid] = pj;
    barrier();
    const uint cnt = min(64u, n_kv - t0);
    if (pairs) {
      for (uint c = 0u; c < 2u; ++c) {
        const uint d = 2u * tid + 128u * c;
        if (d >= hd) break;
        float a0 = acc[2u * c], a1 = acc[2u * c + 1u];
        for (uint k = 0u; k < cnt; ++k) {
          const uint pk = uint(first) + t0 + k;
          const uint r = p.ring != 0u ? pk % p.ring : pk;
          const vec2 v2 = F16PairToF32(vc[(r * p.kv_dim + kvh * hd + d) >> 1]);
          a0 += ps[k] * v2.x;
          a1 += ps[k] * v2.y;
        }
        acc[2u * c] = a0;
        acc[2u * c + 1u] = a1;
      }
    } else {
      for (uint c = 0u; c < 4u; ++c) {
        const uint d = tid + 64u * c;
        if (d >= hd) break;
        float a = acc[c];
        for (uint k = 0u; k < cnt; ++k) {
          const uint pk = uint(first) + t0 + k;
          const uint r = p.ring != 0u ? pk % p.ring : pk;
          a += ps[k] * ValueAt(r, kvh * hd + d);
        }
        acc[c] = a;
      }
    }
    barrier();
  }
  const uint oo = p.o_off + row * p.o_stride + h * hd;
  for (uint c = 0u; c < 4u; ++c) {
    const uint d = pairs ? 2u * tid + 128u * (c >> 1) + (c & 1u) : tid + 64u * c;
    if (d < hd) o[oo + d] = acc[c];
  }
}
