// Architecture families as data. Each family (model_arch_<name>.cpp) says which tensors its files
// hold, which of them are optional, which metadata keys it reads beyond the common ones, and which
// shared blocks its layers compose (norm kind, RoPE style, Q/K/V biases, QK-norm, FFN kind). The
// config reader, the refusal of uncomputed math and the forward pass take their answers from here
// instead of naming architectures, so adding a family does not touch the others.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf_file.h"

namespace es::model {

struct ModelConfig;

enum class NormKind { kRms };             // RMSNorm with weight (later: +1 offset, LayerNorm)
enum class RopeStyle { kNormal, kNeox };  // rotated pairs (i, i+1) or (i, i + n_rot/2)
enum class FfnKind {
  kSwiGlu,  // down(silu(gate(x)) * up(x))
  kGeGlu,   // down(gelu(gate(x)) * up(x)), GELU's tanh form as llama.cpp computes it
  // down(g * sigmoid(1.702 g) * (u + 1)), g = min(gate(x), 7), u = clamp(up(x), -7, 7): OpenAI's
  // clamped SwiGLU (gpt-oss experts).
  kSwiGluOai,
};

// A tensor of the file. Names under "blk.N." are given without that prefix.
struct TensorDecl {
  enum Need {
    kRequired,
    // Computed when present, in every block (or, outside blocks, once); whether a block tensor is
    // on is decided by block 0, so a later block that has one block 0 lacks is refused.
    kOptional,
  };
  std::string_view name;
  Need need = kRequired;
};

// A metadata key under "<arch>.": `neutral` says whether its value leaves the arithmetic as the
// engine computes it (nullptr: always harmless); `what` names the math it would need otherwise.
struct KeyContext {
  const gguf::File& f;
  const ModelConfig& c;
  const std::string& key;
};
struct KeyRule {
  std::string_view suffix;  // after "<arch>."; a trailing '*' matches any rest
  std::function<bool(const KeyContext&)> neutral;
  const char* what;
};

// How a family's files may replace the dense feed-forward (ffn_gate/up/down) with experts.
struct MoeSpec {
  enum Use {
    kNone,      // never (expert_count is refused)
    kOptional,  // when <arch>.expert_count > 0 (llama: Mixtral-style files)
    kRequired,  // always (qwen3moe, qwen2moe)
  };
  Use use = kNone;
  bool norm_weights = true;    // the chosen experts' weights are rescaled to sum 1
  bool shared_expert = false;  // plus a shared expert with a sigmoid gate (qwen2moe)
  enum Gating {
    kSoftmax,      // weights: softmax over all experts' logits, the top k of them kept
    kSoftmaxTopK,  // the top k logits chosen first, weights the softmax over those k (gpt-oss)
  };
  Gating gating = kSoftmax;
  // Biases on the router (ffn_gate_inp.bias, per expert) and on each expert's three matrices
  // (ffn_{gate,up,down}_exps.bias, [rows, n_expert]) (gpt-oss).
  bool biases = false;
};

struct ArchSpec {
  std::string_view name;  // general.architecture
  std::string_view about;
  NormKind norm = NormKind::kRms;
  RopeStyle rope = RopeStyle::kNormal;
  FfnKind ffn = FfnKind::kSwiGlu;
  // Per-head RMSNorm of queries and keys (attn_q_norm/attn_k_norm, head_dim weights shared by the
  // heads) after the projection and before RoPE.
  bool qk_norm = false;
  // RMSNorm of the attention and feed-forward outputs (post_attention_norm, post_ffw_norm)
  // before each is added to the residual stream ("sandwich" norms, gemma3).
  bool post_norms = false;
  // Token embeddings multiplied by sqrt(n_embd) (in f32, after the row is read) (gemma3).
  bool scale_embeddings = false;
  // The feed-forward's gate and up projections are one ffn_up.weight of 2 * n_ff rows (gate
  // first), with no ffn_gate.weight (phi3).
  bool fused_gate_up = false;
  // One learned logit per query head (attn_sinks.weight) in every attention softmax's
  // denominator (gpt-oss).
  bool attn_sinks = false;
  // The feed-forward's input norm (gpt-oss stores it as post_attention_norm.weight).
  std::string_view ffn_norm = "ffn_norm.weight";
  // Family-specific hyperparameters (sliding window, per-layer RoPE, attention scale), read
  // after the common ones; nullptr when the family has none.
  std::function<void(const gguf::File&, ModelConfig&)> configure;
  std::vector<TensorDecl> globals;  // outside blocks; an absent output.weight ties the head
  std::vector<TensorDecl> block;    // per block
  MoeSpec moe;
  // Keys this family reads or judges itself; looked up before the common rules (model_support),
  // so a family can accept a key the common rules refuse.
  std::vector<KeyRule> keys;

  // Whether the family declares `name` (a global or, without "blk.N.", a block tensor).
  const TensorDecl* FindBlock(std::string_view name) const;
  // The block tensors of a file with (`moe`) or without experts: with them, the router and the
  // 3-D expert tensors (and the shared expert's) replace ffn_gate/up/down.
  std::vector<TensorDecl> BlockTensors(bool moe) const;
};

// The supported families, in the order the error messages list them.
const std::vector<const ArchSpec*>& Architectures();
// The family for general.architecture `name`, or nullptr.
const ArchSpec* FindArch(std::string_view name);
// "llama, qwen2, qwen3, gemma3"
std::string ArchNames();

// What every llama-like family shares: token_embd, output_norm, an optional output head, and a
// pre-norm block of RMSNorm, attention (`rope`) and SwiGLU feed-forward; `extra` block tensors
// (biases, QK-norm weights) are added with `need`.
ArchSpec LlamaLike(std::string_view name, std::string_view about, RopeStyle rope,
                   std::initializer_list<std::string_view> extra = {},
                   TensorDecl::Need need = TensorDecl::kRequired);

// What Gemma 2 and 3 share: llama's tensors plus sandwich norms (`extra` adds more block
// tensors), NEOX RoPE, GeGLU, token embeddings scaled by sqrt(n_embd).
ArchSpec GemmaLike(std::string_view name, std::string_view about,
                   std::initializer_list<std::string_view> extra = {});
// Gemma's query scale: 1/sqrt(head size), except for the 27B model (which llama.cpp recognises by
// its `layers_27b` layers), trained with 1/sqrt(n_embd / n_head).
float GemmaQueryScale(const ModelConfig& c, int layers_27b);

// Sliding-window attention for families with local and global layers: attention.sliding_window
// (else `default_window`; 0 means none) and attention.sliding_window_pattern (else
// `default_pattern`): layer l is global when l % pattern == pattern - 1; a per-layer array is
// refused. Local layers rotate with rope.freq_base_swa (else `default_local_base`).
void ReadSlidingWindow(const gguf::File& f, ModelConfig& c, int default_window, int default_pattern,
                       float default_local_base);

}  // namespace es::model
