// Synthetic models: random weights at the real shapes of known models, with a real vocabulary
// copied from a vocabulary GGUF, written tensor by tensor (a 13B model never sits in memory).
// For tests and benchmarks of models we cannot ship.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/model_quantize.h"

namespace es::model {

// What a family's files carry beyond the llama-like core, for presets of the newer families.
struct SynthExtras {
  int n_rot = 0;                 // rotated dims (rope.dimension_count); 0: the head size
  int swa_pattern = 0;           // attention.sliding_window_pattern; 0: not written
  int n_ctx_orig = 0;            // rope.scaling.original_context_length; 0: not written
  float llama3_factor = 0.0f;    // rope_freqs.weight from Llama 3's formula with this factor
  bool longrope = false;         // rope_factors_short/long.weight and their attention factor
  bool fused = false;            // attn_qkv and a 2 * n_ff ffn_up (gate rows first), no gate
  float yarn_factor = 0.0f;      // rope.scaling.type yarn with this factor, betas 32/1, log mul 1
  float attn_temp_scale = 0.0f;  // attention.temperature_scale
  float attn_softcap = 0.0f;     // attn_logit_softcapping
  float final_softcap = 0.0f;    // final_logit_softcapping
  float norm_jitter = 0.0f;      // norm weights 1 + noise of this deviation instead of 1
  // Mixture of experts (n_expert > 0): expert_count, expert_used_count, the experts' width
  // (expert_feed_forward_length; 0: not written, n_ff applies) and a shared expert's (qwen2moe).
  int n_expert = 0;
  int n_expert_used = 0;
  int n_ff_exp = 0;
  int n_ff_shexp = 0;
  bool yarn_plain = false;     // YaRN without yarn_log_multiplier (as gpt-oss's converter writes)
  float expert_stddev = 0.0f;  // the experts' gate and up weights' deviation; 0: the default
};

struct SynthPreset {
  const char* name;
  const char* arch;  // a family of model_arch.h
  int n_embd;
  int n_layer;
  int n_head;
  int n_head_kv;
  int key_length;  // head size; 0: n_embd / n_head (written as attention.key_length otherwise)
  int n_ff;
  int n_ctx;  // training context (<arch>.context_length)
  float rope_base;
  float rms_eps;
  bool tied_output;  // no output.weight: the head reuses token_embd
  bool qkv_bias;     // Q/K/V biases (qwen2)
  int ref_vocab;     // the real model's vocabulary size, for sizes listed without a vocab file
  bool hidden;       // small presets for tests, not listed
  const char* description;
  int sliding_window;  // attention.sliding_window; 0: not written
  float rope_scaling;  // linear rope.scaling.factor; 0: not written
  SynthExtras x = {};

  int head_dim() const { return key_length ? key_length : n_embd / n_head; }
  int n_rot() const { return x.n_rot ? x.n_rot : head_dim(); }
};

// All presets, listed ones first.
const std::vector<SynthPreset>& SynthPresets();
std::optional<SynthPreset> FindSynthPreset(std::string_view name);
// Names of the listed presets, "a, b, c".
std::string SynthPresetNames();

// The preset's tensors (all F32, as generated) in llama.cpp's write order.
std::vector<TensorDesc> SynthTensors(const SynthPreset& p, int n_vocab);
uint64_t SynthParamCount(const SynthPreset& p, int n_vocab);
// Bytes of the tensor data section of the preset written as `format` (alignment padding included).
uint64_t SynthDataBytes(const SynthPreset& p, int n_vocab, const QuantFormat& format);

// One row of random weights: deterministic in (seed, tensor name, row), independent of threads.
// Values are near-normal (sum of four uniforms: mean 0, standard deviation `stddev`, bounded by
// 3.5 stddev) so that activations stay in a sane range through every layer.
void SynthRow(uint64_t seed, std::string_view tensor, int64_t row, float* out, int64_t n,
              float stddev);

struct SynthOptions {
  uint64_t seed = 42;
  int threads = 0;  // 0: all cores
  float stddev = 0.02f;
  std::string name;  // general.name; default: the preset name
  // (bytes of tensor data written, total tensor data bytes, tensor being written)
  std::function<void(uint64_t, uint64_t, const std::string&)> progress;
  std::function<void(const std::string&)> warn;  // one call per fallback tensor
};

struct SynthResult {
  std::vector<TensorPlan> plan;
  int n_vocab = 0;
  uint64_t n_params = 0;
  uint64_t file_bytes = 0;
};

// Writes a model for preset `p` to `out` in `format`, with every tokenizer.* entry of the
// vocabulary GGUF `vocab` (n_vocab = its token count). Norm weights are 1, everything else is
// SynthRow noise. es::Error names the vocabulary file or output at fault.
SynthResult SynthesizeModel(const SynthPreset& p, const std::string& vocab, const std::string& out,
                            const QuantFormat& format, const SynthOptions& options = {});

}  // namespace es::model
