// GeGLU's activation as llama.cpp's CPU backend computes it: GELU (tanh approximation) looked up
// in a table of every f16 input, the input rounded to f16 and the result rounded to f16 too, with
// the tails outside [-10, 10] taken exactly (0 and x). The rounding moves a GeGLU model's logits
// by more than 1e-3, so a plain f32 GELU would not match.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "tensor/tensor_types.h"

namespace es::kernels {
namespace {

float GeluTanh(float x) {
  constexpr float kSqrt2OverPi = 0.79788456080286535587989211986876f;
  constexpr float kCoefA = 0.044715f;
  // fma: the contraction the compiler makes of 1 + a*x*x in the reference build.
  return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * x * std::fma(kCoefA * x, x, 1.0f)));
}

const std::vector<f16_t>& GeluTable() {
  static const std::vector<f16_t> table = [] {
    std::vector<f16_t> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = F32ToF16(GeluTanh(F16ToF32(static_cast<f16_t>(i))));
    return t;
  }();
  return table;
}

}  // namespace

void GeluMul(float* gate, const float* up, int64_t n) {
  const f16_t* table = GeluTable().data();
  for (int64_t i = 0; i < n; ++i) {
    const float x = gate[i];
    if (x <= -10.0f)
      gate[i] = 0.0f;
    else if (x >= 10.0f)
      gate[i] = x * up[i];
    else
      gate[i] = F16ToF32(table[F32ToF16(x)]) * up[i];
  }
}

}  // namespace es::kernels
