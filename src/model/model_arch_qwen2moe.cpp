// qwen2moe (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): qwen2's attention (NEOX RoPE, Q/K/V biases when
// the file has them) with experts in every block: a softmax router's top expert_used_count
// weights, not renormalised, plus a shared expert of expert_shared_feed_forward_length rows
// whose output is scaled by sigmoid(ffn_gate_inp_shexp . x), as llama.cpp's qwen2moe computes.
#include "model/model_arch.h"

namespace es::model {

const ArchSpec& Qwen2MoeArch() {
  static const ArchSpec spec = [] {
    ArchSpec s = LlamaLike("qwen2moe", "Qwen1.5-MoE, Qwen2 MoE (57B-A14B)", RopeStyle::kNeox,
                           {"attn_q.bias", "attn_k.bias", "attn_v.bias"}, TensorDecl::kOptional);
    s.globals[2].need = TensorDecl::kRequired;  // output.weight: llama.cpp never ties it here
    s.moe = {MoeSpec::kRequired, /*norm_weights=*/false, /*shared_expert=*/true};
    return s;
  }();
  return spec;
}

}  // namespace es::model
