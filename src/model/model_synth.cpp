#include "model/model_synth.h"

#include <algorithm>
#include <cctype>

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
};

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
  for (int l = 0; l < p.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", {e});
    add(b + "attn_q.weight", {e, q});
    add(b + "attn_k.weight", {e, kv});
    add(b + "attn_v.weight", {e, kv});
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
    if (post_norms) add(b + "post_attention_norm.weight", {e});
    add(b + "ffn_norm.weight", {e});
    add(b + "ffn_gate.weight", {e, ff});
    add(b + "ffn_up.weight", {e, ff});
    add(b + "ffn_down.weight", {ff, e});
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
      p.n_ff < 1)
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
  w.SetU32(a + ".rope.dimension_count", static_cast<uint32_t>(p.head_dim()));
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
    w.AddTensor(
        t.name, t.dims, t.dst,
        [&, name = t.name, dst = t.dst, rows, row_len, row_bytes, is_norm](gguf::TensorSink& sink) {
          const uint64_t base = done;
          WriteRows(
              sink, dst, row_len, rows,
              [&](int64_t r, float* y) {
                if (is_norm)
                  std::fill(y, y + row_len, 1.0f);
                else
                  SynthRow(options.seed, name, r, y, row_len, options.stddev);
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
