// Kernel micro-benchmarks. Decode (matrix-vector) is reported as GB/s of weights read, with
// matrices larger than the last-level cache; prompt processing (batch 512) as GFLOP/s.
//   ./bench_kernels --benchmark_filter=MatVec
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"

namespace {

using es::TensorType;
namespace k = es::kernels;

constexpr TensorType kTypes[] = {TensorType::kF32,  TensorType::kF16,   TensorType::kBF16,
                                 TensorType::kQ8_0, TensorType::kQ4_0,  TensorType::kQ4_K,
                                 TensorType::kQ6_K, TensorType::kQ5_K,  TensorType::kQ3_K,
                                 TensorType::kQ2_K, TensorType::kIQ4_XS};

// A weight matrix of `rows` x `cols`: 64 distinct quantized rows, repeated (contents do not
// change the speed, and quantizing hundreds of MB would dominate start-up).
struct Weights {
  std::vector<uint8_t> bytes;
  k::Matrix m;
};

Weights MakeWeights(TensorType t, int64_t rows, int64_t cols) {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  const size_t rb = es::RowBytes(t, cols);
  std::vector<uint8_t> distinct(rb * 64);
  std::vector<float> row(cols);
  for (int r = 0; r < 64; ++r) {
    for (auto& v : row) v = dist(rng);
    es::QuantizeRowRef(t, row.data(), distinct.data() + r * rb, cols);
  }
  Weights w;
  w.bytes.resize(rb * rows);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(w.bytes.data() + r * rb, distinct.data() + (r % 64) * rb, rb);
  w.m = k::Matrix{w.bytes.data(), t, rows, cols, rb};
  return w;
}

std::vector<float> Activations(int64_t n) {
  std::mt19937 rng(2);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

// Decode: y = W x for one token. 4096 columns; rows chosen so the matrix is ~4x the L3 size.
void BM_MatVec(benchmark::State& state) {
  const TensorType t = kTypes[state.range(0)];
  const int threads = static_cast<int>(state.range(1));
  const int64_t cols = 4096;
  const int64_t target_bytes = int64_t{128} << 20;
  const int64_t rows =
      std::max<int64_t>(64, target_bytes / static_cast<int64_t>(es::RowBytes(t, cols)) / 64 * 64);
  const Weights w = MakeWeights(t, rows, cols);
  const auto x = Activations(cols);
  std::vector<float> y(rows);
  k::ThreadPool pool(threads);
  k::Scratch scratch;
  for (auto _ : state) {
    k::MatMul(w.m, x.data(), cols, 1, y.data(), rows, pool, scratch);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(std::string(es::TypeName(t)) + " " + std::to_string(rows) + "x4096 " +
                 k::ActiveTarget());
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(w.bytes.size()) / 1e9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

// Decode through MoE experts as a qwen1.5-moe-a2.7b token meets them: an expert's matrix is
// small (1408 x 2048 gate/up rows, 2048 x 1408 down) and each one read is a cold stream
// somewhere in a pool far larger than the last-level cache. Args: type, threads, interleaved
// (0: row-major, as experts stay in the file; 1: Interleave16's layout, where the type has one).
void BM_ExpertMatVec(benchmark::State& state) {
  constexpr TensorType kExpertTypes[] = {TensorType::kQ4_K,  TensorType::kQ5_0,
                                         TensorType::kQ8_0,  TensorType::kQ4_0,
                                         TensorType::kMXFP4, TensorType::kIQ4_NL};
  const TensorType t = kExpertTypes[state.range(0)];
  const int threads = static_cast<int>(state.range(1));
  // llama.cpp's Q4_K_M gives the downs (1408 columns) Q5_0 or Q8_0 (IQ4_XS gives them IQ4_NL);
  // Q4_0 for comparison; MXFP4 (every expert matrix in mxfp4_moe files) at the downs' shape.
  const bool down = t != TensorType::kQ4_K;
  const int64_t rows = down ? 2048 : 1408, cols = down ? 1408 : 2048;
  const int64_t one = static_cast<int64_t>(es::RowBytes(t, cols)) * rows;
  const int64_t experts = (int64_t{512} << 20) / one;
  Weights w = MakeWeights(t, rows * experts, cols);
  std::vector<uint8_t> inter;
  if (state.range(2)) {
    if (!k::PrefersInterleaved(t)) {
      state.SkipWithError("no interleaved layout for this type on this CPU");
      return;
    }
    inter.resize(w.bytes.size());
    w.m = k::Interleave16(w.m, inter.data());
  }
  const auto x = Activations(cols);
  std::vector<float> y(rows);
  k::ThreadPool pool(threads);
  k::Scratch scratch;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int64_t> pick(0, experts - 1);
  for (auto _ : state) {
    k::Matrix e = w.m;
    e.rows = rows;
    e.data = static_cast<const uint8_t*>(w.m.data) + pick(rng) * one;
    k::MatMul(e, x.data(), cols, 1, y.data(), rows, pool, scratch);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(std::string(es::TypeName(t)) + " " + std::to_string(rows) + "x" +
                 std::to_string(cols) + (state.range(2) ? " interleaved " : " ") +
                 k::ActiveTarget());
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(one) / 1e9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ExpertMatVec)
    ->ArgsProduct({{0, 1, 2, 3, 4, 5}, {1, 2}, {0}})
    ->Args({0, 1, 1})
    ->Args({0, 2, 1})
    ->Args({2, 1, 1})
    ->Args({2, 2, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Prompt processing: 512 tokens through a 4096 x 4096 matrix.
void BM_MatMul512(benchmark::State& state) {
  const TensorType t = kTypes[state.range(0)];
  const int threads = static_cast<int>(state.range(1));
  const int64_t rows = 4096, cols = 4096, batch = 512;
  const Weights w = MakeWeights(t, rows, cols);
  const auto x = Activations(cols * batch);
  std::vector<float> y(rows * batch);
  k::ThreadPool pool(threads);
  k::Scratch scratch;
  for (auto _ : state) {
    k::MatMul(w.m, x.data(), cols, batch, y.data(), rows, pool, scratch);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(std::string(es::TypeName(t)) + " " + k::ActiveTarget());
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * rows * cols * batch / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// Shared machines are noisy: repeat, and report the best run ("max" rates) next to the mean.
void TypeThreadArgs(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2})
    for (int t = 0; t < static_cast<int>(std::size(kTypes)); ++t) b->Args({t, threads});
  b->Repetitions(5)
      ->ComputeStatistics(
          "max", [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); })
      ->DisplayAggregatesOnly();
}

BENCHMARK(BM_MatVec)->Apply(TypeThreadArgs)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MatMul512)
    ->Apply(TypeThreadArgs)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5);

void BM_RmsNorm(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto x = Activations(n), w = Activations(n);
  std::vector<float> y(n);
  for (auto _ : state) {
    k::RmsNorm(x.data(), w.data(), y.data(), n, 1e-5f);
    benchmark::DoNotOptimize(y.data());
  }
}
BENCHMARK(BM_RmsNorm)->Arg(4096);

void BM_Softmax(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto x = Activations(n);
  std::vector<float> y(n);
  for (auto _ : state) {
    y = x;
    k::Softmax(y.data(), n);
    benchmark::DoNotOptimize(y.data());
  }
}
BENCHMARK(BM_Softmax)->Arg(4096)->Arg(32000);

void BM_RopeHeads(benchmark::State& state) {
  // 32 heads of 128 at one position: the per-token cost in a 7B model layer.
  auto x = Activations(32 * 128);
  int64_t pos = 0;
  for (auto _ : state) {
    ++pos;
    for (int h = 0; h < 32; ++h) k::Rope(x.data() + h * 128, 128, 128, pos, 10000.0f, false);
    benchmark::DoNotOptimize(x.data());
  }
}
BENCHMARK(BM_RopeHeads);

void BM_SiluMul(benchmark::State& state) {
  const int64_t n = state.range(0);
  auto g = Activations(n);
  const auto u = Activations(n);
  for (auto _ : state) {
    k::SiluMul(g.data(), u.data(), n);
    benchmark::DoNotOptimize(g.data());
  }
}
BENCHMARK(BM_SiluMul)->Arg(11008);

// Attention for one head over a 4096-token F16 cache (head 128, 8 KV heads interleaved): per-key
// calls against the row kernels.
void BM_AttentionHead(benchmark::State& state) {
  const bool rows_api = state.range(0) != 0;
  const int64_t n_kv = 4096, dim = 128, stride = 1024;
  const auto qf = Activations(dim), kvf = Activations(n_kv * stride);
  std::vector<es::f16_t> q(dim), kv(kvf.size());
  k::ConvertF32ToF16(qf.data(), q.data(), dim);
  k::ConvertF32ToF16(kvf.data(), kv.data(), static_cast<int64_t>(kv.size()));
  std::vector<float> s(n_kv), out(dim);
  std::vector<es::f16_t> s16(n_kv);
  for (auto _ : state) {
    if (rows_api) {
      k::DotF16Rows(q.data(), kv.data(), stride, n_kv, dim, 0.088f, s.data());
      k::Softmax(s.data(), n_kv);
      std::fill(out.begin(), out.end(), 0.0f);
      k::WeightedSumF16Rows(s.data(), kv.data(), stride, n_kv, dim, out.data());
    } else {
      for (int64_t j = 0; j < n_kv; ++j)
        s[j] = k::DotF16(q.data(), kv.data() + j * stride, dim) * 0.088f;
      k::Softmax(s.data(), n_kv);
      k::ConvertF32ToF16(s.data(), s16.data(), n_kv);
      std::fill(out.begin(), out.end(), 0.0f);
      for (int64_t j = 0; j < n_kv; ++j)
        k::AxpyF16(es::F16ToF32(s16[j]), kv.data() + j * stride, out.data(), dim);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(rows_api ? "DotF16Rows+WeightedSumF16Rows" : "per-key DotF16+AxpyF16");
}
BENCHMARK(BM_AttentionHead)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
