#include "model/model_llama.h"

#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "tensor/tensor_quant.h"

namespace es::model {
namespace {

// A new position's key or value row into the cache, in the cache's type (block types quantized
// as llama.cpp's set_rows does, with the reference rounding).
void StoreKvRow(const float* x, TensorType type, uint8_t* dst, int64_t n) {
  if (type == TensorType::kF32)
    std::memcpy(dst, x, sizeof(float) * static_cast<size_t>(n));
  else if (type == TensorType::kF16)
    kernels::ConvertF32ToF16(x, reinterpret_cast<f16_t*>(dst), n);
  else
    QuantizeRowRef(type, x, dst, n);
}

std::string Dims(int64_t a, int64_t b) {
  return "[" + std::to_string(a) + ", " + std::to_string(b) + "]";
}

// Rows [first, first + n) of a matrix, as a matrix of its own (fused projections).
kernels::Matrix Rows(const kernels::Matrix& m, int64_t first, int64_t n) {
  kernels::Matrix r = m;
  r.data = static_cast<const uint8_t*>(m.data) + static_cast<size_t>(first) * m.row_bytes;
  r.rows = n;
  return r;
}

// Mapped pages whose data was copied out are dropped from this process (they stay in the page
// cache). The mapping is private and never written, so a dropped page only faults in again if
// read.
constexpr uintptr_t kPage = 4096;
uintptr_t PageDown(const void* p) {
  return reinterpret_cast<uintptr_t>(p) & ~(kPage - 1);
}
uintptr_t PageUp(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
}
void DropPages(uintptr_t lo, uintptr_t hi) {
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

}  // namespace

void CheckWeightType(const gguf::File& f, const gguf::TensorInfo& t) {
  if (!Traits(t.type).supported)
    throw Error(f.path() + ": tensor '" + t.name + "' has type " + TypeName(t.type) +
                ", which edgeshard cannot compute with (supported: F32, F16, BF16, Q8_0, Q4_0, "
                "Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS; re-quantize "
                "the model with `edgeshard quantize`)");
}

kernels::Matrix GetMatrix(const gguf::File& f, const std::string& name, int64_t cols,
                          int64_t rows) {
  const auto& t = f.GetTensor(name);
  if (t.dims.size() != 2 || t.dims[0] != cols || t.dims[1] != rows)
    throw Error(f.path() + ": tensor '" + name + "' has shape " + t.ShapeString() + ", expected " +
                Dims(cols, rows) + " for this architecture");
  CheckWeightType(f, t);
  return kernels::Matrix{t.data, t.type, rows, cols, RowBytes(t.type, cols)};
}

const float* GetVector(const gguf::File& f, const std::string& name, int64_t n) {
  const auto& t = f.GetTensor(name);
  if (t.dims.size() != 1 || t.dims[0] != n)
    throw Error(f.path() + ": tensor '" + name + "' has shape " + t.ShapeString() + ", expected [" +
                std::to_string(n) + "]");
  if (t.type != TensorType::kF32)
    throw Error(f.path() + ": tensor '" + name + "' has type " + TypeName(t.type) +
                ", expected F32");
  return reinterpret_cast<const float*>(t.data);
}

Workspace::Workspace(const ModelConfig& c, int max_batch, int max_ctx, int n_threads)
    : max_batch_(max_batch) {
  const size_t b = static_cast<size_t>(max_batch);
  xb.resize(b * c.n_embd);
  q.resize(b * c.q_dim());
  k.resize(b * c.kv_dim());
  v.resize(b * c.kv_dim());
  const size_t ffn_rows = std::min<size_t>(b, kFfnRows);
  const size_t n_ff = std::max({c.n_ff, c.n_ff_exp, c.n_ff_shexp});
  gate.resize(std::max(b * c.q_dim(), ffn_rows * n_ff));
  up.resize(ffn_rows * std::max<size_t>(n_ff, c.n_embd));
  if (c.moe()) {
    const size_t choices = ffn_rows * c.n_expert_used;
    moe_probs.resize(ffn_rows * c.n_expert);
    moe_order.resize(static_cast<size_t>(c.n_expert));
    moe_weights.resize(choices);
    moe_choice.resize(choices);
    moe_rows.resize(choices);
    moe_x.resize(ffn_rows * c.n_embd);
    moe_out.resize(choices * c.n_embd);
  }
  q16.resize(b * c.q_dim());
  scores.resize(static_cast<size_t>(n_threads) * max_ctx);
  rows.resize(b);
  max_ctx_ = max_ctx;
  if (c.head_dim % kQK8_0 == 0) {
    qconv_stride_ = std::max(kernels::QueryBytes(TensorType::kQ8_0, c.head_dim),
                             kernels::QueryBytes(TensorType::kQ4_0, c.head_dim));
    qconv_.resize(static_cast<size_t>(n_threads) * qconv_stride_ + 64);
    qconv_base_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(qconv_.data()) + 63) &
                                             ~uintptr_t{63});
  }
}

size_t Workspace::bytes() const {
  auto n = [](const auto& v) { return v.capacity() * sizeof(v[0]); };
  return n(xb) + n(q) + n(k) + n(v) + n(gate) + n(up) + n(q16) + n(scores) + n(rows) +
         n(scratch.buf) + n(moe_probs) + n(moe_weights) + n(moe_x) + n(moe_out) + n(moe_choice) +
         n(moe_rows) + n(moe_order) + n(qconv_);
}

std::unique_ptr<LlamaModel> LlamaModel::Load(const std::string& path, const LoadOptions& opts) {
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->file_ = gguf::File::Open(path, opts.use_mmap);
  const gguf::File& f = *m->file_;
  m->cfg_ = ReadModelConfig(f);
  const ModelConfig& c = m->cfg_;
  m->tok_embd_ = GetMatrix(f, "token_embd.weight", c.n_embd, c.n_vocab);
  m->output_norm_ = m->KeepVector(GetVector(f, "output_norm.weight", c.n_embd), c.n_embd);
  m->output_ = c.tied_output ? m->tok_embd_ : GetMatrix(f, "output.weight", c.n_embd, c.n_vocab);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Layer L;
    L.attn_norm = m->KeepVector(GetVector(f, p + "attn_norm.weight", c.n_embd), c.n_embd);
    if (c.fused_qkv) {
      // Q, K and V rows one after another in one tensor: three views of it.
      const kernels::Matrix qkv =
          GetMatrix(f, p + "attn_qkv.weight", c.n_embd, c.q_dim() + 2 * c.kv_dim());
      L.wq = Rows(qkv, 0, c.q_dim());
      L.wk = Rows(qkv, c.q_dim(), c.kv_dim());
      L.wv = Rows(qkv, c.q_dim() + c.kv_dim(), c.kv_dim());
    } else {
      L.wq = GetMatrix(f, p + "attn_q.weight", c.n_embd, c.q_dim());
      L.wk = GetMatrix(f, p + "attn_k.weight", c.n_embd, c.kv_dim());
      L.wv = GetMatrix(f, p + "attn_v.weight", c.n_embd, c.kv_dim());
    }
    L.wo = GetMatrix(f, p + "attn_output.weight", c.q_dim(), c.n_embd);
    if (c.qkv_bias) {
      L.bq = m->KeepVector(GetVector(f, p + "attn_q.bias", c.q_dim()), c.q_dim());
      L.bk = m->KeepVector(GetVector(f, p + "attn_k.bias", c.kv_dim()), c.kv_dim());
      L.bv = m->KeepVector(GetVector(f, p + "attn_v.bias", c.kv_dim()), c.kv_dim());
    }
    if (c.qk_norm) {
      L.q_norm = m->KeepVector(GetVector(f, p + "attn_q_norm.weight", c.head_dim), c.head_dim);
      L.k_norm = m->KeepVector(GetVector(f, p + "attn_k_norm.weight", c.head_dim), c.head_dim);
    }
    if (c.out_bias) L.bo = m->KeepVector(GetVector(f, p + "attn_output.bias", c.n_embd), c.n_embd);
    if (c.attn_sinks)
      L.sinks = m->KeepVector(GetVector(f, p + "attn_sinks.weight", c.n_head), c.n_head);
    L.ffn_norm = m->KeepVector(GetVector(f, p + std::string(c.spec->ffn_norm), c.n_embd), c.n_embd);
    if (c.post_norms) {
      L.attn_post_norm =
          m->KeepVector(GetVector(f, p + "post_attention_norm.weight", c.n_embd), c.n_embd);
      L.ffn_post_norm = m->KeepVector(GetVector(f, p + "post_ffw_norm.weight", c.n_embd), c.n_embd);
    }
    if (c.moe()) {
      m->LoadExperts(l, L);
    } else if (c.fused_gate_up) {
      const kernels::Matrix gate_up = GetMatrix(f, p + "ffn_up.weight", c.n_embd, 2 * c.n_ff);
      L.w_gate = Rows(gate_up, 0, c.n_ff);
      L.w_up = Rows(gate_up, c.n_ff, c.n_ff);
    } else {
      L.w_gate = GetMatrix(f, p + "ffn_gate.weight", c.n_embd, c.n_ff);
      L.w_up = GetMatrix(f, p + "ffn_up.weight", c.n_embd, c.n_ff);
    }
    if (!c.moe()) L.w_down = GetMatrix(f, p + "ffn_down.weight", c.n_ff, c.n_embd);
    m->layers_.push_back(std::move(L));
  }
  const int64_t n_factors = c.n_rot / 2;
  if (c.rope_freqs)
    m->rope_freqs_ = m->KeepVector(GetVector(f, "rope_freqs.weight", n_factors), n_factors);
  if (c.longrope) {
    m->rope_short_ = m->KeepVector(GetVector(f, "rope_factors_short.weight", n_factors), n_factors);
    m->rope_long_ = m->KeepVector(GetVector(f, "rope_factors_long.weight", n_factors), n_factors);
  }
  for (const auto& t : f.tensors()) m->weight_bytes_ += t.n_bytes;
  // GPU blocks are uploaded row-major, before the CPU's copies re-lay the other blocks.
  if (opts.gpu_layers > 0) m->OffloadToGpu(opts.gpu_device, opts.gpu_layers);
  if (opts.interleave) m->PrepareLayers(0, m->gpu_first(), !m->gpu_head());
  // Read into memory (--no-mmap), every page is already there.
  if (opts.prefault && f.mapped()) {
    // Touch every page once so generation does not stall on page faults; report progress.
    size_t done = 0;
    for (const auto& t : f.tensors()) {
      m->Prefault(t);
      done += t.n_bytes;
      if (opts.progress) opts.progress(done, m->weight_bytes_);
    }
  }
  if (opts.mlock) {
    for (const auto& t : f.tensors()) m->Lock(t);
    m->LockCopies();
  }
  return m;
}

void LlamaModel::PrepareLayers(int first, int last, bool head) {
  std::vector<kernels::Matrix*> todo;
  for (int l = std::max(0, first); l < std::min(last, cfg_.n_layer); ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    // Experts stay mapped: a decode step reads few of them, and pages them in on demand.
    for (kernels::Matrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      if (w->data && kernels::CanInterleave(*w)) todo.push_back(w);
    for (kernels::Matrix* w : {&L.moe.sh_gate, &L.moe.sh_up, &L.moe.sh_down})
      if (w->data && kernels::CanInterleave(*w)) todo.push_back(w);
  }
  // A tied head is the embedding table too: both read the one interleaved copy (Embed gathers a
  // token's row back from its group).
  if (head && kernels::CanInterleave(output_)) todo.push_back(&output_);
  if (todo.empty()) return;

  // One arena for all copies, 2 MiB-aligned and marked for transparent huge pages: decode streams
  // every weight once per token, and 4 KiB pages would cost a TLB miss every 4 KiB of it.
  constexpr size_t kHuge = size_t{2} << 20;
  auto span = [](const kernels::Matrix& w) {
    return (static_cast<size_t>(w.rows) * w.row_bytes + 63) / 64 * 64;
  };
  size_t total = 0;
  for (const kernels::Matrix* w : todo) total += span(*w);
  total = (total + kHuge - 1) / kHuge * kHuge;
  auto* arena = static_cast<uint8_t*>(std::aligned_alloc(kHuge, total));
  if (!arena)
    throw Error(file_->path() + ": out of memory copying " + std::to_string(total) +
                " bytes of weights into the CPU kernels' layout");
  owned_.emplace_back(arena);
  owned_bytes_.push_back(total);
  madvise(arena, total, MADV_HUGEPAGE);

  uint8_t* dst = arena;
  std::vector<std::pair<uintptr_t, uintptr_t>> dropped;  // page ranges of the copied sources
  for (kernels::Matrix* w : todo) {
    const auto* src = static_cast<const uint8_t*>(w->data);
    // About 1 MiB of whole 16-row groups at a time, then the mapped pages just read are dropped
    // (they stay in the page cache): resident memory holds the weights once, even while the
    // largest matrix (the head) is copied.
    const int64_t chunk_rows = 16 * std::max<size_t>(1, (size_t{1} << 20) / (16 * w->row_bytes));
    const uintptr_t first = PageUp(src);
    uintptr_t released = first;
    for (int64_t r = 0; r < w->rows; r += chunk_rows) {
      kernels::Matrix part = *w;
      part.rows = std::min(w->rows - r, chunk_rows);
      const size_t off = static_cast<size_t>(r) * w->row_bytes;
      part.data = src + off;
      kernels::Interleave16(part, dst + off);
      const uintptr_t hi = PageDown(src + off + part.rows * w->row_bytes);
      DropPages(released, hi);
      released = std::max(released, hi);
    }
    dropped.emplace_back(first, released);
    copied_.push_back(w->data);
    if (file_->mapped()) w->source = w->data;
    w->data = dst;
    w->interleave = 16;
    dst += span(*w);
  }
  // A read fault maps the page cache's whole folio around it, which can reach back into a matrix
  // already copied and released: drop those pages once more, now that the reads are done.
  for (const auto& [lo, hi] : dropped) DropPages(lo, hi);
  if (head && cfg_.tied_output) tok_embd_ = output_;
}

const float* LlamaModel::KeepVector(const float* mapped, int64_t n) {
  vectors_.emplace_back(new float[static_cast<size_t>(n)]);
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  std::memcpy(vectors_.back().get(), mapped, bytes);
  ReleaseMapped(mapped, bytes);
  return vectors_.back().get();
}

void LlamaModel::ReleaseMapped(const void* mapped, size_t bytes) {
  // The whole pages around it: a neighbour's page is only read again if used, and then faults
  // in from the file. Read into memory (--no-mmap), it would read back as zeros: keep them.
  if (file_->mapped())
    DropPages(PageDown(mapped), PageUp(static_cast<const uint8_t*>(mapped) + bytes));
  copied_.push_back(mapped);
}

void LlamaModel::Prefault(const gguf::TensorInfo& t) const {
  // A tensor replaced by an interleaved copy is computed from the copy: paging its mapped bytes
  // back in would only hold the weights twice.
  if (std::find(copied_.begin(), copied_.end(), t.data) != copied_.end()) return;
  // An embedding table that is not also the head is a lookup: only the rows of tokens seen are
  // read, and each faults in on first use (a few pages), so the rest need not be resident.
  if (!cfg_.tied_output && t.name == "token_embd.weight") return;
  // Experts are read only when a token chooses them: a MoE file larger than memory still runs,
  // paging in the experts in use instead of the whole file at load.
  if (cfg_.moe() && t.name.find("_exps.") != std::string::npos) return;
  volatile uint8_t sink = 0;
  for (size_t off = 0; off < t.n_bytes; off += kPage) sink = sink + t.data[off];
}

namespace {

// Locks [p, p + n) in memory, or says why it cannot and what to do.
void LockRange(const std::string& path, const void* p, size_t n) {
  if (n == 0 || mlock(reinterpret_cast<void*>(PageDown(p)),
                      PageUp(static_cast<const uint8_t*>(p) + n) - PageDown(p)) == 0)
    return;
  const int err = errno;
  rlimit rl{};
  getrlimit(RLIMIT_MEMLOCK, &rl);
  const std::string limit =
      rl.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(rl.rlim_cur / 1024) + " KiB";
  throw Error(path + ": --mlock: cannot lock the model's weights in memory (" + std::strerror(err) +
              "; the limit on locked memory, RLIMIT_MEMLOCK, is " + limit +
              "). Raise it (`ulimit -l unlimited` in the shell, LimitMEMLOCK=infinity for a "
              "systemd service, memlock in /etc/security/limits.conf, --ulimit memlock=-1 for "
              "docker), or run without --mlock");
}

}  // namespace

void LlamaModel::Lock(const gguf::TensorInfo& t) const {
  if (std::find(copied_.begin(), copied_.end(), t.data) != copied_.end()) return;
  LockRange(file_->path(), t.data, t.n_bytes);
}

void LlamaModel::LockCopies() const {
  // Norm vectors (vectors_) are a few KiB each in the heap: not worth a lock each.
  for (size_t i = 0; i < owned_.size(); ++i)
    LockRange(file_->path(), owned_[i].get(), owned_bytes_[i]);
}

void LlamaModel::Embed(const int32_t* tokens, int n, float* hidden) const {
  for (int i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    if (t < 0 || t >= cfg_.n_vocab)
      throw Error("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                  std::to_string(cfg_.n_vocab - 1) + ")");
    float* row = hidden + static_cast<size_t>(i) * cfg_.n_embd;
    kernels::DequantizeMatrixRow(tok_embd_, t, row);
    if (cfg_.embd_scale != 0.0f)
      for (int j = 0; j < cfg_.n_embd; ++j) row[j] *= cfg_.embd_scale;
  }
}

void LlamaModel::Attention(int layer, int n, const BatchRow* rows, Workspace& ws,
                           kernels::ThreadPool& pool) const {
  const ModelConfig& c = cfg_;
  const int hd = c.head_dim;
  const int kv_dim = c.kv_dim();
  const int q_dim = c.q_dim();
  const int group = c.n_head / c.n_head_kv;
  // Queries already scaled (q_scale) meet the keys unscaled.
  const float scale = c.q_scale != 0.0f ? 1.0f : 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t window = c.Window(layer);
  const Layer& L = layers_[static_cast<size_t>(layer)];
  // llama.cpp multiplies F16 keys with queries rounded to F16, and F16 values with F16 weights.
  // (Every row of a batch has caches of the same types: one context's options made them.)
  if (n > 0 && rows[0].kv[layer].k_type == TensorType::kF16)
    kernels::ConvertF32ToF16(ws.q.data(), ws.q16.data(), static_cast<int64_t>(n) * q_dim);
  const int64_t max_ctx = ws.max_ctx();
  pool.ParallelFor(static_cast<int64_t>(n) * c.n_head, [&](int64_t begin, int64_t end, int th) {
    float* s = ws.scores.data() + static_cast<size_t>(th) * max_ctx;
    for (int64_t task = begin; task < end; ++task) {
      const int i = static_cast<int>(task / c.n_head);
      const int h = static_cast<int>(task % c.n_head);
      const int kvh = h / group;
      const KvLayer& kv = rows[i].kv[layer];
      // Causal: keys 0..pos of this row's sequence; a local layer's only the last `window`.
      const int64_t first = window > 0 ? std::max<int64_t>(0, rows[i].pos + 1 - window) : 0;
      const int64_t n_kv = rows[i].pos + 1 - first;
      // In a ring the keys first..pos may wrap: rows r0.. then 0.., visited in position order
      // (the kernels accumulate key by key, so two spans give the one span's result).
      const int64_t r0 = kv.Row(first);
      const int64_t n0 = std::min(n_kv, (kv.ring ? kv.ring : kv.n_ctx) - r0);
      float* out = ws.attn_out() + static_cast<size_t>(i) * q_dim + h * hd;
      std::memset(out, 0, sizeof(float) * hd);
      // Keys: row j of the span is r0 + j, of the wrapped span j - n0.
      const size_t k_head = RowBytes(kv.k_type, static_cast<int64_t>(kvh) * hd);
      const auto* K = static_cast<const uint8_t*>(kv.k) + k_head;
      const size_t kb = kv.k_row_bytes;
      if (kv.k_type == TensorType::kF16) {
        // One call per head (and span), with the numerics of per-key DotF16 of f16 queries.
        const f16_t* q = ws.q16.data() + static_cast<size_t>(i) * q_dim + h * hd;
        auto rows_at = [&](int64_t r) { return reinterpret_cast<const f16_t*>(K + r * kb); };
        kernels::DotF16Rows(q, rows_at(r0), kv_dim, n0, hd, scale, s);
        if (n0 < n_kv) kernels::DotF16Rows(q, rows_at(0), kv_dim, n_kv - n0, hd, scale, s + n0);
      } else if (kv.k_type == TensorType::kF32) {
        const float* q = ws.q.data() + static_cast<size_t>(i) * q_dim + h * hd;
        auto row = [&](int64_t r) { return reinterpret_cast<const float*>(K + r * kb); };
        for (int64_t j = 0; j < n0; ++j) s[j] = kernels::DotF32(q, row(r0 + j), hd) * scale;
        for (int64_t j = n0; j < n_kv; ++j) s[j] = kernels::DotF32(q, row(j - n0), hd) * scale;
      } else {
        uint8_t* q = ws.query_buf(th);
        kernels::ConvertQuery(kv.k_type, ws.q.data() + static_cast<size_t>(i) * q_dim + h * hd, hd,
                              q);
        kernels::DotQuantRows(kv.k_type, q, K + r0 * kb, kb, n0, hd, scale, s);
        if (n0 < n_kv) kernels::DotQuantRows(kv.k_type, q, K, kb, n_kv - n0, hd, scale, s + n0);
      }
      if (c.attn_softcap != 0.0f) kernels::SoftCap(s, n_kv, c.attn_softcap);
      if (L.sinks)
        kernels::SoftmaxWithSink(s, n_kv, L.sinks[h]);
      else
        kernels::Softmax(s, n_kv);
      const size_t v_head = RowBytes(kv.v_type, static_cast<int64_t>(kvh) * hd);
      const auto* V = static_cast<const uint8_t*>(kv.v) + v_head;
      const size_t vb = kv.v_row_bytes;
      if (kv.v_type == TensorType::kF16) {
        // With the f16-rounded probabilities of per-key AxpyF16.
        auto rows_at = [&](int64_t r) { return reinterpret_cast<const f16_t*>(V + r * vb); };
        kernels::WeightedSumF16Rows(s, rows_at(r0), kv_dim, n0, hd, out);
        if (n0 < n_kv) kernels::WeightedSumF16Rows(s + n0, rows_at(0), kv_dim, n_kv - n0, hd, out);
      } else if (kv.v_type == TensorType::kF32) {
        auto row = [&](int64_t r) { return reinterpret_cast<const float*>(V + r * vb); };
        for (int64_t j = 0; j < n0; ++j) kernels::AxpyF32(s[j], row(r0 + j), out, hd);
        for (int64_t j = n0; j < n_kv; ++j) kernels::AxpyF32(s[j], row(j - n0), out, hd);
      } else {
        kernels::WeightedSumQuantRows(kv.v_type, s, V + r0 * vb, vb, n0, hd, out);
        if (n0 < n_kv) kernels::WeightedSumQuantRows(kv.v_type, s + n0, V, vb, n_kv - n0, hd, out);
      }
    }
  });
}

void LlamaModel::ForwardBlocks(int first, int last, float* hidden, int n, int64_t pos0,
                               const KvLayer* kv, Workspace& ws, kernels::ThreadPool& pool) const {
  if (n > ws.max_batch()) throw Error("batch larger than the workspace");
  for (int i = 0; i < n; ++i) ws.rows[i] = BatchRow{kv, pos0 + i};
  ForwardBlocks(first, last, hidden, n, ws.rows.data(), ws, pool);
}

#ifndef EDGESHARD_HAVE_VULKAN
// Without the GPU backend (its versions are in model_gpu.cpp).
void LlamaModel::OffloadToGpu(int, int n_layers) {
  if (n_layers > 0)
    throw Error("this build has no GPU backend (configured with EDGESHARD_VULKAN=OFF)");
}
void LlamaModel::OffloadRangeToGpu(int, int first, int last, bool head) {
  if (first < last || head)
    throw Error("this build has no GPU backend (configured with EDGESHARD_VULKAN=OFF)");
}
int LlamaModel::gpu_first() const {
  return cfg_.n_layer;
}
int LlamaModel::gpu_last() const {
  return cfg_.n_layer;
}
bool LlamaModel::gpu_head() const {
  return false;
}
void LlamaModel::ForwardGpu(int, int, float*, int, const BatchRow*, Workspace&,
                            kernels::ThreadPool&) const {
  throw Error("this build has no GPU backend");
}
void LlamaModel::HeadGpu(const float*, int, float*) const {
  throw Error("this build has no GPU backend");
}
std::string LlamaModel::GpuDeviceName() const {
  return "";
}
std::string LlamaModel::GpuPlacement() const {
  return "";
}
std::shared_ptr<gpu::Buffer> LlamaModel::AllocDeviceKv(int64_t, TensorType) const {
  throw Error("this build has no GPU backend");
}
#endif

void LlamaModel::ForwardBlocks(int first, int last, float* hidden, int n, const BatchRow* rows,
                               Workspace& ws, kernels::ThreadPool& pool) const {
  const ModelConfig& c = cfg_;
  if (first < 0 || last > c.n_layer || first > last) throw Error("invalid layer range");
  if (n > ws.max_batch()) throw Error("batch larger than the workspace");
  // Blocks [g0, g1) run on the GPU, with device caches.
  const int g0 = std::clamp(gpu_first(), first, last), g1 = std::clamp(gpu_last(), g0, last);
  for (int i = 0; i < n; ++i) {
    for (int l = first; l < last; ++l) {
      const KvLayer& cache = rows[i].kv[l];
      const bool on_gpu = l >= g0 && l < g1;
      if (on_gpu && (!cache.dk || !cache.dv))
        throw Error("GPU offload: layer " + std::to_string(l) + " has no device KV cache");
      if ((!on_gpu && !cache.k) || rows[i].pos < 0 || rows[i].pos >= cache.n_ctx)
        throw Error("context is full: position " + std::to_string(rows[i].pos) +
                    " is past the context of " + std::to_string(cache.n_ctx) +
                    " tokens (start with a larger -c)");
      if (cache.n_ctx > ws.max_ctx())
        throw Error("KV cache longer than the workspace was sized for");
      // A ring holds a window plus one batch: a larger batch would overwrite keys it still needs.
      if (cache.ring && n > cache.ring - c.Window(l) + 1)
        throw Error("batch of " + std::to_string(n) +
                    " rows is larger than the sliding-window "
                    "KV cache was sized for");
    }
  }
  // CPU blocks before the GPU's range, the GPU's in one go (activations cross once each way),
  // then any CPU blocks after it.
  const auto on_cpu = [&](int from, int to) {
    for (int l = from; l < to; ++l) {
      AttentionBlock(l, hidden, n, rows, ws, pool);
      FeedForwardBlock(l, hidden, n, ws, pool);
    }
  };
  on_cpu(first, g0);
  if (g0 < g1) ForwardGpu(g0, g1, hidden, n, rows, ws, pool);
  on_cpu(g1, last);
}

// hidden += post_norm(wo(attention(rope(norm_qk(q(x))), rope(norm_qk(k(x))), v(x)))),
// x = norm(hidden): the attention half of a block (post_norm only for families with sandwich
// norms); the keys and values of the rows go to their caches.
void LlamaModel::AttentionBlock(int l, float* hidden, int n, const BatchRow* rows, Workspace& ws,
                                kernels::ThreadPool& pool) const {
  const ModelConfig& c = cfg_;
  const Layer& L = layers_[l];
  const int d = c.n_embd, kv_dim = c.kv_dim(), q_dim = c.q_dim(), hd = c.head_dim;
  for (int i = 0; i < n; ++i)
    kernels::RmsNorm(hidden + static_cast<size_t>(i) * d, L.attn_norm,
                     ws.xb.data() + static_cast<size_t>(i) * d, d, c.rms_eps);
  kernels::MatMul(L.wq, ws.xb.data(), d, n, ws.q.data(), q_dim, pool, ws.scratch);
  kernels::MatMul(L.wk, ws.xb.data(), d, n, ws.k.data(), kv_dim, pool, ws.scratch);
  kernels::MatMul(L.wv, ws.xb.data(), d, n, ws.v.data(), kv_dim, pool, ws.scratch);
  for (int i = 0; i < n; ++i) {
    float* q = ws.q.data() + static_cast<size_t>(i) * q_dim;
    float* k = ws.k.data() + static_cast<size_t>(i) * kv_dim;
    float* v = ws.v.data() + static_cast<size_t>(i) * kv_dim;
    if (L.bq) {
      kernels::Add(q, L.bq, q_dim);
      kernels::Add(k, L.bk, kv_dim);
      kernels::Add(v, L.bv, kv_dim);
    }
    if (L.q_norm) {
      // QK-norm: each head of Q and K normalised on its own, with one weight vector for all heads
      // (and the model's RMS epsilon), before the rotation.
      for (int h = 0; h < c.n_head; ++h)
        kernels::RmsNorm(q + h * hd, L.q_norm, q + h * hd, hd, c.rms_eps);
      for (int h = 0; h < c.n_head_kv; ++h)
        kernels::RmsNorm(k + h * hd, L.k_norm, k + h * hd, hd, c.rms_eps);
    }
    const int64_t pos = rows[i].pos;
    const KvLayer& cache = rows[i].kv[l];
    const kernels::RopeParams rope = RopeFor(l, cache.n_ctx);
    if (rope.n_rot > 0) {
      for (int h = 0; h < c.n_head; ++h) kernels::Rope(q + h * hd, hd, pos, rope);
      for (int h = 0; h < c.n_head_kv; ++h) kernels::Rope(k + h * hd, hd, pos, rope);
    }
    if (c.attn_temp_scale != 0.0f) {
      const float t = c.AttnTemperature(pos);
      for (int j = 0; j < q_dim; ++j) q[j] *= t;
    }
    if (c.q_scale != 0.0f)
      for (int j = 0; j < q_dim; ++j) q[j] *= c.q_scale;
    const auto row = static_cast<size_t>(cache.Row(pos));
    StoreKvRow(k, cache.k_type, static_cast<uint8_t*>(cache.k) + row * cache.k_row_bytes, kv_dim);
    StoreKvRow(v, cache.v_type, static_cast<uint8_t*>(cache.v) + row * cache.v_row_bytes, kv_dim);
  }
  Attention(l, n, rows, ws, pool);
  kernels::MatMul(L.wo, ws.attn_out(), q_dim, n, ws.xb.data(), d, pool, ws.scratch);
  if (L.bo)
    for (int i = 0; i < n; ++i) kernels::Add(ws.xb.data() + static_cast<size_t>(i) * d, L.bo, d);
  if (L.attn_post_norm)
    for (int i = 0; i < n; ++i) {
      float* x = ws.xb.data() + static_cast<size_t>(i) * d;
      kernels::RmsNorm(x, L.attn_post_norm, x, d, c.rms_eps);
    }
  kernels::Add(hidden, ws.xb.data(), static_cast<int64_t>(n) * d);
}

// hidden += post_norm(down(act(gate(x)) * up(x))), x = norm(hidden), kFfnRows rows at a time;
// act is SiLU or GELU by the family, post_norm only for families with sandwich norms.
void LlamaModel::FeedForwardBlock(int l, float* hidden, int n, Workspace& ws,
                                  kernels::ThreadPool& pool) const {
  const ModelConfig& c = cfg_;
  const Layer& L = layers_[l];
  const int d = c.n_embd;
  for (int i = 0; i < n; ++i)
    kernels::RmsNorm(hidden + static_cast<size_t>(i) * d, L.ffn_norm,
                     ws.xb.data() + static_cast<size_t>(i) * d, d, c.rms_eps);
  for (int i0 = 0; i0 < n; i0 += Workspace::kFfnRows) {
    const int m = std::min(n - i0, Workspace::kFfnRows);
    const float* x = ws.xb.data() + static_cast<size_t>(i0) * d;
    if (c.moe()) {
      ExpertsBlock(l, hidden + static_cast<size_t>(i0) * d, x, m, ws, pool);
      continue;
    }
    kernels::MatMul(L.w_gate, x, d, m, ws.gate.data(), c.n_ff, pool, ws.scratch);
    kernels::MatMul(L.w_up, x, d, m, ws.up.data(), c.n_ff, pool, ws.scratch);
    GatedActivation(c.spec->ffn, ws.gate.data(), ws.up.data(), static_cast<int64_t>(m) * c.n_ff);
    // Into up (free after the activation): xb still holds the later rows' inputs.
    kernels::MatMul(L.w_down, ws.gate.data(), c.n_ff, m, ws.up.data(), d, pool, ws.scratch);
    if (L.ffn_post_norm)
      for (int i = 0; i < m; ++i) {
        float* y = ws.up.data() + static_cast<size_t>(i) * d;
        kernels::RmsNorm(y, L.ffn_post_norm, y, d, c.rms_eps);
      }
    kernels::Add(hidden + static_cast<size_t>(i0) * d, ws.up.data(), static_cast<int64_t>(m) * d);
  }
}

kernels::RopeParams LlamaModel::RopeFor(int layer, int64_t n_ctx) const {
  const ModelConfig& c = cfg_;
  kernels::RopeParams p;
  if (!c.HasRope(layer)) return p;
  // Local (sliding-window) layers rotate with their own base and scaling.
  const bool local = c.IsLocal(layer);
  p.n_rot = c.n_rot;
  p.base = local ? c.rope_base_local : c.rope_base;
  p.freq_scale = local ? c.rope_freq_scale_local : c.rope_freq_scale;
  p.neox = c.rope_neox;
  p.factors = rope_freqs_ ? rope_freqs_ : c.LongFactors(n_ctx) ? rope_long_ : rope_short_;
  p.attn_factor = c.rope_attn_factor;
  p.ext_factor = c.rope_ext_factor;
  if (p.ext_factor != 0.0f)
    kernels::RopeYarnCorrDims(c.n_rot, c.n_ctx_orig, p.base, c.yarn_beta_fast, c.yarn_beta_slow,
                              &p.corr_lo, &p.corr_hi);
  return p;
}

void LlamaModel::Head(float* hidden, int n, float* logits, Workspace& ws,
                      kernels::ThreadPool& pool) const {
  const int d = cfg_.n_embd;
  if (gpu_head()) {
    HeadGpu(hidden, n, logits);
  } else {
    for (int i = 0; i < n; ++i) {
      float* h = hidden + static_cast<size_t>(i) * d;
      kernels::RmsNorm(h, output_norm_, h, d, cfg_.rms_eps);
    }
    kernels::MatMul(output_, hidden, d, n, logits, cfg_.n_vocab, pool, ws.scratch);
  }
  // The soft-cap (gemma2) on the host, with the CPU's kernel, wherever the logits came from.
  if (cfg_.final_softcap != 0.0f)
    kernels::SoftCap(logits, static_cast<int64_t>(n) * cfg_.n_vocab, cfg_.final_softcap);
}

}  // namespace es::model
