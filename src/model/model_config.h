// Hyperparameters of a model, read from GGUF metadata; what its family computes comes from
// its ArchSpec (model_arch.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "gguf/gguf_file.h"
#include "model/model_arch.h"

namespace es::model {

struct ModelConfig {
  std::string arch;  // general.architecture, one of Architectures()
  const ArchSpec* spec = nullptr;
  std::string name;
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_vocab = 0;
  int n_ctx_train = 0;
  int n_rot = 0;  // rotated dims per head
  float rope_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool rope_neox = false;    // rotate (i, i + n_rot/2) pairs (qwen2, qwen3)
  bool qkv_bias = false;     // Q/K/V biases (qwen2; llama files that carry them)
  bool out_bias = false;     // attention output bias, attn_output.bias (gpt-oss)
  bool attn_sinks = false;   // a sink logit per head in the attention softmax (gpt-oss)
  bool qk_norm = false;      // per-head RMSNorm of Q and K before RoPE (qwen3)
  bool tied_output = false;  // no output.weight: the head reuses token_embd
  bool post_norms = false;   // RMSNorm of attention/FFN outputs before the residual add (gemma3)
  float embd_scale = 0.0f;   // token embeddings times this, when non-zero (gemma3: sqrt(n_embd))
  // Non-zero: queries are multiplied by this in f32 before they meet the keys (rounded to the KV
  // type after the product, as llama.cpp's gemma3 graph does), and the scores are not scaled;
  // zero: scores are scaled by 1/sqrt(head_dim).
  float q_scale = 0.0f;
  float rope_freq_scale = 1.0f;        // 1 / rope.scaling.factor (linear or YaRN), global layers
  float rope_freq_scale_local = 1.0f;  // the same for local (sliding-window) layers
  // YaRN (rope.scaling.type yarn): blend factor and the band of dims it blends over.
  float rope_ext_factor = 0.0f;
  float yarn_beta_fast = 32.0f, yarn_beta_slow = 1.0f;
  // cos and sin multiplied by this (rope.scaling.attn_factor; YaRN's magnitude correction).
  float rope_attn_factor = 1.0f;
  int n_ctx_orig = 0;  // rope.scaling.original_context_length, else the training context
  // Frequency divisors from the file: rope_freqs.weight (Llama 3.1+ scaling, every length), or
  // LongRoPE's rope_factors_short/long.weight (short up to n_ctx_orig, long past it).
  bool rope_freqs = false;
  bool longrope = false;
  int nope_every = 0;  // layer l has no RoPE when (l + 1) % nope_every == 0 (smollm3)
  // Logit soft-capping, x -> cap * tanh(x / cap): attention scores and final logits (gemma2).
  float attn_softcap = 0.0f;
  float final_softcap = 0.0f;
  // Attention temperature (Llama 4 style, mistral3): queries at position p are multiplied by
  // 1 + attn_temp_scale * ln(floor(p / n_ctx_orig) + 1).
  float attn_temp_scale = 0.0f;
  // Projections stored fused in the file: attn_qkv (Q, K, V rows) and ffn_up (gate, up rows).
  bool fused_qkv = false;
  bool fused_gate_up = false;
  // Sliding-window attention: a local layer's position p sees keys p - sliding_window + 1 .. p.
  // Layer l is local when sliding_window > 0 and l % swa_pattern < swa_pattern - 1 (the last layer
  // of every group of swa_pattern is global); swa_pattern 0 makes every layer local.
  int sliding_window = 0;
  int swa_pattern = 0;
  float rope_base_local = 10000.0f;  // RoPE base of local layers
  // Mixture of experts (n_expert > 0): a token's feed-forward is the weighted sum of n_expert_used
  // of n_expert SwiGLU experts of n_ff_exp rows, picked by a softmax router (ffn_gate_inp) as
  // llama.cpp's build_moe_ffn does; with expert_norm the chosen weights are rescaled to sum 1.
  // n_ff_shexp > 0: a shared expert of that width runs for every token, its output scaled by
  // sigmoid(ffn_gate_inp_shexp . x) (qwen2moe).
  int n_expert = 0;
  int n_expert_used = 0;
  int n_ff_exp = 0;
  int n_ff_shexp = 0;
  bool expert_norm = false;

  bool moe() const { return n_expert > 0; }
  int kv_dim() const { return n_head_kv * head_dim; }
  int q_dim() const { return n_head * head_dim; }
  bool IsLocal(int layer) const {
    return sliding_window > 0 && (swa_pattern == 0 || layer % swa_pattern < swa_pattern - 1);
  }
  // Keys a position of `layer` attends to at most (0: all before it).
  int64_t Window(int layer) const { return IsLocal(layer) ? sliding_window : 0; }
  // The query factor of attn_temp_scale at position `pos`, computed as llama.cpp's input does: in
  // double, rounded to float once.
  float AttnTemperature(int64_t pos) const {
    return static_cast<float>(
        std::log(std::floor(static_cast<float>(pos) / static_cast<float>(n_ctx_orig)) + 1.0) *
            attn_temp_scale +
        1.0);
  }
  bool HasRope(int layer) const { return nope_every == 0 || (layer + 1) % nope_every != 0; }
  // Whether a sequence of n_ctx positions uses LongRoPE's long factors.
  bool LongFactors(int64_t n_ctx) const { return longrope && n_ctx > n_ctx_orig; }
};

// Reads and validates the hyperparameters; es::Error names the file and key at fault.
ModelConfig ReadModelConfig(const gguf::File& f);

}  // namespace es::model
