// The mixture-of-experts feed-forward block, shared by every family with experts (llama's Mixtral
// files, qwen2moe, qwen3moe, gpt-oss). Routing follows llama.cpp's build_moe_ffn for softmax
// gating: probabilities = softmax(router . x) over all experts; the expert_used_count largest, in
// the order ggml's argsort puts them (std::sort of the indices, descending); their probabilities as
// weights, rescaled to sum 1 where the family asks (sum in double, clamped below at 2^-14 as
// ggml does); the chosen experts' SwiGLU outputs times their weights, added in choice order.
// gpt-oss's top-k gating ranks the (biased) logits instead and weighs the chosen ones by the
// softmax over just them; its experts add biases after each matrix and use the clamped SwiGLU.
//
// Sparse compute: an expert's matrices are one contiguous slice of each 3-D tensor, multiplied
// with only the rows routed to it, so a decode step reads expert_used_count experts per block
// and a prompt batch reads each chosen expert once for all its rows.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "model/model_llama.h"

namespace es::model {
namespace {

// Expert `e` of a 3-D tensor [cols, rows, n_expert] as a matrix of its own.
kernels::Matrix Slice(const kernels::Matrix& all, int64_t rows, int e) {
  kernels::Matrix m = all;
  m.rows = rows;
  m.data = static_cast<const uint8_t*>(all.data) + static_cast<size_t>(e) * rows * all.row_bytes;
  return m;
}

// A [cols, rows, n_expert] tensor of the file, checked, as one matrix of rows * n_expert rows.
kernels::Matrix GetExperts(const gguf::File& f, const std::string& name, int64_t cols, int64_t rows,
                           int64_t n_expert) {
  const auto& t = f.GetTensor(name);
  if (t.dims.size() != 3 || t.dims[0] != cols || t.dims[1] != rows || t.dims[2] != n_expert)
    throw Error(f.path() + ": tensor '" + name + "' has shape " + t.ShapeString() + ", expected [" +
                std::to_string(cols) + ", " + std::to_string(rows) + ", " +
                std::to_string(n_expert) + "] (columns, rows per expert, experts)");
  CheckWeightType(f, t);
  return kernels::Matrix{t.data, t.type, rows * n_expert, cols, RowBytes(t.type, cols)};
}

// Per-expert biases [rows, n_expert] of the file, checked (F32, as llama.cpp's converter writes
// them).
const float* GetExpertBiases(const gguf::File& f, const std::string& name, int64_t rows,
                             int64_t n_expert) {
  const auto& t = f.GetTensor(name);
  if (t.dims.size() != 2 || t.dims[0] != rows || t.dims[1] != n_expert)
    throw Error(f.path() + ": tensor '" + name + "' has shape " + t.ShapeString() + ", expected [" +
                std::to_string(rows) + ", " + std::to_string(n_expert) + "] (rows, experts)");
  if (t.type != TensorType::kF32)
    throw Error(f.path() + ": tensor '" + name + "' has type " + TypeName(t.type) +
                ", expected F32");
  return reinterpret_cast<const float*>(t.data);
}

// OpenAI's clamped SwiGLU with its constants, in ggml's order of float operations.
void SwiGluOai(float* gate, const float* up, int64_t n) {
  constexpr float kAlpha = 1.702f, kLimit = 7.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float g = std::min(gate[i], kLimit);
    const float u = std::clamp(up[i], -kLimit, kLimit);
    gate[i] = g / (1.0f + std::exp(kAlpha * (-g))) * (u + 1.0f);
  }
}

// Adds row `e` of a [n_expert][n] bias table to each of `rows` rows of n values.
void AddBias(float* x, int rows, const float* bias, int e, int64_t n) {
  for (int r = 0; r < rows; ++r)
    kernels::Add(x + static_cast<size_t>(r) * n, bias + static_cast<size_t>(e) * n, n);
}

}  // namespace

void GatedActivation(FfnKind kind, float* gate, const float* up, int64_t n) {
  switch (kind) {
    case FfnKind::kSwiGlu:
      kernels::SiluMul(gate, up, n);
      return;
    case FfnKind::kGeGlu:
      kernels::GeluMul(gate, up, n);
      return;
    case FfnKind::kSwiGluOai:
      SwiGluOai(gate, up, n);
      return;
  }
}

void LlamaModel::LoadExperts(int l, Layer& L) {
  const ModelConfig& c = cfg_;
  const gguf::File& f = *file_;
  const std::string p = "blk." + std::to_string(l) + ".";
  const int64_t d = c.n_embd, ff = c.n_ff_exp, ne = c.n_expert;
  L.moe.router = GetMatrix(f, p + "ffn_gate_inp.weight", d, ne);
  const kernels::Matrix gate = GetExperts(f, p + "ffn_gate_exps.weight", d, ff, ne);
  const kernels::Matrix up = GetExperts(f, p + "ffn_up_exps.weight", d, ff, ne);
  const kernels::Matrix down = GetExperts(f, p + "ffn_down_exps.weight", ff, d, ne);
  for (int e = 0; e < c.n_expert; ++e) {
    L.moe.gate.push_back(Slice(gate, ff, e));
    L.moe.up.push_back(Slice(up, ff, e));
    L.moe.down.push_back(Slice(down, d, e));
  }
  if (c.spec->moe.biases) {
    L.moe.router_b = KeepVector(GetVector(f, p + "ffn_gate_inp.bias", ne), ne);
    L.moe.gate_b = KeepVector(GetExpertBiases(f, p + "ffn_gate_exps.bias", ff, ne), ff * ne);
    L.moe.up_b = KeepVector(GetExpertBiases(f, p + "ffn_up_exps.bias", ff, ne), ff * ne);
    L.moe.down_b = KeepVector(GetExpertBiases(f, p + "ffn_down_exps.bias", d, ne), d * ne);
  }
  if (c.n_ff_shexp > 0) {
    const int64_t sf = c.n_ff_shexp;
    L.moe.sh_router = KeepVector(GetVector(f, p + "ffn_gate_inp_shexp.weight", d), d);
    L.moe.sh_gate = GetMatrix(f, p + "ffn_gate_shexp.weight", d, sf);
    L.moe.sh_up = GetMatrix(f, p + "ffn_up_shexp.weight", d, sf);
    L.moe.sh_down = GetMatrix(f, p + "ffn_down_shexp.weight", sf, d);
  }
}

uint64_t LlamaModel::ExpertBytes(int layer) const {
  if (!cfg_.moe()) return 0;
  const Experts& x = layers_[static_cast<size_t>(layer)].moe;
  auto bytes = [](const kernels::Matrix& m) { return static_cast<uint64_t>(m.rows) * m.row_bytes; };
  return bytes(x.gate[0]) + bytes(x.up[0]) + bytes(x.down[0]);
}

uint64_t LlamaModel::ExpertTensorBytes() const {
  uint64_t n = 0;
  if (cfg_.moe())
    for (const auto& t : file_->tensors())
      if (t.name.find("_exps.") != std::string::npos) n += t.n_bytes;
  return n;
}

uint64_t LlamaModel::ExpertBytesPerToken() const {
  uint64_t n = 0;
  for (int l = 0; l < cfg_.n_layer; ++l) n += ExpertBytes(l) * uint64_t(cfg_.n_expert_used);
  return n;
}

void LlamaModel::ExpertsBlock(int l, float* hidden, const float* x, int m, Workspace& ws,
                              kernels::ThreadPool& pool) const {
  const ModelConfig& c = cfg_;
  const Experts& X = layers_[static_cast<size_t>(l)].moe;
  const int d = c.n_embd, ne = c.n_expert, k = c.n_expert_used, ff = c.n_ff_exp;

  // Routing, row by row.
  float* probs = ws.moe_probs.data();
  kernels::MatMul(X.router, x, d, m, probs, ne, pool, ws.scratch);
  const bool top_k_softmax = c.spec->moe.gating == MoeSpec::kSoftmaxTopK;
  std::vector<int32_t>& order = ws.moe_order;  // ne entries, sized with the workspace
  for (int i = 0; i < m; ++i) {
    float* p = probs + static_cast<size_t>(i) * ne;
    if (X.router_b) kernels::Add(p, X.router_b, ne);
    // Softmax gating ranks probabilities, top-k gating the logits (the same order).
    if (!top_k_softmax) kernels::Softmax(p, ne);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [p](int32_t a, int32_t b) { return p[a] > p[b]; });
    if (expert_reads_ && k < ne) {
      // The margin in probabilities over all experts either way, so that one bound fits all.
      std::vector<float> all(p, p + ne);
      if (top_k_softmax) kernels::Softmax(all.data(), ne);
      auto& margins = expert_reads_->margins;
      if (margins.size() < static_cast<size_t>(c.n_layer)) margins.resize(c.n_layer);
      margins[static_cast<size_t>(l)].push_back(all[order[static_cast<size_t>(k - 1)]] -
                                                all[order[static_cast<size_t>(k)]]);
    }
    int32_t* choice = ws.moe_choice.data() + static_cast<size_t>(i) * k;
    float* w = ws.moe_weights.data() + static_cast<size_t>(i) * k;
    double sum = 0.0;
    for (int j = 0; j < k; ++j) {
      choice[j] = order[static_cast<size_t>(j)];
      w[j] = p[choice[j]];
      sum += static_cast<double>(w[j]);
    }
    if (top_k_softmax) kernels::Softmax(w, k);
    if (c.expert_norm) {
      const float s = std::max(static_cast<float>(sum), 6.103515625e-5f);
      for (int j = 0; j < k; ++j) w[j] /= s;
    }
  }

  // Each expert once, with the rows that chose it gathered; its weighted output goes to the
  // (row, choice) slot so that the sum below adds the choices in llama.cpp's order.
  float* out = ws.moe_out.data();
  for (int e = 0; e < ne; ++e) {
    int cnt = 0;
    for (int s = 0; s < m * k; ++s)
      if (ws.moe_choice[static_cast<size_t>(s)] == e) ws.moe_rows[static_cast<size_t>(cnt++)] = s;
    if (cnt == 0) continue;
    for (int r = 0; r < cnt; ++r)
      std::memcpy(ws.moe_x.data() + static_cast<size_t>(r) * d,
                  x + static_cast<size_t>(ws.moe_rows[static_cast<size_t>(r)] / k) * d,
                  sizeof(float) * static_cast<size_t>(d));
    kernels::MatMul(X.gate[static_cast<size_t>(e)], ws.moe_x.data(), d, cnt, ws.gate.data(), ff,
                    pool, ws.scratch);
    kernels::MatMul(X.up[static_cast<size_t>(e)], ws.moe_x.data(), d, cnt, ws.up.data(), ff, pool,
                    ws.scratch);
    if (X.gate_b) {
      AddBias(ws.gate.data(), cnt, X.gate_b, e, ff);
      AddBias(ws.up.data(), cnt, X.up_b, e, ff);
    }
    GatedActivation(c.spec->ffn, ws.gate.data(), ws.up.data(), static_cast<int64_t>(cnt) * ff);
    kernels::MatMul(X.down[static_cast<size_t>(e)], ws.gate.data(), ff, cnt, ws.up.data(), d, pool,
                    ws.scratch);
    if (X.down_b) AddBias(ws.up.data(), cnt, X.down_b, e, d);
    for (int r = 0; r < cnt; ++r) {
      const int s = ws.moe_rows[static_cast<size_t>(r)];
      const float w = ws.moe_weights[static_cast<size_t>(s)];
      const float* y = ws.up.data() + static_cast<size_t>(r) * d;
      float* o = out + static_cast<size_t>(s) * d;
      for (int j = 0; j < d; ++j) o[j] = y[j] * w;
    }
    if (expert_reads_) {
      expert_reads_->bytes += ExpertBytes(l);
      expert_reads_->experts.emplace_back(l, e);
    }
  }
  for (int i = 0; i < m; ++i) {
    float* o = out + static_cast<size_t>(i) * k * d;
    for (int j = 1; j < k; ++j) kernels::Add(o, o + static_cast<size_t>(j) * d, d);
  }

  if (X.sh_router) {
    // Shared expert: a dense SwiGLU for every row, scaled by sigmoid(g), g = sh_router . x,
    // computed as llama.cpp does (silu(g) / g).
    const int sf = c.n_ff_shexp;
    kernels::MatMul(X.sh_gate, x, d, m, ws.gate.data(), sf, pool, ws.scratch);
    kernels::MatMul(X.sh_up, x, d, m, ws.up.data(), sf, pool, ws.scratch);
    kernels::SiluMul(ws.gate.data(), ws.up.data(), static_cast<int64_t>(m) * sf);
    kernels::MatMul(X.sh_down, ws.gate.data(), sf, m, ws.up.data(), d, pool, ws.scratch);
    const kernels::Matrix router{X.sh_router, TensorType::kF32, 1, d, sizeof(float) * d, 0};
    float* g = ws.moe_x.data();  // free again: one value per row
    kernels::MatMul(router, x, d, m, g, 1, pool, ws.scratch);
    for (int i = 0; i < m; ++i) {
      const float gate = g[i] / (1.0f + std::exp(-g[i])) / g[i];
      const float* y = ws.up.data() + static_cast<size_t>(i) * d;
      float* o = out + static_cast<size_t>(i) * k * d;
      for (int j = 0; j < d; ++j) o[j] += y[j] * gate;
    }
  }
  for (int i = 0; i < m; ++i)
    kernels::Add(hidden + static_cast<size_t>(i) * d, out + static_cast<size_t>(i) * k * d, d);
}

}  // namespace es::model
