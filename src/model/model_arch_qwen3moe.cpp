// qwen3moe (Qwen3-30B-A3B, Qwen3-235B-A22B): qwen3's attention (QK-norm, NEOX RoPE, no biases)
// with a mixture-of-experts feed-forward in every block: a softmax router picks
// expert_used_count of expert_count SwiGLU experts (expert_feed_forward_length rows each) and
// their weights are rescaled to sum 1 (norm_topk_prob), as llama.cpp's qwen3moe hard-codes.
#include "model/model_arch.h"

namespace es::model {

const ArchSpec& Qwen3MoeArch() {
  static const ArchSpec spec = [] {
    ArchSpec s = LlamaLike("qwen3moe", "Qwen3 MoE (Qwen3-30B-A3B, 235B-A22B)", RopeStyle::kNeox,
                           {"attn_q_norm.weight", "attn_k_norm.weight"});
    s.qk_norm = true;
    s.moe = {MoeSpec::kRequired, /*norm_weights=*/true, /*shared_expert=*/false};
    return s;
  }();
  return spec;
}

}  // namespace es::model
