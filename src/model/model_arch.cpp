#include "model/model_arch.h"

namespace es::model {

// Each family file defines one of these.
const ArchSpec& LlamaArch();
const ArchSpec& Qwen2Arch();
const ArchSpec& Qwen3Arch();
const ArchSpec& Gemma3Arch();

// An explicit table, not self-registration: the families live in a static library, and the linker
// drops an object file nothing refers to, so a self-registering family could silently vanish
// from a binary. Adding a family adds one line here.
const std::vector<const ArchSpec*>& Architectures() {
  static const std::vector<const ArchSpec*> all = {&LlamaArch(), &Qwen2Arch(), &Qwen3Arch(),
                                                   &Gemma3Arch()};
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

}  // namespace es::model
