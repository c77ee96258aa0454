#include "runtime/runtime_kv_cache.h"

#include <algorithm>
#include <cstring>

#include "tensor/tensor_types.h"

namespace es::runtime {

size_t KvCache::BytesNeeded(const model::ModelConfig& c, int64_t n_ctx, model::KvTypes types,
                            int n_layers, int max_batch) {
  size_t rows = 0;
  for (int l = 0; l < n_layers; ++l) rows += static_cast<size_t>(RowsKept(c, l, n_ctx, max_batch));
  return rows * model::KvRowBytes(c, types);
}

int64_t KvCache::RowsKept(const model::ModelConfig& c, int l, int64_t n_ctx, int max_batch) {
  const int64_t window = c.Window(l);
  if (window <= 0 || max_batch <= 0) return n_ctx;
  return std::min(n_ctx, window + max_batch - 1);
}

KvCache::KvCache(const model::ModelConfig& c, int64_t n_ctx, model::KvTypes types, int first_layer,
                 int last_layer, int max_batch, const model::LlamaModel* device_model)
    : n_ctx_(n_ctx), types_(types) {
  if (last_layer < 0) last_layer = c.n_layer;
  model::CheckKvTypes(c, types);
  if (n_ctx <= 0) throw Error("context length must be positive");
  // Layers the model runs on a GPU keep their rows in its memory only.
  const int g0 = device_model ? device_model->gpu_first() : c.n_layer;
  const int g1 = device_model ? device_model->gpu_last() : c.n_layer;
  auto on_device = [&](int l) { return l >= g0 && l < g1; };
  const size_t k_row = RowBytes(types.k, c.kv_dim()), v_row = RowBytes(types.v, c.kv_dim());
  for (int l = first_layer; l < last_layer; ++l)
    if (!on_device(l))
      bytes_ += (k_row + v_row) * static_cast<size_t>(RowsKept(c, l, n_ctx, max_batch));
  storage_.reset(new uint8_t[std::max<size_t>(bytes_, 1)]);
  std::memset(storage_.get(), 0, bytes_);  // commit the pages now, not during generation
  layers_.resize(c.n_layer);
  window_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) window_[l] = c.Window(l);
  uint8_t* p = storage_.get();
  for (int l = first_layer; l < last_layer; ++l) {
    const int64_t rows = RowsKept(c, l, n_ctx, max_batch);
    const int64_t ring = rows < n_ctx ? rows : 0;
    model::KvLayer& kv = layers_[l];
    kv = model::KvLayer{nullptr, nullptr, types.k, types.v, n_ctx, ring, k_row, v_row};
    if (on_device(l)) {
      device_.push_back(device_model->AllocDeviceKv(rows, types.k));
      kv.dk = device_.back().get();
      device_.push_back(device_model->AllocDeviceKv(rows, types.v));
      kv.dv = device_.back().get();
      continue;
    }
    kv.k = p;
    kv.v = p + k_row * static_cast<size_t>(rows);
    p += (k_row + v_row) * static_cast<size_t>(rows);
  }
}

bool KvCache::CanTruncate(int64_t n, int64_t n_past) const {
  if (n <= 0) return true;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const int64_t ring = layers_[l].ring;
    if ((!layers_[l].k && !layers_[l].dk) || !ring) continue;  // outside the range, or global
    const int64_t held_from = std::max({ring_floor_, n_past - ring, int64_t{0}});
    if (std::max<int64_t>(0, n - window_[l] + 1) < held_from) return false;
  }
  return true;
}

bool KvCache::Shift(const model::LlamaModel& m, int64_t keep, int64_t discard, int64_t n_past,
                    kernels::ThreadPool* pool) {
  if (keep < 0 || discard <= 0 || keep + discard > n_past || n_past > n_ctx_)
    throw Error("context shift of " + std::to_string(discard) + " positions after " +
                std::to_string(keep) + " does not fit the " + std::to_string(n_past) +
                " positions held");
  // Keys on a GPU are not re-rotated in place yet: the caller evaluates the kept tokens again,
  // as it does for a ring that lost a needed key.
  if (!device_.empty()) return false;
  const int64_t n_new = n_past - discard;
  auto old_pos = [&](int64_t p) { return p < keep ? p : p + discard; };
  // A ring holds old positions held_from..n_past-1 at rows pos % ring. New position p comes
  // from old p (kept prefix) or p + discard; a ring keeps the newest run of new positions whose
  // old keys are still there (at most a ring's worth): lo[l] onwards.
  std::vector<int64_t> lo(layers_.size(), 0);
  int64_t floor = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const int64_t ring = layers_[l].ring;
    if (!layers_[l].k || !ring) continue;
    const int64_t held_from = std::max({ring_floor_, n_past - ring, int64_t{0}});
    int64_t first = n_new;
    while (first > std::max<int64_t>(0, n_new - ring) && old_pos(first - 1) >= held_from) --first;
    // The next position sees the window before it: without those keys the cache is unusable.
    if (first > std::max<int64_t>(0, n_new - window_[l] + 1)) return false;
    lo[l] = first;
    floor = std::max(floor, first);
  }
  // Layers are independent: one task each (a 7B model's 32 layers at 4k context move and turn
  // a quarter of a billion values).
  auto shift_layer = [&](size_t l) {
    const model::KvLayer& kv = layers_[l];
    if (!kv.k) return;
    const size_t kb = kv.k_row_bytes, vb = kv.v_row_bytes;
    auto* k = static_cast<uint8_t*>(kv.k);
    auto* v = static_cast<uint8_t*>(kv.v);
    const int layer = static_cast<int>(l);
    if (!kv.ring) {
      // Rows are positions: slide the tail down over the discarded rows, then turn its keys.
      const auto n_move = static_cast<size_t>(n_past - keep - discard);
      const auto at = static_cast<size_t>(keep), from = static_cast<size_t>(keep + discard);
      std::memmove(k + at * kb, k + from * kb, n_move * kb);
      std::memmove(v + at * vb, v + from * vb, n_move * vb);
      m.ShiftKeys(layer, n_ctx_, k + at * kb, kv.k_type, static_cast<int64_t>(n_move), -discard);
      return;
    }
    // Through a copy: new rows may be old rows still to be read.
    const int64_t ring = kv.ring;
    const auto n_tmp = static_cast<size_t>(n_new - lo[l]);
    std::vector<uint8_t> tk(n_tmp * kb), tv(n_tmp * vb);
    for (int64_t p = lo[l]; p < n_new; ++p) {
      const auto src = static_cast<size_t>(old_pos(p) % ring), dst = static_cast<size_t>(p - lo[l]);
      std::memcpy(tk.data() + dst * kb, k + src * kb, kb);
      std::memcpy(tv.data() + dst * vb, v + src * vb, vb);
    }
    const int64_t moved = std::max(lo[l], keep);  // first new position that moved
    m.ShiftKeys(layer, n_ctx_, tk.data() + static_cast<size_t>(moved - lo[l]) * kb, kv.k_type,
                n_new - moved, -discard);
    for (int64_t p = lo[l]; p < n_new; ++p) {
      const auto src = static_cast<size_t>(p - lo[l]), dst = static_cast<size_t>(p % ring);
      std::memcpy(k + dst * kb, tk.data() + src * kb, kb);
      std::memcpy(v + dst * vb, tv.data() + src * vb, vb);
    }
  };
  if (pool) {
    pool->ParallelFor(static_cast<int64_t>(layers_.size()), [&](int64_t b, int64_t e, int) {
      for (int64_t l = b; l < e; ++l) shift_layer(static_cast<size_t>(l));
    });
  } else {
    for (size_t l = 0; l < layers_.size(); ++l) shift_layer(l);
  }
  ring_floor_ = floor;
  return true;
}

}  // namespace es::runtime
