// The other programs of a transformer block on the device (gpu/shaders/*.comp): norms, residual
// and bias additions, RoPE from a CPU-made table, KV cache writes, softmax attention and the
// gated activations. Offsets and strides are in floats; positions are int32 per row.
#pragma once
#include <cstddef>
#include <cstdint>

#include "gpu/gpu_device.h"

namespace es::gpu {

// A float array in a buffer: `offset` floats in, rows `stride` floats apart.
struct Rows {
  const Buffer* buffer = nullptr;
  size_t offset = 0;
  size_t stride = 0;
};

// y = x / sqrt(mean(x^2) + eps) * w for `rows` rows of `dim` values (w: `dim` floats at the start
// of its buffer). x and y may be the same rows.
void RecordRmsNorm(Sequence& seq, Rows x, Rows y, const Buffer& w, int64_t rows, int64_t dim,
                   float eps);
// y[i] += x[i % period] for i < n (n a multiple of period): residuals (period n) and biases.
void RecordAdd(Sequence& seq, const Buffer& x, size_t x_off, const Buffer& y, size_t y_off,
               int64_t n, int64_t period);
// y[i] *= x[i / period] for i < n: a factor per row of `period` values (or one for all, period n).
void RecordScale(Sequence& seq, const Buffer& x, size_t x_off, const Buffer& y, size_t y_off,
                 int64_t n, int64_t period);
// RoPE on `heads` heads of head_dim values per row, from `table`: (cos, sin) pairs, n_rot / 2 per
// row (kernels::RopeTable).
void RecordRope(Sequence& seq, Rows x, int64_t rows, int64_t heads, int64_t head_dim, int64_t n_rot,
                bool neox, const Buffer& table);
// Cache rows (kv_dim values, f16 or f32) at each row's position (modulo ring, when not 0): row r's
// position is positions[pos_off + r].
void RecordKvStore(Sequence& seq, Rows x, int64_t rows, int64_t kv_dim, const Buffer& cache,
                   bool f16, int64_t ring, const Buffer& positions, size_t pos_off = 0);

struct AttentionParams {
  int64_t n_head = 0, n_head_kv = 0, head_dim = 0, kv_dim = 0;
  bool k_f16 = true, v_f16 = true;
  int64_t window = 0, ring = 0;
  float scale = 1.0f, softcap = 0.0f;
  const Buffer* sinks = nullptr;  // n_head logits, or none
};
// out[row][h * head_dim ...] = softmax(q . K / scale) V over each row's positions 0..pos (the
// last `window` only, when set).
void RecordAttention(Sequence& seq, Rows q, Rows out, int64_t rows, const AttentionParams& a,
                     const Buffer& k, const Buffer& v, const Buffer& positions, size_t pos_off = 0);

enum class Activation { kSilu = 0, kGeluTanh = 1 };
// gate[i] = act(gate[i]) * up[i] for i < n (both at the start of their buffers' offsets).
void RecordGatedActivation(Sequence& seq, Activation act, const Buffer& gate, size_t gate_off,
                           const Buffer& up, size_t up_off, int64_t n);

}  // namespace es::gpu
