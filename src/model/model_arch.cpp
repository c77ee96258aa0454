#include "model/model_arch.h"

#include <cmath>

#include "model/model_config.h"

namespace es::model {

// Each family file defines one of these.
const ArchSpec& LlamaArch();
const ArchSpec& Qwen2Arch();
const ArchSpec& Qwen3Arch();
const ArchSpec& Gemma2Arch();
const ArchSpec& Gemma3Arch();
const ArchSpec& Phi3Arch();
const ArchSpec& SmolLm3Arch();
const ArchSpec& Mistral3Arch();
const ArchSpec& Qwen2MoeArch();
const ArchSpec& Qwen3MoeArch();
const ArchSpec& GptOssArch();

// An explicit table, not self-registration: the families live in a static library, and the linker
// drops an object file nothing refers to, so a self-registering family could silently vanish
// from a binary. Adding a family adds one line here.
const std::vector<const ArchSpec*>& Architectures() {
  static const std::vector<const ArchSpec*> all = {
      &LlamaArch(),   &Qwen2Arch(),    &Qwen3Arch(),    &Gemma2Arch(),   &Gemma3Arch(), &Phi3Arch(),
      &SmolLm3Arch(), &Mistral3Arch(), &Qwen2MoeArch(), &Qwen3MoeArch(), &GptOssArch()};
  return all;
}

const ArchSpec* FindArch(std::string_view name) {
  for (const ArchSpec* a : Architectures())
    if (a->name == name) return a;
  return nullptr;
}

std::string ArchNames() {
  std::string s;
  for (const ArchSpec* a : Architectures()) {
    if (!s.empty()) s += ", ";
    s += a->name;
  }
  return s;
}

const TensorDecl* ArchSpec::FindBlock(std::string_view name) const {
  for (const TensorDecl& d : block)
    if (d.name == name) return &d;
  return nullptr;
}

std::vector<TensorDecl> ArchSpec::BlockTensors(bool with_experts) const {
  if (!with_experts) return block;
  std::vector<TensorDecl> out;
  for (const TensorDecl& d : block)
    if (d.name != "ffn_gate.weight" && d.name != "ffn_up.weight" && d.name != "ffn_down.weight")
      out.push_back(d);
  for (std::string_view t : {"ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight",
                             "ffn_down_exps.weight"})
    out.push_back({t});
  if (moe.shared_expert)
    for (std::string_view t : {"ffn_gate_inp_shexp.weight", "ffn_gate_shexp.weight",
                               "ffn_up_shexp.weight", "ffn_down_shexp.weight"})
      out.push_back({t});
  if (moe.biases)
    for (std::string_view t :
         {"ffn_gate_inp.bias", "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias"})
      out.push_back({t});
  return out;
}

ArchSpec LlamaLike(std::string_view name, std::string_view about, RopeStyle rope,
                   std::initializer_list<std::string_view> extra, TensorDecl::Need need) {
  ArchSpec s;
  s.name = name;
  s.about = about;
  s.norm = NormKind::kRms;
  s.rope = rope;
  s.ffn = FfnKind::kSwiGlu;
  s.globals = {
      {"token_embd.weight"}, {"output_norm.weight"}, {"output.weight", TensorDecl::kOptional}};
  for (std::string_view t :
       {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"})
    s.block.push_back({t});
  for (std::string_view t : extra) s.block.push_back({t, need});
  return s;
}

ArchSpec GemmaLike(std::string_view name, std::string_view about,
                   std::initializer_list<std::string_view> extra) {
  ArchSpec s = LlamaLike(name, about, RopeStyle::kNeox);
  for (std::string_view t : extra) s.block.push_back({t});
  for (std::string_view t : {"post_attention_norm.weight", "post_ffw_norm.weight"})
    s.block.push_back({t});
  s.ffn = FfnKind::kGeGlu;
  s.post_norms = true;
  s.scale_embeddings = true;
  return s;
}

float GemmaQueryScale(const ModelConfig& c, int layers_27b) {
  const float d = c.n_layer == layers_27b ? static_cast<float>(c.n_embd / c.n_head)
                                          : static_cast<float>(c.head_dim);
  return 1.0f / std::sqrt(d);
}

void ReadSlidingWindow(const gguf::File& f, ModelConfig& c, int default_window, int default_pattern,
                       float default_local_base) {
  const std::string p = c.arch + ".";
  const int64_t window = f.Has(p + "attention.sliding_window")
                             ? f.GetInt(p + "attention.sliding_window")
                             : default_window;
  if (window < 0 || window > (1 << 26))
    throw Error(f.path() + ": attention.sliding_window " + std::to_string(window) +
                " is out of range");
  c.sliding_window = static_cast<int>(window);
  // Read only with a window, as llama.cpp does (without one every layer is global).
  const std::string pattern = p + "attention.sliding_window_pattern";
  if (window > 0 && f.Has(pattern)) {
    const gguf::Value* v = f.Find(pattern);
    if (v->IsArray())
      throw Error(f.path() + ": metadata '" + pattern +
                  "' is a per-layer array, which edgeshard does not implement for " + c.arch +
                  " (a period, every n-th layer global, is supported)");
    const int64_t n = f.GetInt(pattern);
    if (n < 0 || n > 4096)
      throw Error(f.path() + ": metadata '" + pattern + "' is " + std::to_string(n) +
                  ", expected 0..4096");
    c.swa_pattern = static_cast<int>(n);
  } else {
    c.swa_pattern = default_pattern;
  }
  c.rope_base_local =
      static_cast<float>(f.GetFloatOr(p + "rope.freq_base_swa").value_or(default_local_base));
  if (!(c.rope_base_local > 0)) throw Error(f.path() + ": rope.freq_base_swa must be positive");
}

}  // namespace es::model
