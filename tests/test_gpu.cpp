// The Vulkan backend on the machine's Vulkan device (lavapipe, Mesa's CPU implementation, in CI:
// scripts/setup installs it): device discovery, memory, recorded sequences, and matmuls of every
// weight type it takes, in the CPU build's float order.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gpu/gpu_device.h"
#include "gpu/gpu_matmul.h"
#include "gpu_test_util.h"
#include "kernels/kernels.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"
#include "test_util.h"

namespace {

using es::TensorType;
namespace g = es::gpu;

using es::test::OpenTestDevice;

TEST(GpuDevices, ListsTheDriversDevices) {
  std::string why;
  const auto devs = g::ListDevices(&why);
  ASSERT_FALSE(devs.empty()) << why;
  for (const auto& d : devs) {
    std::printf("vulkan%d: %s (%s), %llu MiB%s, buffer range %llu MiB\n", d.index, d.name.c_str(),
                d.kind.c_str(), static_cast<unsigned long long>(d.memory_bytes >> 20),
                d.unified_memory ? " unified" : "",
                static_cast<unsigned long long>(d.max_buffer_range >> 20));
    EXPECT_FALSE(d.name.empty());
    EXPECT_GT(d.memory_bytes, 0u);
    EXPECT_GE(d.max_buffer_range, 1u << 20);
  }
}

TEST(GpuDevices, DeviceNames) {
  EXPECT_EQ(g::ParseDeviceName("vulkan0"), 0);
  EXPECT_EQ(g::ParseDeviceName("vulkan12"), 12);
  for (const char* bad : {"vulkan", "vulkan-1", "cuda0", "vulkan0x", "vulkan99999"})
    EXPECT_THROW(g::ParseDeviceName(bad), es::Error) << bad;
  EXPECT_THROW(g::Device::Open(1000), es::Error);
}

TEST(GpuDevices, UploadAndDownload) {
  auto dev = OpenTestDevice();
  ASSERT_TRUE(dev);
  std::vector<uint8_t> a(100003);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i * 7 + 3);
  auto buf = dev->Alloc(a.size() + 10);
  dev->Upload(*buf, 10, a.data(), a.size());
  std::vector<uint8_t> b(a.size());
  dev->Download(*buf, 10, b.data(), b.size());
  EXPECT_EQ(a, b);
  EXPECT_THROW(dev->Upload(*buf, 11, a.data(), a.size()), es::Error);
}

struct Case {
  std::vector<uint8_t> w;  // encoded rows
  std::vector<float> wf;   // the same rows dequantized
  es::kernels::Matrix m;
};

Case MakeWeights(TensorType t, int64_t rows, int64_t cols, uint32_t seed) {
  Case c;
  const size_t rb = es::RowBytes(t, cols);
  c.w.resize(rb * static_cast<size_t>(rows));
  c.wf.resize(static_cast<size_t>(rows * cols));
  const auto src = es::test::Gaussian(static_cast<size_t>(rows * cols), seed, 0.05f);
  for (int64_t r = 0; r < rows; ++r) {
    es::QuantizeRowRef(t, src.data() + r * cols, c.w.data() + rb * static_cast<size_t>(r), cols);
    es::DequantizeRowRef(t, c.w.data() + rb * static_cast<size_t>(r), c.wf.data() + r * cols, cols);
  }
  c.m = es::kernels::Matrix{c.w.data(), t, rows, cols, rb};
  return c;
}

// The activation row as the CPU's matmul for weights of type t takes it: rounded to f16/bf16 or
// quantized to Q8_0/Q8_1/Q8_K (VecDotType), as bytes.
std::vector<uint8_t> ActRow(TensorType t, const float* x, int64_t cols) {
  const TensorType vt = es::VecDotType(t);
  std::vector<uint8_t> row(es::RowBytes(vt, cols));
  es::QuantizeRowRef(vt, x, row.data(), cols);
  return row;
}

// The AVX-512 build's order for float weights: 16 lanes of fmas over elements 16c + l, the lanes
// halved pairwise (+8, +4, +2, +1), then the elements past the last 16 chained one by one.
float Order16(const float* w, const float* x, int64_t n) {
  float acc[16] = {};
  const int64_t full = n / 16 * 16;
  for (int64_t k = 0; k < full; k += 16)
    for (int l = 0; l < 16; ++l) acc[l] = std::fma(w[k + l], x[k + l], acc[l]);
  for (int h = 8; h >= 1; h /= 2)
    for (int i = 0; i < h; ++i) acc[i] += acc[i + h];
  float s = acc[0];
  for (int64_t k = full; k < n; ++k) s = std::fma(w[k], x[k], s);
  return s;
}

// Whether the GPU's float order for type t has a scalar statement here: VecDotRef's (llama.cpp's
// x86 order) or Order16. The K-quants but Q6_K and IQ4_XS follow the CPU's AVX-512 VNNI kernels,
// checked against them where this CPU has that target.
bool HasScalarOrder(TensorType t) {
  return t != TensorType::kQ2_K && t != TensorType::kQ3_K && t != TensorType::kQ4_K &&
         t != TensorType::kQ5_K && t != TensorType::kIQ4_XS;
}

// GPU y = W x for `batch` rows of x (stride ldx) as a block runs it: the activations rounded or
// quantized for the weights' type (RecordRoundActs), then the matmul; y rows of stride ldy.
std::vector<float> RunMatMul(g::Device& dev, const g::GpuMatrix& gw, const std::vector<float>& x,
                             int64_t batch, int64_t ldx, int64_t ldy) {
  const int64_t cols = gw.cols;
  auto xb = dev.Alloc(x.size() * sizeof(float));
  auto ab = dev.Alloc(static_cast<size_t>(batch * cols) * sizeof(float));
  auto yb = dev.Alloc(static_cast<size_t>(batch * ldy + 8) * sizeof(float));
  dev.Upload(*xb, 0, x.data(), x.size() * sizeof(float));
  const g::ActRounding r = g::ActRoundingFor(gw.type);
  auto seq = dev.Record();
  if (r == g::ActRounding::kNone) {
    g::RecordMatMul(*seq, gw, *xb, 0, ldx, batch, *yb, 8, ldy);  // y at an offset
  } else {
    g::RecordRoundActs(*seq, r, *xb, 0, ldx, batch, cols, *ab, 0, cols);
    seq->Barrier();
    g::RecordMatMul(*seq, gw, *ab, 0, cols, batch, *yb, 8, ldy);
  }
  seq->Finish();
  dev.Run(*seq);
  std::vector<float> y(static_cast<size_t>(batch * ldy + 8));
  dev.Download(*yb, 0, y.data(), y.size() * sizeof(float));
  return std::vector<float>(y.begin() + 8, y.end());
}

// y against VecDotRef within f32 rounding of the sum of |w x| terms, and (when `exact`) bit for
// bit against the scalar statement of the order where there is one (VecDotRef itself, or Order16
// over the activations as rounded for float weights).
void ExpectMatMul(const Case& c, const std::vector<float>& x, int64_t batch, int64_t ldx,
                  const std::vector<float>& y, int64_t ldy, const std::string& what,
                  bool exact = true) {
  const int64_t rows = c.m.rows, cols = c.m.cols;
  const TensorType t = c.m.type;
  int bad = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const float* xr = x.data() + b * ldx;
    const auto act = ActRow(t, xr, cols);
    const bool flt = t == TensorType::kF32 || t == TensorType::kF16 || t == TensorType::kBF16;
    std::vector<float> xf(flt ? static_cast<size_t>(cols) : 0);
    if (flt) es::DequantizeRowRef(t, act.data(), xf.data(), cols);
    for (int64_t r = 0; r < rows; ++r) {
      double mag = 0;
      for (int64_t k = 0; k < cols; ++k)
        mag += std::fabs(static_cast<double>(c.wf[static_cast<size_t>(r * cols + k)]) * xr[k]);
      const float ref =
          es::VecDotRef(t, c.w.data() + c.m.row_bytes * static_cast<size_t>(r), act.data(), cols);
      const float got = y[static_cast<size_t>(b * ldy + r)];
      if (std::fabs(got - ref) > 2e-6 * mag + 1e-7 && bad++ < 5)
        ADD_FAILURE() << what << ": batch row " << b << ", row " << r << ": " << got << " vs "
                      << ref;
      const float order = flt ? Order16(c.wf.data() + r * cols, xf.data(), cols) : ref;
      if (exact && HasScalarOrder(t) && got != order && bad++ < 5)
        ADD_FAILURE() << what << ": batch row " << b << ", row " << r << ": " << got
                      << " is not the CPU order's " << order;
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

constexpr TensorType kAllTypes[] = {
    TensorType::kF32,    TensorType::kF16,    TensorType::kBF16,  TensorType::kQ8_0,
    TensorType::kQ4_0,   TensorType::kQ4_1,   TensorType::kQ5_0,  TensorType::kQ5_1,
    TensorType::kIQ4_NL, TensorType::kIQ4_XS, TensorType::kMXFP4, TensorType::kQ2_K,
    TensorType::kQ3_K,   TensorType::kQ4_K,   TensorType::kQ5_K,  TensorType::kQ6_K};

// Every type at batches 1-17 on `dev`; bit for bit in the CPU's order when `exact`.
void EveryType(g::Device& dev, bool exact, const std::string& how) {
  // An odd row count (partial workgroups in both layouts); 24 blocks of 32 (two chunks of the
  // chains layout, the second partial) or 3 of 256; then 20 of 256 (two chunks).
  for (int64_t cols : {int64_t{768}, int64_t{5120}}) {
    const int64_t rows = 37;
    for (TensorType t : kAllTypes) {
      ASSERT_TRUE(g::CanMatMul(t, cols)) << es::TypeName(t);
      const Case c = MakeWeights(t, rows, cols, 11u + static_cast<uint32_t>(t));
      const g::GpuMatrix gw = g::UploadMatrix(dev, c.m);
      for (int64_t batch : {1, 3, 8, 17}) {
        if (cols > 768 && batch > 3) continue;
        const int64_t ldx = cols + 4, ldy = rows + 3;  // strides wider than the rows
        const auto x = es::test::Gaussian(static_cast<size_t>(batch * ldx), 5u, 1.0f);
        ExpectMatMul(c, x, batch, ldx, RunMatMul(dev, gw, x, batch, ldx, ldy), ldy,
                     how + " " + es::TypeName(t) + " " + std::to_string(cols) + " batch " +
                         std::to_string(batch),
                     exact);
      }
    }
  }
  // Float rows whose length is no multiple of 16 (stories260K's 172): the chained tail.
  for (TensorType t : {TensorType::kF32, TensorType::kF16, TensorType::kBF16}) {
    const Case c = MakeWeights(t, 19, 172, 40u + static_cast<uint32_t>(t));
    const auto x = es::test::Gaussian(static_cast<size_t>(2 * 172), 6u, 1.0f);
    ExpectMatMul(c, x, 2, 172, RunMatMul(dev, g::UploadMatrix(dev, c.m), x, 2, 172, 19), 19,
                 how + " " + es::TypeName(t) + " of 172 columns", exact);
  }
}

TEST(GpuMatMul, EveryTypeInTheCpuBuildsOrder) {
  for (auto layout : es::test::kLayouts) {
    auto dev = OpenTestDevice(es::test::WithLayout(layout));
    ASSERT_TRUE(dev);
    EveryType(*dev, dev->info().rounds_as_cpu(), es::test::LayoutName(layout));
  }
}

// GPUs run the chains layout with the native builds (the device's own fma, division, sqrt) or the
// mixed ones (doubles but the device's fma): what a GPU runs, run where CI can. Bit for bit where
// the build rounds as the CPU (mixed on a device that fuses fma); on lavapipe, which splits fma,
// within rounding.
TEST(GpuMatMul, TheGpusConfigurations) {
  for (auto math : {g::DeviceOptions::Math::kNative, g::DeviceOptions::Math::kMixed}) {
    g::DeviceOptions o = es::test::WithLayout(g::DeviceOptions::MatMul::kChains);
    o.math = math;
    auto dev = OpenTestDevice(o);
    ASSERT_TRUE(dev);
    EveryType(*dev, dev->info().rounds_as_cpu(),
              math == g::DeviceOptions::Math::kNative ? "native chains" : "mixed chains");
  }
}

// The probe's verdict on fma (DeviceInfo::fused_fma, which picks the mixed builds for GPUs) agrees
// with what the native F32 matmul, a chain of fmas, computes: the CPU's order bit for bit exactly
// when fma rounds once.
TEST(GpuDevices, TheFmaProbeAgreesWithTheMatMul) {
  g::DeviceOptions o;
  o.math = g::DeviceOptions::Math::kNative;
  auto dev = OpenTestDevice(o);
  ASSERT_TRUE(dev);
  std::printf("%s: fma %s\n", dev->info().name.c_str(),
              dev->info().fused_fma ? "fused" : "rounded twice");
  const Case c = MakeWeights(TensorType::kF32, 37, 768, 5u);
  const auto x = es::test::Gaussian(3 * 768, 6u, 1.0f);
  const auto y = RunMatMul(*dev, g::UploadMatrix(*dev, c.m), x, 3, 768, 37);
  int differ = 0;
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t r = 0; r < 37; ++r)
      differ += y[static_cast<size_t>(b * 37 + r)] !=
                Order16(c.wf.data() + r * 768, x.data() + b * 768, 768);
  std::printf("%d of %d rows differ from the CPU's order\n", differ, 3 * 37);
  EXPECT_EQ(differ == 0, dev->info().fused_fma);
}

// Where this CPU runs the AVX-512 VNNI kernels (AVX3_DL), the GPU's results equal the CPU
// kernels' bit for bit: the orders are the same, not just close. (Q5_0, MXFP4 and IQ4_NL are
// the exception the kernels document: their VNNI kernel sums each block exactly, where the GPU
// keeps llama.cpp's eight lanes; checked within rounding.)
TEST(GpuMatMul, BitIdenticalToTheCpuKernels) {
  namespace k = es::kernels;
  const auto targets = k::SupportedTargets();
  const bool vnni = std::find(targets.begin(), targets.end(), "AVX3_DL") != targets.end();
  std::printf("CPU targets: %zu, AVX3_DL %s\n", targets.size(), vnni ? "present" : "absent");
  const std::string active = k::ActiveTarget();
  if (vnni) k::SetTargetForTesting("AVX3_DL");
  k::ThreadPool pool(2);
  k::Scratch scratch;
  for (auto layout : es::test::kLayouts) {
    auto dev = OpenTestDevice(es::test::WithLayout(layout));
    ASSERT_TRUE(dev);
    const bool exact_device = dev->info().rounds_as_cpu();
    for (TensorType t : kAllTypes) {
      const bool flt = t == TensorType::kF32 || t == TensorType::kF16 || t == TensorType::kBF16;
      for (int64_t cols : {int64_t{512}, int64_t{1024}, int64_t{172}, int64_t{64}}) {
        if (cols % 256 != 0 && !flt) continue;  // rows of float weights of any length
        const int64_t rows = 45, batch = 5;
        const Case c = MakeWeights(t, rows, cols, 70u + static_cast<uint32_t>(t));
        const auto x = es::test::Gaussian(static_cast<size_t>(batch * cols), 9u, 1.0f);
        const auto y = RunMatMul(*dev, g::UploadMatrix(*dev, c.m), x, batch, cols, rows);
        std::vector<float> want(static_cast<size_t>(batch * rows));
        k::MatMul(c.m, x.data(), cols, batch, want.data(), rows, pool, scratch);
        const bool exact = exact_device && vnni && t != TensorType::kQ5_0 &&
                           t != TensorType::kMXFP4 && t != TensorType::kIQ4_NL;
        int differ = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          if (exact ? y[i] != want[i]
                    : std::fabs(y[i] - want[i]) > 1e-4f * (std::fabs(want[i]) + 1))
            if (differ++ < 3)
              ADD_FAILURE() << es::test::LayoutName(layout) << " " << es::TypeName(t) << " " << cols
                            << " [" << i << "]: " << y[i] << " vs " << want[i];
        }
        EXPECT_EQ(differ, 0) << es::TypeName(t);
      }
    }
  }
  k::SetTargetForTesting(active);
}

// A sequence is recorded once and run for every step: new inputs, the same commands.
TEST(GpuMatMul, ARecordedSequenceRunsAgainOnNewInputs) {
  auto dev = OpenTestDevice();
  ASSERT_TRUE(dev);
  const Case c = MakeWeights(TensorType::kQ4_K, 16, 256, 3);
  const g::GpuMatrix gw = g::UploadMatrix(*dev, c.m);
  auto xb = dev->Alloc(256 * sizeof(float));
  auto ab = dev->Alloc(256 * sizeof(float));
  auto yb = dev->Alloc(16 * sizeof(float));
  auto seq = dev->Record();
  g::RecordRoundActs(*seq, g::ActRounding::kQ8_K, *xb, 0, 256, 1, 256, *ab, 0, 256);
  seq->Barrier();
  g::RecordMatMul(*seq, gw, *ab, 0, 256, 1, *yb, 0, 16);
  seq->Finish();
  for (uint32_t step = 0; step < 3; ++step) {
    const auto x = es::test::Gaussian(256, 100 + step, 1.0f);
    dev->Upload(*xb, 0, x.data(), x.size() * sizeof(float));
    dev->Run(*seq);
    std::vector<float> y(16);
    dev->Download(*yb, 0, y.data(), y.size() * sizeof(float));
    ExpectMatMul(c, x, 1, 256, y, 16, "step " + std::to_string(step));
  }
}

// A matrix larger than one binding may hold (lavapipe: 128 MiB) goes up in parts of rows, each
// its own dispatch; here parts of at most 100 rows.
TEST(GpuMatMul, MatricesBeyondTheBufferRangeSplitByRows) {
  auto dev = OpenTestDevice();
  ASSERT_TRUE(dev);
  const Case c = MakeWeights(TensorType::kQ8_0, 250, 512, 9);
  const g::GpuMatrix gw = g::UploadMatrix(*dev, c.m, 100 * c.m.row_bytes + 5);
  ASSERT_EQ(gw.parts.size(), 3u);
  EXPECT_EQ(gw.parts[2].row0, 200);
  EXPECT_EQ(gw.parts[2].rows, 50);
  const int64_t batch = 2;
  const auto x = es::test::Gaussian(static_cast<size_t>(batch * 512), 8, 1.0f);
  ExpectMatMul(c, x, batch, 512, RunMatMul(*dev, gw, x, batch, 512, 250), 250, "3 parts");
}

// A shape the shaders do not take is refused by name (all weight types of the engine have a
// matmul: 16 of them).
TEST(GpuMatMul, RefusesWhatItCannotCompute) {
  auto dev = OpenTestDevice();
  ASSERT_TRUE(dev);
  std::vector<float> w(6 * 3, 1.0f);
  const es::kernels::Matrix m{w.data(), TensorType::kF32, 6, 3, 12};
  EXPECT_FALSE(g::CanMatMul(TensorType::kF32, 3));
  try {
    g::UploadMatrix(*dev, m);
    ADD_FAILURE() << "3-column matrix uploaded";
  } catch (const es::Error& e) {
    EXPECT_NE(std::string(e.what()).find("F32 weights of 3 columns"), std::string::npos)
        << e.what();
  }
}

}  // namespace
