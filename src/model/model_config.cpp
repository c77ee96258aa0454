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
  // Biases are on when the family requires them, or allows them and block 0 has them.
  const TensorDecl* bias = c.spec->FindBlock("attn_q.bias");
  c.qkv_bias =
      bias && (bias->need == TensorDecl::kRequired || f.FindTensor("blk.0.attn_q.bias") != nullptr);
  c.qk_norm = c.spec->qk_norm;
  const auto& embd = f.GetTensor("token_embd.weight");
  if (embd.dims.size() != 2 || embd.dims[0] != c.n_embd || embd.dims[1] > INT32_MAX)
    throw Error(f.path() + ": tensor 'token_embd.weight' has shape " + embd.ShapeString() +
                ", expected [" + std::to_string(c.n_embd) + ", n_vocab]");
  c.n_vocab = static_cast<int>(embd.dims[1]);
  c.tied_output = f.FindTensor("output.weight") == nullptr;
  c.post_norms = c.spec->post_norms;
  if (c.spec->scale_embeddings) c.embd_scale = std::sqrt(static_cast<float>(c.n_embd));
  if (c.spec->configure) c.spec->configure(f, c);
  RefuseUncomputed(f, c);
  return c;
}

}  // namespace es::model
