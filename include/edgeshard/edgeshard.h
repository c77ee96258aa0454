// edgeshard public API: load a GGUF model, create contexts, generate text.
//
//   auto model = es::Model::Load({.path = "model.gguf"});
//   es::Context ctx(model, {.n_ctx = 2048, .n_threads = 4});
//   ctx.Generate(model->Tokenize("Once upon a time", true), {.max_tokens = 64},
//                [](std::string_view piece) {
//                  fputs(std::string(piece).c_str(), stdout);
//                  return true;
//                });
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "edgeshard/error.h"

namespace es {

struct LoadParams {
  std::string path;
  // Called while weights are paged in: (bytes done, bytes total).
  std::function<void(size_t, size_t)> progress;
  // llama.cpp's --no-mmap (false: read the file into memory, experts included) and --mlock
  // (lock the weights in memory; throws es::Error saying how to allow it when refused).
  bool use_mmap = true;
  bool use_mlock = false;
  // llama.cpp's -ngl: the last gpu_layers blocks run on Vulkan device gpu_device (`edgeshard
  // --list-devices`), with their KV cache; -1 (or n_layer and more) means all. 0: CPU only.
  int gpu_layers = 0;
  int gpu_device = 0;
};

struct ModelInfo {
  std::string arch, name;
  int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx_train;
  size_t weight_bytes;
  size_t weight_bytes_per_token;  // weights read to generate one token (one embedding row)
  size_t file_bytes;
  std::string weight_type;  // most common weight type, e.g. "Q4_0"
  // Mixture of experts (0 for a dense model): bytes of all expert tensors, which stay in the
  // file mapping and are paged in as tokens choose them, and the part one decode step reads.
  size_t expert_bytes = 0;
  size_t expert_bytes_per_token = 0;
  bool weights_in_memory = false;  // read in (--no-mmap) or locked (--mlock): experts resident
  // Blocks gpu_first .. n_layer-1 run on the GPU named gpu_name (gpu_first == n_layer: none);
  // gpu_placement says so in words ("blocks 3-4 and the output head on vulkan0 (...)", "").
  int gpu_first = 0;
  std::string gpu_name;
  std::string gpu_placement;
};

struct ChatTurn {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

class Model {
 public:
  static std::shared_ptr<Model> Load(const LoadParams& params);
  ~Model();
  ModelInfo Info() const;
  // Text -> token ids. add_special adds BOS/EOS as the vocabulary asks; special token texts
  // (e.g. "<|im_start|>") are parsed when parse_special is set.
  std::vector<int32_t> Tokenize(std::string_view text, bool add_special,
                                bool parse_special = true) const;
  std::string TokenToPiece(int32_t id) const;
  std::string Detokenize(const std::vector<int32_t>& ids) const;
  bool IsEndOfGeneration(int32_t id) const;
  // The beginning-of-sequence token if the vocabulary adds one to prompts, else -1.
  int32_t PromptBosToken() const;
  // Renders a conversation with the model's chat template (or `template_override`, a name
  // such as "chatml" or a template text; chatml when the model has none), ending with the
  // assistant prompt. `template_vars` are extra template variables as "NAME=VALUE" (VALUE in
  // JSON, e.g. "enable_thinking=false", or a plain string).
  std::string ApplyChatTemplate(const std::vector<ChatTurn>& turns, bool add_assistant_prompt,
                                const std::string& template_override = "",
                                const std::vector<std::string>& template_vars = {}) const;

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  Model() = default;
  std::unique_ptr<Impl> impl_;
};

struct ContextParams {
  int n_ctx = 0;      // 0: min(model context, 4096); beyond the training context is allowed
  int n_threads = 0;  // 0: all cores
  int n_batch = 256;  // prompt tokens per forward pass
  // KV cache element types (llama.cpp's -ctk/-ctv): "f16" (default, as llama.cpp), "f32",
  // "q8_0" (about half of f16's memory) or "q4_0" (about a quarter).
  std::string cache_type_k = "f16";
  std::string cache_type_v = "f16";
};

struct SamplingParams {
  float temperature = 0.8f;  // <= 0: greedy
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  int penalty_last_n = 64;
  uint64_t seed = 0xFFFFFFFFull;  // this value means: pick a random seed
};

struct GenerateParams {
  int max_tokens = 128;  // < 0: until end of generation or context
  SamplingParams sampling;
  std::vector<std::string> stop;  // never printed, also when split across tokens
  bool ignore_eos = false;
  // When the context fills: keep its first n_keep tokens (plus a leading BOS; -1: the whole
  // prompt), drop half of the rest and go on (llama.cpp's context shift). Off: stop ("context").
  bool context_shift = false;
  int n_keep = 0;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids
  std::string text;             // the text delivered (stop strings excluded)
  std::string stop_reason;      // "eos", "stop", "length", "context", "cancelled"
  int n_prompt = 0;
  double prompt_ms = 0, decode_ms = 0;
  int n_decode = 0;  // single-token forward passes timed in decode_ms
  int n_shifts = 0;  // context shifts made
};

class Context {
 public:
  Context(std::shared_ptr<Model> model, const ContextParams& params);
  ~Context();
  size_t kv_bytes() const;
  // Activation and logit buffers (besides weights and KV cache).
  size_t buffer_bytes() const;
  int n_ctx() const;
  int n_threads() const;
  int64_t n_past() const;
  // Token ids whose keys and values the context holds.
  const std::vector<int32_t>& tokens() const;
  // Appends tokens (a prompt) to the sequence; all_logits, if given, receives [n, n_vocab].
  void Eval(const std::vector<int32_t>& tokens, std::vector<float>* all_logits = nullptr);
  const std::vector<float>& last_logits() const;
  // Drops positions >= n so a following Eval continues from a shared prefix.
  void Truncate(int64_t n);
  // Evaluates `prompt` (appended to what the context holds) and samples up to max_tokens.
  // on_text receives printable text as it is produced; returning false cancels.
  GenerateResult Generate(const std::vector<int32_t>& prompt, const GenerateParams& params,
                          const std::function<bool(std::string_view)>& on_text);

  struct Impl;

 private:
  std::shared_ptr<Model> model_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace es
