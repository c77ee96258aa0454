#version 450
// y[b][r] = sum_k W[r][k] x[b][k] for weight rows r of one type, in the float order of the CPU
// build (AVX-512, which is llama.cpp's x86 order where docs/fidelity.md says so), so that a block
// on the GPU computes what it computes on the CPU.
//
// The CPU's result for a row is a few float chains over the row's blocks (a chain per vector
// lane, and for some types a second chain of minimums), each step acc = fma(d, v, acc) with v a
// block's exact integer sum for that lane: the integer sums may be taken in any order, the chains
// may not. So a workgroup takes the chains of 64 / kChains weight rows (one invocation per chain)
// and walks their blocks in chunks of kChunk: first all 64 invocations compute the chunk's
// (v, d) pairs, neighbours reading neighbouring bytes of a row, into shared memory; then each
// invocation steps its chain through the chunk. At the end one invocation per row combines its
// chains as the CPU's vector reduction does. Float weights (F32/F16/BF16) have no integer part:
// an invocation runs one of the 16 lanes of a row directly.
//
// Activations (binding 1, as words): floats (F32; F16 and BF16 weights: rounded to f16 or bf16 by
// quantize.comp), or quantize.comp's packed Q8_0 [d, 8 words], Q8_1 [d, s, 8 words] and Q8_K
// [d, 64 words] blocks. Activation row b is workgroup z.
#extension GL_GOOGLE_include_directive : enable
#include "exact.glsl"
#include "weights.glsl"

layout(local_size_x = 64) in;
layout(std430, binding = 1) readonly buffer X { uint xq[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Params {
  uint rows, cols, batch;
  uint ldx, ldy;          // words between batch rows of x; floats between those of y
  uint x_off, y_off;      // in words / floats
  uint row_bytes, w_off;  // bytes per weight row; byte offset of row 0 in binding 0
  uint groups_x;          // workgroups along x before the grid wraps to y
} p;

float XF(uint i) {
  return uintBitsToFloat(xq[i]);
}
ivec4 XQ(uint i) {  // four int8 activation quants
  return SBytes(xq[i]);
}
int Dot4(ivec4 a, ivec4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}
int Sum4(ivec4 a) {
  return a.x + a.y + a.z + a.w;
}
// llama.cpp's x86 reduction of eight partial lanes.
float Hsum8(float a[8]) {
  const float h0 = a[0] + a[4], h1 = a[1] + a[5], h2 = a[2] + a[6], h3 = a[3] + a[7];
  return (h0 + h2) + (h1 + h3);
}


#if defined(TYPE_IQ4_NL) || defined(TYPE_IQ4_XS) || defined(TYPE_MXFP4)
// The 16 levels a nibble indexes (IQ4_NL's and IQ4_XS's non-linear ones, MXFP4's E2M1 values
// doubled) as int8 bytes packed four to a word: a vector's component is picked without the
// per-invocation array a table of 16 would take (6x slower on lavapipe).
#if defined(TYPE_MXFP4)
const uvec4 kLevels = uvec4(0x03020100u, 0x0c080604u, 0xfdfeff00u, 0xf4f8fafcu);
#else
const uvec4 kLevels = uvec4(0xbfad9881u, 0xf6eaddcfu, 0x26190d01u, 0x71594535u);
#endif
int Level(uint q) {
  return bitfieldExtract(int(kLevels[q >> 2]), int(8u * (q & 3u)), 8);
}
ivec4 Levels(uint nib) {  // the levels of the low nibbles of a word's four bytes
  return ivec4(Level(nib & 15u), Level((nib >> 8) & 15u), Level((nib >> 16) & 15u),
               Level((nib >> 24) & 15u));
}
#endif

#if defined(TYPE_F32) || defined(TYPE_F16) || defined(TYPE_BF16)
#define FLOAT_WEIGHTS
const uint kChains = 16u;
float WAt(uint rb, uint i) {
#if defined(TYPE_F32)
  return uintBitsToFloat(w[(rb >> 2) + i]);
#else
  const uint h = (w[(rb >> 2) + (i >> 1)] >> (16u * (i & 1u))) & 0xFFFFu;
#if defined(TYPE_F16)
  return F16BitsToF32(h);
#else
  return uintBitsToFloat(h << 16);
#endif
#endif
}
// w x + c rounded once. F16 and BF16 products (of activations rounded alike) are exact in
// float, so a plain add rounds as a fused one does, and costs less than Fma on devices that
// emulate it.
float MulAdd(float w, float x, float c) {
#if defined(TYPE_F32)
  return Fma(w, x, c);
#else
  return c + w * x;
#endif
}
// Lane l of 16 takes elements 16c + l in order (fma); the lanes reduce as one AVX-512 vector, and
// the elements past the last 16 follow one by one.
float Lane(uint rb, uint xo, uint l) {
  float a = 0.0;
  for (uint k = l; k < (p.cols & ~15u); k += 16u) a = MulAdd(WAt(rb, k), XF(xo + k), a);
  return a;
}
float Finish(float acc[kChains], uint rb, uint xo) {
  float s = Sum16(acc);
  for (uint k = p.cols & ~15u; k < p.cols; ++k) s = MulAdd(WAt(rb, k), XF(xo + k), s);
  return s;
}

#elif defined(TYPE_Q8_0)
// Eight lanes of four adjacent products per block: acc[l] = fma(dw * dx, lane, acc[l]).
const uint kElems = 32u, kBlock = 34u, kXBlock = 9u, kChains = 8u;
void Item(uint base, uint xb, uint c, out float v, out float d) {
  v = float(Dot4(SBytes(U32At(base + 2u + 4u * c)), XQ(xb + 1u + c)));
  d = F16At(base) * XF(xb);
}
float Finish(float acc[kChains]) {
  return Hsum8(acc);
}

#elif defined(TYPE_Q4_0)
// One exact integer sum per block and one chain: acc = fma(isum, dw * dx, acc).
const uint kElems = 32u, kBlock = 18u, kXBlock = 9u, kChains = 1u;
void Item(uint base, uint xb, uint c, out float v, out float d) {
  int isum = 0;
  for (uint i = 0u; i < 4u; ++i) {
    const uint q = U32At(base + 2u + 4u * i);
    isum += Dot4(UBytes(q & 0x0F0F0F0Fu) - 8, XQ(xb + 1u + i)) +
            Dot4(UBytes((q >> 4) & 0x0F0F0F0Fu) - 8, XQ(xb + 5u + i));
  }
  v = float(isum);
  d = F16At(base) * XF(xb);
}
float Finish(float acc[kChains]) {
  return acc[0];
}

#elif defined(TYPE_Q4_1) || defined(TYPE_Q5_0) || defined(TYPE_Q5_1) || \
    defined(TYPE_IQ4_NL) || defined(TYPE_MXFP4)
// The other 32-element types, as VecDotRef (llama.cpp's x86 order): Q8_0's eight lanes with
// d = scale(w) * dx, and for Q4_1/Q5_1 a ninth chain msum = fma(m, s, msum) added last.
#if defined(TYPE_Q4_1)
const uint kBlock = 20u, kQs = 4u, kXBlock = 10u, kChains = 9u;
#elif defined(TYPE_Q5_0)
const uint kBlock = 22u, kQs = 6u, kXBlock = 9u, kChains = 8u;
#elif defined(TYPE_Q5_1)
const uint kBlock = 24u, kQs = 8u, kXBlock = 10u, kChains = 9u;
#elif defined(TYPE_IQ4_NL)
const uint kBlock = 18u, kQs = 2u, kXBlock = 9u, kChains = 8u;
#else
const uint kBlock = 17u, kQs = 1u, kXBlock = 9u, kChains = 8u;
#endif
const uint kElems = 32u;
const uint kX = kXBlock - 8u;  // words before the quants in an activation block
// Values of elements 4l..4l+3 of the block at base: low nibbles of bytes 4l.. for l < 4, high
// nibbles of bytes 4(l - 4).. after.
ivec4 Values(uint base, uint l) {
  const uint q = U32At(base + kQs + 4u * (l & 3u));
  const uint nib = (l < 4u ? q : q >> 4) & 0x0F0F0F0Fu;
#if defined(TYPE_IQ4_NL) || defined(TYPE_MXFP4)
  return Levels(nib);
#elif defined(TYPE_Q4_1)
  return UBytes(nib);
#else
  // The fifth bit of element e is bit e of qh (just before the nibbles).
  const uint hb = (U32At(base + kQs - 4u) >> (4u * l)) & 15u;
  const uint hi = (hb & 1u) | ((hb & 2u) << 7) | ((hb & 4u) << 14) | ((hb & 8u) << 21);
#if defined(TYPE_Q5_0)
  return UBytes(nib | (hi << 4)) - 16;
#else
  return UBytes(nib | (hi << 4));
#endif
#endif
}
float Scale(uint base) {
#if defined(TYPE_MXFP4)
  // 2^(e - 128): E8M0 halved, as ggml scales E2M1 levels stored doubled. e < 2 is subnormal.
  const uint e = U8At(base);
  return uintBitsToFloat(e < 2u ? 0x00200000u << e : (e - 1u) << 23);
#else
  return F16At(base);
#endif
}
void Item(uint base, uint xb, uint c, out float v, out float d) {
  if (c < 8u) {
    v = float(Dot4(Values(base, c), XQ(xb + kX + c)));
    d = Scale(base) * XF(xb);
  } else {  // the minimum's chain: m * s
    v = XF(xb + 1u);
    d = F16At(base + 2u);
  }
}
float Finish(float acc[kChains]) {
  const float lanes[8] = float[8](acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]);
#if defined(TYPE_Q4_1) || defined(TYPE_Q5_1)
  return Hsum8(lanes) + acc[8];
#else
  return Hsum8(lanes) + 0.0;  // as the CPU's reference adds its (empty) minimum chain
#endif
}

#elif defined(TYPE_Q4_K) || defined(TYPE_Q5_K)
// Per block exact sums of scale * q * x and of min * x, then two chains
// sums = fma(isum, dw * dx, sums), mins = fma(msum, dmin * dx, mins); the result sums - mins.
#if defined(TYPE_Q4_K)
const uint kBlock = 144u, kQs = 16u;
#else
const uint kBlock = 176u, kQs = 48u;  // fifth bits (qh) at 16
#endif
const uint kElems = 256u, kXBlock = 65u, kChains = 2u;
// Both chains' values of a block (c < 2: the one asked for; 2: both, in one pass over x).
void Sums(uint base, uint xb, uint c, out int sum, out int msum) {
  sum = 0;
  msum = 0;
  for (uint j = 0u; j < 8u; ++j) {  // sub-block j: nibble plane j & 1 of bytes 32 (j / 2)..
    uint sc, mn;
    ScaleMinK4(base, j, sc, mn);
    int s = 0, xs = 0;
    for (uint i = 0u; i < 8u; ++i) {
      const ivec4 xv = XQ(xb + 1u + 8u * j + i);
      if (c != 1u) {
        const uint q = U32At(base + kQs + 32u * (j >> 1) + 4u * i);
        uint u = ((j & 1u) != 0u ? q >> 4 : q) & 0x0F0F0F0Fu;
#if defined(TYPE_Q5_K)
        u |= ((U32At(base + 16u + 4u * i) >> j) & 0x01010101u) << 4;
#endif
        s += Dot4(UBytes(u), xv);
      }
      if (c != 0u) xs += Sum4(xv);
    }
    sum += int(sc) * s;
    msum += int(mn) * xs;
  }
}
void Item(uint base, uint xb, uint c, out float v, out float d) {
  int sum, msum;
  Sums(base, xb, c, sum, msum);
  v = float(c == 0u ? sum : msum);
  d = F16At(base + 2u * c) * XF(xb);
}
#define HAS_ITEMS
void Items(uint base, uint xb, out float v[kChains], out float d[kChains]) {
  int sum, msum;
  Sums(base, xb, 2u, sum, msum);
  v[0] = float(sum);
  v[1] = float(msum);
  const float dx = XF(xb);
  d[0] = F16At(base) * dx;
  d[1] = F16At(base + 2u) * dx;
}
float Finish(float acc[kChains]) {
  return acc[0] - acc[1];
}

#elif defined(TYPE_Q6_K)
// Eight lanes: lane l sums scale * (q - 32) * x over elements 4l..4l+3 of each group of 32;
// acc[l] = fma(dx * dw, lane, acc[l]) per block, then Hsum8.
const uint kElems = 256u, kBlock = 210u, kXBlock = 65u, kChains = 8u;
// Group g of 32: half n = g / 4, quarter qd = g % 4: nibble plane qd / 2 of ql[64n + 32(qd % 2)..]
// and bits 2qd of qh[32n..]. Lane l's share of it, with the group's scale for l (sc).
int GroupLane(uint base, uint xb, uint g, uint l, int sc) {
  const uint n = g >> 2, qd = g & 3u;
  const uint lo =
      (U32At(base + 64u * n + 32u * (qd & 1u) + 4u * l) >> (4u * (qd >> 1))) & 0x0F0F0F0Fu;
  const uint hi = (U32At(base + 128u + 32u * n + 4u * l) >> (2u * qd)) & 0x03030303u;
  return sc * Dot4(UBytes(lo | (hi << 4)) - 32, XQ(xb + 1u + 8u * g + l));
}
int Scale6(uint base, uint g, uint half_group) {  // the int8 scale of 16 elements
  return bitfieldExtract(int(U8At(base + 192u + 2u * g + half_group)), 0, 8);
}
void Item(uint base, uint xb, uint l, out float v, out float d) {
  int lane = 0;
  for (uint g = 0u; g < 8u; ++g) lane += GroupLane(base, xb, g, l, Scale6(base, g, l >> 2));
  v = float(lane);
  d = XF(xb) * F16At(base + 208u);
}
#define HAS_ITEMS
void Items(uint base, uint xb, out float v[kChains], out float d[kChains]) {
  int lane[8] = int[8](0, 0, 0, 0, 0, 0, 0, 0);
  for (uint g = 0u; g < 8u; ++g) {  // group-major: a group's scales are read once
    const int sc0 = Scale6(base, g, 0u), sc1 = Scale6(base, g, 1u);
    for (uint l = 0u; l < 8u; ++l) lane[l] += GroupLane(base, xb, g, l, l < 4u ? sc0 : sc1);
  }
  const float dd = XF(xb) * F16At(base + 208u);
  for (uint l = 0u; l < 8u; ++l) {
    v[l] = float(lane[l]);
    d[l] = dd;
  }
}
float Finish(float acc[kChains]) {
  return Hsum8(acc);
}

#elif defined(TYPE_Q2_K) || defined(TYPE_Q3_K)
// The AVX-512 VNNI order: 16 lanes, lane i of quarter j (64 elements) covering elements
// 64j + 4i..+3 with the scale of group 4j + i / 4 of 16; per block acc[i] = fma(lane, d * dx,
// acc[i]); then the 16-lane sum, less (Q2_K, a 17th chain) dmin * dx * (mins . sums of 16 x).
#if defined(TYPE_Q2_K)
const uint kBlock = 84u, kQs = 16u, kD = 80u, kChains = 17u;
#else
const uint kBlock = 110u, kQs = 32u, kD = 108u, kChains = 16u;
#endif
const uint kElems = 256u, kXBlock = 65u;
int GroupScale(uint base, uint g) {
#if defined(TYPE_Q2_K)
  return int(U8At(base + g) & 15u);
#else
  const uint h = g >> 2, k = g & 3u;
  const uint low4 = h < 2u ? U8At(base + 96u + 4u * h + k) & 15u
                           : (U8At(base + 96u + 4u * (h - 2u) + k) >> 4) & 15u;
  const uint high2 = (U8At(base + 104u + k) >> (2u * h)) & 3u;
  return int(low4 | (high2 << 4)) - 32;
#endif
}
// Values of elements e..e+3 (e a multiple of 4): two bits at 2j of qs[32n + l] for half n,
// quarter-of-half j, l = e % 32; Q3_K's plus 4 where the high bit (bit 4n + j of hmask[l]) is
// set (u = value + 4, 0..7: the offset comes off per pair of groups below, as the CPU's does).
ivec4 Values(uint base, uint e) {
  const uint n = e >> 7, j = (e >> 5) & 3u, l = e & 31u;
  const ivec4 q = UBytes((U32At(base + kQs + 32u * n + l) >> (2u * j)) & 0x03030303u);
#if defined(TYPE_Q2_K)
  return q;
#else
  return q + 4 * UBytes((U32At(base + l) >> (4u * n + j)) & 0x01010101u);
#endif
}
int Sum16X(uint xb, uint g) {  // the sum of activation quants 16g..16g+15
  return Sum4(XQ(xb + 1u + 4u * g)) + Sum4(XQ(xb + 2u + 4u * g)) + Sum4(XQ(xb + 3u + 4u * g)) +
         Sum4(XQ(xb + 4u + 4u * g));
}
void Item(uint base, uint xb, uint i, out float v, out float d) {
  const float dx = XF(xb);
#if defined(TYPE_Q2_K)
  if (i == 16u) {  // the minimums' chain
    int msum = 0;
    for (uint g = 0u; g < 16u; ++g) msum += int(U8At(base + g) >> 4) * Sum16X(xb, g);
    v = float(msum);
    d = F16At(base + 82u) * dx;
    return;
  }
#endif
  int lane = 0;
  for (uint j = 0u; j < 4u; ++j) {
    const uint e = 64u * j + 4u * i;
    lane += GroupScale(base, 4u * j + (i >> 2)) * Dot4(Values(base, e), XQ(xb + 1u + (e >> 2)));
  }
#if defined(TYPE_Q3_K)
  // The offset's share: lane i < 8 takes 4 scale * sum(x) of the groups 2i and 2i + 1 of 16.
  if (i < 8u)
    lane -= 4 * (GroupScale(base, 2u * i) * Sum16X(xb, 2u * i) +
                 GroupScale(base, 2u * i + 1u) * Sum16X(xb, 2u * i + 1u));
#endif
  v = float(lane);
  d = F16At(base + kD) * dx;
}
float Finish(float acc[kChains]) {
#if defined(TYPE_Q2_K)
  float lanes[16];
  for (uint l = 0u; l < 16u; ++l) lanes[l] = acc[l];
  return Sum16(lanes) - acc[16];
#else
  return Sum16(acc);
#endif
}

#elif defined(TYPE_IQ4_XS)
// Per block the exact sum over its eight groups of (scale - 32) * level * x, one chain
// acc = fma(isum, d * dx, acc).
const uint kElems = 256u, kBlock = 136u, kXBlock = 65u, kChains = 1u;
void Item(uint base, uint xb, uint c, out float v, out float d) {
  int isum = 0;
  for (uint ib = 0u; ib < 8u; ++ib) {
    const uint ls = ((U8At(base + 4u + (ib >> 1)) >> (4u * (ib & 1u))) & 15u) |
                    (((U16At(base + 2u) >> (2u * ib)) & 3u) << 4);
    int s = 0;
    for (uint i = 0u; i < 4u; ++i) {
      const uint q = U32At(base + 8u + 16u * ib + 4u * i);
      s += Dot4(Levels(q), XQ(xb + 1u + 8u * ib + i)) +
           Dot4(Levels(q >> 4), XQ(xb + 5u + 8u * ib + i));
    }
    isum += (int(ls) - 32) * s;
  }
  v = float(isum);
  d = F16At(base) * XF(xb);
}
float Finish(float acc[kChains]) {
  return acc[0];
}

#else
#error "matmul.comp: define the weight type (TYPE_F32, TYPE_Q4_0, ...)"
#endif

// Two layouts of the same arithmetic (constant 0, chosen per device): chains in parallel, for GPUs,
// or one invocation per weight row running all of its chains, for devices that are CPUs
// (lavapipe runs that 3-6x faster: it vectorizes across invocations and pays for barriers).
layout(constant_id = 0) const bool kRowEach = false;
const uint kRowsPerGroup = kRowEach ? 64u : 64u / kChains;
#ifndef FLOAT_WEIGHTS
const uint kChunk = 16u;  // blocks per row between the two phases
// The chunk's (v, d) pairs, block-major so that the chains read consecutive words.
shared float chunk_v[kChunk * 64u];
shared float chunk_d[kChunk * 64u];
#endif
shared float chain_acc[64];  // each chain's result, for the row's combination

// All chains of one row, by one invocation.
float RowAlone(uint rb, uint xo) {
  float acc[kChains];
#ifdef FLOAT_WEIGHTS
  for (uint l = 0u; l < 16u; ++l) acc[l] = Lane(rb, xo, l);
  return Finish(acc, rb, xo);
#else
  for (uint c = 0u; c < kChains; ++c) acc[c] = 0.0;
  for (uint k = 0u; k < p.cols / kElems; ++k) {
    float v[kChains], d[kChains];
#ifdef HAS_ITEMS
    Items(rb + kBlock * k, xo + kXBlock * k, v, d);
#else
    for (uint c = 0u; c < kChains; ++c) Item(rb + kBlock * k, xo + kXBlock * k, c, v[c], d[c]);
#endif
    for (uint c = 0u; c < kChains; ++c) acc[c] = Fma(d[c], v[c], acc[c]);
  }
  return Finish(acc);
#endif
}

void main() {
  const uint t = gl_LocalInvocationID.x;
  const uint row0 = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * kRowsPerGroup;
  const uint b = gl_WorkGroupID.z;
  if (row0 >= p.rows || b >= p.batch) return;  // the whole workgroup: barriers stay uniform
  const uint xo = p.x_off + b * p.ldx;
  if (kRowEach) {
    if (row0 + t < p.rows)
      y[p.y_off + b * p.ldy + row0 + t] = RowAlone(p.w_off + (row0 + t) * p.row_bytes, xo);
    return;
  }
  const uint rows = min(kRowsPerGroup, p.rows - row0);
  const bool runs_chain = t < rows * kChains;  // invocation t runs chain t % kChains of row t / kChains
  const uint rb = p.w_off + (row0 + t / kChains) * p.row_bytes;
#ifdef FLOAT_WEIGHTS
  chain_acc[t] = runs_chain ? Lane(rb, xo, t % kChains) : 0.0;
#else
  float acc = 0.0;
  const uint blocks = p.cols / kElems;
  for (uint k0 = 0u; k0 < blocks; k0 += kChunk) {
    const uint n = min(kChunk, blocks - k0);
    // Items (row, block, chain), chain fastest, then block: neighbours read neighbouring bytes.
    // Constant divisors (a division by a variable costs tens of instructions); the last chunk's
    // missing blocks and the missing rows are skipped.
    for (uint i = t; i < rows * kChunk * kChains; i += 64u) {
      const uint c = i % kChains, k = (i / kChains) % kChunk, r = i / (kChains * kChunk);
      if (k >= n) continue;
      float v, d;
      Item(p.w_off + (row0 + r) * p.row_bytes + kBlock * (k0 + k), xo + kXBlock * (k0 + k), c, v,
           d);
      chunk_v[64u * k + r * kChains + c] = v;
      chunk_d[64u * k + r * kChains + c] = d;
    }
    barrier();
    if (runs_chain)
      for (uint k = 0u; k < n; ++k) acc = Fma(chunk_d[64u * k + t], chunk_v[64u * k + t], acc);
    barrier();
  }
  chain_acc[t] = acc;
#endif
  barrier();
  if (t < rows) {
    float acc[kChains];
    for (uint c = 0u; c < kChains; ++c) acc[c] = chain_acc[t * kChains + c];
#ifdef FLOAT_WEIGHTS
    y[p.y_off + b * p.ldy + row0 + t] = Finish(acc, p.w_off + (row0 + t) * p.row_bytes, xo);
#else
    y[p.y_off + b * p.ldy + row0 + t] = Finish(acc);
#endif
  }
}
