// SIMD kernels against the scalar references, on every SIMD target this CPU supports.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"
#include "test_util.h"

// Counts heap allocations, to check that warm kernels do not allocate per call.
std::atomic<long> g_allocations{0};
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
// GCC cannot tell that these replace the global operators the pointers came from; with
// sanitizers it reports every inlined `new T` of this file, so the warning is off file-wide.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}

namespace {

using es::TensorType;
namespace k = es::kernels;

constexpr TensorType kWeightTypes[] = {
    TensorType::kF32,    TensorType::kF16,  TensorType::kBF16,   TensorType::kQ8_0,
    TensorType::kQ4_0,   TensorType::kQ4_1, TensorType::kQ5_0,   TensorType::kQ5_1,
    TensorType::kIQ4_NL, TensorType::kQ4_K, TensorType::kQ6_K,   TensorType::kQ5_K,
    TensorType::kQ3_K,   TensorType::kQ2_K, TensorType::kIQ4_XS, TensorType::kMXFP4};

using es::test::Gaussian;

std::vector<uint8_t> Quantize(TensorType t, const float* x, int64_t n) {
  std::vector<uint8_t> out(es::RowBytes(t, n));
  es::QuantizeRowRef(t, x, out.data(), n);
  return out;
}

template <class F>
void ForEachTarget(F body) {
  es::test::ForEachTarget([&](const std::string&) { body(); });
}

TEST(Kernels, TargetSelection) {
  const auto targets = k::SupportedTargets();
  ASSERT_FALSE(targets.empty());
  EXPECT_EQ(std::string(k::ActiveTarget()), targets.front());  // best target by default
  EXPECT_THROW(k::SetTargetForTesting("NO_SUCH_TARGET"), es::Error);
}

// ---------------------------------------------------------------------------------------------
// Conversions and dequantization: bit-exact.

TEST(Kernels, F16ConversionsBitExact) {
  std::vector<es::f16_t> all(65536);
  std::iota(all.begin(), all.end(), 0);
  std::vector<float> special = {0.0f,
                                -0.0f,
                                1.0f + std::ldexp(1.0f, -11),
                                std::ldexp(3.0f, -25),
                                std::ldexp(2047.0f, -25),
                                65504.0f,
                                65519.99f,
                                65520.0f,
                                -1e30f,
                                INFINITY,
                                -INFINITY,
                                NAN,
                                std::ldexp(1.0f, -30),
                                1e-40f};
  auto rnd = Gaussian(3001, 5, 1000.0f);
  special.insert(special.end(), rnd.begin(), rnd.end());
  ForEachTarget([&] {
    std::vector<float> f(all.size());
    k::ConvertF16ToF32(all.data(), f.data(), static_cast<int64_t>(all.size()));
    for (size_t i = 0; i < all.size(); ++i) {
      const float ref = es::F16ToF32(all[i]);
      if (std::isnan(ref)) {
        ASSERT_TRUE(std::isnan(f[i])) << i;
      } else {
        ASSERT_EQ(std::memcmp(&f[i], &ref, 4), 0) << "half " << i;
      }
    }
    std::vector<es::f16_t> h(special.size());
    k::ConvertF32ToF16(special.data(), h.data(), static_cast<int64_t>(special.size()));
    for (size_t i = 0; i < special.size(); ++i)
      ASSERT_EQ(h[i], es::F32ToF16(special[i])) << special[i];
  });
}

TEST(Kernels, DequantizeRowBitExact) {
  const int64_t n = 2048;
  const auto x = Gaussian(n, 9, 0.3f);
  ForEachTarget([&] {
    for (TensorType t :
         {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0,
          TensorType::kQ4_0, TensorType::kQ4_K, TensorType::kQ6_K, TensorType::kQ8_K,
          TensorType::kQ5_K, TensorType::kQ3_K, TensorType::kQ2_K, TensorType::kIQ4_XS}) {
      const auto q = Quantize(t, x.data(), n);
      std::vector<float> ref(n), got(n);
      es::DequantizeRowRef(t, q.data(), ref.data(), n);
      k::DequantizeRow(t, q.data(), got.data(), n);
      EXPECT_EQ(std::memcmp(ref.data(), got.data(), n * 4), 0) << es::TypeName(t);
    }
    EXPECT_THROW(k::DequantizeRow(TensorType::kQ4_K, nullptr, nullptr, 100), es::Error);
  });
}

TEST(Kernels, DequantizeRealTensorsBitExact) {
  ForEachTarget([&] {
    for (const char* file : {"synth-llama-spm-256.q4_k_m.gguf", "synth-llama-spm-256.q4_0.gguf",
                             "synth-llama-spm-256.q8_0.gguf", "synth-llama-spm-256.f16.gguf"}) {
      auto f = es::gguf::File::Open(es::test::ModelPath(file));
      for (const auto& t : f->tensors()) {
        const int64_t n = t.NumElements();
        std::vector<float> ref(n), got(n);
        es::DequantizeRowRef(t.type, t.data, ref.data(), n);
        k::DequantizeRow(t.type, t.data, got.data(), n);
        ASSERT_EQ(std::memcmp(ref.data(), got.data(), n * 4), 0) << file << " " << t.name;
      }
    }
  });
}

// The activation conversion inside MatMul reproduces QuantizeRowRef byte for byte.
TEST(Kernels, ActivationConversionMatchesReference) {
  const int64_t n = 1024, batch = 3;
  auto x = Gaussian(n * batch, 11, 1.5f);
  std::fill(x.begin(), x.begin() + 256, 0.0f);  // zero blocks
  x[300] = 127.0f * 0.5f;                       // a tie for Q8_0 scale 0.5 neighbours
  x[301] = 2.25f;
  for (int i = 0; i < 16; ++i) x[1024 + 512 + i] = 0.5f * static_cast<float>(i) - 3.0f;
  ForEachTarget([&] {
    for (TensorType w : kWeightTypes) {
      const TensorType vt = es::VecDotType(w);
      const size_t stride = k::detail::ActRowBytes(w, n);
      std::vector<uint8_t> acts(stride * batch + 64);
      k::detail::ConvertActs(w, x.data(), n, n, 0, batch, acts.data(), stride);
      for (int64_t b = 0; b < batch; ++b) {
        const auto ref = Quantize(vt, x.data() + b * n, n);
        std::vector<uint8_t> got(ref.size());
        k::detail::ActsToBlocks(w, acts.data() + b * stride, n, got.data());
        EXPECT_EQ(ref, got) << es::TypeName(w) << " row " << b;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// MatMul against VecDotRef per output element.

struct RefMatMul {
  std::vector<float> y;    // batch x rows
  std::vector<float> mag;  // sum |w_i x_i| per element, scales the tolerance
};

RefMatMul Reference(TensorType type, const std::vector<uint8_t>& w, int64_t rows, int64_t cols,
                    const std::vector<float>& x, int64_t batch) {
  const TensorType vt = es::VecDotType(type);
  const size_t rb = es::RowBytes(type, cols);
  RefMatMul r;
  r.y.resize(batch * rows);
  r.mag.resize(batch * rows);
  std::vector<float> wd(rows * cols);
  for (int64_t i = 0; i < rows; ++i)
    es::DequantizeRowRef(type, w.data() + i * rb, wd.data() + i * cols, cols);
  for (int64_t b = 0; b < batch; ++b) {
    const auto xq = Quantize(vt, x.data() + b * cols, cols);
    std::vector<float> xd(cols);
    es::DequantizeRowRef(vt, xq.data(), xd.data(), cols);
    for (int64_t i = 0; i < rows; ++i) {
      r.y[b * rows + i] = es::VecDotRef(type, w.data() + i * rb, xq.data(), cols);
      double m = 0;
      for (int64_t j = 0; j < cols; ++j)
        m += std::fabs(static_cast<double>(wd[i * cols + j]) * xd[j]);
      r.mag[b * rows + i] = static_cast<float>(m);
    }
  }
  return r;
}

void ExpectMatMul(TensorType type, const std::vector<uint8_t>& w, int64_t rows, int64_t cols,
                  const std::vector<float>& x, int64_t batch, const RefMatMul& ref, int threads) {
  k::Matrix m{w.data(), type, rows, cols, es::RowBytes(type, cols)};
  k::ThreadPool pool(threads);
  k::Scratch scratch;
  // ldy > rows checks that the output stride is honoured; the gap must stay untouched.
  const int64_t ldy = rows + 3;
  std::vector<float> y(batch * ldy, -12345.0f);
  k::MatMul(m, x.data(), cols, batch, y.data(), ldy, pool, scratch);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < rows; ++i) {
      const float want = ref.y[b * rows + i];
      const float tol = 2e-6f * ref.mag[b * rows + i] + 1e-6f;
      ASSERT_NEAR(y[b * ldy + i], want, tol) << es::TypeName(type) << " batch " << batch << " row "
                                             << i << " col " << b << " threads " << threads;
    }
    for (int64_t i = rows; i < ldy && b + 1 < batch; ++i) ASSERT_EQ(y[b * ldy + i], -12345.0f);
  }
}

TEST(Kernels, MatMulMatchesVecDotRef) {
  // 67 rows: not a multiple of any tile; 1024 columns: 4 K-quant blocks, 32 Q8_0 blocks.
  const int64_t rows = 67, cols = 1024;
  std::vector<std::vector<uint8_t>> weights;
  for (TensorType t : kWeightTypes) {
    std::vector<uint8_t> w;
    for (int64_t r = 0; r < rows; ++r) {
      auto wr = Gaussian(cols, 100 + static_cast<uint32_t>(r), 0.02f);
      if (r == 5) std::fill(wr.begin(), wr.end(), 0.0f);
      const auto q = Quantize(t, wr.data(), cols);
      w.insert(w.end(), q.begin(), q.end());
    }
    weights.push_back(std::move(w));
  }
  for (int64_t batch : {1, 2, 3, 5, 17}) {
    auto x = Gaussian(batch * cols, 7 + static_cast<uint32_t>(batch), 1.0f);
    // Outliers and an all-zero block in the first row.
    x[17] = 40.0f;
    std::fill(x.begin() + 256, x.begin() + 512, 0.0f);
    for (size_t ti = 0; ti < std::size(kWeightTypes); ++ti) {
      const TensorType t = kWeightTypes[ti];
      const RefMatMul ref = Reference(t, weights[ti], rows, cols, x, batch);
      ForEachTarget([&] {
        for (int threads : {1, 2, 3})
          ExpectMatMul(t, weights[ti], rows, cols, x, batch, ref, threads);
      });
    }
  }
}

TEST(Kernels, DecodeIsBitIdenticalToPromptRows) {
  // A decode step and a prompt must give one output the same bits: the same token's logits do not
  // depend on the batch it came in (decode kernels keep 16 rows' chains in vector lanes, prompt
  // tiles their own). 35 rows: two groups of 16 and a tail; 17 K-quant blocks, and for the
  // 32-element types one more block too: the 16-row decoders of those take blocks in pairs, and
  // an odd count ends on a single one.
  const int64_t rows = 35;
  for (TensorType t : kWeightTypes) {
    for (const int64_t cols : {int64_t{17 * 256}, int64_t{17 * 256 + 32}}) {
      if (cols % es::Traits(t).block_elems != 0) continue;
      std::vector<uint8_t> w;
      for (int64_t r = 0; r < rows; ++r) {
        const auto wr = Gaussian(cols, 500 + static_cast<uint32_t>(r), 0.03f);
        auto q = Quantize(t, wr.data(), cols);
        // MXFP4 rows whose every scale is the subnormal E8M0 2^-128 or 2^-127, or the least normal
        // (the decoders convert scales in vector code, the prompt tiles one by one).
        if (t == TensorType::kMXFP4 && (r == 3 || r == 5 || r == 7))
          for (size_t b = 0; b < q.size(); b += sizeof(es::BlockMXFP4))
            q[b] = static_cast<uint8_t>((r - 3) / 2);
        w.insert(w.end(), q.begin(), q.end());
      }
      const k::Matrix m{w.data(), t, rows, cols, es::RowBytes(t, cols)};
      const auto x = Gaussian(3 * cols, 600, 1.0f);
      ForEachTarget([&] {
        k::ThreadPool pool(2);
        k::Scratch scratch;
        std::vector<float> one(rows), three(3 * rows);
        k::MatMul(m, x.data(), cols, 1, one.data(), rows, pool, scratch);
        k::MatMul(m, x.data(), cols, 3, three.data(), rows, pool, scratch);
        for (int64_t i = 0; i < rows; ++i)
          ASSERT_EQ(std::memcmp(&one[i], &three[i], 4), 0)
              << es::TypeName(t) << " " << cols << " columns, row " << i << ": " << one[i] << " vs "
              << three[i];
      });
    }
  }
}

TEST(Kernels, MatMulLargeBatchAndOddShapes) {
  // Batch beyond one column block (64) and tiny / single-row matrices.
  struct Shape {
    int64_t rows, cols, batch;
  };
  for (const Shape s : {Shape{9, 256, 70}, Shape{1, 512, 1}, Shape{1, 256, 5}, Shape{3, 768, 2}}) {
    for (TensorType t : kWeightTypes) {
      std::vector<uint8_t> w;
      for (int64_t r = 0; r < s.rows; ++r) {
        const auto wr = Gaussian(s.cols, 300 + static_cast<uint32_t>(r), 0.05f);
        const auto q = Quantize(t, wr.data(), s.cols);
        w.insert(w.end(), q.begin(), q.end());
      }
      const auto x = Gaussian(s.batch * s.cols, 400, 1.0f);
      const RefMatMul ref = Reference(t, w, s.rows, s.cols, x, s.batch);
      ExpectMatMul(t, w, s.rows, s.cols, x, s.batch, ref, 2);
    }
  }
}

TEST(Kernels, MatMulFloatRowsWithTail) {
  // F32/F16 rows whose length is not a multiple of the vector size.
  const int64_t rows = 13, cols = 37, batch = 6;
  for (TensorType t : {TensorType::kF32, TensorType::kF16, TensorType::kBF16}) {
    std::vector<uint8_t> w;
    for (int64_t r = 0; r < rows; ++r) {
      const auto wr = Gaussian(cols, 500 + static_cast<uint32_t>(r));
      const auto q = Quantize(t, wr.data(), cols);
      w.insert(w.end(), q.begin(), q.end());
    }
    const auto x = Gaussian(batch * cols, 600);
    const RefMatMul ref = Reference(t, w, rows, cols, x, batch);
    ForEachTarget([&] { ExpectMatMul(t, w, rows, cols, x, batch, ref, 1); });
  }
}

TEST(Kernels, MatMulRealWeights) {
  // Every weight matrix of the Q4_K/Q6_K file and the Q4_0 file, batch 1 and 7.
  for (const char* file : {"synth-llama-spm-256.q4_k_m.gguf", "synth-llama-spm-256.q4_0.gguf"}) {
    auto f = es::gguf::File::Open(es::test::ModelPath(file));
    int checked = 0;
    for (const auto& t : f->tensors()) {
      if (t.dims.size() != 2 || t.type == TensorType::kF32) continue;
      if (t.name.find("token_embd") != std::string::npos) continue;
      const int64_t cols = t.dims[0], rows = t.dims[1];
      const std::vector<uint8_t> w(t.data, t.data + t.n_bytes);
      for (int64_t batch : {1, 7}) {
        const auto x = Gaussian(batch * cols, 700 + static_cast<uint32_t>(checked));
        const RefMatMul ref = Reference(t.type, w, rows, cols, x, batch);
        ExpectMatMul(t.type, w, rows, cols, x, batch, ref, 2);
      }
      if (++checked >= 12) break;
    }
    EXPECT_GT(checked, 0) << file;
  }
}

TEST(Kernels, MatMulRejectsInconsistentMatrices) {
  k::ThreadPool pool(1);
  k::Scratch scratch;
  std::vector<uint8_t> w(18 * 4);
  std::vector<float> x(64), y(4);
  k::Matrix bad_cols{w.data(), TensorType::kQ4_0, 2, 48, es::RowBytes(TensorType::kQ4_0, 32)};
  EXPECT_THROW(k::MatMul(bad_cols, x.data(), 48, 1, y.data(), 2, pool, scratch), es::Error);
  k::Matrix bad_bytes{w.data(), TensorType::kQ4_0, 2, 64, 17};
  EXPECT_THROW(k::MatMul(bad_bytes, x.data(), 64, 1, y.data(), 2, pool, scratch), es::Error);
  // Q8_K is an activation type only: no weight kernel.
  k::Matrix unsupported{w.data(), TensorType::kQ8_K, 2, 256, 292};
  EXPECT_THROW(k::MatMul(unsupported, x.data(), 256, 1, y.data(), 2, pool, scratch), es::Error);
  k::Matrix ok{w.data(), TensorType::kQ4_0, 2, 64, es::RowBytes(TensorType::kQ4_0, 64)};
  EXPECT_THROW(k::MatMul(ok, x.data(), 10, 2, y.data(), 2, pool, scratch),
               es::Error);                                                      // ldx < cols
  EXPECT_NO_THROW(k::MatMul(ok, x.data(), 64, 0, y.data(), 2, pool, scratch));  // empty batch
}

// ---------------------------------------------------------------------------------------------
// Elementwise ops against straightforward scalar code.

TEST(Kernels, RmsNorm) {
  for (int64_t n : {1, 7, 64, 4096, 4099}) {
    const auto x = Gaussian(n, 20, 3.0f);
    const auto w = Gaussian(n, 21);
    double ss = 0;
    for (float v : x) ss += static_cast<double>(v * v);
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss / n) + 1e-5f);
    ForEachTarget([&] {
      std::vector<float> y(n), y2(n);
      k::RmsNorm(x.data(), w.data(), y.data(), n, 1e-5f);
      k::RmsNorm(x.data(), nullptr, y2.data(), n, 1e-5f);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_NEAR(y[i], x[i] * scale * w[i], 1e-6f * std::fabs(x[i] * scale * w[i]) + 1e-7f) << i;
        ASSERT_NEAR(y2[i], x[i] * scale, 1e-6f * std::fabs(x[i] * scale) + 1e-7f) << i;
      }
      // In place.
      std::vector<float> z = x;
      k::RmsNorm(z.data(), w.data(), z.data(), n, 1e-5f);
      EXPECT_EQ(z, y);
    });
  }
}

TEST(Kernels, AddAndSiluMul) {
  for (int64_t n : {1, 15, 1000}) {
    const auto a = Gaussian(n, 30, 4.0f), b = Gaussian(n, 31);
    ForEachTarget([&] {
      std::vector<float> x = a;
      k::Add(x.data(), b.data(), n);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], a[i] + b[i]);
      std::vector<float> g = a;
      k::SiluMul(g.data(), b.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double s = a[i] / (1.0 + std::exp(-static_cast<double>(a[i]))) * b[i];
        ASSERT_NEAR(g[i], s, 1e-6 * std::fabs(s) + 1e-7) << a[i];
      }
    });
  }
  // Extremes: silu(-100) ~ 0, silu(100) = 100, no NaN.
  std::vector<float> g = {-100.0f, 100.0f, -88.0f, 0.0f, -1000.0f, 1000.0f, -20.0f, 20.0f};
  std::vector<float> up(g.size(), 1.0f);
  k::SiluMul(g.data(), up.data(), static_cast<int64_t>(g.size()));
  EXPECT_NEAR(g[0], 0.0f, 1e-30f);
  EXPECT_EQ(g[1], 100.0f);
  EXPECT_EQ(g[5], 1000.0f);
  for (float v : g) EXPECT_FALSE(std::isnan(v));
}

TEST(Kernels, Softmax) {
  for (int64_t n : {1, 5, 16, 1000, 32000}) {
    auto x = Gaussian(n, 40, 5.0f);
    if (n > 10) {
      x[3] = -INFINITY;  // masked position
      x[7] = 60.0f;
    }
    double mx = -INFINITY;
    for (float v : x) mx = std::max<double>(mx, v);
    std::vector<double> e(n);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += e[i] = std::exp(x[i] - mx);
    ForEachTarget([&] {
      std::vector<float> y = x;
      k::Softmax(y.data(), n);
      double total = 0;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_NEAR(y[i], e[i] / sum, 2e-6 * e[i] / sum + 1e-12) << i;
        total += y[i];
      }
      EXPECT_NEAR(total, 1.0, 1e-5);
      if (n > 10) {
        EXPECT_EQ(y[3], 0.0f);
      }
    });
  }
  std::vector<float> masked(8, -INFINITY);
  k::Softmax(masked.data(), 8);
  for (float v : masked) EXPECT_EQ(v, 0.0f);
}

// Attention sinks (gpt-oss): the sink's logit joins the denominator only.
TEST(Kernels, SoftmaxWithSink) {
  for (int64_t n : {1, 5, 16, 300})
    for (float sink : {-3.0f, 0.5f, 50.0f}) {
      const auto x = Gaussian(n, 41, 2.0f);
      double mx = sink, sum = 0;
      for (float v : x) mx = std::max<double>(mx, v);
      for (float v : x) sum += std::exp(v - mx);
      sum += std::exp(sink - mx);
      ForEachTarget([&] {
        std::vector<float> y = x;
        k::SoftmaxWithSink(y.data(), n, sink);
        for (int64_t i = 0; i < n; ++i)
          ASSERT_NEAR(y[i], std::exp(x[i] - mx) / sum, 4e-6 * std::exp(x[i] - mx) / sum) << i;
      });
    }
}

// ggml's rope: theta_i = pos * base^(-2i/n_rot), built by repeated multiplication in f32.
void RopeScalar(float* x, int64_t n_rot, int64_t pos, float base, bool neox) {
  const float theta_scale = std::pow(base, -2.0f / static_cast<float>(n_rot));
  float theta = static_cast<float>(pos);
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const float c = std::cos(theta), s = std::sin(theta);
    const int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + n_rot / 2 : 2 * i + 1;
    const float a = x[i0], b = x[i1];
    x[i0] = a * c - b * s;
    x[i1] = a * s + b * c;
    theta *= theta_scale;
  }
}

TEST(Kernels, Rope) {
  struct Case {
    int64_t head_dim, n_rot;
  };
  for (const Case c : {Case{64, 64}, Case{128, 128}, Case{80, 32}, Case{8, 8}, Case{6, 2}}) {
    for (bool neox : {false, true}) {
      for (int64_t pos : {0, 1, 17, 4095}) {
        const auto x = Gaussian(c.head_dim, 50 + static_cast<uint32_t>(pos));
        std::vector<float> want = x;
        RopeScalar(want.data(), c.n_rot, pos, 10000.0f, neox);
        ForEachTarget([&] {
          std::vector<float> y = x;
          k::Rope(y.data(), c.head_dim, c.n_rot, pos, 10000.0f, neox);
          for (int64_t i = 0; i < c.head_dim; ++i)
            ASSERT_NEAR(y[i], want[i], 1e-6f * (std::fabs(x[i]) + 1.0f))
                << "dim " << i << " pos " << pos << " neox " << neox;
          // A different base at the same position must not reuse a cached table.
          std::vector<float> z = x, zw = x;
          k::Rope(z.data(), c.head_dim, c.n_rot, pos, 500000.0f, neox);
          RopeScalar(zw.data(), c.n_rot, pos, 500000.0f, neox);
          for (int64_t i = 0; i < c.head_dim; ++i)
            ASSERT_NEAR(z[i], zw[i], 1e-6f * (std::fabs(x[i]) + 1.0f));
        });
      }
    }
  }
  float x[4] = {};
  EXPECT_THROW(k::Rope(x, 4, 3, 0, 10000.0f, false), es::Error);
  EXPECT_THROW(k::Rope(x, 4, 8, 0, 10000.0f, false), es::Error);
}

// Linear RoPE scaling multiplies each angle by freq_scale after the base's powers are taken (as
// ggml): halving position 2 gives position 1 exactly (both factors are powers of two), and the
// scaled table is not reused for the unscaled one at the same position.
TEST(Kernels, RopeLinearScaling) {
  for (bool neox : {false, true}) {
    const auto x = Gaussian(128, 77);
    ForEachTarget([&] {
      std::vector<float> scaled = x, plain = x, same_pos = x;
      k::Rope(scaled.data(), 128, 128, 2, 1e6f, neox, 0.5f);
      k::Rope(plain.data(), 128, 128, 1, 1e6f, neox);
      EXPECT_EQ(scaled, plain);
      k::Rope(same_pos.data(), 128, 128, 2, 1e6f, neox);
      EXPECT_NE(same_pos, scaled);
    });
  }
}

TEST(Kernels, DotsAndAxpy) {
  for (int64_t n : {1, 8, 63, 64, 128, 1001}) {
    const auto a = Gaussian(n, 60), b = Gaussian(n, 61);
    std::vector<es::f16_t> ah(n), bh(n);
    for (int64_t i = 0; i < n; ++i) {
      ah[i] = es::F32ToF16(a[i]);
      bh[i] = es::F32ToF16(b[i]);
    }
    double d32 = 0, d16 = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      d32 += static_cast<double>(a[i]) * b[i];
      d16 += static_cast<double>(es::F16ToF32(ah[i])) * es::F16ToF32(bh[i]);
      mag += std::fabs(static_cast<double>(a[i]) * b[i]);
    }
    ForEachTarget([&] {
      EXPECT_NEAR(k::DotF32(a.data(), b.data(), n), d32, 1e-6 * mag + 1e-7);
      EXPECT_NEAR(k::DotF16(ah.data(), bh.data(), n), d16, 1e-6 * mag + 1e-7);
      std::vector<float> y = b, y16 = b;
      k::AxpyF32(0.37f, a.data(), y.data(), n);
      k::AxpyF16(-1.5f, ah.data(), y16.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_NEAR(y[i], b[i] + 0.37f * a[i], 1e-6f * (std::fabs(b[i]) + std::fabs(a[i])));
        ASSERT_NEAR(y16[i], b[i] - 1.5f * es::F16ToF32(ah[i]),
                    1e-6f * (std::fabs(b[i]) + 2 * std::fabs(a[i])));
      }
    });
  }
}

TEST(Kernels, AttentionRows) {
  for (int64_t dim : {8, 64, 100, 128}) {
    for (int64_t rows : {0, 1, 2, 3, 37, 48}) {
      const int64_t stride = dim * 3 + 5;  // keys of several heads interleaved, odd offset
      const auto q = Gaussian(dim, 70), kv = Gaussian(rows * stride + dim, 71),
                 p = Gaussian(rows, 72);
      std::vector<es::f16_t> q16(dim), kv16(kv.size());
      for (int64_t i = 0; i < dim; ++i) q16[i] = es::F32ToF16(q[i]);
      for (size_t i = 0; i < kv.size(); ++i) kv16[i] = es::F32ToF16(kv[i]);
      const auto base = Gaussian(dim, 73);
      ForEachTarget([&] {
        std::vector<float> s16(rows + 1, -7.0f), s32(rows + 1, -7.0f);
        k::DotF16Rows(q16.data(), kv16.data(), stride, rows, dim, 0.125f, s16.data());
        k::DotF32Rows(q.data(), kv.data(), stride, rows, dim, 0.125f, s32.data());
        for (int64_t j = 0; j < rows; ++j) {
          double r16 = 0, r32 = 0, mag = 0;
          for (int64_t i = 0; i < dim; ++i) {
            r16 += static_cast<double>(es::F16ToF32(q16[i])) * es::F16ToF32(kv16[j * stride + i]);
            r32 += static_cast<double>(q[i]) * kv[j * stride + i];
            mag += std::fabs(static_cast<double>(q[i]) * kv[j * stride + i]);
          }
          ASSERT_NEAR(s16[j], 0.125 * r16, 1e-6 * mag + 1e-7) << dim << " " << j;
          ASSERT_NEAR(s32[j], 0.125 * r32, 1e-6 * mag + 1e-7) << dim << " " << j;
          // Keys taken 16 at a time keep the per-key float order: bit-identical.
          const float one = k::DotF16(q16.data(), kv16.data() + j * stride, dim) * 0.125f;
          ASSERT_EQ(std::memcmp(&s16[j], &one, 4), 0) << dim << " " << j;
        }
        EXPECT_EQ(s16[rows], -7.0f);  // nothing written past n_rows
        std::vector<float> o16 = base, o32 = base;
        k::WeightedSumF16Rows(p.data(), kv16.data(), stride, rows, dim, o16.data());
        k::WeightedSumF32Rows(p.data(), kv.data(), stride, rows, dim, o32.data());
        for (int64_t i = 0; i < dim; ++i) {
          double r16 = base[i], r32 = base[i], mag = std::fabs(base[i]);
          for (int64_t j = 0; j < rows; ++j) {
            r16 += static_cast<double>(es::F16ToF32(es::F32ToF16(p[j]))) *
                   es::F16ToF32(kv16[j * stride + i]);
            r32 += static_cast<double>(p[j]) * kv[j * stride + i];
            mag += std::fabs(static_cast<double>(p[j]) * kv[j * stride + i]);
          }
          ASSERT_NEAR(o16[i], r16, 1e-6 * mag + 1e-7) << dim << " " << i;
          ASSERT_NEAR(o32[i], r32, 1e-6 * mag + 1e-7) << dim << " " << i;
        }
        // The f16-rounded weights of per-key AxpyF16, bit for bit.
        std::vector<float> axpy = base;
        for (int64_t j = 0; j < rows; ++j)
          k::AxpyF16(es::F16ToF32(es::F32ToF16(p[j])), kv16.data() + j * stride, axpy.data(), dim);
        ASSERT_EQ(std::memcmp(axpy.data(), o16.data(), sizeof(float) * dim), 0) << dim;
      });
    }
  }
}

TEST(Kernels, WarmCallsDoNotAllocate) {
  const int64_t rows = 96, cols = 1024;
  k::ThreadPool pool(2);
  k::Scratch scratch;
  for (TensorType t : kWeightTypes) {
    std::vector<uint8_t> w;
    for (int64_t r = 0; r < rows; ++r) {
      const auto wr = Gaussian(cols, 800 + static_cast<uint32_t>(r), 0.05f);
      const auto q = Quantize(t, wr.data(), cols);
      w.insert(w.end(), q.begin(), q.end());
    }
    const k::Matrix m{w.data(), t, rows, cols, es::RowBytes(t, cols)};
    for (int64_t batch : {7, 1}) {
      const auto x = Gaussian(batch * cols, 900);
      std::vector<float> y(batch * rows);
      k::MatMul(m, x.data(), cols, batch, y.data(), rows, pool, scratch);  // warm up
      const long before = g_allocations.load();
      k::MatMul(m, x.data(), cols, batch, y.data(), rows, pool, scratch);
      EXPECT_EQ(g_allocations.load(), before) << es::TypeName(t) << " batch " << batch;
    }
  }
  std::vector<float> head(128, 0.5f), p(64, 0.1f), out(128);
  std::vector<es::f16_t> kv(64 * 128);
  k::Rope(head.data(), 128, 128, 5, 10000.0f, false);
  k::WeightedSumF16Rows(p.data(), kv.data(), 128, 64, 128, out.data());
  const long before = g_allocations.load();
  k::Rope(head.data(), 128, 128, 6, 10000.0f, false);
  k::WeightedSumF16Rows(p.data(), kv.data(), 128, 64, 128, out.data());
  k::Softmax(p.data(), 64);
  k::RmsNorm(head.data(), head.data(), out.data(), 128, 1e-5f);
  EXPECT_EQ(g_allocations.load(), before);
}

// ---------------------------------------------------------------------------------------------
// Thread pool.

TEST(ThreadPool, RunCallsEveryIndexOnce) {
  for (int n : {1, 2, 3, 8}) {
    k::ThreadPool pool(n);
    EXPECT_EQ(pool.size(), n);
    for (int iter = 0; iter < (n > 2 ? 300 : 2000); ++iter) {
      std::vector<std::atomic<int>> hits(n);
      pool.Run([&](int i) { hits[i].fetch_add(1); });
      for (int i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "iteration " << iter;
    }
  }
}

TEST(ThreadPool, ParallelForCoversRangeExactlyOnce) {
  k::ThreadPool pool(3);
  for (int64_t n : {0, 1, 2, 3, 10, 1001}) {
    std::vector<std::atomic<int>> seen(n);
    pool.ParallelFor(n, [&](int64_t b, int64_t e, int t) {
      EXPECT_LT(b, e);
      EXPECT_GE(t, 0);
      EXPECT_LT(t, 3);
      for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(seen[i].load(), 1);
  }
}

TEST(ThreadPool, ParallelForLetsOthersTakeASlowThreadsShare) {
  // Thread 1 stalls in its first chunk (as a core lent to another tenant would); thread 0 takes
  // every other chunk instead of waiting with half the range left to thread 1.
  k::ThreadPool pool(2);
  const int64_t n = 64;
  std::vector<std::atomic<int>> seen(n);
  std::atomic<int64_t> by_thread[2] = {0, 0};
  pool.ParallelFor(n, [&](int64_t b, int64_t e, int t) {
    if (t == 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    by_thread[t].fetch_add(e - b);
    for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1);
  });
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(seen[i].load(), 1);
  EXPECT_GE(by_thread[0].load(), n * 3 / 4) << "thread 1 covered " << by_thread[1].load();
}

TEST(ThreadPool, PropagatesExceptionsAndStaysUsable) {
  k::ThreadPool pool(3);
  EXPECT_THROW(pool.Run([](int i) {
    if (i == 2) throw std::runtime_error("worker failure");
  }),
               std::runtime_error);
  EXPECT_THROW(pool.Run([](int i) {
    if (i == 0) throw es::Error("caller failure");
  }),
               es::Error);
  std::atomic<int> count{0};
  pool.Run([&](int) { count.fetch_add(1); });
  EXPECT_EQ(count.load(), 3);
  EXPECT_THROW(k::ThreadPool(0), es::Error);
}

TEST(ThreadPool, WakesAfterSleeping) {
  // Idle longer than the spin phase so that the workers block, then run again.
  k::ThreadPool pool(2);
  for (int iter = 0; iter < 3; ++iter) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::atomic<int> count{0};
    pool.Run([&](int) { count.fetch_add(1); });
    EXPECT_EQ(count.load(), 2);
  }
}

}  // namespace
