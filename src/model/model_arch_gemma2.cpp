// gemma2: Gemma 3's ancestor without QK-norm: sandwich norms, GeGLU, embeddings scaled by
// sqrt(n_embd), queries scaled before they meet the keys, alternating local (sliding-window) and
// global layers that share one RoPE base and scaling, and soft-capped attention scores and
// output logits (cap * tanh(x / cap)). The head is always the embedding table. Details follow
// llama.cpp's gemma2.
#include <cmath>

#include "model/model_arch.h"
#include "model/model_config.h"

namespace es::model {
namespace {

// Gemma 2's defaults when the file does not say: window 4096, every other layer global.
constexpr int kWindow = 4096;
constexpr int kSwaPattern = 2;

void Configure(const gguf::File& f, ModelConfig& c) {
  const std::string p = c.arch + ".";
  ReadSlidingWindow(f, c, kWindow, kSwaPattern);
  c.rope_base_local =
      static_cast<float>(f.GetFloatOr(p + "rope.freq_base_swa").value_or(c.rope_base));
  if (!(c.rope_base_local > 0)) throw Error(f.path() + ": rope.freq_base_swa must be positive");
  c.rope_freq_scale_local = c.rope_freq_scale;
  c.attn_softcap = static_cast<float>(f.GetFloatOr(p + "attn_logit_softcapping").value_or(0.0));
  c.final_softcap = static_cast<float>(f.GetFloatOr(p + "final_logit_softcapping").value_or(0.0));
  if (c.attn_softcap < 0 || c.final_softcap < 0 || !std::isfinite(c.attn_softcap) ||
      !std::isfinite(c.final_softcap))
    throw Error(f.path() + ": logit soft-capping values must be finite and >= 0");
  // Gemma 2 27B scales queries by 1/sqrt(n_embd / n_head) (144) instead of the head size (128);
  // llama.cpp recognises it by its 46 layers.
  const float d =
      c.n_layer == 46 ? static_cast<float>(c.n_embd / c.n_head) : static_cast<float>(c.head_dim);
  c.q_scale = 1.0f / std::sqrt(d);
}

}  // namespace

const ArchSpec& Gemma2Arch() {
  static const ArchSpec spec = [] {
    ArchSpec s = LlamaLike("gemma2", "Gemma 2", RopeStyle::kNeox,
                           {"post_attention_norm.weight", "post_ffw_norm.weight"});
    s.globals = {{"token_embd.weight"}, {"output_norm.weight"}};  // the head is tied
    s.ffn = FfnKind::kGeGlu;
    s.post_norms = true;
    s.scale_embeddings = true;
    s.configure = Configure;
    s.keys = {
        {"attention.sliding_window", nullptr, ""},
        {"attention.sliding_window_pattern", nullptr, ""},
        {"rope.freq_base_swa", nullptr, ""},
        {"attn_logit_softcapping", nullptr, ""},
        {"final_logit_softcapping", nullptr, ""},
    };
    return s;
  }();
  return spec;
}

}  // namespace es::model
