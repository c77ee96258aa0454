// The KV cache of one sequence: one allocation for the whole context, made when the
// context is created, so its memory is known up front and never grows. Given the largest batch,
// sliding-window layers keep only their window plus that batch (a ring), as llama.cpp does;
// global layers keep the whole context.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/model_llama.h"

namespace es::runtime {

class KvCache {
 public:
  // Caches layers [first_layer, last_layer) for n_ctx positions; type F16 or F32.
  // max_batch > 0: batches never exceed it, so sliding-window layers can use rings.
  KvCache(const model::ModelConfig& c, int64_t n_ctx, TensorType type, int first_layer = 0,
          int last_layer = -1, int max_batch = 0);
  // Bytes a cache of this shape needs (to report before allocating), every layer holding n_ctx
  // positions.
  static size_t BytesNeeded(const model::ModelConfig& c, int64_t n_ctx, TensorType type,
                            int n_layers);
  // Rows layer l keeps: n_ctx, or for a sliding-window layer given max_batch its window plus a
  // batch (when that is fewer).
  static int64_t RowsKept(const model::ModelConfig& c, int l, int64_t n_ctx, int max_batch);
  // Positions a Truncate may drop and still find the window of keys before the cut (the smallest
  // ring's slack); n_ctx when no layer is a ring.
  int64_t rewind_limit() const { return rewind_limit_; }
  size_t bytes() const { return bytes_; }
  int64_t n_ctx() const { return n_ctx_; }
  TensorType type() const { return type_; }
  // Indexed by absolute layer number (entries outside the range are empty).
  const model::KvLayer* layers() const { return layers_.data(); }

 private:
  int64_t n_ctx_;
  TensorType type_;
  size_t bytes_ = 0;
  int64_t rewind_limit_ = 0;
  std::unique_ptr<uint8_t[]> storage_;
  std::vector<model::KvLayer> layers_;
};

}  // namespace es::runtime
