// SIMD MatMul of Q4_1, Q5_0, Q5_1 and IQ4_NL weights on every SIMD target this CPU supports:
// bit-identical to VecDotRef where the existing quantized kernels are (256- and 512-bit x86
// targets, which keep llama.cpp's eight partial lanes; not Q5_0/MXFP4/IQ4_NL on AVX3_DL), within
// rounding elsewhere. (Their activation conversion is checked with the other types' in
// test_kernels.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"
#include "test_util.h"

namespace {

using es::TensorType;
namespace k = es::kernels;

constexpr TensorType kLegacy[] = {TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1,
                                  TensorType::kIQ4_NL, TensorType::kMXFP4};

using es::test::Gaussian;

std::vector<uint8_t> QuantizeRows(TensorType t, const std::vector<float>& x, int64_t rows,
                                  int64_t cols) {
  const size_t rb = es::RowBytes(t, cols);
  std::vector<uint8_t> out(rb * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    es::QuantizeRowRef(t, x.data() + r * cols, out.data() + r * rb, cols);
  return out;
}

// Calls body(exact) per supported target with dispatch pinned to it; exact: the target keeps
// llama.cpp's eight partial lanes (AVX2 and the AVX-512 targets, but AVX3_DL's Q5_0, MXFP4 and
// IQ4_NL, whose VNNI kernel sums each block exactly as its Q4_0 does).
template <class F>
void ForEachTarget(TensorType type, F body) {
  es::test::ForEachTarget([&](const std::string& t) {
    body(t.rfind("AVX", 0) == 0 &&
         !(t == "AVX3_DL" && (type == TensorType::kQ5_0 || type == TensorType::kMXFP4 ||
                              type == TensorType::kIQ4_NL)));
  });
}

// y[b][r] = VecDotRef(row r, activation row b) for batch rows of x.
std::vector<float> Reference(TensorType t, const std::vector<uint8_t>& w, int64_t rows,
                             int64_t cols, const std::vector<float>& x, int64_t batch) {
  const TensorType vt = es::VecDotType(t);
  const size_t rb = es::RowBytes(t, cols);
  std::vector<float> y(static_cast<size_t>(batch * rows));
  std::vector<uint8_t> xq(es::RowBytes(vt, cols));
  for (int64_t b = 0; b < batch; ++b) {
    es::QuantizeRowRef(vt, x.data() + b * cols, xq.data(), cols);
    for (int64_t r = 0; r < rows; ++r)
      y[b * rows + r] = es::VecDotRef(t, w.data() + r * rb, xq.data(), cols);
  }
  return y;
}

void ExpectMatMul(TensorType t, const std::vector<uint8_t>& w, int64_t rows, int64_t cols,
                  const std::vector<float>& x, int64_t batch, const std::vector<float>& ref,
                  bool exact, k::ThreadPool& pool) {
  k::Matrix m{w.data(), t, rows, cols, es::RowBytes(t, cols)};
  k::Scratch scratch;
  std::vector<float> y(static_cast<size_t>(batch * rows), -1.0f);
  k::MatMul(m, x.data(), cols, batch, y.data(), rows, pool, scratch);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < rows; ++r) {
      const float want = ref[b * rows + r], got = y[b * rows + r];
      if (exact)
        ASSERT_EQ(got, want) << es::TypeName(t) << " " << rows << "x" << cols << " batch " << batch
                             << " row " << r << " col " << b;
      else
        ASSERT_NEAR(got, want, 1e-5f * (std::fabs(want) + 1.0f))
            << es::TypeName(t) << " " << rows << "x" << cols << " batch " << batch;
    }
  }
}

TEST(KernelsLegacy, MatMulBitIdenticalToVecDotRef) {
  struct Shape {
    int64_t rows, cols, max_batch;
  };
  k::ThreadPool pool(2);
  // Odd block counts (7, 33), rows that fill no tile, one row, and batches 1..70 (past one
  // 64-row column block) on the largest.
  for (const Shape s :
       {Shape{67, 1056, 70}, Shape{16, 224, 9}, Shape{3, 256, 5}, Shape{1, 224, 4}}) {
    const auto x = Gaussian(static_cast<size_t>(s.max_batch * s.cols), 7, 1.0f);
    auto wf = Gaussian(static_cast<size_t>(s.rows * s.cols), 100, 0.02f);
    std::fill(wf.begin(), wf.begin() + 32, 0.0f);  // a zero block
    for (TensorType t : kLegacy) {
      const auto w = QuantizeRows(t, wf, s.rows, s.cols);
      const auto ref = Reference(t, w, s.rows, s.cols, x, s.max_batch);
      ForEachTarget(t, [&](bool exact) {
        for (int64_t batch = 1; batch <= s.max_batch; ++batch)
          ExpectMatMul(t, w, s.rows, s.cols, x, batch, ref, exact, pool);
      });
    }
  }
}

}  // namespace
