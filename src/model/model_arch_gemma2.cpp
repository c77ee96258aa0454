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
  ReadSlidingWindow(f, c, kWindow, kSwaPattern, c.rope_base);
  c.rope_freq_scale_local = c.rope_freq_scale;
  c.attn_softcap = static_cast<float>(f.GetFloatOr(p + "attn_logit_softcapping").value_or(0.0));
  c.final_softcap = static_cast<float>(f.GetFloatOr(p + "final_logit_softcapping").value_or(0.0));
  if (c.attn_softcap < 0 || c.final_softcap < 0 || !std::isfinite(c.attn_softcap) ||
      !std::isfinite(c.final_softcap))
    throw Error(f.path() + ": logit soft-capping values must be finite and >= 0");
  c.q_scale = GemmaQueryScale(c, 46);  // 27B: 1/sqrt(144) instead of 1/sqrt(128)
}

}  // namespace

const ArchSpec& Gemma2Arch() {
  static const ArchSpec spec = [] {
    ArchSpec s = GemmaLike("gemma2", "Gemma 2");
    s.globals = {{"token_embd.weight"}, {"output_norm.weight"}};  // the head is tied
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
