// mistral3 (Ministral 3, the text model of Mistral Small 3.x files): llama's block with YaRN
// position scaling (rope.scaling.type yarn, its beta band and log multiplier, all read by the
// common RoPE code) or Llama 3 frequency factors, and optional attention temperature tuning:
// queries at position p times 1 + beta * ln(floor(p / n_ctx_orig) + 1), beta from
// attention.temperature_scale. Details follow llama.cpp's mistral3.
#include <cmath>

#include "model/model_arch.h"
#include "model/model_config.h"

namespace es::model {
namespace {

void Configure(const gguf::File& f, ModelConfig& c) {
  const std::string p = c.arch + ".";
  c.attn_temp_scale =
      static_cast<float>(f.GetFloatOr(p + "attention.temperature_scale").value_or(0.0));
  if (!std::isfinite(c.attn_temp_scale))
    throw Error(f.path() + ": attention.temperature_scale must be finite");
  // The temperature's period is the original context; a file naming another one asks for math
  // llama.cpp and edgeshard do not do.
  const std::string len = p + "attention.temperature_length";
  if (c.attn_temp_scale != 0.0f && f.Has(len) && f.GetInt(len) != c.n_ctx_orig)
    throw Error(f.path() + ": attention.temperature_length " + std::to_string(f.GetInt(len)) +
                " differs from the original context " + std::to_string(c.n_ctx_orig) +
                ", which edgeshard does not implement");
}

}  // namespace

const ArchSpec& Mistral3Arch() {
  static const ArchSpec spec = [] {
    ArchSpec s = LlamaLike("mistral3", "Ministral 3, Mistral Small 3 (text)", RopeStyle::kNormal);
    s.globals.push_back({"rope_freqs.weight", TensorDecl::kOptional});
    s.configure = Configure;
    s.keys = {{"attention.temperature_scale", nullptr, ""},
              {"attention.temperature_length", nullptr, ""}};
    return s;
  }();
  return spec;
}

}  // namespace es::model
