#include "model/model_support.h"

#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <string_view>

namespace es::model {
namespace {

using gguf::ValueType;

bool IsFloat(ValueType t) {
  return t == ValueType::kF32 || t == ValueType::kF64;
}
bool IsInt(ValueType t) {
  return t == ValueType::kU8 || t == ValueType::kI8 || t == ValueType::kU16 ||
         t == ValueType::kI16 || t == ValueType::kU32 || t == ValueType::kI32 ||
         t == ValueType::kU64 || t == ValueType::kI64;
}

// The value as the error shows it.
std::string Shown(const gguf::File& f, const std::string& key) {
  const gguf::Value* v = f.Find(key);
  if (!v) return "";
  if (v->IsArray()) return "an array";
  if (v->type == ValueType::kString) {
    return "\"" + gguf::Printable(f.GetString(key), 40) + "\"";
  }
  if (v->type == ValueType::kBool) return f.GetBool(key) ? "true" : "false";
  if (IsFloat(v->type)) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", f.GetFloat(key));
    return buf;
  }
  if (IsInt(v->type)) return std::to_string(f.GetInt(key));
  return gguf::ValueTypeName(v->type);
}

// A number the key holds, or NaN when it is not a scalar number.
double Number(const gguf::File& f, const std::string& key) {
  const gguf::Value* v = f.Find(key);
  if (!v || v->IsArray()) return NAN;
  if (IsFloat(v->type)) return f.GetFloat(key);
  if (IsInt(v->type)) return static_cast<double>(f.GetInt(key));
  if (v->type == ValueType::kBool) return f.GetBool(key) ? 1 : 0;
  return NAN;
}

using Ctx = KeyContext;

bool Is(const Ctx& x, std::initializer_list<double> ok) {
  const double v = Number(x.f, x.key);
  for (double o : ok)
    if (v == o) return true;
  return false;
}

// The rules every family shares; a family's own (ArchSpec::keys) are looked up first.
const std::vector<KeyRule>& Rules() {
  static const std::vector<KeyRule> rules = {
      // Hyperparameters edgeshard reads, and keys that only describe the file.
      {"context_length", nullptr, ""},
      {"embedding_length", nullptr, ""},
      {"block_count", nullptr, ""},
      {"feed_forward_length", nullptr, ""},
      {"vocab_size", nullptr, ""},
      {"attention.head_count", nullptr, ""},
      {"attention.head_count_kv", nullptr, ""},
      {"attention.layer_norm_rms_epsilon", nullptr, ""},
      {"attention.key_length", nullptr, ""},
      {"rope.dimension_count", nullptr, ""},
      {"rope.freq_base", nullptr, ""},
      {"tensor_data_layout", nullptr, ""},
      {"rope.scaling.original_context_length", nullptr, ""},
      {"rope.scaling.finetuned", nullptr, ""},
      // Keys whose neutral value is the math edgeshard does.
      {"attention.value_length", [](const Ctx& x) { return Number(x.f, x.key) == x.c.head_dim; },
       "a value head size different from the key head size"},
      // RoPE scaling computed for every family (model_config.cpp): linear and YaRN by their
      // factor, band and magnitude; Llama 3 and LongRoPE factors come as tensors. An unknown
      // type is refused when the config is read.
      {"rope.scaling.type", nullptr, ""},
      {"rope.scaling.factor", nullptr, ""},
      {"rope.scaling.attn_factor", nullptr, ""},
      {"rope.scaling.yarn_beta_fast", nullptr, ""},
      {"rope.scaling.yarn_beta_slow", nullptr, ""},
      {"rope.scaling.yarn_log_multiplier", nullptr, ""},
      {"rope.scaling.*", [](const Ctx&) { return false; }, "YaRN/LongRoPE scaling parameters"},
      {"rope.dimension_sections", [](const Ctx&) { return false; }, "multi-section (M-)RoPE"},
      {"attention.sliding_window",
       [](const Ctx& x) {
         const double w = Number(x.f, x.key);
         return w == 0 || w >= x.c.n_ctx_train;
       },
       "sliding-window attention (each position sees only the last window of keys)"},
      {"attention.sliding_window_pattern", [](const Ctx&) { return false; },
       "alternating sliding-window and global attention layers"},
      {"attn_logit_softcapping", [](const Ctx& x) { return Is(x, {0}); },
       "attention logit soft-capping"},
      {"final_logit_softcapping", [](const Ctx& x) { return Is(x, {0}); },
       "final logit soft-capping"},
      {"attention.scale",
       [](const Ctx& x) {
         const double s = Number(x.f, x.key);
         return s == 0 || std::fabs(s * std::sqrt(x.c.head_dim) - 1) < 1e-6;
       },
       "an attention scale other than 1/sqrt(head size)"},
      {"embedding_scale",
       [](const Ctx& x) {
         return Is(x, {0, 1});
       },
       "scaled embeddings"},
      {"residual_scale",
       [](const Ctx& x) {
         return Is(x, {0, 1});
       },
       "scaled residuals"},
      {"logit_scale",
       [](const Ctx& x) {
         return Is(x, {0, 1});
       },
       "scaled output logits"},
      {"attention.clamp_kqv", [](const Ctx& x) { return Is(x, {0}); }, "clamped Q/K/V"},
      {"attention.causal", [](const Ctx& x) { return Is(x, {1}); }, "non-causal attention"},
      {"use_parallel_residual", [](const Ctx& x) { return Is(x, {0}); }, "parallel residuals"},
      {"attention.layer_norm_epsilon", [](const Ctx&) { return false; },
       "LayerNorm (mean-centred, with bias) instead of RMSNorm"},
      // Mixture of experts: the counts and widths are read (model_config.cpp refuses experts
      // for families without them); the rest must ask for the routing the family computes.
      {"expert_count", nullptr, ""},
      {"expert_used_count", [](const Ctx& x) { return x.c.moe() || Is(x, {0}); },
       "mixture-of-experts layers (without expert_count)"},
      {"expert_feed_forward_length", [](const Ctx& x) { return x.c.moe() || Is(x, {0}); },
       "mixture-of-experts layers (without expert_count)"},
      {"expert_shared_feed_forward_length",
       [](const Ctx& x) { return x.c.n_ff_shexp > 0 || Is(x, {0}); },
       "a shared expert (this family has none)"},
      {"expert_shared_count",
       [](const Ctx& x) { return Is(x, {0}) || (x.c.n_ff_shexp > 0 && Is(x, {1})); },
       "this number of shared experts"},
      {"expert_gating_func",
       [](const Ctx& x) {
         return Is(x, {0, 1});
       },
       "an expert gating function other than softmax (sigmoid, softmax of the top-k, "
       "sqrt-softplus)"},
      {"expert_weights_norm", [](const Ctx& x) { return Is(x, {x.c.expert_norm ? 1.0 : 0.0}); },
       "expert weights normalised differently from what this family does"},
      {"expert_weights_scale",
       [](const Ctx& x) {
         return Is(x, {0, 1});
       },
       "scaled expert weights"},
      {"expert_group_count",
       [](const Ctx& x) {
         return Is(x, {0, 1});
       },
       "grouped expert selection"},
      {"expert_group_used_count", [](const Ctx& x) { return Is(x, {0}); },
       "grouped expert selection"},
      {"expert_*", [](const Ctx&) { return false; }, "mixture-of-experts parameters"},
      {"attention.q_lora_rank", [](const Ctx&) { return false; }, "low-rank (MLA) attention"},
      {"attention.kv_lora_rank", [](const Ctx&) { return false; }, "low-rank (MLA) attention"},
      {"ssm.*", [](const Ctx&) { return false; }, "state-space (Mamba) layers"},
  };
  return rules;
}

const KeyRule* FindRule(const std::vector<KeyRule>& rules, std::string_view suffix) {
  for (const KeyRule& r : rules) {
    if (!r.suffix.empty() && r.suffix.back() == '*') {
      if (suffix.substr(0, r.suffix.size() - 1) == r.suffix.substr(0, r.suffix.size() - 1))
        return &r;
    } else if (suffix == r.suffix) {
      return &r;
    }
  }
  return nullptr;
}

// What an unused tensor is for, when its name says so.
std::string TensorPurpose(std::string_view name) {
  auto has = [&](std::string_view s) { return name.find(s) != std::string_view::npos; };
  if (has("rope_freqs") || has("rope_factors"))
    return "RoPE frequency factors (Llama 3 / LongRoPE)";
  if (has("attn_q_norm") || has("attn_k_norm")) return "QK-norm (RMSNorm of queries and keys)";
  if (has("_exps") || has("ffn_gate_inp") || has("_shexp")) return "mixture-of-experts layers";
  if (has("post_attention_norm") || has("post_ffw_norm") || has("post_norm"))
    return "post-norms after attention/FFN";
  if (has(".bias")) return "a bias edgeshard does not add in this architecture";
  if (has("attn_qkv")) return "a fused Q/K/V projection";
  if (has("attn_sinks")) return "attention sinks";
  return "";
}

}  // namespace

void RefuseUncomputed(const gguf::File& f, const ModelConfig& c) {
  const std::string prefix = c.arch + ".";
  for (const std::string& key : f.metadata_keys()) {
    if (key.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string_view suffix = std::string_view(key).substr(prefix.size());
    const KeyRule* r = FindRule(c.spec->keys, suffix);
    if (!r) r = FindRule(Rules(), suffix);
    if (!r)
      throw Error(f.path() + ": metadata '" + gguf::Printable(key) + "' (" + Shown(f, key) +
                  ") is unknown to edgeshard, so it may change the arithmetic; the file is "
                  "refused rather than run with the wrong math (remove the key if it is only "
                  "informational)");
    if (r->neutral && !r->neutral(Ctx{f, c, key}))
      throw Error(f.path() + ": metadata '" + gguf::Printable(key) + "' = " + Shown(f, key) +
                  " asks for " + r->what +
                  ", which edgeshard does not implement for architecture '" + c.arch + "'");
  }

  // The tensors the family declares; an optional block tensor counts when block 0 has it, and is
  // then required in every block. A missing tensor is named before an extra one is refused: a
  // renamed tensor is both, and "missing" is the better clue.
  std::set<std::string, std::less<>> used;
  for (const TensorDecl& d : c.spec->globals) {
    used.insert(std::string(d.name));
    if (d.need == TensorDecl::kRequired) f.GetTensor(d.name);  // throws naming it if absent
  }
  for (const TensorDecl& d : c.spec->BlockTensors(c.moe())) {
    const std::string name(d.name);
    if (d.need == TensorDecl::kOptional && !f.FindTensor("blk.0." + name)) continue;
    for (int l = 0; l < c.n_layer; ++l) {
      const std::string full = "blk." + std::to_string(l) + "." + name;
      f.GetTensor(full);
      used.insert(full);
    }
  }
  for (const auto& t : f.tensors()) {
    if (used.count(t.name)) continue;
    const std::string purpose = TensorPurpose(t.name);
    throw Error(f.path() + ": tensor '" + gguf::Printable(t.name) +
                "' is not used by architecture '" + c.arch + "' as edgeshard computes it" +
                (purpose.empty() ? "" : " (" + purpose + ")") +
                "; the file asks for math edgeshard does not implement, so it is refused rather "
                "than run wrong");
  }
}

}  // namespace es::model
