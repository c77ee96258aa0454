// qwen3: llama's block without biases, with QK-norm (a per-head RMSNorm of queries and keys,
// weights of head_dim shared by the heads, before RoPE, with the model's RMS epsilon) and NEOX
// RoPE. The head size comes from attention.key_length and need not be n_embd / n_head
// (Qwen3-0.6B: 16 heads x 128 = 2048 > n_embd 1024).
#include "model/model_arch.h"

namespace es::model {

const ArchSpec& Qwen3Arch() {
  static const ArchSpec spec = [] {
    ArchSpec s = LlamaLike("qwen3", "Qwen3 (dense)", RopeStyle::kNeox,
                           {"attn_q_norm.weight", "attn_k_norm.weight"});
    s.qk_norm = true;
    return s;
  }();
  return spec;
}

}  // namespace es::model
