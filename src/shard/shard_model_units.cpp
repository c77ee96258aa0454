#include "shard/shard_model_units.h"

#include <map>
#include <string>

#include "edgeshard/error.h"
#include "model/model_config.h"
#include "model/model_llama.h"

namespace es::shard {

uint64_t UnitInfo::WeightBytesAs(TensorType type) const {
  const auto& t = Traits(type);
  const uint64_t requant = (matrix_elems / t.block_elems) * t.block_bytes;
  return weight_bytes - matrix_bytes + requant;
}

uint64_t UnitInfo::ActiveBytesAs(TensorType type) const {
  // What a decode step leaves unread is experts, all matrix bytes; the matrices it reads hold
  // elements in proportion to their bytes (exact when the matrices share one type).
  const uint64_t idle = weight_bytes - active_bytes;
  if (idle == 0) return WeightBytesAs(type);
  if (idle >= matrix_bytes) return active_bytes;
  const uint64_t read = matrix_bytes - idle;
  const auto& t = Traits(type);
  const double elems = double(matrix_elems) * double(read) / double(matrix_bytes);
  return active_bytes - read + uint64_t(elems / double(t.block_elems)) * t.block_bytes;
}

std::string BlockUnitName(int block) {
  return "blk." + std::to_string(block);
}

ModelUnits UnitsFromGguf(const gguf::File& f, model::KvTypes kv_types) {
  const model::ModelConfig c = model::ReadModelConfig(f);
  ModelUnits m;
  m.name = c.name;
  m.arch = c.arch;
  m.n_layer = c.n_layer;
  m.n_embd = c.n_embd;
  m.units.resize(c.n_layer + 2);
  m.units[0].name = "token_embd";
  for (int i = 0; i < c.n_layer; ++i) m.units[i + 1].name = BlockUnitName(i);
  m.units.back().name = "output";
  const uint64_t hidden = uint64_t(c.n_embd) * sizeof(float);
  for (int u = 0; u <= c.n_layer; ++u) m.units[u].out_bytes_per_token = hidden;
  m.units.back().out_bytes_per_token = sizeof(int32_t);
  const uint64_t kv = model::KvRowBytes(c, kv_types);
  for (int i = 0; i < c.n_layer; ++i) {
    m.units[i + 1].kv_bytes_per_token = kv;
    m.units[i + 1].kv_window = static_cast<uint64_t>(c.Window(i));
  }

  std::map<TensorType, uint64_t> bytes_by_type;
  auto add = [&](UnitInfo& u, const gguf::TensorInfo& t) {
    u.weight_bytes += t.n_bytes;
    const bool expert = c.moe() && t.name.find("_exps.") != std::string::npos;
    u.active_bytes += expert ? t.n_bytes / c.n_expert * c.n_expert_used : t.n_bytes;
    if (t.dims.size() >= 2 && t.Rows() > 1) {
      u.matrix_bytes += t.n_bytes;
      u.matrix_elems += uint64_t(t.NumElements());
    }
  };
  for (const auto& t : f.tensors()) {
    if (t.dims.size() >= 2) bytes_by_type[t.type] += t.n_bytes;
    UnitInfo* unit =
        &m.units[0];  // tensors outside blocks and head (e.g. rope factors) go with the source
    if (t.name.rfind("blk.", 0) == 0) {
      const size_t dot = t.name.find('.', 4);
      int b = -1;
      try {
        b = std::stoi(t.name.substr(4, dot == std::string::npos ? std::string::npos : dot - 4));
      } catch (const std::exception&) {
      }
      if (b < 0 || b >= c.n_layer)
        throw Error(f.path() + ": tensor '" + gguf::Printable(t.name) +
                    "' names a block outside 0.." + std::to_string(c.n_layer - 1));
      unit = &m.units[b + 1];
    } else if (t.name.rfind("output", 0) == 0) {
      unit = &m.units.back();
    }
    add(*unit, t);
    // A tied head multiplies by the embedding matrix, so the device holding it needs a copy.
    if (c.tied_output && t.name == "token_embd.weight") add(m.units.back(), t);
  }
  uint64_t best = 0;
  for (const auto& [type, bytes] : bytes_by_type)
    if (bytes > best) best = bytes, m.weight_type = TypeName(type);
  return m;
}

void SetKvTypes(ModelUnits& m, model::KvTypes kv) {
  for (UnitInfo& u : m.units) {
    const auto kv_dim = static_cast<int64_t>(u.kv_bytes_per_token / (2 * sizeof(f16_t)));
    if (kv_dim == 0) continue;
    for (TensorType t : {kv.k, kv.v})
      if (kv_dim % Traits(t).block_elems != 0)
        throw Error(std::string("a ") + TypeName(t) + " KV cache needs rows of whole blocks, but " +
                    u.name + " caches " + std::to_string(kv_dim) + " values per position");
    u.kv_bytes_per_token = RowBytes(kv.k, kv_dim) + RowBytes(kv.v, kv_dim);
  }
}

void SetF16Wire(ModelUnits& m) {
  const uint64_t f32 = uint64_t(m.n_embd) * sizeof(float);
  for (UnitInfo& u : m.units)
    if (u.out_bytes_per_token == f32) u.out_bytes_per_token = uint64_t(m.n_embd) * sizeof(f16_t);
}

}  // namespace es::shard
