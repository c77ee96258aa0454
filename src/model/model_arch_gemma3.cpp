// gemma3: QK-norm and NEOX RoPE like qwen3, plus "sandwich" norms (the attention and feed-forward
// outputs are RMS-normalised before their residual add), GeGLU, token embeddings scaled by
// sqrt(n_embd), queries scaled before they meet the keys, and interleaved sliding-window (local)
// and global attention layers with their own RoPE bases. The GGUF converter already stores the
// norm weights as 1 + w, so every norm is a plain RMSNorm. Details follow llama.cpp's gemma3.
#include <cmath>

#include "model/model_arch.h"
#include "model/model_config.h"

namespace es::model {
namespace {

// Gemma 3's defaults when the file does not say (as llama.cpp's): five local layers, then a
// global one; local layers rotate with base 10000 and no scaling.
constexpr int kSwaPattern = 6;
constexpr float kLocalRopeBase = 10000.0f;

void Configure(const gguf::File& f, ModelConfig& c) {
  ReadSlidingWindow(f, c, 0, kSwaPattern, kLocalRopeBase);
  // The global layers' linear scaling was read with the common keys (model_config.cpp: "none"
  // ignores the factor, as llama.cpp); local layers are not scaled.
  c.rope_freq_scale_local = 1.0f;
  c.q_scale = GemmaQueryScale(c, 62);  // 27B: 1/sqrt(168) instead of 1/sqrt(128)
}

}  // namespace

const ArchSpec& Gemma3Arch() {
  static const ArchSpec spec = [] {
    ArchSpec s =
        GemmaLike("gemma3", "Gemma 3 (text)", {"attn_q_norm.weight", "attn_k_norm.weight"});
    s.qk_norm = true;
    s.configure = Configure;
    s.keys = {
        // Read by Configure: the window, the period of global layers (layer l is global when
        // l % n == n - 1), the local layers' RoPE base.
        {"attention.sliding_window", nullptr, ""},
        {"attention.sliding_window_pattern", nullptr, ""},
        {"rope.freq_base_swa", nullptr, ""},
        // Linear position scaling (Gemma 3 4B+: factor 8) applies to the global layers.
        {"rope.scaling.type",
         [](const KeyContext& x) {
           const std::string t = x.f.GetStringOr(x.key).value_or("");
           return t == "linear" || t == "none";
         },
         "RoPE scaling other than linear"},
        {"rope.scaling.factor", nullptr, ""},
    };
    return s;
  }();
  return spec;
}

}  // namespace es::model
