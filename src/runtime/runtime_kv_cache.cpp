#include "runtime/runtime_kv_cache.h"

#include <algorithm>
#include <cstring>

namespace es::runtime {

size_t KvCache::BytesNeeded(const model::ModelConfig& c, int64_t n_ctx, TensorType type,
                            int n_layers) {
  const size_t elem = type == TensorType::kF16 ? 2 : 4;
  return 2 * static_cast<size_t>(n_layers) * static_cast<size_t>(n_ctx) * c.kv_dim() * elem;
}

int64_t KvCache::RowsKept(const model::ModelConfig& c, int l, int64_t n_ctx, int max_batch) {
  const int64_t window = c.Window(l);
  if (window <= 0 || max_batch <= 0) return n_ctx;
  return std::min(n_ctx, window + max_batch - 1);
}

KvCache::KvCache(const model::ModelConfig& c, int64_t n_ctx, TensorType type, int first_layer,
                 int last_layer, int max_batch)
    : n_ctx_(n_ctx), type_(type), rewind_limit_(n_ctx) {
  if (last_layer < 0) last_layer = c.n_layer;
  if (type != TensorType::kF16 && type != TensorType::kF32)
    throw Error("KV cache type must be f16 or f32");
  if (n_ctx <= 0) throw Error("context length must be positive");
  const size_t row_bytes = static_cast<size_t>(c.kv_dim()) * (type == TensorType::kF16 ? 2 : 4);
  for (int l = first_layer; l < last_layer; ++l)
    bytes_ += 2 * row_bytes * static_cast<size_t>(RowsKept(c, l, n_ctx, max_batch));
  storage_.reset(new uint8_t[bytes_]);
  std::memset(storage_.get(), 0, bytes_);  // commit the pages now, not during generation
  layers_.resize(c.n_layer);
  uint8_t* p = storage_.get();
  for (int l = first_layer; l < last_layer; ++l) {
    const int64_t rows = RowsKept(c, l, n_ctx, max_batch);
    const size_t per_tensor = row_bytes * static_cast<size_t>(rows);
    const int64_t ring = rows < n_ctx ? rows : 0;
    layers_[l] = model::KvLayer{p, p + per_tensor, type, n_ctx, ring};
    if (ring) rewind_limit_ = std::min(rewind_limit_, ring - c.Window(l));
    p += 2 * per_tensor;
  }
}

}  // namespace es::runtime
