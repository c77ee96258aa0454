// The KV cache's element types, and re-rotating cached keys for a context shift
// (Session::Shift): the keys keep their values but move to new positions, so their RoPE angle
// must change by the distance they moved.
#include <cctype>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "model/model_llama.h"
#include "tensor/tensor_quant.h"

namespace es::model {

TensorType ParseKvType(const std::string& name, const std::string& what) {
  const auto t = ParseTypeName(name);
  if (t == TensorType::kF32 || t == TensorType::kF16 || t == TensorType::kQ8_0 ||
      t == TensorType::kQ4_0)
    return *t;
  throw Error(what + " '" + name +
              "' is not a KV cache type edgeshard computes: use f16 (the "
              "default), f32, q8_0 or q4_0");
}

void CheckKvTypes(const ModelConfig& c, KvTypes t) {
  for (TensorType x : {t.k, t.v}) {
    if (x != TensorType::kF32 && x != TensorType::kF16 && x != TensorType::kQ8_0 &&
        x != TensorType::kQ4_0)
      throw Error(std::string("KV cache type ") + TypeName(x) +
                  " is not computed: use f16, f32, q8_0 or q4_0");
    const int be = Traits(x).block_elems;
    if (c.head_dim % be != 0)
      throw Error(std::string("a ") + TypeName(x) + " KV cache stores heads in blocks of " +
                  std::to_string(be) + " values, but this model's heads have " +
                  std::to_string(c.head_dim) + ": use an f16 or f32 cache");
  }
}

std::string KvTypesNote(KvTypes t) {
  if (t == KvTypes{}) return "";
  auto name = [](TensorType x) {
    std::string s = TypeName(x);
    for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  return " (K " + name(t.k) + ", V " + name(t.v) + ")";
}

size_t KvRowBytes(const ModelConfig& c, KvTypes t) {
  return RowBytes(t.k, c.kv_dim()) + RowBytes(t.v, c.kv_dim());
}

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
  // F16 and block types: through f32 and rounded back (a quantized key re-quantized).
  const size_t row_bytes = RowBytes(type, kv_dim);
  std::vector<float> tmp(static_cast<size_t>(kv_dim));
  for (int64_t r = 0; r < n_rows; ++r) {
    auto* row = static_cast<uint8_t*>(k) + static_cast<size_t>(r) * row_bytes;
    kernels::DequantizeRow(type, row, tmp.data(), kv_dim);
    for (int h = 0; h < c.n_head_kv; ++h) kernels::Rope(tmp.data() + h * hd, hd, delta, rope);
    if (type == TensorType::kF16)
      kernels::ConvertF32ToF16(tmp.data(), reinterpret_cast<f16_t*>(row), kv_dim);
    else
      QuantizeRowRef(type, tmp.data(), row, kv_dim);
  }
}

}  // namespace es::model
