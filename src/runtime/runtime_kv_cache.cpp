#include "runtime/runtime_kv_cache.h"

#include <cstring>

namespace es::runtime {

size_t KvCache::BytesNeeded(const model::ModelConfig& c, int64_t n_ctx, TensorType type,
                            int n_layers) {
  const size_t elem = type == TensorType::kF16 ? 2 : 4;
  return 2 * static_cast<size_t>(n_layers) * static_cast<size_t>(n_ctx) * c.kv_dim() * elem;
}

KvCache::KvCache(const model::ModelConfig& c, int64_t n_ctx, TensorType type, int first_layer,
                 int last_layer)
    : n_ctx_(n_ctx), type_(type) {
  if (last_layer < 0) last_layer = c.n_layer;
  if (type != TensorType::kF16 && type != TensorType::kF32)
    throw Error("KV cache type must be f16 or f32");
  if (n_ctx <= 0) throw Error("context length must be positive");
  const int n_layers = last_layer - first_layer;
  bytes_ = BytesNeeded(c, n_ctx, type, n_layers);
  storage_.reset(new uint8_t[bytes_]);
  std::memset(storage_.get(), 0, bytes_);  // commit the pages now, not during generation
  const size_t per_tensor = bytes_ / (2 * static_cast<size_t>(n_layers > 0 ? n_layers : 1));
  layers_.resize(c.n_layer);
  uint8_t* p = storage_.get();
  for (int l = first_layer; l < last_layer; ++l) {
    layers_[l] = model::KvLayer{p, p + per_tensor, type, n_ctx};
    p += 2 * per_tensor;
  }
}

}  // namespace es::runtime
