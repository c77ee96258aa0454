// MatMul's kernel variants within a SIMD target (on 64-bit Arm: i8mm, dotprod, neon): which one
// dispatch picks on this CPU, and that every variant gives bit-identical results.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "kernels/kernels.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"

namespace {

using es::TensorType;
namespace k = es::kernels;

// The variant the CPU should get, from whoever chose the CPU: scripts/test aarch64 sets it per
// qemu -cpu model (max: i8mm; neoverse-n1: dotprod; cortex-a53: neon). Dispatch reading the same
// feature bits would prove nothing.
TEST(MatMulVariants, DispatchPicksTheExpectedVariant) {
  const auto all = k::MatMulVariants();
  ASSERT_FALSE(all.empty());
  // Without an expectation (the x86 suite: one variant per Highway target), dispatch must at
  // least pick the best variant this CPU offers.
  const char* env = std::getenv("EDGESHARD_EXPECT_MATMUL_VARIANT");
  const std::string want = env && *env ? env : all.front();
  EXPECT_EQ(std::string(k::ActiveMatMulVariant()), want);
  EXPECT_EQ(all.front(), want);
  std::string targets;
  for (const auto& t : k::SupportedTargets()) targets += (targets.empty() ? "" : " ") + t;
  std::printf("MatMul variant %s; Highway targets of this CPU: %s (dispatch: %s)\n",
              k::ActiveMatMulVariant(), targets.c_str(), k::ActiveTarget());
}

// The Highway target of the non-matmul kernels (norms, RoPE, softmax, attention), from whoever
// chose the CPU: scripts/test aarch64 sets it per qemu -cpu model (max: SVE2; a64fx: SVE;
// neoverse-n1, cortex-a53: NEON). Without one, the best target this build offers must win.
TEST(MatMulVariants, DispatchPicksTheExpectedHighwayTarget) {
  const auto targets = k::SupportedTargets();
  ASSERT_FALSE(targets.empty());
  const char* env = std::getenv("EDGESHARD_EXPECT_HWY_TARGET");
  const std::string want = env && *env ? env : targets.front();
  EXPECT_EQ(std::string(k::ActiveTarget()), want);
  EXPECT_EQ(targets.front(), want);
}

TEST(MatMulVariants, ForcingAVariant) {
  const auto all = k::MatMulVariants();
  ASSERT_FALSE(all.empty());
  for (const auto& v : all) {
    k::SetMatMulVariantForTesting(v);
    EXPECT_EQ(std::string(k::ActiveMatMulVariant()), v);
  }
  k::SetMatMulVariantForTesting("");
  EXPECT_EQ(std::string(k::ActiveMatMulVariant()), all.front());
  EXPECT_THROW(k::SetMatMulVariantForTesting("NO_SUCH_VARIANT"), es::Error);
}

std::vector<uint8_t> RandomRows(TensorType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> x(static_cast<size_t>(cols));
  std::vector<uint8_t> w(es::RowBytes(t, cols) * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : x) v = dist(rng);
    es::QuantizeRowRef(t, x.data(), w.data() + es::RowBytes(t, cols) * static_cast<size_t>(r),
                       cols);
  }
  return w;
}

// Every output of every variant equals the last variant's (Highway's own kernels), byte for byte:
// decode, prompt tiles and their remainders (odd rows and columns, a second column block), one
// and three threads.
TEST(MatMulVariants, BitIdenticalToTheHighwayKernels) {
  struct Shape {
    int64_t rows, cols;
  };
  const auto all = k::MatMulVariants();
  for (TensorType t :
       {TensorType::kQ4_0, TensorType::kQ8_0, TensorType::kQ4_K, TensorType::kQ6_K}) {
    for (const Shape s : {Shape{67, 1024}, Shape{16, 512}, Shape{5, 2816}}) {
      const auto w = RandomRows(t, s.rows, s.cols, 11 + static_cast<uint32_t>(s.rows));
      const k::Matrix m{w.data(), t, s.rows, s.cols, es::RowBytes(t, s.cols)};
      for (int64_t batch : {1, 2, 3, 5, 70}) {
        std::mt19937 rng(static_cast<uint32_t>(batch));
        std::normal_distribution<float> dist(0.0f, 1.0f);
        std::vector<float> x(static_cast<size_t>(batch * s.cols));
        for (auto& v : x) v = dist(rng);
        x[3] = 30.0f;  // an outlier sets a block's scale
        for (int threads : {1, 3}) {
          k::ThreadPool pool(threads);
          k::Scratch scratch;
          std::vector<std::vector<float>> y(all.size());
          for (size_t v = 0; v < all.size(); ++v) {
            k::SetMatMulVariantForTesting(all[v]);
            y[v].assign(static_cast<size_t>(batch * s.rows), 0.0f);
            k::MatMul(m, x.data(), s.cols, batch, y[v].data(), s.rows, pool, scratch);
          }
          k::SetMatMulVariantForTesting("");
          for (size_t v = 0; v + 1 < all.size(); ++v) {
            for (size_t i = 0; i < y[v].size(); ++i) {
              ASSERT_EQ(std::memcmp(&y[v][i], &y.back()[i], 4), 0)
                  << es::TypeName(t) << " " << s.rows << "x" << s.cols << " batch " << batch
                  << " threads " << threads << " output " << i << ": " << all[v] << " " << y[v][i]
                  << " vs " << all.back() << " " << y.back()[i];
            }
          }
        }
      }
    }
  }
}

}  // namespace
