// Re-rotating cached keys for a context shift (Session::Shift): the keys keep their values but
// move to new positions, so their RoPE angle must change by the distance they moved.
#include <vector>

#include "model/model_llama.h"

namespace es::model {

void LlamaModel::ShiftKeys(int layer, int64_t n_ctx, void* k, TensorType type, int64_t n_rows,
                           int64_t delta) const {
  const kernels::RopeParams rope = RopeFor(layer, n_ctx);
  if (rope.n_rot == 0 || delta == 0 || n_rows <= 0) return;
  const ModelConfig& c = cfg_;
  const int hd = c.head_dim;
  const int kv_dim = c.kv_dim();
  // Rotating by delta composes with the rotation by the old position (angles add), with the same
  // base, scaling, factors and YaRN blend as the layer's forward pass; the kernel's cos/sin table
  // is computed once, as every row turns by the same delta.
  if (type == TensorType::kF32) {
    auto* rows = static_cast<float*>(k);
    for (int64_t r = 0; r < n_rows; ++r)
      for (int h = 0; h < c.n_head_kv; ++h)
        kernels::Rope(rows + r * kv_dim + h * hd, hd, delta, rope);
    return;
  }
  auto* rows = static_cast<f16_t*>(k);
  std::vector<float> tmp(static_cast<size_t>(kv_dim));
  for (int64_t r = 0; r < n_rows; ++r) {
    f16_t* row = rows + r * kv_dim;
    kernels::ConvertF16ToF32(row, tmp.data(), kv_dim);
    for (int h = 0; h < c.n_head_kv; ++h) kernels::Rope(tmp.data() + h * hd, hd, delta, rope);
    kernels::ConvertF32ToF16(tmp.data(), row, kv_dim);
  }
}

}  // namespace es::model
