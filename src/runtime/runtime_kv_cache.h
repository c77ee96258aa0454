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
  // Caches layers [first_layer, last_layer) for n_ctx positions, keys and values of the given
  // types (model::KvTypes; a type the model's heads cannot use is an es::Error).
  // max_batch > 0: batches never exceed it, so sliding-window layers can use rings. The layers
  // `device_model` runs on a GPU (LlamaModel::OffloadToGpu) keep their keys and values in its
  // device memory only (their k and v are null; dk and dv hold them).
  KvCache(const model::ModelConfig& c, int64_t n_ctx, model::KvTypes types, int first_layer = 0,
          int last_layer = -1, int max_batch = 0, const model::LlamaModel* device_model = nullptr);
  // Bytes a cache of this shape needs (to report before allocating): layers [0, n_layers), each
  // holding RowsKept rows (max_batch 0: every layer the whole context).
  static size_t BytesNeeded(const model::ModelConfig& c, int64_t n_ctx, model::KvTypes types,
                            int n_layers, int max_batch = 0);
  // Rows layer l keeps: n_ctx, or for a sliding-window layer given max_batch its window plus a
  // batch (when that is fewer).
  static int64_t RowsKept(const model::ModelConfig& c, int l, int64_t n_ctx, int max_batch);
  // Whether, holding positions 0..n_past-1, the cache can be cut back to n positions and go on:
  // every ring still holds the window of keys before n (a context shift may also have left a
  // ring without some kept prefix positions).
  bool CanTruncate(int64_t n, int64_t n_past) const;
  // Context shift (llama.cpp's seq_rm + seq_add): of n_past positions, forgets keep ..
  // keep+discard-1 and moves the later ones `discard` positions earlier, re-rotating their keys
  // (model.ShiftKeys). Rings copy the positions they still hold to their new rows. Returns false
  // when a ring lacks a key the next position needs (a kept prefix position it overwrote): the
  // cache is then untouched but unusable, and the caller evaluates the kept tokens again from
  // position 0 (always, for now, when some layers' caches are on a GPU). Layers are spread over
  // `pool` when given.
  bool Shift(const model::LlamaModel& m, int64_t keep, int64_t discard, int64_t n_past,
             kernels::ThreadPool* pool = nullptr);
  // Forget shift history: called when the sequence is evaluated again from position 0.
  void Reset() { ring_floor_ = 0; }
  size_t bytes() const { return bytes_; }  // host memory (device caches not counted)
  int64_t n_ctx() const { return n_ctx_; }
  model::KvTypes types() const { return types_; }
  // Indexed by absolute layer number (entries outside the range are empty).
  const model::KvLayer* layers() const { return layers_.data(); }

 private:
  int64_t n_ctx_;
  model::KvTypes types_;
  size_t bytes_ = 0;
  std::vector<int64_t> window_;  // per layer: its sliding window (0: global)
  // Rings hold no valid key for positions below this (a shift dropped those it had overwritten).
  int64_t ring_floor_ = 0;
  std::unique_ptr<uint8_t[]> storage_;
  std::vector<model::KvLayer> layers_;
  std::vector<std::shared_ptr<gpu::Buffer>> device_;  // the device caches of GPU layers
};

}  // namespace es::runtime
