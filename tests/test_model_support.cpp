// A file that asks for math edgeshard does not implement is refused, naming the tensor or key,
// instead of running with the wrong arithmetic. Each case is stories260K (llama) rewritten with
// one tensor or key added.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <set>
#include <string_view>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "model/model_arch.h"
#include "model/model_llama.h"
#include "runtime/runtime_session.h"
#include "test_util.h"

namespace {

using es::gguf::File;
using es::gguf::Writer;

// `model` without the tensors `drop` names and with `edit` applied, written to a temporary file.
std::string VariantOf(const std::string& model, const std::string& name,
                      const std::function<void(Writer&)>& edit,
                      const std::function<bool(const std::string&)>& drop = {}) {
  auto f = File::Open(es::test::ModelPath(model));
  Writer w;
  w.CopyMetadataFrom(*f);
  for (const auto& t : f->tensors())
    if (!drop || !drop(t.name)) w.AddTensor(t.name, t.dims, t.type, t.data);
  edit(w);
  const std::string out =
      (std::filesystem::temp_directory_path() / ("es_support_" + name + ".gguf")).string();
  w.Write(out);
  return out;
}

// stories260K (llama) with `edit` applied.
std::string Variant(const std::string& name, const std::function<void(Writer&)>& edit) {
  return VariantOf("stories260K.gguf", name, edit);
}

// Loading `path` fails with a message that contains `needle`; returns the message.
std::string Refused(const std::string& path, const std::string& needle) {
  std::string msg;
  try {
    es::model::LlamaModel::Load(path, {});
    ADD_FAILURE() << path << " loaded, expected an error naming " << needle;
  } catch (const es::Error& e) {
    msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
  std::filesystem::remove(path);
  return msg;
}

void Loads(const std::string& path) {
  EXPECT_NO_THROW(es::model::LlamaModel::Load(path, {})) << path;
  std::filesystem::remove(path);
}

const std::vector<float> kZeros(64 * 64, 0.0f);

TEST(ModelSupport, UnusedTensorsAreRefused) {
  // stories260K: n_embd 64, 5 layers.
  const struct {
    const char* tensor;
    std::vector<int64_t> dims;
    const char* says;
  } cases[] = {
      {"rope_factors_long.weight", {4}, "RoPE frequency factors"},  // LongRoPE: phi3 only
      {"blk.0.attn_q_norm.weight", {8}, "QK-norm"},
      {"blk.1.attn_k_norm.weight", {8}, "QK-norm"},
      {"blk.0.attn_output.bias", {64}, "bias"},
      {"blk.2.ffn_down.bias", {64}, "bias"},
      {"blk.0.ffn_gate_inp.weight", {64, 4}, "mixture-of-experts"},
      {"blk.0.post_attention_norm.weight", {64}, "post-norms"},
      {"blk.0.attn_qkv.weight", {64, 64}, "fused Q/K/V"},
      {"blk.5.attn_q.weight", {64, 64}, "blk.5.attn_q.weight"},  // a block past block_count
      {"mystery.weight", {64}, "mystery.weight"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.tensor);
    const std::string path = Variant("tensor", [&](Writer& w) {
      w.AddTensor(c.tensor, c.dims, es::TensorType::kF32, kZeros.data());
    });
    const std::string msg = Refused(path, c.says);
    EXPECT_NE(msg.find(std::string("'") + c.tensor + "'"), std::string::npos) << msg;
  }
}

TEST(ModelSupport, KeysThatChangeTheArithmeticAreRefused) {
  const struct {
    const char* key;
    std::function<void(Writer&, const std::string&)> set;
    const char* says;
  } cases[] = {
      {"llama.rope.scaling.type",
       [](Writer& w, const std::string& k) { w.SetString(k, "dynamic"); }, "not implemented"},
      {"llama.rope.scaling.yarn_ext_factor",
       [](Writer& w, const std::string& k) { w.SetF32(k, 0.5f); }, "YaRN"},
      {"llama.rope.dimension_sections",
       [](Writer& w, const std::string& k) {
         const int32_t s[4] = {16, 24, 24, 0};
         w.SetArray(k, std::span<const int32_t>(s, 4));
       },
       "M-)RoPE"},
      {"llama.attention.sliding_window", [](Writer& w, const std::string& k) { w.SetU32(k, 64); },
       "sliding-window"},
      {"llama.attention.sliding_window_pattern",
       [](Writer& w, const std::string& k) { w.SetU32(k, 4); }, "sliding-window"},
      {"llama.attn_logit_softcapping", [](Writer& w, const std::string& k) { w.SetF32(k, 50.0f); },
       "soft-capping"},
      {"llama.final_logit_softcapping", [](Writer& w, const std::string& k) { w.SetF32(k, 30.0f); },
       "soft-capping"},
      {"llama.attention.scale", [](Writer& w, const std::string& k) { w.SetF32(k, 0.5f); },
       "attention scale"},
      {"llama.embedding_scale", [](Writer& w, const std::string& k) { w.SetF32(k, 12.0f); },
       "scaled embeddings"},
      {"llama.residual_scale", [](Writer& w, const std::string& k) { w.SetF32(k, 0.22f); },
       "scaled residuals"},
      {"llama.logit_scale", [](Writer& w, const std::string& k) { w.SetF32(k, 0.1f); },
       "scaled output logits"},
      {"llama.attention.value_length", [](Writer& w, const std::string& k) { w.SetU32(k, 16); },
       "value head size"},
      {"llama.attention.layer_norm_epsilon",
       [](Writer& w, const std::string& k) { w.SetF32(k, 1e-5f); }, "LayerNorm"},
      {"llama.expert_count", [](Writer& w, const std::string& k) { w.SetU32(k, 8); },
       "mixture-of-experts"},
      {"llama.expert_used_count", [](Writer& w, const std::string& k) { w.SetU32(k, 2); },
       "mixture-of-experts"},
      {"llama.attention.causal", [](Writer& w, const std::string& k) { w.SetBool(k, false); },
       "non-causal"},
      {"llama.some_future_key", [](Writer& w, const std::string& k) { w.SetF32(k, 2.0f); },
       "unknown to edgeshard"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.key);
    const std::string path = Variant("key", [&](Writer& w) { c.set(w, c.key); });
    const std::string msg = Refused(path, c.says);
    EXPECT_NE(msg.find(c.key), std::string::npos) << msg;
  }
}

// Keys that only describe the file, or hold the value that is the math edgeshard does, load.
TEST(ModelSupport, InformationalAndNeutralKeysLoad) {
  Loads(Variant("neutral", [](Writer& w) {
    w.SetString("llama.rope.scaling.type", "none");
    w.SetF32("llama.rope.scaling.factor", 1.0f);
    w.SetU32("llama.rope.scaling.original_context_length", 2048);
    w.SetBool("llama.rope.scaling.finetuned", false);
    w.SetU32("llama.attention.sliding_window", 0);
    w.SetF32("llama.attn_logit_softcapping", 0.0f);
    w.SetU32("llama.attention.value_length", 8);  // = key head size (64 / 8 heads)
    w.SetU32("llama.expert_count", 0);
    w.SetBool("llama.attention.causal", true);
    w.SetString("general.some_note", "informational keys outside the architecture are fine");
    w.SetString("qwen2.rope.scaling.type", "yarn");  // another architecture's namespace
  }));
}

// Llama files may carry Q/K/V biases (llama.cpp adds them when present): they load, and they
// change the result.
TEST(ModelSupport, LlamaQkvBiasesAreComputed) {
  std::vector<float> bias(64, 0.5f);
  const std::string path = Variant("bias", [&](Writer& w) {
    // q_dim 64, kv_dim 32 (8 heads, 4 KV heads).
    for (int l = 0; l < 5; ++l)
      for (const char* t : {"attn_q.bias", "attn_k.bias", "attn_v.bias"})
        w.AddTensor("blk." + std::to_string(l) + "." + t, {t[5] == 'q' ? 64 : 32},
                    es::TensorType::kF32, bias.data());
  });
  auto plain = es::model::LlamaModel::Load(es::test::ModelPath("stories260K.gguf"), {});
  auto biased = es::model::LlamaModel::Load(path, {});
  EXPECT_TRUE(biased->config().qkv_bias);
  EXPECT_FALSE(plain->config().qkv_bias);
  es::runtime::SessionOptions so;
  so.n_ctx = 8;
  so.n_threads = 1;
  std::vector<float> a, b;
  es::runtime::Session(*plain, so).Eval({1, 2, 3}, &a);
  es::runtime::Session(*biased, so).Eval({1, 2, 3}, &b);
  ASSERT_EQ(a.size(), b.size());
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
  EXPECT_GT(diff, 1e-3) << "the biases did not reach the attention";
  std::filesystem::remove(path);
  // Only some layers with biases is a broken file, not a silent mix.
  const std::string partial = Variant("partial_bias", [&](Writer& w) {
    for (const char* t : {"attn_q.bias", "attn_k.bias", "attn_v.bias"})
      w.AddTensor(std::string("blk.0.") + t, {t[5] == 'q' ? 64 : 32}, es::TensorType::kF32,
                  bias.data());
  });
  Refused(partial, "blk.1.attn_q.bias");
}

// The last-position logits of `path` after a 40-token prompt at positions 0..39 (or, with
// `offset`, a prompt starting there: the cache is filled with the same tokens first).
std::vector<float> LastLogits(const std::string& path, int n_ctx = 64) {
  auto m = es::model::LlamaModel::Load(path, {});
  es::runtime::SessionOptions so;
  so.n_ctx = n_ctx;
  so.n_threads = 1;
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(1 + (i * 37) % 500);
  es::runtime::Session s(*m, so);
  s.Eval(prompt);
  return s.last_logits();
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    d = std::max(d, std::fabs(double(a[i]) - b[i]));
  return d;
}

// RoPE scaling is computed for every family: linear and YaRN from their keys, Llama 3's
// frequency factors from rope_freqs.weight. Each changes the result; the config holds the
// values llama.cpp derives (fidelity against llama.cpp: test_fidelity's generated families).
TEST(ModelSupport, RopeScalingIsComputed) {
  const std::vector<float> plain = LastLogits(es::test::ModelPath("stories260K.gguf"));
  {
    const std::string path = Variant("linear", [](Writer& w) {
      w.SetString("llama.rope.scaling.type", "linear");
      w.SetF32("llama.rope.scaling.factor", 4.0f);
    });
    EXPECT_EQ(es::model::LlamaModel::Load(path, {})->config().rope_freq_scale, 0.25f);
    EXPECT_GT(MaxDiff(plain, LastLogits(path)), 1e-3);
    std::filesystem::remove(path);
  }
  {
    const std::string path = Variant("yarn", [](Writer& w) {
      w.SetString("llama.rope.scaling.type", "yarn");
      w.SetF32("llama.rope.scaling.factor", 4.0f);
      w.SetU32("llama.rope.scaling.original_context_length", 32);
    });
    const auto c = es::model::LlamaModel::Load(path, {})->config();
    EXPECT_EQ(c.rope_ext_factor, 1.0f);
    EXPECT_EQ(c.n_ctx_orig, 32);
    // mscale(4) / (1 + 0.1 ln 4): the kernel's own magnitude factor cancels out.
    const float m = 0.1f * std::log(4.0f) + 1.0f;
    EXPECT_FLOAT_EQ(c.rope_attn_factor, m * (1.0f / m));
    EXPECT_GT(MaxDiff(plain, LastLogits(path)), 1e-3);
    std::filesystem::remove(path);
  }
  {
    // stories260K rotates 8 dims: 4 factors.
    const std::vector<float> factors = {1.0f, 2.0f, 4.0f, 8.0f};
    const std::string path = Variant("rope_freqs", [&](Writer& w) {
      w.AddTensor("rope_freqs.weight", {4}, es::TensorType::kF32, factors.data());
    });
    EXPECT_TRUE(es::model::LlamaModel::Load(path, {})->config().rope_freqs);
    EXPECT_GT(MaxDiff(plain, LastLogits(path)), 1e-3);
    std::filesystem::remove(path);
    // Factors of the wrong length are named.
    Refused(Variant("rope_freqs_len",
                    [&](Writer& w) {
                      w.AddTensor("rope_freqs.weight", {3}, es::TensorType::kF32, factors.data());
                    }),
            "rope_freqs.weight");
  }
}

// What a file may hold comes from its family (model_arch_*.cpp): QK-norm tensors are computed in
// qwen3 and refused in qwen2; each family's required tensors must be in every block.
TEST(ModelSupport, TensorsComeFromTheFamily) {
  const std::vector<float> ones(128, 1.0f);
  {
    auto m = es::model::LlamaModel::Load(es::test::ModelPath("synth-qwen3.f16.gguf"), {});
    EXPECT_TRUE(m->config().qk_norm);
    EXPECT_EQ(m->config().spec, es::model::FindArch("qwen3"));
  }
  // qwen2 (3 layers, head 64) has no QK-norm: refused, naming it.
  Refused(VariantOf("synth-qwen2-gpt2-256.f16.gguf", "qwen2_qk",
                    [&](Writer& w) {
                      w.AddTensor("blk.0.attn_q_norm.weight", {64}, es::TensorType::kF32,
                                  ones.data());
                    }),
          "QK-norm");
  // qwen3 without one block's QK-norm weight: the loader names the missing tensor.
  Refused(VariantOf(
              "synth-qwen3.f16.gguf", "qwen3_no_knorm", [](Writer&) {},
              [](const std::string& t) { return t == "blk.1.attn_k_norm.weight"; }),
          "blk.1.attn_k_norm.weight");
  // qwen3 has no biases.
  Refused(VariantOf("synth-qwen3.f16.gguf", "qwen3_bias",
                    [&](Writer& w) {
                      w.AddTensor("blk.0.attn_q.bias", {512}, es::TensorType::kF32, kZeros.data());
                    }),
          "blk.0.attn_q.bias");
  // llama's optional biases are decided by block 0: a later block's alone is refused.
  Refused(Variant("late_bias",
                  [&](Writer& w) {
                    w.AddTensor("blk.1.attn_q.bias", {64}, es::TensorType::kF32, kZeros.data());
                  }),
          "blk.1.attn_q.bias");
  // An architecture without a family file is refused, listing the ones there are.
  Refused(Variant("arch", [](Writer& w) { w.SetString("general.architecture", "phi2"); }),
          "not supported (supported: llama, qwen2, qwen3, gemma2, gemma3, phi3, smollm3, "
          "mistral3, qwen2moe, qwen3moe, gpt-oss)");
}

// gemma3 (model_arch_gemma3.cpp): what llama.cpp computes is loaded, the rest is refused by name.
TEST(ModelSupport, Gemma3Keys) {
  const std::string g = "synth-gemma3.f16.gguf";
  {
    auto m = es::model::LlamaModel::Load(es::test::ModelPath(g), {});
    const auto& c = m->config();
    EXPECT_EQ(c.spec, es::model::FindArch("gemma3"));
    EXPECT_EQ(c.sliding_window, 64);
    EXPECT_FLOAT_EQ(c.q_scale, 1.0f / std::sqrt(128.0f));
    EXPECT_EQ(c.embd_scale, 16.0f);
    EXPECT_EQ(c.rope_base_local, 10000.0f);
    EXPECT_EQ(c.rope_base, 1e6f);
    EXPECT_EQ(c.rope_freq_scale, 1.0f);
    // sliding_window_pattern 4: layers 0-2 local, layer 3 global.
    EXPECT_EQ(c.swa_pattern, 4);
    EXPECT_TRUE(c.IsLocal(0) && c.IsLocal(1) && c.IsLocal(2));
    EXPECT_FALSE(c.IsLocal(3));
    EXPECT_EQ(c.Window(0), 64);
    EXPECT_EQ(c.Window(3), 0);
  }
  // Linear RoPE scaling (Gemma 3 4B+) is computed on the global layers; the local layers' base
  // and the period of global layers come from the file when it has them.
  {
    const std::string path = VariantOf(g, "g3_linear", [](Writer& w) {
      w.SetString("gemma3.rope.scaling.type", "linear");
      w.SetF32("gemma3.rope.scaling.factor", 8.0f);
      w.SetF32("gemma3.rope.freq_base_swa", 50000.0f);
      w.SetU32("gemma3.attention.sliding_window_pattern", 6);
    });
    auto m = es::model::LlamaModel::Load(path, {});
    EXPECT_EQ(m->config().rope_freq_scale, 0.125f);
    EXPECT_EQ(m->config().rope_base_local, 50000.0f);
    EXPECT_TRUE(m->config().IsLocal(3));
    EXPECT_FALSE(m->config().IsLocal(5));
    m.reset();
    std::filesystem::remove(path);
  }
  // Type "none" ignores a factor, as llama.cpp does.
  {
    const std::string path = VariantOf(g, "g3_none", [](Writer& w) {
      w.SetString("gemma3.rope.scaling.type", "none");
      w.SetF32("gemma3.rope.scaling.factor", 8.0f);
    });
    EXPECT_EQ(es::model::LlamaModel::Load(path, {})->config().rope_freq_scale, 1.0f);
    std::filesystem::remove(path);
  }
  // Without a window every layer is global.
  {
    const std::string path = VariantOf(
        g, "g3_no_window", [](Writer& w) { w.SetU32("gemma3.attention.sliding_window", 0); });
    auto m = es::model::LlamaModel::Load(path, {});
    EXPECT_FALSE(m->config().IsLocal(0));
    m.reset();
    std::filesystem::remove(path);
  }
  Refused(
      VariantOf(g, "g3_yarn", [](Writer& w) { w.SetString("gemma3.rope.scaling.type", "yarn"); }),
      "gemma3.rope.scaling.type");
  Refused(VariantOf(g, "g3_pattern_array",
                    [](Writer& w) {
                      w.SetStringArray("gemma3.attention.sliding_window_pattern", {"a", "b"});
                    }),
          "per-layer array");
  Refused(VariantOf(g, "g3_final_cap",
                    [](Writer& w) { w.SetF32("gemma3.final_logit_softcapping", 30.0f); }),
          "final logit soft-capping");
  Refused(VariantOf(g, "g3_attn_cap",
                    [](Writer& w) { w.SetF32("gemma3.attn_logit_softcapping", 50.0f); }),
          "attention logit soft-capping");
  Refused(VariantOf(
              g, "g3_no_post_norm", [](Writer&) {},
              [](const std::string& t) { return t == "blk.2.post_ffw_norm.weight"; }),
          "blk.2.post_ffw_norm.weight");
}

// Each family's flags agree with its declarations, and the registry finds it by name.
TEST(ModelSupport, FamiliesAreConsistent) {
  const auto& all = es::model::Architectures();
  ASSERT_GE(all.size(), 3u);
  for (const es::model::ArchSpec* a : all) {
    SCOPED_TRACE(std::string(a->name));
    EXPECT_EQ(es::model::FindArch(a->name), a);
    EXPECT_EQ(a->qk_norm, a->FindBlock("attn_q_norm.weight") != nullptr);
    EXPECT_EQ(a->qk_norm, a->FindBlock("attn_k_norm.weight") != nullptr);
    std::set<std::string_view> names;
    for (const auto& d : a->block) EXPECT_TRUE(names.insert(d.name).second) << d.name;
    for (const auto& d : a->globals) EXPECT_TRUE(names.insert(d.name).second) << d.name;
    // gpt-oss stores its feed-forward's input norm under post_attention_norm (llama.cpp's name).
    const bool post_attn = a->FindBlock("post_attention_norm.weight") != nullptr &&
                           a->ffn_norm != "post_attention_norm.weight";
    EXPECT_EQ(a->post_norms, post_attn);
    EXPECT_EQ(a->post_norms, a->FindBlock("post_ffw_norm.weight") != nullptr);
  }
  EXPECT_EQ(es::model::FindArch("phi2"), nullptr);
}

}  // namespace
