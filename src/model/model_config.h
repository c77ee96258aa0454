// Hyperparameters of a model, read from GGUF metadata; what its family computes comes from
// its ArchSpec (model_arch.h).
#pragma once
#include <cstdint>
#include <string>

#include "gguf/gguf_file.h"
#include "model/model_arch.h"

namespace es::model {

struct ModelConfig {
  std::string arch;  // general.architecture, one of Architectures()
  const ArchSpec* spec = nullptr;
  std::string name;
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_vocab = 0;
  int n_ctx_train = 0;
  int n_rot = 0;  // rotated dims per head
  float rope_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool rope_neox = false;    // rotate (i, i + n_rot/2) pairs (qwen2, qwen3)
  bool qkv_bias = false;     // Q/K/V biases (qwen2; llama files that carry them)
  bool qk_norm = false;      // per-head RMSNorm of Q and K before RoPE (qwen3)
  bool tied_output = false;  // no output.weight: the head reuses token_embd

  int kv_dim() const { return n_head_kv * head_dim; }
  int q_dim() const { return n_head * head_dim; }
};

// Reads and validates the hyperparameters; es::Error names the file and key at fault.
ModelConfig ReadModelConfig(const gguf::File& f);

}  // namespace es::model
