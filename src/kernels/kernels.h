// CPU compute kernels: SIMD via Highway with run-time dispatch, multi-threaded.
// Numerics follow llama.cpp's CPU backend (activation conversion to the weight's dot type,
// f32 accumulation) so that logits agree with its reference outputs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor_types.h"

namespace es::kernels {

// Name of the SIMD target chosen on this machine (e.g. "AVX3", "AVX2", "NEON").
const char* ActiveTarget();

// Fixed pool of worker threads, started once; Run() blocks until all chunks are done.
// The calling thread takes part. No allocation per call.
class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  int size() const;
  // Calls fn(thread_index) once on each of the size() threads (thread 0 is the caller).
  void Run(const std::function<void(int thread_index)>& fn);
  // Calls fn(begin, end, thread) over contiguous chunks of [0, n) that the threads take in turn
  // (about chunks_per_thread per thread, so fn must not assume one call per thread).
  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                   int chunks_per_thread = 8);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A weight matrix as stored in GGUF: `rows` rows of `cols` elements of `type`, row-major.
// interleave 16 (Q4_0, Q8_0, Q4_K, Q5_K, IQ4_XS, F16): groups of 16 rows stored block index by
// block index (layout at Interleave16), so that a 16-row kernel reads one sequential stream.
struct Matrix {
  const void* data = nullptr;
  TensorType type = TensorType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;  // RowBytes(type, cols)
  int interleave = 0;    // 0: row-major as in GGUF; 16: rows interleaved in groups of 16
  // An interleaved copy's row-major original in the file mapping (which pages it back in from
  // the file when read): what a later GPU offload of the same matrix uploads.
  const void* source = nullptr;
};

// Whether the kernels chosen for this CPU compute weights of type `t` faster from the
// interleaved layout (Q4_0, Q8_0, Q4_K, Q5_K and IQ4_XS with AVX-512 VNNI, F16 with AVX-512).
bool PrefersInterleaved(TensorType t);
// Whether `w` is row-major, of such a type, and of a shape the layout holds (rows a multiple of
// 16, columns of whole blocks).
bool CanInterleave(const Matrix& w);
// Copies a row-major Q4_0, Q8_0, Q4_K, Q5_K, IQ4_XS or F16 matrix (rows a multiple of 16, columns
// of whole blocks, 32 elements for F16) into `out` (row_bytes * rows bytes) in the interleaved
// layout and returns the matrix describing it. Per group of 16 rows and block index: Q4_0/Q8_0, the
// 16 f16 scales, then 64-byte vectors, vector j holding bytes 4j..4j+3 of every row's quants (row r
// at bytes 4r..4r+3); Q4_K, Q5_K and IQ4_XS, 64-byte vectors of every row's whole block the same
// way (scales included); F16, the 16 rows' 64 bytes one after another. Groups are independent: a
// range of whole groups can be copied alone. Per-row results stay bit-identical.
Matrix Interleave16(const Matrix& w, void* out);

// Row `row` of `w` as f32 (w.cols values), from either layout: the embedding lookup of a tied
// head that was interleaved.
void DequantizeMatrixRow(const Matrix& w, int64_t row, float* dst);

// Reusable scratch memory (grows only; owned by a context, never allocated per token once warm).
struct Scratch {
  std::vector<uint8_t> buf;
  void* Get(size_t bytes) {
    if (buf.size() < bytes) buf.resize(bytes);
    return buf.data();
  }
};

// y[b * ldy + r] = dot(W row r, x[b * ldx ...]) for b < batch, r < rows.
// x is f32, converted to VecDotType(W.type) first (into scratch). batch == 1 is decode
// (matrix-vector); batch > 1 uses a blocked matrix-matrix kernel that reuses each weight
// block across the batch.
void MatMul(const Matrix& w, const float* x, int64_t ldx, int64_t batch, float* y, int64_t ldy,
            ThreadPool& pool, Scratch& scratch);

// Dequantizes `n` elements (multiple of the block size) into f32. SIMD.
void DequantizeRow(TensorType t, const void* src, float* dst, int64_t n);

// Elementwise and reduction ops (single-threaded, SIMD).
// y = x / sqrt(mean(x^2) + eps) * w   (sum of squares accumulated in double, as ggml does)
void RmsNorm(const float* x, const float* w, float* y, int64_t n, float eps);
// x[i] += y[i]
void Add(float* x, const float* y, int64_t n);
// gate[i] = silu(gate[i]) * up[i]
void SiluMul(float* gate, const float* up, int64_t n);
// gate[i] = gelu(gate[i]) * up[i], GELU's tanh form through llama.cpp's f16 lookup table (GeGLU).
void GeluMul(float* gate, const float* up, int64_t n);

// Sums n words with the widest vector loads (the memory-bandwidth meter's read pass); with
// prefetch_bytes > 0 it also prefetches that far ahead.
uint64_t ReadSum(const uint64_t* p, size_t n, size_t prefetch_bytes);
// x[i] = cap * tanh(x[i] * (1 / cap)): logit soft-capping, in ggml's order of float operations.
void SoftCap(float* x, int64_t n, float cap);
// In-place softmax over n values; returns nothing. Max-subtracted, f32 exp, sum in double.
void Softmax(float* x, int64_t n);
// The same with one more logit, `sink`, in the denominator only (attention sinks, gpt-oss): the
// weights then sum to less than 1.
void SoftmaxWithSink(float* x, int64_t n, float sink);
// How positions become rotation angles, as llama.cpp's rope_ext computes them: pair i of the
// first n_rot dims turns by theta_i = pos * base^(-2i/n_rot) / factors[i] (factors: Llama 3 /
// LongRoPE frequency divisors, or none), interpolated by freq_scale (1 / linear or YaRN factor);
// with ext_factor != 0 (YaRN) the interpolated and plain angles are blended over the dims
// corr_lo..corr_hi and the magnitude gains 1 + 0.1 ln(1 / freq_scale); cos and sin are multiplied
// by attn_factor. neox=false: pairs (2i, 2i+1); neox=true: pairs (i, i + n_rot/2).
struct RopeParams {
  int64_t n_rot = 0;
  float base = 10000.0f;
  float freq_scale = 1.0f;
  const float* factors = nullptr;  // n_rot/2 values
  float ext_factor = 0.0f;
  float attn_factor = 1.0f;
  float corr_lo = 0.0f, corr_hi = 0.0f;
  bool neox = false;
  bool operator==(const RopeParams&) const = default;  // factors by address: one table each
};
// The dims YaRN blends over, for a model trained on n_ctx_orig positions (ggml's corr dims).
void RopeYarnCorrDims(int64_t n_rot, int64_t n_ctx_orig, float base, float beta_fast,
                      float beta_slow, float* lo, float* hi);
// The rotation table of position `pos`: cos and sin of each rotated pair's angle (n_rot / 2 each),
// scaled by the attention factor, in ggml's float operations (Rope uses it; the GPU backend
// uploads it).
void RopeTable(int64_t pos, const RopeParams& p, float* cos, float* sin);
// Rotary embedding on one head of `head_dim` values at position `pos` (dims past n_rot unchanged).
void Rope(float* x, int64_t head_dim, int64_t pos, const RopeParams& p);
// Plain or linearly scaled RoPE: theta_i = freq_scale * pos * base^(-2i/n_rot).
void Rope(float* x, int64_t head_dim, int64_t n_rot, int64_t pos, float freq_base, bool neox,
          float freq_scale = 1.0f);
// Dot product of two f16 vectors, f32 accumulation.
float DotF16(const f16_t* a, const f16_t* b, int64_t n);
// Dot product of two f32 vectors.
float DotF32(const float* a, const float* b, int64_t n);
// y[i] += a * x[i] with x f16.
void AxpyF16(float a, const f16_t* x, float* y, int64_t n);
// y[i] += a * x[i] with x f32.
void AxpyF32(float a, const float* x, float* y, int64_t n);
// Converts f32 <-> f16 (round to nearest even).
void ConvertF32ToF16(const float* x, f16_t* y, int64_t n);
void ConvertF16ToF32(const f16_t* x, float* y, int64_t n);

// Attention over a KV cache, one call per head instead of one per key (rows of keys/values are
// `stride` elements apart, e.g. the KV width). Same numerics as the per-key calls above:
// out[j] = scale * DotF16(q, k + j * stride, dim) for j < n_rows.
void DotF16Rows(const f16_t* q, const f16_t* k, int64_t stride, int64_t n_rows, int64_t dim,
                float scale, float* out);
void DotF32Rows(const float* q, const float* k, int64_t stride, int64_t n_rows, int64_t dim,
                float scale, float* out);
// out[i] += sum_j p[j] * v[j * stride + i] for i < dim. The f16 version rounds each p[j] to f16
// first, as llama.cpp multiplies f16 values by f16 probabilities.
void WeightedSumF16Rows(const float* p, const f16_t* v, int64_t stride, int64_t n_rows, int64_t dim,
                        float* out);
void WeightedSumF32Rows(const float* p, const float* v, int64_t stride, int64_t n_rows, int64_t dim,
                        float* out);

// Attention over a quantized cache (Q8_0 or Q4_0 rows, `stride` bytes apart; dim a multiple of
// 32). Keys: the query is converted once (QueryBytes, 64-byte aligned) as MatMul converts
// activations for weights of the keys' type (Q8_0, as llama.cpp), then
// out[j] = scale * dot(q, k row j) with MatMul's single-row kernels. Values: each row is
// dequantized to f32 and out[i] += p[j] * v_j[i] (as llama.cpp does for a quantized V cache).
size_t QueryBytes(TensorType k_type, int64_t dim);
void ConvertQuery(TensorType k_type, const float* q, int64_t dim, void* out);
void DotQuantRows(TensorType k_type, const void* q, const void* k, size_t stride, int64_t n_rows,
                  int64_t dim, float scale, float* out);
void WeightedSumQuantRows(TensorType v_type, const float* p, const void* v, size_t stride,
                          int64_t n_rows, int64_t dim, float* out);

// Testing hooks: the SIMD targets compiled in that this CPU supports (best first), and limiting
// run-time dispatch to one of them by name ("" restores the default choice). Throws es::Error
// for an unknown or unsupported name.
std::vector<std::string> SupportedTargets();
void SetTargetForTesting(const std::string& name);
// The quantized MatMul kernels within the SIMD target: on 64-bit Arm "i8mm" (smmla prompt tiles,
// sdot otherwise), "dotprod" (sdot) and "neon" (Highway's NEON kernels), those this CPU runs, best
// first; elsewhere only "highway". Chosen at run time; every variant gives bit-identical results.
std::vector<std::string> MatMulVariants();
const char* ActiveMatMulVariant();
// Limits MatMul to one variant by name ("" restores the CPU's best); throws es::Error for an
// unknown or unsupported name.
void SetMatMulVariantForTesting(const std::string& name);
// F16 prompt tiles on AVX-512: "panel" converts each group of 16 interleaved rows once per column
// block into an F32 panel (chosen on Intel, whose conversions take the FMA ports), "direct"
// converts in the tile (chosen elsewhere); "" restores the CPU's choice. Results are
// bit-identical; throws es::Error for another name.
void SetF16PromptForTesting(const std::string& mode);

}  // namespace es::kernels
