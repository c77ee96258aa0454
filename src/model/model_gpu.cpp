// A range of transformer blocks on the GPU: the attention and feed-forward halves of
// model_llama.cpp, step for step, as recorded GPU sequences.
#include "model/model_gpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "edgeshard/error.h"
#include "gpu/gpu_ops.h"

namespace es::model {
namespace {

gpu::Rows R(const std::shared_ptr<gpu::Buffer>& b, size_t stride, size_t offset = 0) {
  return gpu::Rows{b.get(), offset, stride};
}

}  // namespace

GpuBlocks::GpuBlocks(const LlamaModel& m, int device, int first, int last, bool head)
    : m_(m), dev_(gpu::Device::Open(device)), first_(first), last_(last) {
  const ModelConfig& c = m.config();
  if (first < 0 || last > c.n_layer || first > last) throw Error("GPU offload: invalid layers");
  // The math the programs implement; anything else is refused by name rather than run wrong.
  if (head && last != c.n_layer) throw Error("GPU offload: the head follows the last block");
  // Mixture-of-experts feed-forward halves run on the CPU (Forward); a dense one must be ours.
  if (!c.moe() && c.spec->ffn == FfnKind::kSwiGluOai)
    throw Error("GPU offload: the clamped SwiGLU of this family is not implemented yet");
  if (c.head_dim > 256) throw Error("GPU offload: head sizes over 256 are not implemented");
  auto up = [&](kernels::Matrix w, const std::string& name) {
    if (w.interleave != 0) {
      // Re-laid for the CPU's kernels by an earlier plan: the file still has the original.
      if (!w.source)
        throw Error("GPU offload: " + name +
                    " was re-laid for the CPU (load with interleave off for GPU layers)");
      w.data = w.source;
      w.interleave = 0;
    }
    if (!gpu::CanMatMul(w.type, w.cols))
      throw Error(std::string("GPU offload: the Vulkan backend has no matmul for ") +
                  TypeName(w.type) + " (" + name + ")");
    gpu::GpuMatrix gm = gpu::UploadMatrix(*dev_, w);
    weight_bytes_ += gm.bytes();
    return gm;
  };
  for (int l = first; l < last; ++l) {
    const LlamaModel::Layer& L = m.layers_[static_cast<size_t>(l)];
    Layer g;
    const std::string at = "layer " + std::to_string(l) + " ";
    g.wq = up(L.wq, at + "attn_q");
    g.wk = up(L.wk, at + "attn_k");
    g.wv = up(L.wv, at + "attn_v");
    g.wo = up(L.wo, at + "attn_output");
    if (!c.moe()) {
      g.w_gate = up(L.w_gate, at + "ffn_gate");
      g.w_up = up(L.w_up, at + "ffn_up");
      g.w_down = up(L.w_down, at + "ffn_down");
    }
    g.attn_norm = Vector(L.attn_norm, c.n_embd);
    g.ffn_norm = Vector(L.ffn_norm, c.n_embd);
    if (L.attn_post_norm) g.attn_post_norm = Vector(L.attn_post_norm, c.n_embd);
    if (L.ffn_post_norm) g.ffn_post_norm = Vector(L.ffn_post_norm, c.n_embd);
    if (L.bq) {
      g.bq = Vector(L.bq, c.q_dim());
      g.bk = Vector(L.bk, c.kv_dim());
      g.bv = Vector(L.bv, c.kv_dim());
    }
    if (L.bo) g.bo = Vector(L.bo, c.n_embd);
    if (L.q_norm) {
      g.q_norm = Vector(L.q_norm, c.head_dim);
      g.k_norm = Vector(L.k_norm, c.head_dim);
    }
    if (L.sinks) g.sinks = Vector(L.sinks, c.n_head);
    layers_.push_back(std::move(g));
  }
  if (c.q_scale != 0.0f) q_scale_ = Vector(&c.q_scale, 1);
  if (head) {
    output_ = up(m.output_, "output");
    output_norm_ = Vector(m.output_norm_, c.n_embd);
  }
}

GpuBlocks::~GpuBlocks() {
  recorded_.clear();  // sequences before the buffers they bind and the device
  layers_.clear();
}

std::shared_ptr<gpu::Buffer> GpuBlocks::Vector(const float* v, int64_t n) {
  auto b = dev_->Alloc(static_cast<size_t>(n) * sizeof(float));
  dev_->Upload(*b, 0, v, static_cast<size_t>(n) * sizeof(float));
  return b;
}

std::shared_ptr<gpu::Buffer> GpuBlocks::AllocKv(int64_t rows, TensorType type) const {
  if (type != TensorType::kF16 && type != TensorType::kF32)
    throw Error(std::string("GPU offload: a ") + TypeName(type) +
                " KV cache is not implemented on the GPU yet (use -ctk/-ctv f16 or f32)");
  const size_t bytes =
      static_cast<size_t>(rows) * m_.config().kv_dim() * (type == TensorType::kF16 ? 2 : 4);
  return dev_->Alloc(bytes);
}

void GpuBlocks::EnsureActivations(int n) {
  if (n <= max_rows_) return;
  recorded_.clear();  // they bind the old buffers
  const ModelConfig& c = m_.config();
  const auto rows = static_cast<size_t>(n);
  auto alloc = [&](int64_t width) { return dev_->Alloc(rows * static_cast<size_t>(width) * 4); };
  hidden_ = alloc(c.n_embd);
  xb_ = alloc(c.n_embd);
  q_ = alloc(c.q_dim());
  k_ = alloc(c.kv_dim());
  v_ = alloc(c.kv_dim());
  attn_ = alloc(c.q_dim());
  gate_ = alloc(std::max(1, c.n_ff));  // (unused by mixture-of-experts blocks)
  up_ = alloc(std::max(1, c.n_ff));
  positions_ = alloc(1);
  temperature_ = alloc(1);
  act_slot_ = rows * static_cast<size_t>(std::max({c.n_embd, c.q_dim(), c.n_ff}));
  acts_ = dev_->Alloc(act_slot_ * kActSlots * sizeof(float));
  rope_tables_.clear();
  max_rows_ = n;
}

void GpuBlocks::Forward(int first, int last, float* hidden, int n, const BatchRow* rows,
                        Workspace& ws, kernels::ThreadPool& pool) {
  const ModelConfig& c = m_.config();
  if (first < first_ || last > last_ || first > last)
    throw Error("GPU offload: layers outside the offloaded range");
  if (n <= 0 || first == last) return;  // (LlamaModel::ForwardBlocks checked the device caches)
  EnsureActivations(n);
  // RoPE: a table per distinct rotation (global and local layers, LongRoPE's length choice).
  rope_group_.assign(static_cast<size_t>(last_ - first_), -1);
  rope_params_.clear();
  for (int l = first; l < last; ++l) {
    const kernels::RopeParams p = m_.RopeFor(l, rows[0].kv[l].n_ctx);
    if (p.n_rot == 0) continue;
    int g = 0;
    while (g < static_cast<int>(rope_params_.size()) && !(rope_params_[g] == p)) ++g;
    if (g == static_cast<int>(rope_params_.size())) rope_params_.push_back(p);
    rope_group_[static_cast<size_t>(l - first_)] = g;
  }
  const int64_t half = c.n_rot / 2;
  while (rope_tables_.size() < rope_params_.size())
    rope_tables_.push_back(dev_->Alloc(static_cast<size_t>(max_rows_ * half) * 2 * sizeof(float)));
  std::vector<float> table(static_cast<size_t>(n * half) * 2), cs(static_cast<size_t>(half)),
      sn(static_cast<size_t>(half));
  for (size_t g = 0; g < rope_params_.size(); ++g) {
    for (int i = 0; i < n; ++i) {
      kernels::RopeTable(rows[i].pos, rope_params_[g], cs.data(), sn.data());
      for (int64_t j = 0; j < half; ++j) {
        table[static_cast<size_t>((i * half + j) * 2)] = cs[static_cast<size_t>(j)];
        table[static_cast<size_t>((i * half + j) * 2 + 1)] = sn[static_cast<size_t>(j)];
      }
    }
    dev_->Upload(*rope_tables_[g], 0, table.data(), table.size() * sizeof(float));
  }
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(rows[i].pos);
  dev_->Upload(*positions_, 0, pos.data(), pos.size() * sizeof(int32_t));
  if (c.attn_temp_scale != 0.0f) {
    std::vector<float> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = c.AttnTemperature(rows[i].pos);
    dev_->Upload(*temperature_, 0, t.data(), t.size() * sizeof(float));
  }
  const size_t hidden_bytes = static_cast<size_t>(n) * c.n_embd * sizeof(float);
  dev_->Upload(*hidden_, 0, hidden, hidden_bytes);

  // The recorded sequences depend on the shape of the step: layers, rows, each run of rows'
  // caches and the RoPE table of each layer. A cache is named by its first device buffer's serial:
  // a KvCache allocates all of its buffers at once, and serials are never reused.
  std::string key = std::to_string(n);
  for (int i = 0; i < n; ++i)
    key += ":" + (i > 0 && rows[i].kv == rows[i - 1].kv
                      ? std::string()
                      : std::to_string(rows[i].kv[first].dk->serial()));
  for (int l = first; l < last; ++l) key += "," + std::to_string(rope_group_[size_t(l - first_)]);
  // One sequence up to each mixture-of-experts block's attention half (all of [first, last) for a
  // dense model); that block's feed-forward half then runs on the CPU, on the hidden state brought
  // back, before the next part.
  const bool moe = c.moe();
  for (int l = first; l < last;) {
    const int end = moe ? l + 1 : last;
    const std::string part = std::to_string(l) + "-" + std::to_string(end) + ":" + key;
    auto it = recorded_.find(part);
    if (it == recorded_.end()) {
      if (recorded_.size() >= 64) recorded_.clear();  // bound the descriptor memory
      it = recorded_.emplace(part, RecordForward(l, end, n, rows, moe)).first;
    }
    dev_->Run(*it->second);
    if (moe) {
      dev_->Download(*hidden_, 0, hidden, hidden_bytes);
      m_.FeedForwardBlock(l, hidden, n, ws, pool);
      if (end < last) dev_->Upload(*hidden_, 0, hidden, hidden_bytes);
    }
    l = end;
  }
  if (!moe) dev_->Download(*hidden_, 0, hidden, hidden_bytes);
}

void GpuBlocks::Head(const float* hidden, int n, float* logits) {
  const ModelConfig& c = m_.config();
  // At most kHeadRows rows at a time: a prompt's logits for a large vocabulary would otherwise
  // take hundreds of MB of device memory.
  constexpr int kHeadRows = 32;
  const auto d = static_cast<size_t>(c.n_embd), vocab = static_cast<size_t>(c.n_vocab);
  EnsureActivations(std::min(n, kHeadRows));
  if (!logits_) logits_ = dev_->Alloc(static_cast<size_t>(kHeadRows) * vocab * sizeof(float));
  for (int i0 = 0; i0 < n; i0 += kHeadRows) {
    const int rows = std::min(kHeadRows, n - i0);
    dev_->Upload(*hidden_, 0, hidden + static_cast<size_t>(i0) * d, rows * d * sizeof(float));
    const std::string key = "head:" + std::to_string(rows);
    auto it = recorded_.find(key);
    if (it == recorded_.end()) {
      if (recorded_.size() >= 64) recorded_.clear();
      auto seq = dev_->Record();
      gpu::RecordRmsNorm(*seq, R(hidden_, d), R(xb_, d), *output_norm_, rows, c.n_embd, c.rms_eps);
      seq->Barrier();
      RecordMatMuls(*seq, *xb_, c.n_embd, rows, {{&output_, logits_.get()}});
      seq->Finish();
      it = recorded_.emplace(key, std::move(seq)).first;
    }
    dev_->Run(*it->second);
    dev_->Download(*logits_, 0, logits + static_cast<size_t>(i0) * vocab,
                   rows * vocab * sizeof(float));
  }
}

void GpuBlocks::RecordMatMuls(gpu::Sequence& s, const gpu::Buffer& x, int64_t cols, int n,
                              std::initializer_list<MatMulOut> outs) {
  std::vector<gpu::ActRounding> slots;
  for (const MatMulOut& o : outs) {
    const gpu::ActRounding r = gpu::ActRoundingFor(o.w->type);
    if (r == gpu::ActRounding::kNone || std::count(slots.begin(), slots.end(), r)) continue;
    if (slots.size() == kActSlots) throw Error("GPU offload: too many weight types on one input");
    gpu::RecordRoundActs(s, r, x, 0, cols, n, cols, *acts_, slots.size() * act_slot_, cols);
    slots.push_back(r);
  }
  s.Barrier();
  for (const MatMulOut& o : outs) {
    const gpu::ActRounding r = gpu::ActRoundingFor(o.w->type);
    if (r == gpu::ActRounding::kNone) {
      gpu::RecordMatMul(s, *o.w, x, 0, cols, n, *o.y, 0, o.w->rows);
    } else {
      const auto slot =
          static_cast<size_t>(std::find(slots.begin(), slots.end(), r) - slots.begin());
      gpu::RecordMatMul(s, *o.w, *acts_, slot * act_slot_, cols, n, *o.y, 0, o.w->rows);
    }
  }
  s.Barrier();
}

std::unique_ptr<gpu::Sequence> GpuBlocks::RecordForward(int first, int last, int n,
                                                        const BatchRow* rows,
                                                        bool attention_only_last) {
  const ModelConfig& c = m_.config();
  const auto d = static_cast<size_t>(c.n_embd), q_dim = static_cast<size_t>(c.q_dim()),
             kv_dim = static_cast<size_t>(c.kv_dim());
  const int64_t rows_n = n;
  auto seq = dev_->Record();
  gpu::Sequence& s = *seq;
  for (int l = first; l < last; ++l) {
    const Layer& L = layers_[static_cast<size_t>(l - first_)];
    // Attention half: hidden += post_norm(wo(attention(...))).
    gpu::RecordRmsNorm(s, R(hidden_, d), R(xb_, d), *L.attn_norm, rows_n, c.n_embd, c.rms_eps);
    s.Barrier();
    RecordMatMuls(s, *xb_, c.n_embd, n, {{&L.wq, q_.get()}, {&L.wk, k_.get()}, {&L.wv, v_.get()}});
    if (L.bq) {
      gpu::RecordAdd(s, *L.bq, 0, *q_, 0, rows_n * c.q_dim(), c.q_dim());
      gpu::RecordAdd(s, *L.bk, 0, *k_, 0, rows_n * c.kv_dim(), c.kv_dim());
      gpu::RecordAdd(s, *L.bv, 0, *v_, 0, rows_n * c.kv_dim(), c.kv_dim());
      s.Barrier();
    }
    if (L.q_norm) {
      const auto hd = static_cast<size_t>(c.head_dim);
      gpu::RecordRmsNorm(s, R(q_, hd), R(q_, hd), *L.q_norm, rows_n * c.n_head, c.head_dim,
                         c.rms_eps);
      gpu::RecordRmsNorm(s, R(k_, hd), R(k_, hd), *L.k_norm, rows_n * c.n_head_kv, c.head_dim,
                         c.rms_eps);
      s.Barrier();
    }
    const int g = rope_group_[static_cast<size_t>(l - first_)];
    if (g >= 0) {
      const auto& tab = *rope_tables_[static_cast<size_t>(g)];
      const bool neox = rope_params_[static_cast<size_t>(g)].neox;
      gpu::RecordRope(s, R(q_, q_dim), rows_n, c.n_head, c.head_dim, c.n_rot, neox, tab);
      gpu::RecordRope(s, R(k_, kv_dim), rows_n, c.n_head_kv, c.head_dim, c.n_rot, neox, tab);
      s.Barrier();
    }
    // Query scales after RoPE, as the CPU applies them (before the queries' f16 rounding).
    if (c.attn_temp_scale != 0.0f || q_scale_) {
      if (c.attn_temp_scale != 0.0f) {
        gpu::RecordScale(s, *temperature_, 0, *q_, 0, rows_n * c.q_dim(), c.q_dim());
        s.Barrier();
      }
      if (q_scale_) {
        gpu::RecordScale(s, *q_scale_, 0, *q_, 0, rows_n * c.q_dim(), rows_n * c.q_dim());
        s.Barrier();
      }
    }
    // Keys and values to each row's cache, then attention, per run of rows of one sequence.
    for (int i0 = 0; i0 < n;) {
      int i1 = i0 + 1;
      while (i1 < n && rows[i1].kv == rows[i0].kv) ++i1;
      const KvLayer& kv = rows[i0].kv[l];
      const int64_t cnt = i1 - i0;
      const auto off = static_cast<size_t>(i0);
      gpu::RecordKvStore(s, R(k_, kv_dim, off * kv_dim), cnt, c.kv_dim(), *kv.dk,
                         kv.k_type == TensorType::kF16, kv.ring, *positions_, off);
      gpu::RecordKvStore(s, R(v_, kv_dim, off * kv_dim), cnt, c.kv_dim(), *kv.dv,
                         kv.v_type == TensorType::kF16, kv.ring, *positions_, off);
      s.Barrier();
      gpu::AttentionParams a;
      a.n_head = c.n_head;
      a.n_head_kv = c.n_head_kv;
      a.head_dim = c.head_dim;
      a.kv_dim = c.kv_dim();
      a.k_f16 = kv.k_type == TensorType::kF16;
      a.v_f16 = kv.v_type == TensorType::kF16;
      a.window = c.Window(l);
      a.ring = kv.ring;
      // Queries already scaled (q_scale) meet the keys unscaled, as on the CPU.
      a.scale = c.q_scale != 0.0f ? 1.0f : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      a.softcap = c.attn_softcap;
      a.sinks = L.sinks.get();
      gpu::RecordAttention(s, R(q_, q_dim, off * q_dim), R(attn_, q_dim, off * q_dim), cnt, a,
                           *kv.dk, *kv.dv, *positions_, off);
      i0 = i1;
    }
    s.Barrier();
    RecordMatMuls(s, *attn_, c.q_dim(), n, {{&L.wo, xb_.get()}});
    if (L.bo) {
      gpu::RecordAdd(s, *L.bo, 0, *xb_, 0, rows_n * c.n_embd, c.n_embd);
      s.Barrier();
    }
    if (L.attn_post_norm) {
      gpu::RecordRmsNorm(s, R(xb_, d), R(xb_, d), *L.attn_post_norm, rows_n, c.n_embd, c.rms_eps);
      s.Barrier();
    }
    gpu::RecordAdd(s, *xb_, 0, *hidden_, 0, rows_n * c.n_embd, rows_n * c.n_embd);
    s.Barrier();
    if (attention_only_last && l + 1 == last) break;
    // Feed-forward half: hidden += post_norm(down(act(gate(x)) * up(x))).
    gpu::RecordRmsNorm(s, R(hidden_, d), R(xb_, d), *L.ffn_norm, rows_n, c.n_embd, c.rms_eps);
    s.Barrier();
    RecordMatMuls(s, *xb_, c.n_embd, n, {{&L.w_gate, gate_.get()}, {&L.w_up, up_.get()}});
    gpu::RecordGatedActivation(
        s, c.spec->ffn == FfnKind::kGeGlu ? gpu::Activation::kGeluTanh : gpu::Activation::kSilu,
        *gate_, 0, *up_, 0, rows_n * c.n_ff);
    s.Barrier();
    RecordMatMuls(s, *gate_, c.n_ff, n, {{&L.w_down, xb_.get()}});
    if (L.ffn_post_norm) {
      gpu::RecordRmsNorm(s, R(xb_, d), R(xb_, d), *L.ffn_post_norm, rows_n, c.n_embd, c.rms_eps);
      s.Barrier();
    }
    gpu::RecordAdd(s, *xb_, 0, *hidden_, 0, rows_n * c.n_embd, rows_n * c.n_embd);
    s.Barrier();
  }
  seq->Finish();
  return seq;
}

void LlamaModel::OffloadToGpu(int device, int n_layers) {
  OffloadRangeToGpu(device, std::max(0, cfg_.n_layer - std::max(0, n_layers)), cfg_.n_layer,
                    n_layers > cfg_.n_layer);
}
void LlamaModel::OffloadRangeToGpu(int device, int first, int last, bool head) {
  gpu_.reset();
  if (first >= last && !head) return;
  gpu_ = std::make_shared<GpuBlocks>(*this, device, first, last, head);
  // A head tied to the embedding table stays mapped: the CPU reads its rows for every token.
  if (head && output_.data != tok_embd_.data)
    ReleaseMapped(output_.data, output_.row_bytes * static_cast<size_t>(output_.rows));
  // The host no longer reads these blocks' matrices: Load's prefault and --mlock would only keep
  // them resident twice.
  for (int l = first; l < last; ++l) {
    const Layer& L = layers_[static_cast<size_t>(l)];
    // (A mixture-of-experts block's feed-forward stays on the CPU: its matrices are null here.)
    for (const kernels::Matrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      if (w->data) ReleaseMapped(w->data, w->row_bytes * static_cast<size_t>(w->rows));
  }
}
int LlamaModel::gpu_first() const {
  return gpu_ ? gpu_->first() : cfg_.n_layer;
}
int LlamaModel::gpu_last() const {
  return gpu_ ? gpu_->last() : cfg_.n_layer;
}
bool LlamaModel::gpu_head() const {
  return gpu_ && gpu_->head();
}
void LlamaModel::HeadGpu(const float* hidden, int n, float* logits) const {
  gpu_->Head(hidden, n, logits);
}
std::shared_ptr<gpu::Buffer> LlamaModel::AllocDeviceKv(int64_t rows, TensorType t) const {
  if (!gpu_) throw Error("no GPU layers to give a device KV cache");
  return gpu_->AllocKv(rows, t);
}
std::string LlamaModel::GpuDeviceName() const {
  if (!gpu_) return "";
  return "vulkan" + std::to_string(gpu_->device().index) + " (" + gpu_->device().name + ")";
}
std::string LlamaModel::GpuPlacement() const {
  if (!gpu_) return "";
  std::string s;
  if (gpu_first() < gpu_last())
    s = "blocks " + std::to_string(gpu_first()) + "-" + std::to_string(gpu_last() - 1);
  if (gpu_head()) s += s.empty() ? "the output head" : " and the output head";
  s += " on " + GpuDeviceName();
  if (cfg_.moe() && gpu_first() < gpu_last()) s += " (their experts on the CPU)";
  return s;
}
void LlamaModel::ForwardGpu(int first, int last, float* hidden, int n, const BatchRow* rows,
                            Workspace& ws, kernels::ThreadPool& pool) const {
  gpu_->Forward(first, last, hidden, n, rows, ws, pool);
}

}  // namespace es::model
