// llama: pre-norm blocks of RMSNorm, attention with normal RoPE and SwiGLU. Files may carry Q/K/V
// biases (llama.cpp adds them when present).
#include "model/model_arch.h"

namespace es::model {

const ArchSpec& LlamaArch() {
  static const ArchSpec spec =
      LlamaLike("llama", "Llama 1/2, TinyLlama, llama2.c", RopeStyle::kNormal,
                {"attn_q.bias", "attn_k.bias", "attn_v.bias"}, TensorDecl::kOptional);
  return spec;
}

}  // namespace es::model
