// KV cache element types (llama.cpp's -ctk/-ctv): f16, f32, q8_0 and q4_0, for keys and values
// separately. The quantized attention kernels against the reference dot products, the memory a
// cache takes, how far its logits move from an F16 cache's, rings, context shift, refusals and
// the CLI options.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "context_shift_util.h"
#include "edgeshard/error.h"
#include "kernels/kernels.h"
#include "model/model_llama.h"
#include "runtime/runtime_kv_cache.h"
#include "runtime/runtime_session.h"
#include "tensor/tensor_quant.h"
#include "test_util.h"

namespace es::test {
namespace {

constexpr TensorType kQ8 = TensorType::kQ8_0, kQ4 = TensorType::kQ4_0, kF16 = TensorType::kF16,
                     kF32 = TensorType::kF32;

std::vector<float> Gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

runtime::SessionOptions Opts(model::KvTypes t, int n_ctx = 512) {
  return {.n_ctx = n_ctx, .n_threads = 2, .n_batch = 64, .kv_type = t, .window_kv = true};
}

TEST(KvCacheTypes, ParseAndRefuse) {
  EXPECT_EQ(model::ParseKvType("q8_0", "-ctk"), kQ8);
  EXPECT_EQ(model::ParseKvType("Q4_0", "-ctk"), kQ4);
  EXPECT_EQ(model::ParseKvType("f32", "-ctv"), kF32);
  try {
    model::ParseKvType("q5_1", "--cache-type-v");
    FAIL() << "q5_1 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--cache-type-v 'q5_1'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("q8_0 or q4_0"), std::string::npos) << e.what();
  }
  // stories260K's heads have 8 values: a block type cannot store them.
  auto m = model::LlamaModel::Load(ModelPath("stories260K.gguf"));
  try {
    runtime::KvCache kv(m->config(), 64, {kF16, kQ4});
    FAIL() << "Q4_0 values with 8-value heads accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("heads have 8"), std::string::npos) << e.what();
  }
}

// A cache takes the rows of its types: 34 bytes per 32 values for Q8_0, 18 for Q4_0.
TEST(KvCacheTypes, BytesFollowTheTypes) {
  auto m = model::LlamaModel::Load(ModelPath("synth-llama-spm-256.f16.gguf"));
  const auto& c = m->config();
  ASSERT_EQ(c.kv_dim() % 32, 0);
  const size_t rows = static_cast<size_t>(c.n_layer) * 512;
  const size_t blocks = static_cast<size_t>(c.kv_dim()) / 32;
  const std::vector<std::pair<model::KvTypes, size_t>> cases = {
      {kF16, rows * c.kv_dim() * 4},
      {kF32, rows * c.kv_dim() * 8},
      {kQ8, rows * blocks * 68},
      {kQ4, rows * blocks * 36},
      {{kQ8, kF16}, rows * (blocks * 34 + c.kv_dim() * 2)}};
  for (const auto& [t, bytes] : cases) {
    runtime::Session s(*m, Opts(t));
    EXPECT_EQ(s.kv_bytes(), bytes) << TypeName(t.k) << "/" << TypeName(t.v);
    EXPECT_EQ(runtime::KvCache::BytesNeeded(c, 512, t, c.n_layer), bytes);
  }
}

// Scores against quantized keys are MatMul's single-row kernels: bit-identical to the reference
// dot product of the key row with the query quantized to Q8_0. Values: the dequantized rows,
// weighted.
TEST(KvCacheTypes, QuantKernelsMatchTheReference) {
  for (const TensorType t : {kQ8, kQ4}) {
    for (const int64_t dim : {32, 64, 96, 128, 256, 288}) {
      const int64_t stride_elems = dim * 3;  // rows of a wider cache, as heads sit in one
      const size_t stride = RowBytes(t, stride_elems);
      for (const int64_t n : {1, 2, 7, 16, 37}) {
        SCOPED_TRACE(std::string(TypeName(t)) + " dim " + std::to_string(dim) + " rows " +
                     std::to_string(n));
        const auto kf = Gaussian(static_cast<size_t>(n * stride_elems), 7 + n);
        std::vector<uint8_t> k(stride * n);
        for (int64_t j = 0; j < n; ++j)
          QuantizeRowRef(t, kf.data() + j * stride_elems, k.data() + j * stride, stride_elems);
        const auto q = Gaussian(static_cast<size_t>(dim), 99);
        std::vector<uint8_t> qbuf(kernels::QueryBytes(t, dim) + 64);
        auto* qa = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(qbuf.data()) + 63) &
                                              ~uintptr_t{63});
        kernels::ConvertQuery(t, q.data(), dim, qa);
        std::vector<float> got(static_cast<size_t>(n));
        kernels::DotQuantRows(t, qa, k.data(), stride, n, dim, 0.125f, got.data());
        std::vector<uint8_t> q8(RowBytes(kQ8, dim));
        QuantizeRowRef(kQ8, q.data(), q8.data(), dim);
        for (int64_t j = 0; j < n; ++j)
          EXPECT_EQ(got[j], VecDotRef(t, k.data() + j * stride, q8.data(), dim) * 0.125f) << j;

        const auto p = Gaussian(static_cast<size_t>(n), 5);
        std::vector<float> out(static_cast<size_t>(dim), 0.5f), want = out, row(dim);
        kernels::WeightedSumQuantRows(t, p.data(), k.data(), stride, n, dim, out.data());
        for (int64_t j = 0; j < n; ++j) {
          DequantizeRowRef(t, k.data() + j * stride, row.data(), dim);
          for (int64_t i = 0; i < dim; ++i) want[i] += p[j] * row[i];
        }
        for (int64_t i = 0; i < dim; ++i) EXPECT_NEAR(out[i], want[i], 1e-4f) << i;
      }
    }
  }
}

// Over a 319-token prompt, logits with quantized caches stay near the F16 cache's: the same top
// token at nearly every position, and small differences (random weights: flat outputs, so a few
// near-ties flip).
TEST(KvCacheTypes, LogitsStayNearTheF16Cache) {
  auto m = model::LlamaModel::Load(ModelPath("synth-llama-spm-256.f16.gguf"));
  const int64_t v = m->config().n_vocab;
  const auto prompt = Prompt(319);
  std::vector<float> base;
  runtime::Session(*m, Opts(kF16)).Eval(prompt, &base);
  struct Case {
    model::KvTypes t;
    float max_diff;
    double top1;
  };
  for (const Case& cs : {Case{kQ8, 0.02f, 0.97}, Case{{kQ8, kF16}, 0.02f, 0.97},
                         Case{{kF16, kQ4}, 0.12f, 0.95}, Case{kQ4, 0.12f, 0.95}}) {
    const std::string what = std::string(TypeName(cs.t.k)) + "/" + TypeName(cs.t.v);
    std::vector<float> got;
    runtime::Session(*m, Opts(cs.t)).Eval(prompt, &got);
    ASSERT_EQ(got.size(), base.size());
    float worst = 0;
    int same = 0;
    for (size_t i = 0; i < prompt.size(); ++i) {
      const float* a = base.data() + i * v;
      const float* b = got.data() + i * v;
      for (int64_t j = 0; j < v; ++j) worst = std::max(worst, std::fabs(a[j] - b[j]));
      same += std::max_element(a, a + v) - a == std::max_element(b, b + v) - b;
    }
    const double agree = static_cast<double>(same) / static_cast<double>(prompt.size());
    std::printf("  %s cache: max |dlogit| %.5f, same top-1 %.2f%%\n", what.c_str(), worst,
                100 * agree);
    EXPECT_GT(worst, 0.0f) << what << ": no difference at all, is the cache quantized?";
    EXPECT_LE(worst, cs.max_diff) << what;
    EXPECT_GE(agree, cs.top1) << what;
  }
}

// Sliding-window rings of quantized rows give the same logits as a full quantized cache, bit for
// bit, past the point where the rings wrap.
TEST(KvCacheTypes, RingsMatchTheFullCache) {
  auto m = model::LlamaModel::Load(ModelPath("synth-gemma3.f16.gguf"));
  for (const model::KvTypes t : {model::KvTypes{kQ8}, model::KvTypes{kQ4, kQ8}}) {
    auto so = Opts(t, 300);
    so.n_batch = 16;
    runtime::Session ring(*m, so);
    so.window_kv = false;
    runtime::Session full(*m, so);
    EXPECT_LT(ring.kv_bytes(), full.kv_bytes());
    std::vector<float> a, b;
    ring.Eval(Prompt(120), &a);
    full.Eval(Prompt(120), &b);
    ASSERT_EQ(a, b);
    for (int step = 0; step < 40; ++step) {
      const auto& l = ring.last_logits();
      const auto next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      ring.Eval({next});
      full.Eval({next});
      ASSERT_EQ(ring.last_logits(), full.last_logits()) << "step " << step;
    }
  }
}

// A context shift turns quantized keys through f32 and quantizes them again. (Shifted keys of a
// deep model are not a fresh evaluation's: they were computed with the dropped tokens in view.)
// The logits after the shift stay as near the F16 cache's shift as the quantized cache's logits
// stay to the F16 cache's without one.
TEST(KvCacheTypes, ContextShiftRequantizesKeys) {
  auto m = model::LlamaModel::Load(ModelPath("synth-llama-spm-256.f16.gguf"));
  auto shifted = [&](model::KvTypes t) {
    runtime::Session s(*m, Opts(t, 160));
    s.Eval(Prompt(160));
    EXPECT_EQ(s.ShiftContext(1), 79);
    s.Eval({42, 43, 44});
    return s.last_logits();
  };
  const auto base = shifted(kF16);
  for (const auto& [t, bound] :
       {std::pair{model::KvTypes{kQ8}, 0.02f}, std::pair{model::KvTypes{kQ4, kF16}, 0.12f}}) {
    const auto got = shifted(t);
    float worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - base[i]));
    std::printf("  %s keys, after a shift: max |dlogit| %.5f against F16\n", TypeName(t.k), worst);
    EXPECT_GT(worst, 0.0f);
    EXPECT_LE(worst, bound) << TypeName(t.k);
  }
}

TEST(KvCacheTypes, CliOptions) {
  const std::string m = "-m " + ModelPath("synth-llama-spm-256.f16.gguf") + " -p Once -n 4 -t 2";
  auto r = RunCli("run " + m + " -c 256 -ctk q8_0 -ctv q4_0");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // 4 layers x 256 positions x (4 Q8_0 + 4 Q4_0 blocks of 32 of the 128-wide rows).
  EXPECT_NE(r.err.find("KV cache 208.0 KiB (K q8_0, V q4_0)"), std::string::npos) << r.err;
  r = RunCli("run " + m + " -c 256 --kv-type q4_0");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("KV cache 144.0 KiB (K q4_0, V q4_0)"), std::string::npos) << r.err;
  r = RunCli("run " + m + " -ctk q5_1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("q5_1"), std::string::npos) << r.err;
  r = RunCli("run -m " + ModelPath("stories260K.gguf") + " -p Once -n 4 -ctv q8_0");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("heads have 8"), std::string::npos) << r.err;
  for (const char* cmd : {"chat", "serve", "bench", "perplexity", "eval"}) {
    r = RunCli(std::string(cmd) + " --help");
    EXPECT_NE(r.out.find("--cache-type-k"), std::string::npos) << cmd;
  }
}

}  // namespace
}  // namespace es::test
