// Mixture-of-experts models: sparse compute counted (a decode step multiplies exactly the chosen
// experts' bytes; a prompt batch reads each chosen expert once), the refusal of MoE settings
// edgeshard does not compute, and the synth presets at their published sizes. Fidelity against
// llama.cpp is in test_fidelity (tiny-test-qwen3moe/qwen2moe/mixtral/gpt-oss references).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "model/model_llama.h"
#include "model/model_quantize.h"
#include "model/model_synth.h"
#include "runtime/runtime_session.h"
#include "test_util.h"

namespace {

using es::gguf::File;
using es::gguf::Writer;

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("es_moe_" + std::to_string(getpid()) + "_" + name + ".gguf"))
      .string();
}

// The synth preset written once per process (f16, seed 42, Llama-2 SPM vocabulary).
std::string Generated(const std::string& preset) {
  static std::map<std::string, std::string> done;
  auto it = done.find(preset);
  if (it != done.end()) return it->second;
  const std::string path = TempPath(preset);
  const auto p = es::model::FindSynthPreset(preset);
  EXPECT_TRUE(p) << preset;
  es::model::SynthOptions so;
  so.threads = 2;
  es::model::SynthesizeModel(*p, es::test::ModelPath("vocab/ggml-vocab-llama-spm.gguf"), path,
                             *es::model::FindQuantFormat("f16"), so);
  done[preset] = path;
  return path;
}

class RemoveFiles : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const char* p :
         {"tiny-test-qwen3moe", "tiny-test-qwen2moe", "tiny-test-mixtral", "tiny-test-gpt-oss"})
      std::filesystem::remove(TempPath(p));
  }
};
const auto* const kRemove = ::testing::AddGlobalTestEnvironment(new RemoveFiles);

// The (layer -> experts) a read record lists, checking that no expert is read twice in a layer.
std::map<int, std::set<int>> ByLayer(const es::model::ExpertReads& r) {
  std::map<int, std::set<int>> m;
  for (const auto& [layer, expert] : r.experts)
    EXPECT_TRUE(m[layer].insert(expert).second)
        << "layer " << layer << " read expert " << expert << " twice in one pass";
  return m;
}

const std::vector<int32_t> kPrompt = {1,    9038, 2501, 263,   931,  727,  471, 263,  2217, 7826,
                                      4257, 365,  2354, 29889, 2296, 5360, 304, 1708, 5377, 29889};

TEST(MoeSparse, DecodeReadsOnlyTheChosenExperts) {
  for (const char* preset :
       {"tiny-test-qwen3moe", "tiny-test-qwen2moe", "tiny-test-mixtral", "tiny-test-gpt-oss"}) {
    SCOPED_TRACE(preset);
    auto model = es::model::LlamaModel::Load(Generated(preset));
    const auto& c = model->config();
    ASSERT_TRUE(c.moe());
    const uint64_t per_expert = model->ExpertBytes(0);
    // gate and up [n_embd -> n_ff_exp] and down [n_ff_exp -> n_embd], F16.
    EXPECT_EQ(per_expert, 3ull * c.n_embd * c.n_ff_exp * 2);
    es::runtime::SessionOptions so;
    so.n_ctx = 64;
    so.n_threads = 2;
    so.n_batch = static_cast<int>(kPrompt.size());
    es::runtime::Session s(*model, so);

    // A prompt batch: each layer reads each expert some row chose, once.
    es::model::ExpertReads batch;
    model->CountExpertReads(&batch);
    s.Eval(kPrompt);
    model->CountExpertReads(nullptr);
    const auto batch_layers = ByLayer(batch);
    ASSERT_EQ(batch_layers.size(), static_cast<size_t>(c.n_layer));
    uint64_t distinct = 0;
    for (const auto& [layer, experts] : batch_layers) {
      EXPECT_GE(experts.size(), static_cast<size_t>(c.n_expert_used));
      EXPECT_LE(experts.size(), static_cast<size_t>(c.n_expert));
      distinct += experts.size();
    }
    EXPECT_EQ(batch.bytes, distinct * per_expert);
    // 20 rows choose more than k experts in some layer (else the grouping is not exercised), and
    // read fewer bytes than 20 separate decode steps would.
    EXPECT_GT(distinct, static_cast<uint64_t>(c.n_layer) * c.n_expert_used);
    EXPECT_LT(batch.bytes, kPrompt.size() * c.n_layer * c.n_expert_used * per_expert);

    // One decode step: exactly n_expert_used experts per layer.
    es::model::ExpertReads step;
    model->CountExpertReads(&step);
    s.Eval({29889});
    model->CountExpertReads(nullptr);
    const auto step_layers = ByLayer(step);
    ASSERT_EQ(step_layers.size(), static_cast<size_t>(c.n_layer));
    for (const auto& [layer, experts] : step_layers)
      EXPECT_EQ(experts.size(), static_cast<size_t>(c.n_expert_used)) << "layer " << layer;
    EXPECT_EQ(step.bytes, static_cast<uint64_t>(c.n_layer) * c.n_expert_used * per_expert);
    // The router's margin was recorded for the one row of every layer.
    ASSERT_EQ(step.margins.size(), static_cast<size_t>(c.n_layer));
    for (const auto& m : step.margins) {
      ASSERT_EQ(m.size(), 1u);
      EXPECT_GE(m[0], 0.0f);
    }
  }
}

// The batch (experts gathered over rows) and one row at a time give the same logits.
TEST(MoeSparse, BatchMatchesTokenByToken) {
  auto model = es::model::LlamaModel::Load(Generated("tiny-test-qwen3moe"));
  const int n_vocab = model->config().n_vocab;
  es::runtime::SessionOptions so;
  so.n_ctx = 64;
  so.n_threads = 2;
  so.n_batch = static_cast<int>(kPrompt.size());
  es::runtime::Session batch(*model, so);
  std::vector<float> all;
  batch.Eval(kPrompt, &all);
  so.n_batch = 1;
  es::runtime::Session single(*model, so);
  for (size_t i = 0; i < kPrompt.size(); ++i) {
    single.Eval({kPrompt[i]});
    const auto& l = single.last_logits();
    for (int v = 0; v < n_vocab; ++v)
      ASSERT_NEAR(l[static_cast<size_t>(v)], all[i * n_vocab + v], 2e-3)
          << "position " << i << " token " << v;
  }
}

// `base` (a tiny-test preset) rewritten with `edit` applied (and the tensors `drop` names left
// out).
std::string Variant(const std::string& name, const std::function<void(Writer&)>& edit,
                    const std::function<bool(const std::string&)>& drop = {},
                    const std::string& base = "tiny-test-qwen3moe") {
  auto f = File::Open(Generated(base));
  Writer w;
  w.CopyMetadataFrom(*f);
  for (const auto& t : f->tensors())
    if (!drop || !drop(t.name)) w.AddTensor(t.name, t.dims, t.type, t.data);
  edit(w);
  const std::string out = TempPath("variant_" + name);
  w.Write(out);
  return out;
}

void ExpectRefused(const std::string& path, const std::vector<std::string>& needles) {
  try {
    es::model::LlamaModel::Load(path, {});
    ADD_FAILURE() << path << " loaded";
  } catch (const es::Error& e) {
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}

TEST(MoeSupport, SettingsWeDoNotComputeAreRefused) {
  const struct {
    const char* name;
    std::function<void(Writer&)> edit;
    std::vector<std::string> says;
  } cases[] = {
      {"gating",
       [](Writer& w) { w.SetU32("qwen3moe.expert_gating_func", 2); },
       {"qwen3moe.expert_gating_func", "gating function other than softmax"}},
      {"groups",
       [](Writer& w) {
         w.SetU32("qwen3moe.expert_group_count", 4);
         w.SetU32("qwen3moe.expert_group_used_count", 2);
       },
       {"grouped expert selection"}},
      {"scale",
       [](Writer& w) { w.SetF32("qwen3moe.expert_weights_scale", 2.5f); },
       {"qwen3moe.expert_weights_scale", "scaled expert weights"}},
      {"norm",
       [](Writer& w) { w.SetBool("qwen3moe.expert_weights_norm", false); },
       {"qwen3moe.expert_weights_norm", "normalised differently"}},
      {"shared",
       [](Writer& w) { w.SetU32("qwen3moe.expert_shared_feed_forward_length", 512); },
       {"shared expert"}},
      {"per_layer",
       [](Writer& w) {
         const uint32_t used[3] = {4, 2, 4};
         w.SetArray("qwen3moe.expert_used_count", std::span<const uint32_t>(used, 3));
       },
       {"qwen3moe.expert_used_count", "per-layer array"}},
      {"too_many",
       [](Writer& w) { w.SetU32("qwen3moe.expert_used_count", 17); },
       {"qwen3moe.expert_used_count", "expected 0..16"}},
      {"no_count",
       [](Writer& w) { w.Remove("qwen3moe.expert_count"); },
       {"qwen3moe.expert_count' is missing", "mixture of experts"}},
      {"unknown",
       [](Writer& w) { w.SetF32("qwen3moe.expert_temperature", 0.5f); },
       {"qwen3moe.expert_temperature", "mixture-of-experts parameters"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ExpectRefused(Variant(c.name, c.edit), c.says);
  }
  // An expert tensor of the wrong shape, and one missing from a later block.
  ExpectRefused(
      Variant(
          "shape",
          [](Writer& w) {
            // The writer keeps the pointer until Write: the data must outlive this lambda.
            static const std::vector<uint16_t> z(256 * 128 * 16, 0);
            w.AddTensor("blk.0.ffn_up_exps.weight", {256, 128, 16}, es::TensorType::kF16, z.data());
          },
          [](const std::string& n) { return n == "blk.0.ffn_up_exps.weight"; }),
      {"blk.0.ffn_up_exps.weight", "[256, 256, 16]"});
  ExpectRefused(Variant(
                    "missing", [](Writer&) {},
                    [](const std::string& n) { return n == "blk.2.ffn_down_exps.weight"; }),
                {"blk.2.ffn_down_exps.weight"});
  // Settings that are the math we do load: softmax gating, norm on, scale 1, no groups.
  auto ok = Variant("neutral", [](Writer& w) {
    w.SetU32("qwen3moe.expert_gating_func", 1);
    w.SetBool("qwen3moe.expert_weights_norm", true);
    w.SetF32("qwen3moe.expert_weights_scale", 1.0f);
    w.SetU32("qwen3moe.expert_group_count", 0);
  });
  EXPECT_NO_THROW(es::model::LlamaModel::Load(ok, {}));
  std::filesystem::remove(ok);
}

// gpt-oss: what its files must hold (sinks, biases, the window), and its gating as a key.
TEST(MoeSupport, GptOssRefusesWhatItDoesNotCompute) {
  const std::string base = "tiny-test-gpt-oss";
  auto drop = [](const char* tensor) {
    return [tensor](const std::string& n) { return n == tensor; };
  };
  auto keep = [](Writer&) {};
  ExpectRefused(
      Variant(
          "oss_gating", [](Writer& w) { w.SetU32("gpt-oss.expert_gating_func", 1); }, {}, base),
      {"gpt-oss.expert_gating_func", "softmax of the top-k"});
  ExpectRefused(
      Variant(
          "oss_window", [](Writer& w) { w.Remove("gpt-oss.attention.sliding_window"); }, {}, base),
      {"gpt-oss.attention.sliding_window' is missing"});
  ExpectRefused(Variant("oss_sinks", keep, drop("blk.1.attn_sinks.weight"), base),
                {"blk.1.attn_sinks.weight"});
  ExpectRefused(Variant("oss_router_bias", keep, drop("blk.0.ffn_gate_inp.bias"), base),
                {"blk.0.ffn_gate_inp.bias"});
  ExpectRefused(Variant("oss_head", keep, drop("output.weight"), base), {"output.weight"});
  // Sinks in a family without them stay refused by name.
  ExpectRefused(Variant("sinks_elsewhere",
                        [](Writer& w) {
                          static const std::vector<float> z(4, 0.0f);
                          w.AddTensor("blk.0.attn_sinks.weight", {4}, es::TensorType::kF32,
                                      z.data());
                        }),
                {"blk.0.attn_sinks.weight", "attention sinks"});
  // The gating llama.cpp computes for gpt-oss, said explicitly, loads.
  auto ok = Variant(
      "oss_neutral", [](Writer& w) { w.SetU32("gpt-oss.expert_gating_func", 3); }, {}, base);
  EXPECT_NO_THROW(es::model::LlamaModel::Load(ok, {}));
  std::filesystem::remove(ok);
}

TEST(MoeSupport, ExpertsInADenseFamilyAreRefused) {
  // qwen3 (dense) has no experts: the same file relabelled is refused by its expert_count.
  auto f = File::Open(Generated("tiny-test-qwen3moe"));
  Writer w;
  for (const auto& key : f->metadata_keys()) {
    std::string k = key;
    if (k.rfind("qwen3moe.", 0) == 0) k = "qwen3." + k.substr(9);
    w.SetValue(k, *f->Find(key));
  }
  w.SetString("general.architecture", "qwen3");
  for (const auto& t : f->tensors()) w.AddTensor(t.name, t.dims, t.type, t.data);
  const std::string path = TempPath("dense_family");
  w.Write(path);
  ExpectRefused(path, {"qwen3.expert_count", "does not implement for architecture 'qwen3'"});
}

// llama.cpp's quantization mixes for MoE files: an 8-expert model's attn_k and attn_v in Q8_0 and
// (Q4_K_M) attn_output in Q5_K; ffn_down tensors (routed and shared) placed by their block.
TEST(MoeQuantize, MixesFollowLlamaCppExpertRules) {
  auto plan = [](const char* preset, const char* format) {
    const auto p = es::model::FindSynthPreset(preset);
    std::map<std::string, es::TensorType> m;
    for (const auto& t : es::model::PlanTensorTypes(
             es::model::SynthTensors(*p, 32000), *es::model::FindQuantFormat(format), p->n_layer))
      m[t.name] = t.dst;
    return m;
  };
  using T = es::TensorType;
  for (const char* eight : {"tiny-test-mixtral", "tiny-test-qwen2moe"}) {
    SCOPED_TRACE(eight);
    auto m = plan(eight, "q4_k_m");
    for (const char* b : {"blk.0.", "blk.1."}) {
      EXPECT_EQ(m[std::string(b) + "attn_k.weight"], T::kQ8_0);
      EXPECT_EQ(m[std::string(b) + "attn_v.weight"], T::kQ8_0);
      EXPECT_EQ(m[std::string(b) + "attn_output.weight"], T::kQ5_K);
      EXPECT_EQ(m[std::string(b) + "ffn_gate_exps.weight"], T::kQ4_K);
      EXPECT_EQ(m[std::string(b) + "ffn_gate_inp.weight"], T::kF32);  // routers stay F32
    }
    // 2 blocks: use_more_bits gives the last (block 1) Q6_K, whatever the tensor order.
    EXPECT_EQ(m["blk.0.ffn_down_exps.weight"], T::kQ4_K);
    EXPECT_EQ(m["blk.1.ffn_down_exps.weight"], T::kQ6_K);
  }
  auto sh = plan("tiny-test-qwen2moe", "q4_k_m");
  EXPECT_EQ(sh["blk.0.ffn_down_shexp.weight"], T::kQ4_K);
  EXPECT_EQ(sh["blk.1.ffn_down_shexp.weight"], T::kQ6_K);
  // 16 experts: no 8-expert bump.
  auto q3 = plan("tiny-test-qwen3moe", "q4_k_m");
  EXPECT_EQ(q3["blk.0.attn_k.weight"], T::kQ4_K);
  EXPECT_EQ(q3["blk.0.attn_output.weight"], T::kQ4_K);
  // Q3_K_L's attn_output rule (Q5_K) is not the 8-expert one: llama.cpp leaves it at the base.
  EXPECT_EQ(plan("tiny-test-mixtral", "q3_k_l")["blk.0.attn_output.weight"], T::kQ3_K);
}

TEST(MoeSynth, RealShapesHaveThePublishedSizes) {
  // Total parameters with each model's own vocabulary, against the published figures.
  const struct {
    const char* preset;
    double billions;
  } cases[] = {{"qwen3-30b-a3b", 30.5},
               {"mixtral-8x7b", 46.7},
               {"qwen1.5-moe-a2.7b", 14.3},
               {"gpt-oss-20b", 20.9},
               {"gpt-oss-120b", 116.8}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.preset);
    const auto p = es::model::FindSynthPreset(c.preset);
    ASSERT_TRUE(p);
    EXPECT_FALSE(p->hidden);
    const double n = static_cast<double>(es::model::SynthParamCount(*p, p->ref_vocab)) / 1e9;
    EXPECT_NEAR(n, c.billions, 0.05 * c.billions);
  }
  // The CI-sized one is listed and small.
  const auto mini = es::model::FindSynthPreset("olmoe-mini");
  ASSERT_TRUE(mini);
  EXPECT_FALSE(mini->hidden);
  EXPECT_LT(es::model::SynthParamCount(*mini, 32000), 50'000'000u);
}

}  // namespace
