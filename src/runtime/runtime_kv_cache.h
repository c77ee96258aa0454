// The KV cache of one sequence: one allocation for the whole context, made when the
// context is created, so its memory is known up front and never grows.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/model_llama.h"

namespace es::runtime {

class KvCache {
 public:
  // Caches layers [first_layer, last_layer) for n_ctx positions; type F16 or F32.
  KvCache(const model::ModelConfig& c, int64_t n_ctx, TensorType type, int first_layer = 0,
          int last_layer = -1);
  // Bytes a cache of this shape needs (to report before allocating).
  static size_t BytesNeeded(const model::ModelConfig& c, int64_t n_ctx, TensorType type,
                            int n_layers);
  size_t bytes() const { return bytes_; }
  int64_t n_ctx() const { return n_ctx_; }
  TensorType type() const { return type_; }
  // Indexed by absolute layer number (entries outside the range are empty).
  const model::KvLayer* layers() const { return layers_.data(); }

 private:
  int64_t n_ctx_;
  TensorType type_;
  size_t bytes_ = 0;
  std::unique_ptr<uint8_t[]> storage_;
  std::vector<model::KvLayer> layers_;
};

}  // namespace es::runtime
