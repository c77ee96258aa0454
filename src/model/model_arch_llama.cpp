// llama: pre-norm blocks of RMSNorm, attention with normal RoPE and SwiGLU. Files may carry Q/K/V
// biases (llama.cpp adds them when present) and Llama 3.1+'s RoPE frequency factors
// (rope_freqs.weight, divisors of each pair's frequency, used at every length). With
// llama.expert_count > 0 (Mixtral) the feed-forward is a mixture of experts whose top-k softmax
// weights are rescaled to sum 1.
#include "model/model_arch.h"

namespace es::model {

const ArchSpec& LlamaArch() {
  static const ArchSpec spec = [] {
    ArchSpec s = LlamaLike("llama", "Llama 1/2/3.x, Mistral 7B, Mixtral, TinyLlama, llama2.c",
                           RopeStyle::kNormal, {"attn_q.bias", "attn_k.bias", "attn_v.bias"},
                           TensorDecl::kOptional);
    s.globals.push_back({"rope_freqs.weight", TensorDecl::kOptional});
    s.moe = {MoeSpec::kOptional, /*norm_weights=*/true, /*shared_expert=*/false};
    return s;
  }();
  return spec;
}

}  // namespace es::model
