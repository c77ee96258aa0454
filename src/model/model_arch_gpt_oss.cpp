// gpt-oss (OpenAI gpt-oss-20b, gpt-oss-120b): a mixture of experts in every block, after
// attention with a learned sink logit per head (attn_sinks) in the softmax's denominator, Q/K/V
// and output biases, NEOX RoPE with YaRN scaling, and sliding-window layers alternating with
// global ones (layer 0 local). The router and each expert's matrices carry biases; the router
// picks the top expert_used_count logits and weighs them by the softmax over just those; experts
// use OpenAI's clamped SwiGLU. The feed-forward's input norm is named post_attention_norm.
// Details follow llama.cpp's gpt-oss (its "openai-moe").
#include "model/model_arch.h"
#include "model/model_config.h"

namespace es::model {
namespace {

// Every other layer is local unless the file says otherwise (llama.cpp's default for gpt-oss).
constexpr int kSwaPattern = 2;

void Configure(const gguf::File& f, ModelConfig& c) {
  const std::string window = c.arch + ".attention.sliding_window";
  if (!f.Has(window))
    throw Error(f.path() + ": metadata '" + window +
                "' is missing; gpt-oss's local layers need their window");
  // Local layers rotate like the global ones (same base unless rope.freq_base_swa, same YaRN).
  ReadSlidingWindow(f, c, 0, kSwaPattern, c.rope_base);
  // llama.cpp sizes heads by rope.dimension_count and scales scores by 1/sqrt of it.
  if (c.n_rot != c.head_dim)
    throw Error(f.path() + ": rope.dimension_count " + std::to_string(c.n_rot) +
                " differs from the head size " + std::to_string(c.head_dim) +
                "; gpt-oss rotates whole heads");
}

}  // namespace

const ArchSpec& GptOssArch() {
  static const ArchSpec spec = [] {
    ArchSpec s;
    s.name = "gpt-oss";
    s.about = "OpenAI gpt-oss (20b, 120b)";
    s.rope = RopeStyle::kNeox;
    s.ffn = FfnKind::kSwiGluOai;
    s.attn_sinks = true;
    s.ffn_norm = "post_attention_norm.weight";
    s.configure = Configure;
    s.globals = {{"token_embd.weight"}, {"output_norm.weight"}, {"output.weight"}};
    s.block = {{"attn_norm.weight"},
               {"attn_q.weight"},
               {"attn_k.weight"},
               {"attn_v.weight"},
               {"attn_q.bias", TensorDecl::kOptional},
               {"attn_k.bias", TensorDecl::kOptional},
               {"attn_v.bias", TensorDecl::kOptional},
               {"attn_output.weight"},
               {"attn_output.bias"},
               {"attn_sinks.weight"},
               {"post_attention_norm.weight"}};
    s.moe = {MoeSpec::kRequired, /*norm_weights=*/false, /*shared_expert=*/false,
             MoeSpec::kSoftmaxTopK, /*biases=*/true};
    s.keys = {
        // Read by Configure.
        {"attention.sliding_window", nullptr, ""},
        {"attention.sliding_window_pattern", nullptr, ""},
        {"rope.freq_base_swa", nullptr, ""},
        // llama.cpp's gpt-oss always gates by the softmax of the top-k logits (3), whatever
        // the file says; a file asking for another function is refused rather than ignored.
        {"expert_gating_func",
         [](const KeyContext& x) {
           const int64_t v = x.f.GetInt(x.key);
           return v == 0 || v == 3;
         },
         "an expert gating function other than the softmax of the top-k logits"},
    };
    return s;
  }();
  return spec;
}

}  // namespace es::model
