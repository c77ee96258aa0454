// qwen2: llama's block with Q/K/V biases and NEOX RoPE.
#include "model/model_arch.h"

namespace es::model {

const ArchSpec& Qwen2Arch() {
  static const ArchSpec spec = LlamaLike("qwen2", "Qwen2, Qwen2.5", RopeStyle::kNeox,
                                         {"attn_q.bias", "attn_k.bias", "attn_v.bias"});
  return spec;
}

}  // namespace es::model
