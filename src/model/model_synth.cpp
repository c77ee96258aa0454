#include "model/model_synth.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>

#include "edgeshard/error.h"
#include "model/model_arch.h"

namespace es::model {
namespace {

// Reference hyperparameters from the models' published configurations. stories110m is
// Karpathy's llama2.c TinyStories model (classifier tied to the embedding); qwen2-0.5b is
// Qwen2-0.5B (tied embedding, Q/K/V biases, rope theta 1e6).
const std::vector<SynthPreset> kPresets = {
    {"stories110m", "llama", 768, 12, 12, 12, 0, 2048, 1024, 10000.0f, 1e-5f, true, false, 32000,
     false, "llama2.c TinyStories 110M", 0, 0},
    {"tinyllama-1.1b", "llama", 2048, 22, 32, 4, 0, 5632, 2048, 10000.0f, 1e-5f, false, false,
     32000, false, "TinyLlama 1.1B (GQA 32/4)", 0, 0},
    {"llama2-7b", "llama", 4096, 32, 32, 32, 0, 11008, 4096, 10000.0f, 1e-5f, false, false, 32000,
     false, "Llama 2 7B", 0, 0},
    {"llama2-13b", "llama", 5120, 40, 40, 40, 0, 13824, 4096, 10000.0f, 1e-5f, false, false, 32000,
     false, "Llama 2 13B", 0, 0},
    {"qwen2-0.5b", "qwen2", 896, 24, 14, 2, 0, 4864, 32768, 1000000.0f, 1e-6f, true, true, 151936,
     false, "Qwen2 0.5B (GQA 14/2, tied embedding, QKV biases)", 0, 0},
    // Qwen3-0.6B and Qwen3-4B: head size 128 from attention.key_length (q_dim 2048 > n_embd 1024
    // for 0.6B), QK-norm, no biases, rope theta 1e6, tied embedding.
    {"qwen3-0.6b", "qwen3", 1024, 28, 16, 8, 128, 3072, 40960, 1000000.0f, 1e-6f, true, false,
     151936, false, "Qwen3 0.6B (GQA 16/8, head 128, QK-norm, tied embedding)", 0, 0},
    {"qwen3-4b", "qwen3", 2560, 36, 32, 8, 128, 9728, 40960, 1000000.0f, 1e-6f, true, false, 151936,
     false, "Qwen3 4B (GQA 32/8, head 128, QK-norm, tied embedding)", 0, 0},
    // Small shapes for fast tests: those of the shared synth-llama-spm-256 and
    // synth-qwen2-gpt2-256 test models, so that file layouts can be compared with llama.cpp's.
    {"tiny-test", "llama", 256, 4, 8, 4, 0, 768, 2048, 10000.0f, 1e-5f, false, false, 32000, true,
     "test: llama, 4 layers of dim 256", 0, 0},
    {"tiny-test-qwen2", "qwen2", 256, 3, 4, 2, 0, 768, 2048, 10000.0f, 1e-5f, true, true, 50257,
     true, "test: qwen2, 3 layers of dim 256", 0, 0},
    // The shape of the shared synth-qwen3: q_dim 512 != n_embd 96.
    {"tiny-test-qwen3", "qwen3", 96, 3, 4, 2, 128, 512, 40960, 1000000.0f, 1e-6f, true, false,
     151936, true, "test: qwen3, 3 layers of dim 96, head 128", 0, 0},
    // Gemma 3 1B and 4B (text): head size 256, QK-norm, sandwich norms, GeGLU, tied embedding;
    // five sliding-window layers (512 / 1024 positions, RoPE base 10000) to one global layer
    // (base 1e6; 4B: linear RoPE scaling by 8).
    {"gemma3-1b", "gemma3", 1152, 26, 4, 1, 256, 6912, 32768, 1000000.0f, 1e-6f, true, false,
     262144, false, "Gemma 3 1B (MQA 4/1, head 256, sliding window 512)", 512, 0},
    {"gemma3-4b", "gemma3", 2560, 34, 8, 4, 256, 10240, 131072, 1000000.0f, 1e-6f, true, false,
     262208, false, "Gemma 3 4B text (GQA 8/4, head 256, sliding window 1024)", 1024, 8},
    // The shape of the shared synth-gemma3.
    {"tiny-test-gemma3", "gemma3", 256, 4, 4, 1, 128, 768, 32768, 1000000.0f, 1e-6f, true, false,
     32000, true, "test: gemma3, 4 layers of dim 256, head 128, window 64", 64, 0},
    // Llama 3.2 1B and 3B: GQA, RoPE base 500000 with Llama 3 frequency factors (factor 32,
    // original context 8192), tied embedding.
    {"llama3.2-1b", "llama", 2048, 16, 32, 8, 0, 8192, 131072, 500000.0f, 1e-5f, true, false,
     128256, false, "Llama 3.2 1B (GQA 32/8, Llama 3 RoPE factors)", 0, 0,
     SynthExtras{.n_ctx_orig = 8192, .llama3_factor = 32.0f}},
    {"llama3.2-3b", "llama", 3072, 28, 24, 8, 0, 8192, 131072, 500000.0f, 1e-5f, true, false,
     128256, false, "Llama 3.2 3B (GQA 24/8, head 128, Llama 3 RoPE factors)", 0, 0,
     SynthExtras{.n_ctx_orig = 8192, .llama3_factor = 32.0f}},
    // Phi-4-mini: fused QKV and gate+up, 96 of 128 dims rotated, LongRoPE (original context
    // 4096), tied embedding.
    {"phi-4-mini", "phi3", 3072, 32, 24, 8, 0, 8192, 131072, 10000.0f, 1e-5f, true, false, 200064,
     false, "Phi-4-mini (GQA 24/8, fused QKV, partial RoPE 96/128, LongRoPE)", 0, 0,
     SynthExtras{.n_rot = 96, .n_ctx_orig = 4096, .longrope = true, .fused = true}},
    // SmolLM3 3B: GQA 16/4, every fourth layer without RoPE, RoPE base 5e6, tied embedding.
    {"smollm3-3b", "smollm3", 2048, 36, 16, 4, 0, 11008, 65536, 5000000.0f, 1e-6f, true, false,
     128256, false, "SmolLM3 3B (GQA 16/4, NoPE every 4th layer)", 0, 0},
    // Gemma 2 2B: head 256, sandwich norms, GeGLU, window 4096 on every other layer, soft-capped
    // attention (50) and logits (30).
    {"gemma2-2b", "gemma2", 2304, 26, 8, 4, 256, 9216, 8192, 10000.0f, 1e-6f, true, false, 256000,
     false, "Gemma 2 2B (GQA 8/4, head 256, soft-capping, window 4096)", 4096, 0,
     SynthExtras{.attn_softcap = 50.0f, .final_softcap = 30.0f}},
    // Small shapes of the newer families for fidelity tests against llama.cpp (references in
    // tests/fixtures/ref): each turns on what its family adds, at sizes where it shows (windows,
    // the original context and soft caps far below the real ones), with norm weights that are
    // not 1.
    {"tiny-test-llama3", "llama", 256, 2, 4, 2, 0, 512, 131072, 500000.0f, 1e-5f, true, false,
     32000, true, "test: llama with Llama 3 RoPE factors", 0, 0,
     SynthExtras{.n_ctx_orig = 8192, .llama3_factor = 32.0f, .norm_jitter = 0.2f}},
    {"tiny-test-phi3", "phi3", 256, 3, 4, 2, 0, 512, 131072, 10000.0f, 1e-5f, true, false, 32000,
     true, "test: phi3, fused QKV and gate+up, partial RoPE 48/64, LongRoPE", 0, 0,
     SynthExtras{
         .n_rot = 48, .n_ctx_orig = 4096, .longrope = true, .fused = true, .norm_jitter = 0.2f}},
    {"tiny-test-smollm3", "smollm3", 256, 4, 4, 2, 0, 512, 65536, 5000000.0f, 1e-6f, true, false,
     32000, true, "test: smollm3, layer 3 without RoPE", 0, 0, SynthExtras{.norm_jitter = 0.2f}},
    {"tiny-test-gemma2", "gemma2", 256, 4, 4, 2, 128, 512, 8192, 10000.0f, 1e-6f, true, false,
     32000, true, "test: gemma2, window 32 on layers 0 and 2, soft caps", 32, 0,
     SynthExtras{.attn_softcap = 0.05f, .final_softcap = 0.5f, .norm_jitter = 0.2f}},
    {"tiny-test-mistral3", "mistral3", 256, 3, 4, 2, 128, 512, 262144, 1000000.0f, 1e-5f, false,
     false, 32000, true, "test: mistral3, YaRN from 64 positions, attention temperature", 0, 0,
     SynthExtras{
         .n_ctx_orig = 64, .yarn_factor = 16.0f, .attn_temp_scale = 0.1f, .norm_jitter = 0.2f}},
    // Mixture-of-experts models at their published shapes: Qwen3-30B-A3B (128 experts, 8 used,
    // 768 wide, untied head), Mixtral 8x7B (8 experts of the dense width, 2 used) and
    // Qwen1.5-MoE-A2.7B (60 experts of 1408, 4 used, a shared expert of 5632, QKV biases).
    {"qwen3-30b-a3b", "qwen3moe", 2048, 48, 32, 4, 128, 6144, 40960, 1000000.0f, 1e-6f, false,
     false, 151936, false, "Qwen3 30B-A3B (MoE 128 experts / 8 used, GQA 32/4, head 128)", 0, 0,
     SynthExtras{.n_expert = 128, .n_expert_used = 8, .n_ff_exp = 768}},
    {"mixtral-8x7b", "llama", 4096, 32, 32, 8, 0, 14336, 32768, 1000000.0f, 1e-5f, false, false,
     32000, false, "Mixtral 8x7B (MoE 8 experts / 2 used, GQA 32/8)", 0, 0,
     SynthExtras{.n_expert = 8, .n_expert_used = 2}},
    {"qwen1.5-moe-a2.7b", "qwen2moe", 2048, 24, 16, 16, 0, 5632, 8192, 1000000.0f, 1e-6f, false,
     true, 151936, false, "Qwen1.5-MoE-A2.7B (60 experts / 4 used + shared expert, QKV biases)", 0,
     0, SynthExtras{.n_expert = 60, .n_expert_used = 4, .n_ff_exp = 1408, .n_ff_shexp = 5632}},
    // OLMoE-1B-7B's proportions (64 experts, 8 used, experts 1/8 of the dense width) scaled down
    // to a qwen3moe that CI runs in seconds: 4 layers of dim 256, 26M parameters besides the
    // embeddings.
    {"olmoe-mini", "qwen3moe", 256, 4, 4, 2, 64, 1024, 4096, 10000.0f, 1e-5f, false, false, 50304,
     false, "OLMoE-like qwen3moe for CI (64 experts / 8 used, dim 256, 4 layers)", 0, 0,
     SynthExtras{.n_expert = 64, .n_expert_used = 8, .n_ff_exp = 128}},
    // Small MoE files of each family for fidelity tests against llama.cpp.
    {"tiny-test-qwen3moe", "qwen3moe", 256, 3, 4, 2, 64, 1024, 40960, 1000000.0f, 1e-6f, false,
     false, 32000, true, "test: qwen3moe, 16 experts / 4 used of width 256", 0, 0,
     SynthExtras{.norm_jitter = 0.2f, .n_expert = 16, .n_expert_used = 4, .n_ff_exp = 256}},
    {"tiny-test-qwen2moe", "qwen2moe", 256, 2, 4, 2, 0, 512, 8192, 1000000.0f, 1e-6f, false, true,
     32000, true, "test: qwen2moe, 8 experts / 2 used, shared expert, QKV biases", 0, 0,
     SynthExtras{.norm_jitter = 0.2f,
                 .n_expert = 8,
                 .n_expert_used = 2,
                 .n_ff_exp = 256,
                 .n_ff_shexp = 512}},
    {"tiny-test-mixtral", "llama", 256, 2, 4, 2, 0, 256, 32768, 1000000.0f, 1e-5f, false, false,
     32000, true, "test: llama with 8 experts / 2 used (Mixtral)", 0, 0,
     SynthExtras{.norm_jitter = 0.2f, .n_expert = 8, .n_expert_used = 2}},
    // OpenAI gpt-oss-20b and 120b: head 64 (q_dim 4096 > n_embd 2880), attention sinks, biases
    // on Q/K/V/O, the router and the experts, window 128 on every other layer, YaRN (factor 32
    // from 4096 positions), untied head of the o200k vocabulary.
    {"gpt-oss-20b", "gpt-oss", 2880, 24, 64, 8, 64, 2880, 131072, 150000.0f, 1e-5f, false, true,
     201088, false, "OpenAI gpt-oss-20b (MoE 32 experts / 4 used, GQA 64/8, sinks, window 128)",
     128, 0,
     SynthExtras{.n_ctx_orig = 4096,
                 .yarn_factor = 32.0f,
                 .n_expert = 32,
                 .n_expert_used = 4,
                 .n_ff_exp = 2880,
                 .yarn_plain = true}},
    {"gpt-oss-120b", "gpt-oss", 2880, 36, 64, 8, 64, 2880, 131072, 150000.0f, 1e-5f, false, true,
     201088, false, "OpenAI gpt-oss-120b (MoE 128 experts / 4 used, GQA 64/8, sinks, window 128)",
     128, 0,
     SynthExtras{.n_ctx_orig = 4096,
                 .yarn_factor = 32.0f,
                 .n_expert = 128,
                 .n_expert_used = 4,
                 .n_ff_exp = 2880,
                 .yarn_plain = true}},
    // Experts' gate and up weights large enough that the clamped SwiGLU's limits are reached.
    {"tiny-test-gpt-oss", "gpt-oss", 256, 4, 8, 2, 64, 256, 131072, 150000.0f, 1e-5f, false, true,
     32000, true, "test: gpt-oss, 16 experts / 4 used, window 16 on layers 0 and 2, YaRN", 16, 0,
     SynthExtras{.n_ctx_orig = 4096,
                 .yarn_factor = 32.0f,
                 .norm_jitter = 0.2f,
                 .n_expert = 16,
                 .n_expert_used = 4,
                 .n_ff_exp = 256,
                 .yarn_plain = true,
                 .expert_stddev = 0.15f}},
};

// Llama 3's RoPE frequency divisors (its published scaling rule): 1 for wavelengths below
// n_ctx_orig / 4, `factor` above n_ctx_orig, a smooth blend between.
std::vector<float> Llama3Factors(const SynthPreset& p) {
  const int half = p.n_rot() / 2;
  std::vector<float> f(static_cast<size_t>(half));
  const double orig = p.x.n_ctx_orig, lo = 1.0, hi = 4.0;
  for (int i = 0; i < half; ++i) {
    const double freq = 1.0 / std::pow(p.rope_base, 2.0 * i / p.n_rot());
    const double wavelen = 2 * M_PI / freq;
    double v;
    if (wavelen < orig / hi) {
      v = 1;
    } else if (wavelen > orig / lo) {
      v = p.x.llama3_factor;
    } else {
      const double smooth = (orig / wavelen - lo) / (hi - lo);
      v = 1 / ((1 - smooth) / p.x.llama3_factor + smooth);
    }
    f[static_cast<size_t>(i)] = static_cast<float>(v);
  }
  return f;
}

// LongRoPE-like divisors: near 1 for the short set, growing to about 40 for the long one (the
// shape of Phi's published factors).
std::vector<float> LongRopeFactors(const SynthPreset& p, bool long_set) {
  const int half = p.n_rot() / 2;
  std::vector<float> f(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    const double t = half > 1 ? static_cast<double>(i) / (half - 1) : 0.0;
    f[static_cast<size_t>(i)] = static_cast<float>(long_set ? 1 + 39 * t * t * t : 1 + 0.1 * t);
  }
  return f;
}

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t HashName(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

uint64_t PadTo(uint64_t n, uint64_t a) {
  return (n + a - 1) / a * a;
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

const std::vector<SynthPreset>& SynthPresets() {
  return kPresets;
}

std::optional<SynthPreset> FindSynthPreset(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const auto& p : kPresets)
    if (lower == p.name) return p;
  return std::nullopt;
}

std::string SynthPresetNames() {
  std::string s;
  for (const auto& p : kPresets) {
    if (p.hidden) continue;
    if (!s.empty()) s += ", ";
    s += p.name;
  }
  return s;
}

std::vector<TensorDesc> SynthTensors(const SynthPreset& p, int n_vocab) {
  const int64_t e = p.n_embd, hd = p.head_dim(), q = p.n_head * hd, kv = p.n_head_kv * hd;
  const int64_t ff = p.n_ff, v = n_vocab;
  const ArchSpec* spec = FindArch(p.arch);
  const bool qk_norm = spec && spec->qk_norm;
  const bool post_norms = spec && spec->post_norms;
  std::vector<TensorDesc> t;
  auto add = [&](std::string name, std::vector<int64_t> dims) {
    t.push_back({std::move(name), std::move(dims), TensorType::kF32});
  };
  add("token_embd.weight", {e, v});
  add("output_norm.weight", {e});
  if (!p.tied_output) add("output.weight", {e, v});
  if (p.x.llama3_factor) add("rope_freqs.weight", {p.n_rot() / 2});
  if (p.x.longrope) {
    add("rope_factors_long.weight", {p.n_rot() / 2});
    add("rope_factors_short.weight", {p.n_rot() / 2});
  }
  for (int l = 0; l < p.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", {e});
    if (p.x.fused) {
      add(b + "attn_qkv.weight", {e, q + 2 * kv});
    } else {
      add(b + "attn_q.weight", {e, q});
      add(b + "attn_k.weight", {e, kv});
      add(b + "attn_v.weight", {e, kv});
    }
    if (p.qkv_bias) {
      add(b + "attn_q.bias", {q});
      add(b + "attn_k.bias", {kv});
      add(b + "attn_v.bias", {kv});
    }
    if (qk_norm) {
      add(b + "attn_q_norm.weight", {hd});
      add(b + "attn_k_norm.weight", {hd});
    }
    add(b + "attn_output.weight", {q, e});
    if (spec && spec->FindBlock("attn_output.bias")) add(b + "attn_output.bias", {e});
    if (spec && spec->attn_sinks) add(b + "attn_sinks.weight", {p.n_head});
    if (post_norms) add(b + "post_attention_norm.weight", {e});
    add(b + std::string(spec ? spec->ffn_norm : "ffn_norm.weight"), {e});
    if (p.x.n_expert > 0) {
      const int64_t ne = p.x.n_expert, fe = p.x.n_ff_exp ? p.x.n_ff_exp : ff, fs = p.x.n_ff_shexp;
      add(b + "ffn_gate_inp.weight", {e, ne});
      add(b + "ffn_gate_exps.weight", {e, fe, ne});
      add(b + "ffn_up_exps.weight", {e, fe, ne});
      add(b + "ffn_down_exps.weight", {fe, e, ne});
      if (spec && spec->moe.biases) {
        add(b + "ffn_gate_inp.bias", {ne});
        add(b + "ffn_gate_exps.bias", {fe, ne});
        add(b + "ffn_up_exps.bias", {fe, ne});
        add(b + "ffn_down_exps.bias", {e, ne});
      }
      if (fs > 0) {
        add(b + "ffn_gate_inp_shexp.weight", {e});
        add(b + "ffn_gate_shexp.weight", {e, fs});
        add(b + "ffn_up_shexp.weight", {e, fs});
        add(b + "ffn_down_shexp.weight", {fs, e});
      }
    } else if (p.x.fused) {
      add(b + "ffn_up.weight", {e, 2 * ff});
    } else {
      add(b + "ffn_gate.weight", {e, ff});
      add(b + "ffn_up.weight", {e, ff});
    }
    if (p.x.n_expert == 0) add(b + "ffn_down.weight", {ff, e});
    if (post_norms) add(b + "post_ffw_norm.weight", {e});
  }
  SortTensorsLikeLlama(t);
  return t;
}

uint64_t SynthParamCount(const SynthPreset& p, int n_vocab) {
  uint64_t n = 0;
  for (const auto& t : SynthTensors(p, n_vocab)) {
    uint64_t k = 1;
    for (int64_t d : t.dims) k *= static_cast<uint64_t>(d);
    n += k;
  }
  return n;
}

uint64_t SynthDataBytes(const SynthPreset& p, int n_vocab, const QuantFormat& format) {
  uint64_t n = 0;
  for (const auto& t : PlanTensorTypes(SynthTensors(p, n_vocab), format, p.n_layer))
    n += PadTo(gguf::Writer::TensorBytes(t.name, t.dims, t.dst), gguf::Writer::kDefaultAlignment);
  return n;
}

void SynthRow(uint64_t seed, std::string_view tensor, int64_t row, float* out, int64_t n,
              float stddev) {
  // Each row gets its own stream, seeded from a mix of (seed, name, row).
  uint64_t state = HashName(tensor) ^ (seed * 0x9E3779B97F4A7C15ull);
  state = SplitMix64(state) ^ (static_cast<uint64_t>(row) * 0xD1B54A32D192ED03ull);
  state = SplitMix64(state);
  // Four 16-bit uniforms summed: variance 4 * (2^32 - 1) / 12 in units of 1.
  constexpr double kMean = 4 * 65535.0 / 2;
  const double scale = stddev / (65536.0 * 0.5773502691896258);  // sqrt(4/12) = 1/sqrt(3)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = SplitMix64(state);
    const uint32_t s = static_cast<uint32_t>(r & 0xFFFF) +
                       static_cast<uint32_t>((r >> 16) & 0xFFFF) +
                       static_cast<uint32_t>((r >> 32) & 0xFFFF) + static_cast<uint32_t>(r >> 48);
    out[i] = static_cast<float>((static_cast<double>(s) - kMean) * scale);
  }
}

SynthResult SynthesizeModel(const SynthPreset& p, const std::string& vocab, const std::string& out,
                            const QuantFormat& format, const SynthOptions& options) {
  if ((!p.key_length && p.n_embd % p.n_head != 0) || p.n_head % p.n_head_kv != 0 || p.n_layer < 1 ||
      p.n_ff < 1 || p.x.n_expert_used > p.x.n_expert || (p.x.n_expert > 0 && p.x.n_expert_used < 1))
    throw Error(std::string("synth preset '") + p.name + "' has inconsistent dimensions");
  if (!FindArch(p.arch))
    throw Error(std::string("synth preset '") + p.name + "': architecture '" + p.arch +
                "' is not supported (supported: " + ArchNames() + ")");
  if (!(options.stddev > 0.0f) || options.stddev > 1.0f)
    throw Error("synth: weight standard deviation " + std::to_string(options.stddev) +
                " is out of range (0, 1]");
  auto v = gguf::File::Open(vocab);
  if (!v->Has("tokenizer.ggml.tokens") || !v->Has("tokenizer.ggml.model"))
    throw Error(vocab +
                ": not a vocabulary file: metadata 'tokenizer.ggml.model' and "
                "'tokenizer.ggml.tokens' are required");
  const size_t n_tokens = v->GetStringArray("tokenizer.ggml.tokens").size();
  if (n_tokens == 0 || n_tokens > (1u << 24))
    throw Error(vocab + ": tokenizer.ggml.tokens has " + std::to_string(n_tokens) +
                " entries, expected 1 to 2^24");

  SynthResult result;
  result.n_vocab = static_cast<int>(n_tokens);
  const auto descs = SynthTensors(p, result.n_vocab);
  result.plan = PlanTensorTypes(descs, format, p.n_layer);
  result.n_params = SynthParamCount(p, result.n_vocab);

  gguf::Writer w;
  const std::string a = p.arch;
  w.SetString("general.architecture", a);
  w.SetString("general.name", options.name.empty() ? std::string(p.name) : options.name);
  w.SetU32(a + ".context_length", static_cast<uint32_t>(p.n_ctx));
  w.SetU32(a + ".embedding_length", static_cast<uint32_t>(p.n_embd));
  w.SetU32(a + ".block_count", static_cast<uint32_t>(p.n_layer));
  w.SetU32(a + ".feed_forward_length", static_cast<uint32_t>(p.n_ff));
  w.SetU32(a + ".attention.head_count", static_cast<uint32_t>(p.n_head));
  w.SetU32(a + ".attention.head_count_kv", static_cast<uint32_t>(p.n_head_kv));
  w.SetF32(a + ".rope.freq_base", p.rope_base);
  w.SetF32(a + ".attention.layer_norm_rms_epsilon", p.rms_eps);
  w.SetU32(a + ".rope.dimension_count", static_cast<uint32_t>(p.n_rot()));
  if (p.key_length) {
    w.SetU32(a + ".attention.key_length", static_cast<uint32_t>(p.key_length));
    w.SetU32(a + ".attention.value_length", static_cast<uint32_t>(p.key_length));
  }
  if (p.sliding_window)
    w.SetU32(a + ".attention.sliding_window", static_cast<uint32_t>(p.sliding_window));
  if (p.rope_scaling) {
    w.SetString(a + ".rope.scaling.type", "linear");
    w.SetF32(a + ".rope.scaling.factor", p.rope_scaling);
  }
  const SynthExtras& x = p.x;
  if (x.swa_pattern)
    w.SetU32(a + ".attention.sliding_window_pattern", static_cast<uint32_t>(x.swa_pattern));
  if (x.n_ctx_orig)
    w.SetU32(a + ".rope.scaling.original_context_length", static_cast<uint32_t>(x.n_ctx_orig));
  if (x.longrope) {
    // The attention factor Phi's converter derives from the context extension.
    const double scale = static_cast<double>(p.n_ctx) / x.n_ctx_orig;
    w.SetString(a + ".rope.scaling.type", "longrope");
    w.SetF32(a + ".rope.scaling.attn_factor",
             static_cast<float>(std::sqrt(1 + std::log(scale) / std::log(x.n_ctx_orig))));
  }
  if (x.yarn_factor) {
    w.SetString(a + ".rope.scaling.type", "yarn");
    w.SetF32(a + ".rope.scaling.factor", x.yarn_factor);
    w.SetF32(a + ".rope.scaling.yarn_beta_fast", 32.0f);
    w.SetF32(a + ".rope.scaling.yarn_beta_slow", 1.0f);
    if (!x.yarn_plain) w.SetF32(a + ".rope.scaling.yarn_log_multiplier", 1.0f);
  }
  if (x.attn_temp_scale) w.SetF32(a + ".attention.temperature_scale", x.attn_temp_scale);
  if (x.attn_softcap) w.SetF32(a + ".attn_logit_softcapping", x.attn_softcap);
  if (x.final_softcap) w.SetF32(a + ".final_logit_softcapping", x.final_softcap);
  if (x.n_expert) {
    w.SetU32(a + ".expert_count", static_cast<uint32_t>(x.n_expert));
    w.SetU32(a + ".expert_used_count", static_cast<uint32_t>(x.n_expert_used));
  }
  if (x.n_ff_exp) w.SetU32(a + ".expert_feed_forward_length", static_cast<uint32_t>(x.n_ff_exp));
  if (x.n_ff_shexp)
    w.SetU32(a + ".expert_shared_feed_forward_length", static_cast<uint32_t>(x.n_ff_shexp));
  std::map<std::string, std::vector<float>> fixed;  // tensors with computed values
  if (x.llama3_factor) fixed["rope_freqs.weight"] = Llama3Factors(p);
  if (x.longrope) {
    fixed["rope_factors_long.weight"] = LongRopeFactors(p, true);
    fixed["rope_factors_short.weight"] = LongRopeFactors(p, false);
  }
  for (const auto& key : v->metadata_keys())
    if (StartsWith(key, "tokenizer.")) w.SetValue(key, *v->Find(key));
  SetQuantizationMetadata(w, format);

  uint64_t total = 0;
  for (const auto& t : result.plan) total += gguf::Writer::TensorBytes(t.name, t.dims, t.dst);
  uint64_t done = 0;  // advanced by the data callbacks, which Write() runs one after another
  for (const auto& t : result.plan) {
    if (!t.fallback.empty() && options.warn) options.warn(t.fallback);
    int64_t rows = 1;
    for (size_t i = 1; i < t.dims.size(); ++i) rows *= t.dims[i];
    const int64_t row_len = t.dims[0];
    const size_t row_bytes = RowBytes(t.dst, row_len);
    const bool is_norm = t.name.find("norm.weight") != std::string::npos;
    // Router rows spread their logits over about +-2 (standard deviation 2 for a unit-RMS input),
    // as trained routers' do: with the small deviation of other weights every expert would be
    // nearly equally likely, and rounding alone would decide many choices.
    const bool is_router = t.name.find("ffn_gate_inp.weight") != std::string::npos;
    // Sink logits of the order of attention scores' spread, so that they visibly take weight.
    const bool is_sink = t.name.find("attn_sinks.weight") != std::string::npos;
    const bool is_gate_up_exps = t.name.find("ffn_gate_exps.weight") != std::string::npos ||
                                 t.name.find("ffn_up_exps.weight") != std::string::npos;
    const float stddev = is_router ? 2.0f / std::sqrt(static_cast<float>(p.n_embd))
                         : is_sink ? 1.0f
                         : is_gate_up_exps && x.expert_stddev > 0 ? x.expert_stddev
                                                                  : options.stddev;
    const auto it = fixed.find(t.name);
    const float* values = it == fixed.end() ? nullptr : it->second.data();
    w.AddTensor(t.name, t.dims, t.dst,
                [&, name = t.name, dst = t.dst, rows, row_len, row_bytes, is_norm, stddev,
                 values](gguf::TensorSink& sink) {
                  const uint64_t base = done;
                  WriteRows(
                      sink, dst, row_len, rows,
                      [&](int64_t r, float* y) {
                        if (values) {
                          std::copy(values, values + row_len, y);
                        } else if (is_norm && x.norm_jitter > 0) {
                          SynthRow(options.seed, name, r, y, row_len, x.norm_jitter);
                          for (int64_t i = 0; i < row_len; ++i) y[i] += 1.0f;
                        } else if (is_norm) {
                          std::fill(y, y + row_len, 1.0f);
                        } else {
                          SynthRow(options.seed, name, r, y, row_len, stddev);
                        }
                      },
                      options.threads,
                      [&](int64_t rows_done) {
                        done = base + static_cast<uint64_t>(rows_done) * row_bytes;
                        if (options.progress) options.progress(done, total, name);
                      });
                });
  }
  result.file_bytes = w.Write(out);
  return result;
}

}  // namespace es::model
