// smollm3: llama's block, except that every fourth layer (3, 7, 11, ...) has no positional
// encoding at all (NoPE): its queries and keys are not rotated.
#include "model/model_arch.h"
#include "model/model_config.h"

namespace es::model {

const ArchSpec& SmolLm3Arch() {
  static const ArchSpec spec = [] {
    ArchSpec s = LlamaLike("smollm3", "SmolLM3", RopeStyle::kNormal);
    // The step is fixed by the architecture (llama.cpp reads no key for it).
    s.configure = [](const gguf::File&, ModelConfig& c) { c.nope_every = 4; };
    return s;
  }();
  return spec;
}

}  // namespace es::model
