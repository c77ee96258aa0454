// phi3 (Phi-3, Phi-3.5-mini, Phi-4-mini): llama's block with NEOX RoPE, often partial (Phi-4-mini
// rotates 96 of 128 dims), Q/K/V fused into one attn_qkv projection (or separate), gate and up
// fused into one ffn_up of 2 * n_ff rows, and LongRoPE: per-frequency divisors
// rope_factors_short/long (short up to rope.scaling.original_context_length, long past it) with
// rope.scaling.attn_factor on cos and sin. Queries are scaled by 1/sqrt(head size) before they
// meet the keys, as llama.cpp's phi3 does.
//
// A sliding window shorter than the context (Phi-3-mini-4k: 2047, on every layer) is computed;
// llama.cpp disables it, so the two differ past the window.
#include <cmath>

#include "model/model_arch.h"
#include "model/model_config.h"

namespace es::model {
namespace {

void Configure(const gguf::File& f, ModelConfig& c) {
  const bool fused = f.FindTensor("blk.0.attn_qkv.weight") != nullptr;
  if (fused && f.FindTensor("blk.0.attn_q.weight"))
    throw Error(f.path() +
                ": block 0 has both a fused attn_qkv.weight and attn_q.weight; "
                "expected one or the other");
  if (c.longrope != (f.FindTensor("rope_factors_short.weight") != nullptr))
    throw Error(f.path() +
                ": LongRoPE needs both rope_factors_short.weight and "
                "rope_factors_long.weight");
  const std::string key = c.arch + ".attention.sliding_window";
  const int64_t window = f.Has(key) ? f.GetInt(key) : 0;
  if (window < 0) throw Error(f.path() + ": attention.sliding_window must not be negative");
  if (window > 0 && window < c.n_ctx_train) {
    c.sliding_window = static_cast<int>(window);
    c.swa_pattern = 0;  // every layer
    c.rope_base_local = c.rope_base;
    c.rope_freq_scale_local = c.rope_freq_scale;
  }
  c.q_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
}

}  // namespace

const ArchSpec& Phi3Arch() {
  static const ArchSpec spec = [] {
    ArchSpec s;
    s.name = "phi3";
    s.about = "Phi-3, Phi-3.5-mini, Phi-4-mini";
    s.rope = RopeStyle::kNeox;
    s.ffn = FfnKind::kSwiGlu;
    s.fused_gate_up = true;
    s.configure = Configure;
    s.globals = {{"token_embd.weight"},
                 {"output_norm.weight"},
                 {"output.weight", TensorDecl::kOptional},
                 {"rope_factors_short.weight", TensorDecl::kOptional},
                 {"rope_factors_long.weight", TensorDecl::kOptional}};
    s.block = {{"attn_norm.weight"},
               {"attn_qkv.weight", TensorDecl::kOptional},
               {"attn_q.weight", TensorDecl::kOptional},
               {"attn_k.weight", TensorDecl::kOptional},
               {"attn_v.weight", TensorDecl::kOptional},
               {"attn_output.weight"},
               {"ffn_norm.weight"},
               {"ffn_up.weight"},
               {"ffn_down.weight"}};
    s.keys = {{"attention.sliding_window", nullptr, ""}};
    return s;
  }();
  return spec;
}

}  // namespace es::model
