// Scalar reference codec of IQ4_XS: 4-bit indices into a fixed non-linear table of 16 levels,
// a 6-bit scale per 32 elements and an f16 scale per 256. The quantizer follows llama.cpp's
// quantize_iq4_xs without an importance matrix, operation for operation, so files match its bytes.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "edgeshard/error.h"
#include "tensor/tensor_quant_internal.h"

namespace es::quant {

// Index of the level nearest v (ties to the upper level), by bisection as ggml does.
int NearestLevelIQ4(float v) {
  const int8_t* lv = kIQ4NLValues;
  if (v <= lv[0]) return 0;
  if (v >= lv[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (v < lv[mid])
      hi = mid;
    else
      lo = mid;
  }
  return v - lv[hi - 1] < lv[hi] - v ? hi - 1 : hi;
}

// Best scale of one group of 32 for the table levels (IQ4_NL blocks, IQ4_XS groups), weights x^2:
// the least-squares scale for the levels picked at -max / -127, then at (t - 127) / max for t in
// [-7, 7], keeping the fit of largest energy. 0 for a group below kGroupMaxEps.
float FitGroupIQ4(const float* x) {
  float amax;
  const float max = SignedMax(x, 32, &amax);
  if (amax < kGroupMaxEps) return 0.0f;
  auto fit = [&](float id, float* sumqx, float* sumq2) {
    *sumqx = 0;
    *sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
      const float q = kIQ4NLValues[NearestLevelIQ4(id * x[j])];
      const float w = x[j] * x[j];
      *sumqx += w * q * x[j];
      *sumq2 += w * q * q;
    }
  };
  float d = -max / kIQ4NLValues[0];
  float sumqx, sumq2;
  fit(1 / d, &sumqx, &sumq2);
  d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
  float best = d * sumqx;
  for (int t = -7; t <= 7; ++t) {
    fit((t + kIQ4NLValues[0]) / max, &sumqx, &sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  return d;
}

namespace {

// Element 32ib + j: low nibble of qs[16ib + j] for j < 16, high nibble of qs[16ib + j - 16] after.
inline int IQ4XSValue(const BlockIQ4_XS& b, int e) {
  const int ib = e / 32, j = e % 32;
  return kIQ4NLValues[(b.qs[16 * ib + j % 16] >> (4 * (j / 16))) & 0x0F];
}

void DequantIQ4_XS(const BlockIQ4_XS* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(b[i].d);
    for (int ib = 0; ib < 8; ++ib) {
      const float dl = d * IQ4XSScale(b[i], ib);
      for (int j = 0; j < 32; ++j) y[i * kQK_K + 32 * ib + j] = dl * IQ4XSValue(b[i], 32 * ib + j);
    }
  }
}

void QuantIQ4_XS(const float* x, BlockIQ4_XS* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    float scales[8];
    for (int ib = 0; ib < 8; ++ib) scales[ib] = FitGroupIQ4(x + 32 * ib);
    float amax_scale;
    const float max_scale = SignedMax(scales, 8, &amax_scale);
    BlockIQ4_XS& b = y[i];
    // The group scales are quantized against the unrounded d (llama.cpp does the same).
    const float d = -max_scale / 32;
    b.d = F32ToF16(d);
    b.scales_h = 0;
    std::memset(b.scales_l, 0, sizeof(b.scales_l));
    const float id = d != 0.0f ? 1 / d : 0.0f;
    uint8_t L[kQK_K];
    for (int ib = 0; ib < 8; ++ib) {
      const int l = std::clamp(RoundEven(id * scales[ib]), -32, 31);
      const float dl = d * l;
      const float idl = dl != 0.0f ? 1 / dl : 0.0f;
      for (int j = 0; j < 32; ++j)
        L[32 * ib + j] = static_cast<uint8_t>(NearestLevelIQ4(idl * x[32 * ib + j]));
      b.scales_l[ib / 2] |= static_cast<uint8_t>(((l + 32) & 0x0F) << (4 * (ib % 2)));
      b.scales_h |= static_cast<uint16_t>(((l + 32) >> 4) << (2 * ib));
    }
    for (int ib = 0; ib < 8; ++ib)
      for (int j = 0; j < 16; ++j)
        b.qs[16 * ib + j] = static_cast<uint8_t>(L[32 * ib + j] | (L[32 * ib + 16 + j] << 4));
  }
}

float DotIQ4_XS(const BlockIQ4_XS* w, const BlockQ8_K* x, int64_t nb) {
  return DotGroupsQ8K<32>(w, x, nb, IQ4XSValue, IQ4XSScale, nullptr);
}

void CheckIQ4_XS(TensorType t, const char* what) {
  if (t != TensorType::kIQ4_XS) throw Error(std::string(what) + ": not an i-quant: " + TypeName(t));
}

}  // namespace

void DequantizeIQuant(TensorType t, const void* src, float* dst, int64_t n) {
  CheckIQ4_XS(t, "DequantizeIQuant");
  DequantIQ4_XS(static_cast<const BlockIQ4_XS*>(src), dst, n / kQK_K);
}

void QuantizeIQuant(TensorType t, const float* src, void* dst, int64_t n) {
  CheckIQ4_XS(t, "QuantizeIQuant");
  QuantIQ4_XS(src, static_cast<BlockIQ4_XS*>(dst), n / kQK_K);
}

float DotIQuant(TensorType t, const void* w, const void* x, int64_t n) {
  CheckIQ4_XS(t, "DotIQuant");
  return DotIQ4_XS(static_cast<const BlockIQ4_XS*>(w), static_cast<const BlockQ8_K*>(x), n / kQK_K);
}

}  // namespace es::quant
