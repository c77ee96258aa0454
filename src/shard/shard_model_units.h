// Layer units of a model, the granularity at which the planner cuts it into shards:
// the token embedding, each transformer block, and the output norm + head.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "model/model_llama.h"
#include "tensor/tensor_types.h"

namespace es::shard {

struct UnitInfo {
  std::string name;           // "token_embd", "blk.<i>", "output"
  uint64_t weight_bytes = 0;  // every tensor the unit reads
  uint64_t matrix_bytes = 0;  // the part stored in 2-D weight matrices (re-quantizable)
  uint64_t matrix_elems = 0;  // elements of those matrices
  // What a decode step reads: weight_bytes, except that a mixture-of-experts block reads only
  // its chosen experts' share of the expert tensors (expert_used_count / expert_count).
  uint64_t active_bytes = 0;
  uint64_t kv_bytes_per_token = 0;  // K and V cache per sequence position (blocks only)
  // A sliding-window block's window: its cache is a ring of window + a batch of positions
  // (KvCache::RowsKept), not the whole context. 0: a global block.
  uint64_t kv_window = 0;
  uint64_t out_bytes_per_token = 0;  // what leaves the unit per token: the hidden state, or a
                                     // sampled token id after the head (sampling runs there)
  // Weight bytes if the matrices were stored as `type` (norms and biases stay as they are).
  uint64_t WeightBytesAs(TensorType type) const;
  // Active bytes likewise: what a decode step would read with the matrices stored as `type`.
  uint64_t ActiveBytesAs(TensorType type) const;
};

struct ModelUnits {
  std::string name, arch, weight_type;  // weight_type: the type holding most matrix bytes
  int n_layer = 0, n_embd = 0;
  std::vector<UnitInfo> units;  // n_layer + 2, in data-flow order
};

std::string BlockUnitName(int block);
// Units of a llama-family GGUF: bytes from its tensor table, KV from its head counts and the
// cache's types (F16 by default).
ModelUnits UnitsFromGguf(const gguf::File& f, model::KvTypes kv = {});
// Re-prices the blocks' KV bytes (given for an F16 cache, as profiles store them) for a cache of
// other types.
void SetKvTypes(ModelUnits& m, model::KvTypes kv);
// Re-prices what leaves each unit for hidden states sent as F16 (UnitsFromGguf counts F32).
void SetF16Wire(ModelUnits& m);

}  // namespace es::shard
