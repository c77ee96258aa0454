// The Vulkan backend on the machine's Vulkan device (lavapipe, Mesa's CPU implementation, in CI:
// scripts/setup installs it): device discovery, memory, recorded sequences, and matmuls of every
// weight type it takes against the dequantized weights.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gpu/gpu_device.h"
#include "gpu/gpu_matmul.h"
#include "gpu_test_util.h"
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

// Checks y (batch rows of ldy) against the dequantized weights times x in double, within f32
// rounding of the sum of |w x| terms.
void ExpectMatMul(const Case& c, const std::vector<float>& x, int64_t batch, int64_t ldx,
                  const std::vector<float>& y, int64_t ldy, const std::string& what) {
  const int64_t rows = c.m.rows, cols = c.m.cols;
  int bad = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < cols; ++k) {
        const double p = static_cast<double>(c.wf[static_cast<size_t>(r * cols + k)]) *
                         x[static_cast<size_t>(b * ldx + k)];
        ref += p;
        mag += std::fabs(p);
      }
      const double got = y[static_cast<size_t>(b * ldy + r)];
      if (std::fabs(got - ref) > 2e-6 * mag + 1e-7 && bad++ < 5)
        ADD_FAILURE() << what << ": batch row " << b << ", row " << r << ": " << got << " vs "
                      << ref;
    }
  EXPECT_EQ(bad, 0) << what;
}

TEST(GpuMatMul, EveryTypeMatchesTheDequantizedWeights) {
  auto dev = OpenTestDevice();
  ASSERT_TRUE(dev);
  const int64_t rows = 37, cols = 768;  // an odd row count; 3 K-blocks of 256
  for (TensorType t :
       {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0,
        TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kIQ4_NL,
        TensorType::kIQ4_XS, TensorType::kMXFP4, TensorType::kQ2_K, TensorType::kQ3_K,
        TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K}) {
    ASSERT_TRUE(g::CanMatMul(t, cols)) << es::TypeName(t);
    const Case c = MakeWeights(t, rows, cols, 11u + static_cast<uint32_t>(t));
    const g::GpuMatrix gw = g::UploadMatrix(*dev, c.m);
    for (int64_t batch : {1, 3, 8, 17}) {
      const int64_t ldx = cols + 4, ldy = rows + 3;  // strides wider than the rows
      const auto x = es::test::Gaussian(static_cast<size_t>(batch * ldx), 5u, 1.0f);
      auto xb = dev->Alloc(x.size() * sizeof(float));
      auto yb = dev->Alloc(static_cast<size_t>(batch * ldy + 8) * sizeof(float));
      dev->Upload(*xb, 0, x.data(), x.size() * sizeof(float));
      auto seq = dev->Record();
      g::RecordMatMul(*seq, gw, *xb, 0, ldx, batch, *yb, 8, ldy);  // y at an offset
      seq->Finish();
      dev->Run(*seq);
      std::vector<float> y(static_cast<size_t>(batch * ldy + 8));
      dev->Download(*yb, 0, y.data(), y.size() * sizeof(float));
      ExpectMatMul(c, x, batch, ldx, std::vector<float>(y.begin() + 8, y.end()), ldy,
                   std::string(es::TypeName(t)) + " batch " + std::to_string(batch));
    }
  }
}

// A sequence is recorded once and run for every step: new inputs, the same commands.
TEST(GpuMatMul, ARecordedSequenceRunsAgainOnNewInputs) {
  auto dev = OpenTestDevice();
  ASSERT_TRUE(dev);
  const Case c = MakeWeights(TensorType::kQ4_K, 16, 256, 3);
  const g::GpuMatrix gw = g::UploadMatrix(*dev, c.m);
  auto xb = dev->Alloc(256 * sizeof(float));
  auto yb = dev->Alloc(16 * sizeof(float));
  auto seq = dev->Record();
  g::RecordMatMul(*seq, gw, *xb, 0, 256, 1, *yb, 0, 16);
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
  auto xb = dev->Alloc(x.size() * sizeof(float));
  auto yb = dev->Alloc(static_cast<size_t>(batch * 250) * sizeof(float));
  dev->Upload(*xb, 0, x.data(), x.size() * sizeof(float));
  auto seq = dev->Record();
  g::RecordMatMul(*seq, gw, *xb, 0, 512, batch, *yb, 0, 250);
  seq->Finish();
  dev->Run(*seq);
  std::vector<float> y(static_cast<size_t>(batch * 250));
  dev->Download(*yb, 0, y.data(), y.size() * sizeof(float));
  ExpectMatMul(c, x, batch, 512, y, 250, "3 parts");
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
