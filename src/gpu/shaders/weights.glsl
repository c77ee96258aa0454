// Reading weight blocks of any supported type. The weights are bound as 32-bit words (binding 0)
// and addressed in bytes: blocks of 18 or 34 bytes do not keep 32-bit alignment, and word loads
// work on every Vulkan device (8- and 16-bit storage are optional).
#extension GL_GOOGLE_include_directive : enable
#include "f16.glsl"

layout(std430, binding = 0) readonly buffer Weights { uint w[]; };

uint U32At(uint b) {  // four bytes at any byte offset (the buffer is padded past its end)
  const uint s = (b & 3u) * 8u;
  const uint lo = w[b >> 2];
  return s == 0u ? lo : (lo >> s) | (w[(b >> 2) + 1u] << (32u - s));
}
uint U16At(uint b) {  // b even
  return (w[b >> 2] >> ((b & 2u) * 8u)) & 0xFFFFu;
}
uint U8At(uint b) {
  return (w[b >> 2] >> ((b & 3u) * 8u)) & 0xFFu;
}
float F16At(uint b) {
  return F16BitsToF32(U16At(b));
}
// Four bytes of a word as unsigned or signed integers, the lowest first.
ivec4 UBytes(uint q) {
  return ivec4(q & 0xFFu, (q >> 8) & 0xFFu, (q >> 16) & 0xFFu, q >> 24);
}
ivec4 SBytes(uint q) {
  return ivec4(bitfieldExtract(int(q), 0, 8), bitfieldExtract(int(q), 8, 8),
               bitfieldExtract(int(q), 16, 8), bitfieldExtract(int(q), 24, 8));
}

// Q4_K's and Q5_K's 6-bit scale and min of sub-block j, packed in the 12 bytes at base + 4.
void ScaleMinK4(uint base, uint j, out uint sc, out uint mn) {
  if (j < 4u) {
    sc = U8At(base + 4u + j) & 63u;
    mn = U8At(base + 8u + j) & 63u;
  } else {
    sc = (U8At(base + 8u + j) & 15u) | ((U8At(base + 4u + j - 4u) >> 6) << 4);
    mn = (U8At(base + 8u + j) >> 4) | ((U8At(base + 4u + j) >> 6) << 4);
  }
}
