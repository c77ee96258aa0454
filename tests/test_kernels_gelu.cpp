// GeGLU's activation (kernels_gelu.cpp) against the formula it tabulates.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/kernels.h"
#include "tensor/tensor_types.h"

namespace {

namespace k = es::kernels;

// GeGLU's activation: GELU (tanh form) of the f16-rounded input, rounded to f16, times up; exact
// tails beyond +-10.
TEST(Kernels, GeluMulLikeLlamaCpp) {
  std::vector<float> g = {-12.0f, -10.0f, -3.3f, -0.5f, 0.0f, 1e-3f,
                          0.7f,   2.5f,   9.99f, 10.0f, 30.0f};
  std::vector<float> up(g.size(), 2.0f);
  std::vector<float> y = g;
  k::GeluMul(y.data(), up.data(), static_cast<int64_t>(y.size()));
  for (size_t i = 0; i < g.size(); ++i) {
    const float x = g[i];
    float want;
    if (x <= -10.0f) {
      want = 0.0f;
    } else if (x >= 10.0f) {
      want = x * 2.0f;
    } else {
      const float h = es::F16ToF32(es::F32ToF16(x));
      const float gelu =
          0.5f * h * (1.0f + std::tanh(0.7978845608f * h * (1.0f + 0.044715f * h * h)));
      want = es::F16ToF32(es::F32ToF16(gelu)) * 2.0f;
      // The table rounds to f16: equal to the f16 rounding of the f32 formula, give or take the
      // fma of the reference build in the last f16 place.
      EXPECT_NEAR(y[i], want, 2.0f * std::fabs(want) / 1024 + 1e-7f) << x;
      continue;
    }
    EXPECT_EQ(y[i], want) << x;
  }
  EXPECT_EQ(y[4], 0.0f);
}

}  // namespace
