#version 450
// y[b][r] = sum_k W[r][k] x[b][k] for weight rows r of one type, in the float order of the CPU
// build (AVX-512, which is llama.cpp's x86 order where docs/fidelity.md says so), so that a block
// on the GPU computes what it computes on the CPU. One invocation per weight row and activation
// row walks the row's blocks in order: the integer sums of quantized blocks are exact in any
// order, the float chains over blocks are not, and each is one invocation's sequence of fmas.
// Activations (binding 1, as words): floats (F32; F16 and BF16 weights: rounded to f16 or bf16 by
// quantize.comp), or quantize.comp's packed Q8_0 [d, 8 words], Q8_1 [d, s, 8 words] and Q8_K
// [d, 64 words] blocks.
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
  uint groups_x;          // workgroups along x (64 rows each) before the grid wraps to y
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
// Float weights: lane l of 16 takes elements 16c + l in order (fma), the lanes reduce as one
// AVX-512 vector, and the elements past the last 16 follow one by one.
float DotRow(uint rb, uint xo) {
  float acc[16];
  const uint full = p.cols & ~15u;
  for (uint l = 0u; l < 16u; ++l) {  // lane by lane: each chain is its own
    float a = 0.0;
    for (uint k = l; k < full; k += 16u) a = MulAdd(WAt(rb, k), XF(xo + k), a);
    acc[l] = a;
  }
  float s = Sum16(acc);
  for (uint k = full; k < p.cols; ++k) s = MulAdd(WAt(rb, k), XF(xo + k), s);
  return s;
}

#elif defined(TYPE_Q8_0)
// Eight lanes of four adjacent products per block: acc[l] = fma(dw * dx, lane, acc[l]).
float DotRow(uint rb, uint xo) {
  float acc[8] = float[8](0, 0, 0, 0, 0, 0, 0, 0);
  for (uint b = 0u; b < p.cols / 32u; ++b) {
    const uint base = rb + 34u * b, xb = xo + 9u * b;
    const float d = F16At(base) * XF(xb);
    for (uint l = 0u; l < 8u; ++l)
      acc[l] = Fma(d, float(Dot4(SBytes(U32At(base + 2u + 4u * l)), XQ(xb + 1u + l))), acc[l]);
  }
  return Hsum8(acc);
}

#elif defined(TYPE_Q4_0)
// One exact integer sum per block and one chain: acc = fma(isum, dw * dx, acc).
float DotRow(uint rb, uint xo) {
  float acc = 0.0;
  for (uint b = 0u; b < p.cols / 32u; ++b) {
    const uint base = rb + 18u * b, xb = xo + 9u * b;
    int isum = 0;
    for (uint i = 0u; i < 4u; ++i) {
      const uint q = U32At(base + 2u + 4u * i);
      isum += Dot4(UBytes(q & 0x0F0F0F0Fu) - 8, XQ(xb + 1u + i)) +
              Dot4(UBytes((q >> 4) & 0x0F0F0F0Fu) - 8, XQ(xb + 5u + i));
    }
    acc = Fma(float(isum), F16At(base) * XF(xb), acc);
  }
  return acc;
}

#elif defined(TYPE_Q4_1) || defined(TYPE_Q5_0) || defined(TYPE_Q5_1) || \
    defined(TYPE_IQ4_NL) || defined(TYPE_MXFP4)
// The other 32-element types, as VecDotRef (llama.cpp's x86 order): Q8_0's eight lanes with
// d = scale(w) * dx, and for Q4_1/Q5_1 a second chain msum = fma(m, s, msum) added last.
#if defined(TYPE_Q4_1)
const uint kBlock = 20u, kQs = 4u, kXBlock = 10u;
#elif defined(TYPE_Q5_0)
const uint kBlock = 22u, kQs = 6u, kXBlock = 9u;
#elif defined(TYPE_Q5_1)
const uint kBlock = 24u, kQs = 8u, kXBlock = 10u;
#elif defined(TYPE_IQ4_NL)
const uint kBlock = 18u, kQs = 2u, kXBlock = 9u;
#else
const uint kBlock = 17u, kQs = 1u, kXBlock = 9u;
#endif
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
float DotRow(uint rb, uint xo) {
  float acc[8] = float[8](0, 0, 0, 0, 0, 0, 0, 0);
  float msum = 0.0;
  for (uint b = 0u; b < p.cols / 32u; ++b) {
    const uint base = rb + kBlock * b, xb = xo + kXBlock * b;
    const float d = Scale(base) * XF(xb);
    for (uint l = 0u; l < 8u; ++l)
      acc[l] = Fma(d, float(Dot4(Values(base, l), XQ(xb + kX + l))), acc[l]);
#if defined(TYPE_Q4_1) || defined(TYPE_Q5_1)
    msum = Fma(F16At(base + 2u), XF(xb + 1u), msum);
#endif
  }
  return Hsum8(acc) + msum;
}

#elif defined(TYPE_Q4_K) || defined(TYPE_Q5_K)
// Per block exact sums of scale * q * x and of min * x, then two chains
// sums = fma(isum, dw * dx, sums), mins = fma(msum, dmin * dx, mins); the result sums - mins.
#if defined(TYPE_Q4_K)
const uint kBlock = 144u, kQs = 16u;
#else
const uint kBlock = 176u, kQs = 48u;  // fifth bits (qh) at 16
#endif
float DotRow(uint rb, uint xo) {
  float sums = 0.0, mins = 0.0;
  for (uint b = 0u; b < p.cols / 256u; ++b) {
    const uint base = rb + kBlock * b, xb = xo + 65u * b;
    int isum = 0, msum = 0;
    for (uint j = 0u; j < 8u; ++j) {  // sub-block j: nibble plane j & 1 of bytes 32 (j / 2)..
      uint sc, mn;
      ScaleMinK4(base, j, sc, mn);
      int s = 0, xs = 0;
      for (uint i = 0u; i < 8u; ++i) {
        const uint q = U32At(base + kQs + 32u * (j >> 1) + 4u * i);
        uint v = ((j & 1u) != 0u ? q >> 4 : q) & 0x0F0F0F0Fu;
#if defined(TYPE_Q5_K)
        v |= ((U32At(base + 16u + 4u * i) >> j) & 0x01010101u) << 4;
#endif
        const ivec4 xv = XQ(xb + 1u + 8u * j + i);
        s += Dot4(UBytes(v), xv);
        xs += Sum4(xv);
      }
      isum += int(sc) * s;
      msum += int(mn) * xs;
    }
    const float dx = XF(xb);
    sums = Fma(float(isum), F16At(base) * dx, sums);
    mins = Fma(float(msum), F16At(base + 2u) * dx, mins);
  }
  return sums - mins;
}

#elif defined(TYPE_Q6_K)
// Eight lanes: lane l sums scale * (q - 32) * x over elements 4l..4l+3 of each group of 32;
// acc[l] = fma(dx * dw, lane, acc[l]) per block, then Hsum8.
float DotRow(uint rb, uint xo) {
  float acc[8] = float[8](0, 0, 0, 0, 0, 0, 0, 0);
  for (uint b = 0u; b < p.cols / 256u; ++b) {
    const uint base = rb + 210u * b, xb = xo + 65u * b;
    int lane[8] = int[8](0, 0, 0, 0, 0, 0, 0, 0);
    for (uint g = 0u; g < 8u; ++g) {
      // Group g: half n = g / 4, quarter qd = g % 4: nibble plane qd / 2 of ql[64n + 32(qd % 2)..]
      // and bits 2qd of qh[32n..].
      const uint n = g >> 2, qd = g & 3u;
      for (uint l = 0u; l < 8u; ++l) {
        const uint lo =
            (U32At(base + 64u * n + 32u * (qd & 1u) + 4u * l) >> (4u * (qd >> 1))) & 0x0F0F0F0Fu;
        const uint hi = (U32At(base + 128u + 32u * n + 4u * l) >> (2u * qd)) & 0x03030303u;
        const int sc = bitfieldExtract(int(U8At(base + 192u + 2u * g + (l >> 2))), 0, 8);
        lane[l] += sc * Dot4(UBytes(lo | (hi << 4)) - 32, XQ(xb + 1u + 8u * g + l));
      }
    }
    const float d = XF(xb) * F16At(base + 208u);
    for (uint l = 0u; l < 8u; ++l) acc[l] = Fma(d, float(lane[l]), acc[l]);
  }
  return Hsum8(acc);
}

#elif defined(TYPE_Q2_K) || defined(TYPE_Q3_K)
// The AVX-512 VNNI order: 16 lanes, lane i of quarter j (64 elements) covering elements
// 64j + 4i..+3 with the scale of group 4j + i / 4 of 16; per block acc[i] = fma(lane, d * dx,
// acc[i]); then the 16-lane sum, less (Q2_K) the chain of dmin * dx * (mins . sums of 16 x).
#if defined(TYPE_Q2_K)
const uint kBlock = 84u, kQs = 16u, kD = 80u;
#else
const uint kBlock = 110u, kQs = 32u, kD = 108u;
#endif
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
float DotRow(uint rb, uint xo) {
  float acc[16] = float[16](0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  float minsum = 0.0;
  for (uint b = 0u; b < p.cols / 256u; ++b) {
    const uint base = rb + kBlock * b, xb = xo + 65u * b;
    const float dx = XF(xb);
    const float d = F16At(base + kD) * dx;
    for (uint i = 0u; i < 16u; ++i) {
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
      acc[i] = Fma(float(lane), d, acc[i]);
    }
#if defined(TYPE_Q2_K)
    int msum = 0;
    for (uint g = 0u; g < 16u; ++g)
      msum += int(U8At(base + g) >> 4) * Sum16X(xb, g);
    minsum = Fma(F16At(base + 82u) * dx, float(msum), minsum);
#endif
  }
  return Sum16(acc) - minsum;
}

#elif defined(TYPE_IQ4_XS)
// Per block the exact sum over its eight groups of (scale - 32) * level * x, one chain
// acc = fma(isum, d * dx, acc).
float DotRow(uint rb, uint xo) {
  float acc = 0.0;
  for (uint b = 0u; b < p.cols / 256u; ++b) {
    const uint base = rb + 136u * b, xb = xo + 65u * b;
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
    acc = Fma(float(isum), F16At(base) * XF(xb), acc);
  }
  return acc;
}

#else
#error "matmul.comp: define the weight type (TYPE_F32, TYPE_Q4_0, ...)"
#endif

void main() {
  const uint row = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * 64u + gl_LocalInvocationID.x;
  const uint b = gl_WorkGroupID.z;
  if (row >= p.rows || b >= p.batch) return;
  y[p.y_off + b * p.ldy + row] = DotRow(p.w_off + row * p.row_bytes, p.x_off + b * p.ldx);
}
