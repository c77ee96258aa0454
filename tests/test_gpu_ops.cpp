// The Vulkan backend's block programs against the CPU kernels (or, for attention, a reference in
// double): norms, additions, RoPE, KV cache writes, attention, gated activations.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gpu/gpu_device.h"
#include "gpu/gpu_ops.h"
#include "gpu/gpu_shaders.h"
#include "gpu_test_util.h"
#include "kernels/kernels.h"
#include "tensor/tensor_types.h"
#include "test_util.h"

namespace {

namespace g = es::gpu;
namespace k = es::kernels;
using es::test::Gaussian;

// Each test three times: with the device's default build (on lavapipe the exact f64 builds) and
// with the native and mixed builds GPUs run (within rounding on lavapipe: it splits fma).
class GpuOps : public ::testing::TestWithParam<g::DeviceOptions::Math> {
 protected:
  void SetUp() override {
    g::DeviceOptions o;
    o.math = GetParam();
    dev_ = es::test::OpenTestDevice(o);
    ASSERT_TRUE(dev_);
  }
  std::shared_ptr<g::Buffer> Put(const std::vector<float>& v) {
    auto b = dev_->Alloc(v.size() * sizeof(float));
    dev_->Upload(*b, 0, v.data(), v.size() * sizeof(float));
    return b;
  }
  std::shared_ptr<g::Buffer> PutInts(const std::vector<int32_t>& v) {
    auto b = dev_->Alloc(v.size() * sizeof(int32_t));
    dev_->Upload(*b, 0, v.data(), v.size() * sizeof(int32_t));
    return b;
  }
  std::vector<float> Get(const g::Buffer& b, size_t n) {
    std::vector<float> v(n);
    dev_->Download(b, 0, v.data(), n * sizeof(float));
    return v;
  }
  template <class F>
  void Run(F record) {
    auto seq = dev_->Record();
    record(*seq);
    seq->Finish();
    dev_->Run(*seq);
  }
  std::unique_ptr<g::Device> dev_;
};

// Bit for bit where the device rounds fma, division and sqrt once (DeviceInfo::rounds_as_cpu: a
// software driver, as in CI): the shaders follow the CPU kernels' order. Elsewhere within rel of
// each value plus rel of 1 (the inputs' scale): a GPU's division and sqrt may miss by an ulp.
void ExpectSame(const g::Device& dev, const std::vector<float>& got, const std::vector<float>& want,
                float rel, const std::string& what, bool always_exact = false) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const bool exact = always_exact || dev.info().rounds_as_cpu();
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if ((exact ? got[i] != want[i]
               : std::fabs(got[i] - want[i]) > rel * (std::fabs(want[i]) + 1.0f)) &&
        bad++ < 5)
      ADD_FAILURE() << what << " [" << i << "]: " << got[i] << " vs " << want[i];
  EXPECT_EQ(bad, 0) << what << (exact ? " (bit for bit)" : "");
}

TEST_P(GpuOps, RmsNormMatchesTheCpuKernel) {
  const int64_t rows = 7, dim = 300, stride = 310;
  const auto x = Gaussian(static_cast<size_t>(rows * stride), 1, 2.0f);
  const auto w = Gaussian(static_cast<size_t>(dim), 2, 1.0f);
  auto xb = Put(x), wb = Put(w);
  auto yb = dev_->Alloc(static_cast<size_t>(rows * dim) * sizeof(float));
  Run([&](g::Sequence& s) {
    g::RecordRmsNorm(s, {xb.get(), 5, stride}, {yb.get(), 0, static_cast<size_t>(dim)}, *wb, rows,
                     dim, 1e-5f);
  });
  std::vector<float> want(static_cast<size_t>(rows * dim));
  for (int64_t r = 0; r < rows; ++r)
    k::RmsNorm(x.data() + 5 + r * stride, w.data(), want.data() + r * dim, dim, 1e-5f);
  // RMSNorm takes no fma: every build rounds it as the CPU (the native ones through
  // softfloat.glsl's doubles, division and sqrt).
  ExpectSame(*dev_, Get(*yb, want.size()), want, 1e-5f, "rmsnorm", true);
  // In place, per head (QK-norm): 7 rows x 3 heads of 100.
  Run([&](g::Sequence& s) {
    g::RecordRmsNorm(s, {xb.get(), 0, 100}, {xb.get(), 0, 100}, *wb, 21, 100, 1e-6f);
  });
  std::vector<float> want2(x.begin(), x.begin() + 2100);
  for (int r = 0; r < 21; ++r)
    k::RmsNorm(want2.data() + r * 100, w.data(), want2.data() + r * 100, 100, 1e-6f);
  ExpectSame(*dev_, Get(*xb, 2100), want2, 1e-5f, "rmsnorm per head, in place", true);
  // Rows whose elements span 2^-40..2^40, so that the double sums round (long rows, some rows of
  // tiny values only), and a row of zeros.
  const int64_t wide_rows = 24, wide_dim = 4100;
  std::vector<float> xw(static_cast<size_t>(wide_rows * wide_dim));
  uint32_t state = 12345u;
  for (size_t i = 0; i < xw.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    const int r = static_cast<int>(i / wide_dim);
    const int span = r % 3 == 0 ? 80 : 10;
    const int e = static_cast<int>(state >> 24) % span - span / 2 - (r % 4 == 1 ? 60 : 0);
    xw[i] = (r == 5 ? 0.0f : std::ldexp(1.0f + static_cast<float>(state & 0xFFFF) / 65536.0f, e)) *
            ((state >> 17) & 1 ? -1.0f : 1.0f);
  }
  const auto ww = Gaussian(static_cast<size_t>(wide_dim), 9, 1.0f);
  auto xwb = Put(xw), wwb = Put(ww);
  auto ywb = dev_->Alloc(xw.size() * sizeof(float));
  Run([&](g::Sequence& s) {
    g::RecordRmsNorm(s, {xwb.get(), 0, static_cast<size_t>(wide_dim)},
                     {ywb.get(), 0, static_cast<size_t>(wide_dim)}, *wwb, wide_rows, wide_dim,
                     1e-6f);
  });
  std::vector<float> want3(xw.size());
  for (int64_t r = 0; r < wide_rows; ++r)
    k::RmsNorm(xw.data() + r * wide_dim, ww.data(), want3.data() + r * wide_dim, wide_dim, 1e-6f);
  ExpectSame(*dev_, Get(*ywb, want3.size()), want3, 1e-5f, "rmsnorm of wide ranges", true);
}

TEST_P(GpuOps, AddsResidualsAndBiases) {
  auto y = Gaussian(1000, 3), x = Gaussian(1000, 4), bias = Gaussian(100, 5);
  auto yb = Put(y), xb = Put(x), bb = Put(bias);
  Run([&](g::Sequence& s) {
    g::RecordAdd(s, *xb, 0, *yb, 0, 1000, 1000);
    s.Barrier();
    g::RecordAdd(s, *bb, 0, *yb, 0, 1000, 100);
  });
  for (size_t i = 0; i < y.size(); ++i) y[i] = (y[i] + x[i]) + bias[i % 100];
  ExpectSame(*dev_, Get(*yb, 1000), y, 1e-6f, "add");
}

TEST_P(GpuOps, RopeMatchesTheCpuKernel) {
  const int64_t rows = 5, heads = 3, hd = 64;
  std::vector<float> factors(24);
  for (size_t i = 0; i < factors.size(); ++i) factors[i] = 1.0f + 0.25f * static_cast<float>(i);
  for (bool neox : {false, true})
    for (bool yarn : {false, true}) {
      k::RopeParams p;
      p.n_rot = 48;  // part of the head
      p.base = 500000.0f;
      p.neox = neox;
      if (yarn) {
        p.freq_scale = 0.25f;
        p.ext_factor = 1.0f;
        p.factors = factors.data();
        k::RopeYarnCorrDims(p.n_rot, 4096, p.base, 32.0f, 1.0f, &p.corr_lo, &p.corr_hi);
      }
      const auto x = Gaussian(static_cast<size_t>(rows * heads * hd), 6);
      std::vector<float> table;
      std::vector<float> want = x;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t pos = 1000 * r + 3;
        std::vector<float> c(static_cast<size_t>(p.n_rot / 2)), sn(c.size());
        k::RopeTable(pos, p, c.data(), sn.data());
        for (size_t i = 0; i < c.size(); ++i) table.push_back(c[i]), table.push_back(sn[i]);
        for (int64_t h = 0; h < heads; ++h) k::Rope(want.data() + (r * heads + h) * hd, hd, pos, p);
      }
      auto xb = Put(x), tb = Put(table);
      Run([&](g::Sequence& s) {
        g::RecordRope(s, {xb.get(), 0, static_cast<size_t>(heads * hd)}, rows, heads, hd, p.n_rot,
                      neox, *tb);
      });
      ExpectSame(*dev_, Get(*xb, x.size()), want, 1e-5f,
                 std::string(neox ? "neox" : "normal") + (yarn ? " yarn" : ""));
    }
}

// SiLU against the CPU kernel; GELU against the CPU's f16 table (llama.cpp's rounding of input and
// result), which the GPU must reproduce: a plain f32 GELU misses it by up to 1e-3.
TEST_P(GpuOps, GatedActivationsMatchTheCpuKernels) {
  const auto gate = Gaussian(4096, 7, 4.0f), up = Gaussian(4096, 8);
  for (auto act : {g::Activation::kSilu, g::Activation::kGeluTanh}) {
    auto gb = Put(gate), ub = Put(up);
    Run([&](g::Sequence& s) { g::RecordGatedActivation(s, act, *gb, 0, *ub, 0, 4096); });
    std::vector<float> want = gate;
    if (act == g::Activation::kSilu)
      k::SiluMul(want.data(), up.data(), 4096);
    else
      k::GeluMul(want.data(), up.data(), 4096);
    const auto got = Get(*gb, 4096);
    double worst = 0;
    int differ = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]) /
                                  std::max(1e-30, std::fabs(static_cast<double>(want[i]))));
      differ += got[i] != want[i];
    }
    std::printf("%s: %d of 4096 differ from the CPU, max relative difference %.2e\n",
                act == g::Activation::kSilu ? "silu" : "gelu", differ, worst);
    // Bit for bit on rounds_as_cpu devices (SiLU by ggml's exp; GELU's tanh as libm's, one f16
    // rounding after it); elsewhere a split fma (lavapipe) moves SiLU's exp in the last bit.
    if (dev_->info().rounds_as_cpu()) {
      EXPECT_EQ(differ, 0);
    }
    EXPECT_LE(worst, act == g::Activation::kSilu ? 1e-6 : 1e-3);
  }
}

// Keys and values of a sequence written through the KV store, then attention of a batch of rows
// at its last positions, against softmax attention in double over the same (f16-rounded) cache,
// and against the CPU's attention kernels composed as the model composes them.
TEST_P(GpuOps, AttentionOverTheCacheMatchesAReference) {
  const int64_t n_head = 4, n_head_kv = 2, hd = 80, kv_dim = n_head_kv * hd, q_dim = n_head * hd;
  const int64_t seq_len = 150;  // three tiles of 64 keys
  struct Variant {
    bool f16;
    int64_t window, ring;
    float softcap;
    bool sinks;
  };
  for (const Variant vt : {Variant{true, 0, 0, 0.0f, false}, Variant{false, 0, 0, 0.0f, false},
                           Variant{true, 50, 0, 0.0f, false}, Variant{true, 50, 60, 0.0f, false},
                           Variant{false, 0, 0, 5.0f, true}}) {
    const std::string what = std::string(vt.f16 ? "f16" : "f32") + " window " +
                             std::to_string(vt.window) + " ring " + std::to_string(vt.ring) +
                             (vt.softcap != 0 ? " softcap" : "") + (vt.sinks ? " sinks" : "");
    const auto K = Gaussian(static_cast<size_t>(seq_len * kv_dim), 10);
    const auto V = Gaussian(static_cast<size_t>(seq_len * kv_dim), 11);
    const int64_t rows = 3;  // the last three positions
    const auto Q = Gaussian(static_cast<size_t>(rows * q_dim), 12);
    const auto sinks = Gaussian(static_cast<size_t>(n_head), 13);
    const int64_t cache_rows = vt.ring ? vt.ring : seq_len;
    auto kc = dev_->Alloc(static_cast<size_t>(cache_rows * kv_dim) * 4);
    auto vc = dev_->Alloc(static_cast<size_t>(cache_rows * kv_dim) * 4);
    auto kb = Put(K), vb = Put(V), qb = Put(Q), sb = Put(sinks);
    auto ob = dev_->Alloc(static_cast<size_t>(rows * q_dim) * 4);
    // Store the sequence in chunks of up to 20 rows (a ring keeps only the newest).
    for (int64_t p0 = 0; p0 < seq_len; p0 += 20) {
      const int64_t n = std::min<int64_t>(20, seq_len - p0);
      std::vector<int32_t> pos(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(p0 + i);
      auto pb = PutInts(pos);
      Run([&](g::Sequence& s) {
        g::RecordKvStore(s,
                         {kb.get(), static_cast<size_t>(p0 * kv_dim), static_cast<size_t>(kv_dim)},
                         n, kv_dim, *kc, vt.f16, vt.ring, *pb);
        g::RecordKvStore(s,
                         {vb.get(), static_cast<size_t>(p0 * kv_dim), static_cast<size_t>(kv_dim)},
                         n, kv_dim, *vc, vt.f16, vt.ring, *pb);
      });
    }
    std::vector<int32_t> pos;
    for (int64_t i = 0; i < rows; ++i) pos.push_back(static_cast<int32_t>(seq_len - rows + i));
    auto pb = PutInts(pos);
    g::AttentionParams a;
    a.n_head = n_head;
    a.n_head_kv = n_head_kv;
    a.head_dim = hd;
    a.kv_dim = kv_dim;
    a.k_f16 = a.v_f16 = vt.f16;
    a.window = vt.window;
    a.ring = vt.ring;
    a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    a.softcap = vt.softcap;
    a.sinks = vt.sinks ? sb.get() : nullptr;
    Run([&](g::Sequence& s) {
      g::RecordAttention(s, {qb.get(), 0, static_cast<size_t>(q_dim)},
                         {ob.get(), 0, static_cast<size_t>(q_dim)}, rows, a, *kc, *vc, *pb);
    });
    auto round = [&](float x) { return vt.f16 ? es::F16ToF32(es::F32ToF16(x)) : x; };
    std::vector<float> want(static_cast<size_t>(rows * q_dim));
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t h = 0; h < n_head; ++h) {
        const int64_t kvh = h / (n_head / n_head_kv), at = pos[static_cast<size_t>(i)];
        const int64_t first = vt.window ? std::max<int64_t>(0, at + 1 - vt.window) : 0;
        std::vector<double> s;
        double m = -INFINITY;
        for (int64_t j = first; j <= at; ++j) {
          double d = 0;
          // F16 keys meet f16-rounded queries, as in llama.cpp's CPU build.
          for (int64_t e = 0; e < hd; ++e)
            d += static_cast<double>(round(Q[static_cast<size_t>(i * q_dim + h * hd + e)])) *
                 round(K[static_cast<size_t>(j * kv_dim + kvh * hd + e)]);
          d *= a.scale;
          if (vt.softcap != 0) d = std::tanh(d / vt.softcap) * vt.softcap;
          s.push_back(d);
          m = std::max(m, d);
        }
        double l = 0;
        for (double& x : s) l += (x = std::exp(x - m));
        if (vt.sinks) l += std::exp(sinks[static_cast<size_t>(h)] - m);
        // Normalised probabilities, f16-rounded for F16 values.
        for (double& x : s) x = round(static_cast<float>(x / l));
        l = 1;
        for (int64_t e = 0; e < hd; ++e) {
          double o = 0;
          for (int64_t j = first; j <= at; ++j)
            o += s[static_cast<size_t>(j - first)] *
                 round(V[static_cast<size_t>(j * kv_dim + kvh * hd + e)]);
          want[static_cast<size_t>(i * q_dim + h * hd + e)] = static_cast<float>(o / l);
        }
      }
    const auto got = Get(*ob, want.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-4f * (std::fabs(want[i]) + 1.0f)) << what << " [" << i << "]";
    // The CPU kernels composed as the model's attention composes them: the same order.
    std::vector<float> cpu(static_cast<size_t>(rows * q_dim), 0.0f);
    std::vector<es::f16_t> q16(static_cast<size_t>(q_dim)), k16(K.size()), v16(V.size());
    k::ConvertF32ToF16(K.data(), k16.data(), static_cast<int64_t>(K.size()));
    k::ConvertF32ToF16(V.data(), v16.data(), static_cast<int64_t>(V.size()));
    for (int64_t i = 0; i < rows; ++i) {
      k::ConvertF32ToF16(Q.data() + i * q_dim, q16.data(), q_dim);
      for (int64_t h = 0; h < n_head; ++h) {
        const int64_t kvh = h / (n_head / n_head_kv), at = pos[static_cast<size_t>(i)];
        const int64_t first = vt.window ? std::max<int64_t>(0, at + 1 - vt.window) : 0;
        const int64_t n = at + 1 - first;
        std::vector<float> sc(static_cast<size_t>(n));
        float* out = cpu.data() + i * q_dim + h * hd;
        if (vt.f16) {
          k::DotF16Rows(q16.data() + h * hd, k16.data() + first * kv_dim + kvh * hd, kv_dim, n, hd,
                        a.scale, sc.data());
        } else {
          for (int64_t j = 0; j < n; ++j)
            sc[static_cast<size_t>(j)] = k::DotF32(Q.data() + i * q_dim + h * hd,
                                                   K.data() + (first + j) * kv_dim + kvh * hd, hd) *
                                         a.scale;
        }
        if (vt.softcap != 0) k::SoftCap(sc.data(), n, vt.softcap);
        if (vt.sinks)
          k::SoftmaxWithSink(sc.data(), n, sinks[static_cast<size_t>(h)]);
        else
          k::Softmax(sc.data(), n);
        if (vt.f16)
          k::WeightedSumF16Rows(sc.data(), v16.data() + first * kv_dim + kvh * hd, kv_dim, n, hd,
                                out);
        else
          for (int64_t j = 0; j < n; ++j)
            k::AxpyF32(sc[static_cast<size_t>(j)], V.data() + (first + j) * kv_dim + kvh * hd, out,
                       hd);
      }
    }
    // Bit for bit but where libm enters: the soft-cap's tanhf and the sink's expf are glibc's on
    // the CPU (tanhf misses the nearest float for a fifth of inputs), the GPU's round once.
    if (vt.softcap == 0 && !vt.sinks) {
      ExpectSame(*dev_, got, cpu, 1e-5f, what + " against the CPU kernels");
    } else {
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], cpu[i], 1e-5f * (std::fabs(cpu[i]) + 1.0f)) << what << " [" << i << "]";
    }
  }
}

// softfloat.glsl, which the native builds (GPUs without doubles) divide, take roots and sum in
// double with, against the CPU's float and double operations bit for bit: random operands of
// every exponent and sign, exponent gaps of 0-70 for additions (cancellations and sticky bits
// included), and operand pairs whose quotient or sum lands on or beside a rounding tie.
TEST(GpuSoftFloat, RoundsAsTheCpu) {
  auto dev = es::test::OpenTestDevice();
  ASSERT_TRUE(dev);
  std::mt19937_64 rng(7);
  const auto run = [&](uint32_t op, const std::vector<uint32_t>& in, size_t n, size_t out_words) {
    auto ib = dev->Alloc(in.size() * 4), ob = dev->Alloc(n * out_words * 4);
    dev->Upload(*ib, 0, in.data(), in.size() * 4);
    const uint32_t push[2] = {static_cast<uint32_t>(n), op};
    auto seq = dev->Record();
    seq->Dispatch(g::Program::kArith, {{ib.get(), 0, 0}, {ob.get(), 0, 0}}, push, sizeof(push),
                  g::DivUp(n, 64));
    seq->Finish();
    dev->Run(*seq);
    std::vector<uint32_t> out(n * out_words);
    dev->Download(*ob, 0, out.data(), out.size() * 4);
    return out;
  };
  // A normal float of exponent in [lo, hi] (unbiased) and random sign and mantissa.
  const auto rand_float = [&](int lo, int hi) {
    const uint64_t r = rng();
    const int e = lo + static_cast<int>(r % static_cast<uint64_t>(hi - lo + 1));
    const float f = std::ldexp(1.0f + static_cast<float>((r >> 8) & 0x7FFFFF) / 8388608.0f, e);
    return (r >> 40) & 1 ? -f : f;
  };
  const auto rand_double = [&](int lo, int hi) {
    const uint64_t r = rng();
    const int e = lo + static_cast<int>(r % static_cast<uint64_t>(hi - lo + 1));
    double m = 1.0 + static_cast<double>(rng() >> 12) / 4503599627370496.0;
    if ((r >> 20) % 4 == 0) m = 1.0 + std::ldexp(static_cast<double>((r >> 24) % 8), -52);
    const double d = std::ldexp(m, e);
    return (r >> 40) & 1 ? -d : d;
  };
  const size_t n = size_t{1} << 18;
  int bad = 0;
  {  // float division: random, and quotients near ties (a = q * b with q of 25 bits)
    std::vector<uint32_t> in(2 * n);
    std::vector<float> a(n), b(n);
    for (size_t i = 0; i < n; ++i) {
      b[i] = rand_float(-60, 60);
      if (i % 2) {
        a[i] = rand_float(-60, 60);
      } else {  // a rounded product of b and a 25-bit q: a / b lands next to a tie
        const float q = rand_float(-20, 20);
        a[i] = static_cast<float>(static_cast<double>(q) * (1.0 + 0x1p-24) * b[i]);
      }
      in[2 * i] = std::bit_cast<uint32_t>(a[i]);
      in[2 * i + 1] = std::bit_cast<uint32_t>(b[i]);
    }
    const auto out = run(0, in, n, 1);
    for (size_t i = 0; i < n; ++i)
      if (out[i] != std::bit_cast<uint32_t>(a[i] / b[i]) && bad++ < 5)
        ADD_FAILURE() << "div " << a[i] << " / " << b[i];
  }
  {  // float sqrt over every exponent
    std::vector<uint32_t> in(n);
    std::vector<float> a(n);
    for (size_t i = 0; i < n; ++i) {
      a[i] = std::fabs(rand_float(-126, 127));
      in[i] = std::bit_cast<uint32_t>(a[i]);
    }
    const auto out = run(1, in, n, 1);
    for (size_t i = 0; i < n; ++i)
      if (out[i] != std::bit_cast<uint32_t>(std::sqrt(a[i])) && bad++ < 5)
        ADD_FAILURE() << "sqrt " << a[i];
  }
  {  // double addition, exponent gaps 0-70, both signs; double division rounded to float
    std::vector<uint32_t> in(4 * n);
    std::vector<double> a(n), b(n);
    for (size_t i = 0; i < n; ++i) {
      a[i] = rand_double(-30, 30);
      const int gap = static_cast<int>(rng() % 71);
      const int ea = std::ilogb(a[i]);
      b[i] = rand_double(ea - gap, ea - gap);
      if (i % 5 == 0) b[i] = -a[i] * (1.0 + std::ldexp(static_cast<double>(rng() % 16), -52));
      if (i % 2) std::swap(a[i], b[i]);
      const auto ba = std::bit_cast<uint64_t>(a[i]), bb = std::bit_cast<uint64_t>(b[i]);
      in[4 * i] = static_cast<uint32_t>(ba);
      in[4 * i + 1] = static_cast<uint32_t>(ba >> 32);
      in[4 * i + 2] = static_cast<uint32_t>(bb);
      in[4 * i + 3] = static_cast<uint32_t>(bb >> 32);
    }
    const auto sum = run(2, in, n, 2);
    for (size_t i = 0; i < n; ++i) {
      const uint64_t got = sum[2 * i] | (static_cast<uint64_t>(sum[2 * i + 1]) << 32);
      const double want = a[i] + b[i];
      if (got != std::bit_cast<uint64_t>(want) && !(want == 0.0 && (got << 1) == 0) && bad++ < 5)
        ADD_FAILURE() << "add " << a[i] << " + " << b[i];
    }
    const auto quo = run(3, in, n, 1);
    for (size_t i = 0; i < n; ++i)
      if (quo[i] != std::bit_cast<uint32_t>(static_cast<float>(a[i] / b[i])) && bad++ < 5)
        ADD_FAILURE() << "div to float " << a[i] << " / " << b[i];
  }
  EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(Math, GpuOps,
                         ::testing::Values(g::DeviceOptions::Math::kDefault,
                                           g::DeviceOptions::Math::kNative,
                                           g::DeviceOptions::Math::kMixed),
                         [](const auto& info) {
                           return info.param == g::DeviceOptions::Math::kNative  ? "Native"
                                  : info.param == g::DeviceOptions::Math::kMixed ? "Mixed"
                                                                                 : "DevicesOwn";
                         });

}  // namespace
