#include "model/model_config.h"

#include <cmath>
#include <limits>

#include "model/model_support.h"

namespace es::model {
namespace {

int PositiveInt(const gguf::File& f, const std::string& key, int64_t max = 1 << 24) {
  const int64_t v = f.GetInt(key);
  if (v <= 0 || v > max)
    throw Error(f.path() + ": metadata '" + key + "' is " + std::to_string(v) + ", expected 1.." +
                std::to_string(max));
  return static_cast<int>(v);
}

// A float32 setting; an f64 beyond float range has no float (converting it is undefined).
float FloatOr(const gguf::File& f, const std::string& key, double fallback) {
  const double v = f.GetFloatOr(key).value_or(fallback);
  if (std::isfinite(v) && std::fabs(v) > std::numeric_limits<float>::max())
    throw Error(f.path() + ": metadata '" + key + "' is " + std::to_string(v) +
                ", out of float32 range");
  return static_cast<float>(v);
}

// RoPE scaling every family computes the same way (llama.cpp's context parameters): the type
// (absent means linear), the factor, YaRN's band and magnitude, the file's attention factor.
// Families that scale differently (gemma3's local layers) adjust it in their configure step.
void ReadRopeScaling(const gguf::File& f, ModelConfig& c) {
  const std::string p = c.arch + ".";
  const std::string type = f.GetStringOr(p + "rope.scaling.type").value_or("linear");
  const float factor = FloatOr(f, p + "rope.scaling.factor", 0.0);
  if (!(factor >= 0) || !std::isfinite(factor))
    throw Error(f.path() + ": rope.scaling.factor must be a finite number >= 0");
  c.rope_freq_scale = factor == 0.0f ? 1.0f : 1.0f / factor;
  c.n_ctx_orig = f.Has(p + "rope.scaling.original_context_length")
                     ? PositiveInt(f, p + "rope.scaling.original_context_length", 1 << 26)
                     : c.n_ctx_train;
  c.yarn_beta_fast = FloatOr(f, p + "rope.scaling.yarn_beta_fast", 32.0);
  c.yarn_beta_slow = FloatOr(f, p + "rope.scaling.yarn_beta_slow", 1.0);
  const float log_mul = FloatOr(f, p + "rope.scaling.yarn_log_multiplier", 0.0);
  const float file_attn_factor = FloatOr(f, p + "rope.scaling.attn_factor", 1.0);
  if (!(file_attn_factor > 0) || !std::isfinite(file_attn_factor))
    throw Error(f.path() + ": rope.scaling.attn_factor must be a positive number");
  float attn_factor = 1.0f;
  if (type == "none") {
    c.rope_freq_scale = 1.0f;
  } else if (type == "yarn") {
    c.rope_ext_factor = 1.0f;
    // The magnitude YaRN's interpolation needs, relative to the one the kernel applies itself.
    const float s = 1.0f / c.rope_freq_scale;
    auto mscale = [](float scale, float m) {
      return scale <= 1.0f ? 1.0f : 0.1f * m * std::log(scale) + 1.0f;
    };
    attn_factor = log_mul != 0.0f ? mscale(s, 1.0f) / mscale(s, log_mul) : mscale(s, 1.0f);
    attn_factor *= 1.0f / (1.0f + 0.1f * std::log(s));
  } else if (type != "linear" && type != "longrope") {
    throw Error(f.path() + ": metadata '" + p + "rope.scaling.type' = \"" +
                gguf::Printable(type, 40) +
                "\" is not implemented (supported: none, linear, yarn, and LongRoPE and Llama 3 "
                "frequency factors given as tensors)");
  }
  c.rope_attn_factor = attn_factor * file_attn_factor;
  c.rope_freq_scale_local = c.rope_freq_scale;
  c.rope_freqs = f.FindTensor("rope_freqs.weight") != nullptr;
  c.longrope = f.FindTensor("rope_factors_long.weight") != nullptr;
  if (type == "longrope" && !c.longrope)
    throw Error(f.path() +
                ": rope.scaling.type is longrope but the file has no "
                "rope_factors_long/short.weight tensors");
}

// A scalar count under `key`; a per-layer array (llama.cpp reads some MoE counts either way) is
// refused, since every block here has the same shape.
int MoeCount(const gguf::File& f, const std::string& key, int64_t max) {
  const gguf::Value* v = f.Find(key);
  if (v && v->IsArray())
    throw Error(f.path() + ": metadata '" + key +
                "' is a per-layer array; edgeshard implements mixture-of-experts layers of one "
                "shape in every block");
  const int64_t n = f.GetInt(key);
  if (n < 0 || n > max)
    throw Error(f.path() + ": metadata '" + key + "' is " + std::to_string(n) + ", expected 0.." +
                std::to_string(max));
  return static_cast<int>(n);
}

// Mixture-of-experts hyperparameters (llama.cpp's names and defaults: the expert width falls back
// to feed_forward_length / expert_used_count for qwen*moe, to feed_forward_length for llama; the
// shared expert's to feed_forward_length).
void ReadMoe(const gguf::File& f, ModelConfig& c) {
  const std::string p = c.arch + ".";
  const MoeSpec& moe = c.spec->moe;
  const int n_expert = f.Has(p + "expert_count") ? MoeCount(f, p + "expert_count", 4096) : 0;
  if (n_expert == 0) {
    if (moe.use == MoeSpec::kRequired)
      throw Error(f.path() + ": metadata '" + p + "expert_count' is " +
                  (f.Has(p + "expert_count") ? "0" : "missing") + "; architecture '" + c.arch +
                  "' is a mixture of experts and needs it");
    return;
  }
  if (moe.use == MoeSpec::kNone)
    throw Error(f.path() + ": metadata '" + p + "expert_count' = " + std::to_string(n_expert) +
                " asks for mixture-of-experts layers, which edgeshard does not implement for "
                "architecture '" +
                c.arch + "' (it does for llama, qwen2moe, qwen3moe and gpt-oss)");
  if (!f.FindTensor("blk.0.ffn_gate_inp.weight"))
    throw Error(f.path() + ": metadata '" + p + "expert_count' = " + std::to_string(n_expert) +
                " asks for mixture-of-experts layers, but block 0 has no router tensor "
                "'blk.0.ffn_gate_inp.weight'");
  if (!f.Has(p + "expert_used_count"))
    throw Error(f.path() + ": metadata '" + p + "expert_used_count' is missing (how many of the " +
                std::to_string(n_expert) + " experts each token uses)");
  const int used = MoeCount(f, p + "expert_used_count", n_expert);
  if (used < 1)
    throw Error(f.path() + ": metadata '" + p + "expert_used_count' is 0, expected 1.." +
                std::to_string(n_expert));
  c.n_expert = n_expert;
  c.n_expert_used = used;
  const std::string exp_ff = p + "expert_feed_forward_length";
  c.n_ff_exp = f.Has(exp_ff) ? MoeCount(f, exp_ff, 1 << 24) : 0;
  if (c.n_ff_exp == 0) c.n_ff_exp = moe.use == MoeSpec::kRequired ? c.n_ff / used : c.n_ff;
  if (c.n_ff_exp < 1)
    throw Error(f.path() + ": the expert width (" + exp_ff + ", else feed_forward_length / " +
                "expert_used_count) is 0");
  c.expert_norm = moe.norm_weights;
  if (moe.shared_expert) {
    const std::string sh_ff = p + "expert_shared_feed_forward_length";
    c.n_ff_shexp = f.Has(sh_ff) ? MoeCount(f, sh_ff, 1 << 24) : 0;
    if (c.n_ff_shexp == 0) c.n_ff_shexp = c.n_ff;
  }
}

}  // namespace

ModelConfig ReadModelConfig(const gguf::File& f) {
  ModelConfig c;
  c.arch = f.GetString("general.architecture");
  c.spec = FindArch(c.arch);
  if (!c.spec)
    throw Error(f.path() + ": architecture '" + gguf::Printable(c.arch) +
                "' is not supported (supported: " + ArchNames() + ")");
  // Display only (logs, tables, errors, the API): escaped once here for all of them.
  c.name = gguf::Printable(f.GetStringOr("general.name").value_or(c.arch));
  const std::string p = c.arch + ".";
  c.n_layer = PositiveInt(f, p + "block_count", 4096);
  c.n_embd = PositiveInt(f, p + "embedding_length");
  c.n_head = PositiveInt(f, p + "attention.head_count", 4096);
  c.n_head_kv = f.Has(p + "attention.head_count_kv")
                    ? PositiveInt(f, p + "attention.head_count_kv", 4096)
                    : c.n_head;
  c.n_ff = PositiveInt(f, p + "feed_forward_length");
  c.n_ctx_train = PositiveInt(f, p + "context_length", 1 << 26);
  // The head size is n_embd / n_head unless attention.key_length says otherwise (qwen3).
  const bool explicit_head = f.Has(p + "attention.key_length");
  if (!explicit_head && c.n_embd % c.n_head != 0)
    throw Error(f.path() + ": embedding_length " + std::to_string(c.n_embd) +
                " is not divisible by attention.head_count " + std::to_string(c.n_head));
  if (c.n_head % c.n_head_kv != 0)
    throw Error(f.path() + ": attention.head_count " + std::to_string(c.n_head) +
                " is not a multiple of attention.head_count_kv " + std::to_string(c.n_head_kv));
  c.head_dim =
      explicit_head ? PositiveInt(f, p + "attention.key_length", 1 << 16) : c.n_embd / c.n_head;
  c.n_rot =
      f.Has(p + "rope.dimension_count") ? PositiveInt(f, p + "rope.dimension_count") : c.head_dim;
  if (c.n_rot > c.head_dim || c.n_rot % 2 != 0)
    throw Error(f.path() + ": rope.dimension_count " + std::to_string(c.n_rot) +
                " must be even and at most the head size " + std::to_string(c.head_dim));
  c.rope_base = FloatOr(f, p + "rope.freq_base", 10000.0);
  c.rms_eps = FloatOr(f, p + "attention.layer_norm_rms_epsilon", 1e-5);
  if (!(c.rope_base > 0)) throw Error(f.path() + ": rope.freq_base must be positive");
  if (!(c.rms_eps > 0))
    throw Error(f.path() + ": attention.layer_norm_rms_epsilon must be positive");
  c.rope_neox = c.spec->rope == RopeStyle::kNeox;
  ReadRopeScaling(f, c);
  c.fused_qkv = c.spec->FindBlock("attn_qkv.weight") && f.FindTensor("blk.0.attn_qkv.weight");
  c.fused_gate_up = c.spec->fused_gate_up;
  // Biases are on when the family requires them, or allows them and block 0 has them.
  const TensorDecl* bias = c.spec->FindBlock("attn_q.bias");
  c.qkv_bias =
      bias && (bias->need == TensorDecl::kRequired || f.FindTensor("blk.0.attn_q.bias") != nullptr);
  const TensorDecl* out_bias = c.spec->FindBlock("attn_output.bias");
  c.out_bias = out_bias && (out_bias->need == TensorDecl::kRequired ||
                            f.FindTensor("blk.0.attn_output.bias") != nullptr);
  c.attn_sinks = c.spec->attn_sinks;
  c.qk_norm = c.spec->qk_norm;
  const auto& embd = f.GetTensor("token_embd.weight");
  if (embd.dims.size() != 2 || embd.dims[0] != c.n_embd || embd.dims[1] > INT32_MAX)
    throw Error(f.path() + ": tensor 'token_embd.weight' has shape " + embd.ShapeString() +
                ", expected [" + std::to_string(c.n_embd) + ", n_vocab]");
  c.n_vocab = static_cast<int>(embd.dims[1]);
  c.tied_output = f.FindTensor("output.weight") == nullptr;
  c.post_norms = c.spec->post_norms;
  if (c.spec->scale_embeddings) c.embd_scale = std::sqrt(static_cast<float>(c.n_embd));
  ReadMoe(f, c);
  if (c.spec->configure) c.spec->configure(f, c);
  // Soft-capping applies to raw scores; the kernels fold the 1/sqrt(head) scale into them, so
  // a family with a cap scales its queries instead (as gemma2 does).
  if (c.attn_softcap != 0.0f && c.q_scale == 0.0f)
    throw Error(f.path() + ": attention soft-capping without query scaling is not implemented");
  RefuseUncomputed(f, c);
  return c;
}

}  // namespace es::model
