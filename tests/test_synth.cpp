// `edgeshard synth`: random-weight models at real shapes with a real vocabulary. They have
// llama.cpp's file layout, load in the engine with their metadata intact, and give sane outputs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "model/model_llama.h"
#include "model/model_synth.h"
#include "tensor/tensor_quant.h"
#include "test_util.h"

namespace {

using es::TensorType;
using es::test::ModelPath;
using es::test::RunCli;

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("es_synth_" + std::to_string(getpid()) + "_" + info->name());
    std::filesystem::create_directories(dir_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  std::filesystem::path dir_;
};

std::string LlamaVocab() {
  return ModelPath("vocab/ggml-vocab-llama-spm.gguf");
}
std::string Gpt2Vocab() {
  return ModelPath("vocab/ggml-vocab-gpt-2.gguf");
}

es::test::RunResult Synth(const std::string& args) {
  auto r = RunCli("synth " + args);
  EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
  return r;
}

std::vector<float> Dequantize(const es::gguf::TensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(t.NumElements()));
  const int64_t n = t.dims[0];
  const size_t rb = es::RowBytes(t.type, n);
  for (int64_t r = 0; r < t.Rows(); ++r)
    es::DequantizeRowRef(t.type, t.data + r * rb, out.data() + r * n, n);
  return out;
}

double Perplexity(const std::string& model) {
  const auto r = RunCli("perplexity -m '" + model + "' -f '" +
                        ModelPath("../data/gpl3-head12k.txt") + "' -c 128 --chunks 4");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  const std::regex re("Final estimate: PPL = ([0-9.]+|nan|inf)");
  if (!std::regex_search(r.out, m, re)) {
    ADD_FAILURE() << "no perplexity in output: " << r.out << r.err;
    return 0;
  }
  return std::stod(m[1]);
}

// Every tokenizer.* entry of the vocabulary file, in order and with equal values.
void ExpectSameTokenizer(const es::gguf::File& model, const es::gguf::File& vocab) {
  std::vector<std::string> a, b;
  for (const auto& k : model.metadata_keys())
    if (k.rfind("tokenizer.", 0) == 0) a.push_back(k);
  for (const auto& k : vocab.metadata_keys())
    if (k.rfind("tokenizer.", 0) == 0) b.push_back(k);
  EXPECT_EQ(a, b);
  for (const auto& k : b) {
    const auto* x = model.Find(k);
    const auto* y = vocab.Find(k);
    ASSERT_NE(x, nullptr) << k;
    EXPECT_EQ(x->type, y->type) << k;
    EXPECT_EQ(x->elem_type, y->elem_type) << k;
    EXPECT_TRUE(x->scalar == y->scalar) << k;
    EXPECT_EQ(x->Strings(), y->Strings()) << k;
    EXPECT_EQ(x->Numbers(), y->Numbers()) << k;
  }
}

// With the shapes and name of the shared synth models (written by llama.cpp's tools), our files
// have byte-identical headers: metadata, tensor table, offsets; and the same size.
TEST(SynthCli, HeadersMatchLlamaCppWrittenModels) {
  TempDir tmp;
  struct Case {
    std::string preset, type, vocab, name, ref;
  };
  const std::vector<Case> cases = {
      {"tiny-test", "q4_k_m", LlamaVocab(), "synth-llama-spm-256",
       "synth-llama-spm-256.q4_k_m.gguf"},
      {"tiny-test", "f16", LlamaVocab(), "synth-llama-spm-256", "synth-llama-spm-256.f16.gguf"},
      {"tiny-test-qwen2", "q4_0-q6k-output", Gpt2Vocab(), "synth-qwen2-gpt2-256",
       "synth-qwen2-gpt2-256.q4_0.gguf"},
      {"tiny-test-qwen2", "q8_0", Gpt2Vocab(), "synth-qwen2-gpt2-256",
       "synth-qwen2-gpt2-256.q8_0.gguf"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.ref);
    const std::string out = tmp.Path(c.type + ".gguf");
    Synth("--preset " + c.preset + " --type " + c.type + " --vocab '" + c.vocab + "' -o '" + out +
          "' --name " + c.name + " --threads 2");
    auto ours = es::gguf::File::Open(out);
    auto ref = es::gguf::File::Open(ModelPath(c.ref));
    EXPECT_EQ(ours->file_size(), ref->file_size());
    ASSERT_EQ(ours->data_offset(), ref->data_offset());
    EXPECT_EQ(std::memcmp(ours->base(), ref->base(), ours->data_offset()), 0) << "headers differ";
    ASSERT_EQ(ours->tensors().size(), ref->tensors().size());
    for (size_t i = 0; i < ref->tensors().size(); ++i) {
      EXPECT_EQ(ours->tensors()[i].name, ref->tensors()[i].name);
      EXPECT_EQ(ours->tensors()[i].type, ref->tensors()[i].type) << ref->tensors()[i].name;
    }
  }
}

TEST(SynthCli, LoadsInEngineWithMetadataIntact) {
  TempDir tmp;
  const std::string out = tmp.Path("tiny.gguf");
  const auto r =
      Synth("--preset tiny-test --type f16 --vocab '" + LlamaVocab() + "' -o '" + out + "'");
  EXPECT_NE(r.out.find("tiny-test"), std::string::npos) << r.out;
  const auto preset = *es::model::FindSynthPreset("tiny-test");
  auto m = es::model::LlamaModel::Load(out);
  const auto& c = m->config();
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.name, "tiny-test");
  EXPECT_EQ(c.n_layer, preset.n_layer);
  EXPECT_EQ(c.n_embd, preset.n_embd);
  EXPECT_EQ(c.n_head, preset.n_head);
  EXPECT_EQ(c.n_head_kv, preset.n_head_kv);
  EXPECT_EQ(c.n_ff, preset.n_ff);
  EXPECT_EQ(c.n_ctx_train, preset.n_ctx);
  EXPECT_EQ(c.head_dim, preset.n_embd / preset.n_head);
  EXPECT_EQ(c.n_rot, c.head_dim);
  EXPECT_FLOAT_EQ(c.rope_base, preset.rope_base);
  EXPECT_FLOAT_EQ(c.rms_eps, preset.rms_eps);
  EXPECT_FALSE(c.tied_output);
  auto vocab = es::gguf::File::Open(LlamaVocab());
  EXPECT_EQ(c.n_vocab, static_cast<int>(vocab->GetStringArray("tokenizer.ggml.tokens").size()));
  ExpectSameTokenizer(m->file(), *vocab);
  EXPECT_EQ(m->file().GetInt("general.file_type"), 1);
  EXPECT_EQ(m->file().GetInt("general.quantization_version"), 2);
  for (const auto& t : m->file().tensors())
    EXPECT_EQ(t.type, t.dims.size() == 1 ? TensorType::kF32 : TensorType::kF16) << t.name;

  // Random weights give a near-uniform next-token distribution: perplexity close to the
  // vocabulary size (a little above it), not a blow-up from badly scaled activations.
  const double ppl = Perplexity(out);
  EXPECT_GT(ppl, 0.9 * c.n_vocab);
  EXPECT_LT(ppl, 1.5 * c.n_vocab);
}

TEST(SynthCli, Qwen2PresetWithGpt2Vocab) {
  TempDir tmp;
  const std::string out = tmp.Path("q.gguf");
  Synth("--preset tiny-test-qwen2 --type q8_0 --vocab '" + Gpt2Vocab() + "' -o '" + out +
        "' --seed 5");
  auto m = es::model::LlamaModel::Load(out);
  const auto& c = m->config();
  EXPECT_EQ(c.arch, "qwen2");
  EXPECT_TRUE(c.tied_output);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.rope_neox);
  EXPECT_EQ(c.n_vocab, 50257);
  EXPECT_NE(m->file().FindTensor("blk.0.attn_q.bias"), nullptr);
  EXPECT_EQ(m->file().FindTensor("output.weight"), nullptr);
  ExpectSameTokenizer(m->file(), *es::gguf::File::Open(Gpt2Vocab()));
  const double ppl = Perplexity(out);
  EXPECT_GT(ppl, 0.9 * c.n_vocab);
  EXPECT_LT(ppl, 1.5 * c.n_vocab);
}

// A small model of `preset` written as F16 with the vocabulary of the shared `vocab_model`;
// the caller checks its config, then SaneOutputs checks the tokenizer copy and the perplexity.
std::unique_ptr<es::model::LlamaModel> TinyPreset(const TempDir& tmp, const std::string& preset,
                                                  const std::string& vocab_model) {
  const std::string out = tmp.Path(preset + ".gguf");
  Synth("--preset " + preset + " --type f16 --vocab '" + ModelPath(vocab_model) + "' -o '" + out +
        "' --seed 3");
  return es::model::LlamaModel::Load(out);
}

void SaneOutputs(const TempDir& tmp, const std::string& preset, const std::string& vocab_model,
                 const es::model::LlamaModel& m) {
  ExpectSameTokenizer(m.file(), *es::gguf::File::Open(ModelPath(vocab_model)));
  const double ppl = Perplexity(tmp.Path(preset + ".gguf"));
  EXPECT_GT(ppl, 0.9 * m.config().n_vocab);
  EXPECT_LT(ppl, 1.5 * m.config().n_vocab);
}

// A small qwen3 (the shared synth-qwen3's shape: head 128, q_dim 512 != n_embd 96, QK-norm), with
// the Qwen2 BPE vocabulary copied from that file: it loads as qwen3 and gives sane outputs.
TEST(SynthCli, Qwen3PresetLoads) {
  TempDir tmp;
  auto m = TinyPreset(tmp, "tiny-test-qwen3", "synth-qwen3.f16.gguf");
  const auto& c = m->config();
  EXPECT_EQ(c.arch, "qwen3");
  EXPECT_EQ(c.n_embd, 96);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_dim(), 512);
  EXPECT_EQ(c.kv_dim(), 256);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_TRUE(c.rope_neox);
  EXPECT_TRUE(c.tied_output);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.n_vocab, 151936);
  EXPECT_NE(m->file().FindTensor("blk.2.attn_k_norm.weight"), nullptr);
  SaneOutputs(tmp, "tiny-test-qwen3", "synth-qwen3.f16.gguf", *m);
}

// A small gemma3 (the shared synth-gemma3's shape, its Llama-2 vocabulary): it loads as gemma3
// with the family's sliding window, scales and sandwich norms, and gives sane outputs.
TEST(SynthCli, Gemma3PresetLoads) {
  TempDir tmp;
  auto m = TinyPreset(tmp, "tiny-test-gemma3", "synth-gemma3.f16.gguf");
  const auto& c = m->config();
  EXPECT_EQ(c.arch, "gemma3");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.kv_dim(), 128);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_TRUE(c.post_norms);
  EXPECT_TRUE(c.tied_output);
  EXPECT_EQ(c.sliding_window, 64);
  EXPECT_TRUE(c.IsLocal(0));
  EXPECT_FALSE(c.IsLocal(5));
  EXPECT_EQ(c.embd_scale, 16.0f);
  EXPECT_NE(m->file().FindTensor("blk.3.post_ffw_norm.weight"), nullptr);
  SaneOutputs(tmp, "tiny-test-gemma3", "synth-gemma3.f16.gguf", *m);
}

// stories110m at its real shapes (written as Q4_0 to stay small); loaded, not run.
TEST(SynthCli, Stories110mMetadata) {
  TempDir tmp;
  const std::string out = tmp.Path("s.gguf");
  Synth("--preset stories110m --type q4_0 --vocab '" + LlamaVocab() + "' -o '" + out + "'");
  es::model::LoadOptions lo;
  lo.prefault = false;
  auto m = es::model::LlamaModel::Load(out, lo);
  const auto& c = m->config();
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.name, "stories110m");
  EXPECT_EQ(c.n_embd, 768);
  EXPECT_EQ(c.n_layer, 12);
  EXPECT_EQ(c.n_head, 12);
  EXPECT_EQ(c.n_head_kv, 12);
  EXPECT_EQ(c.n_ff, 2048);
  EXPECT_EQ(c.n_ctx_train, 1024);
  EXPECT_EQ(c.n_vocab, 32000);
  EXPECT_TRUE(c.tied_output);  // llama2.c ties the classifier to the embedding
  EXPECT_EQ(m->file().GetInt("general.file_type"), 2);
  uint64_t params = 0;
  for (const auto& t : m->file().tensors()) {
    params += static_cast<uint64_t>(t.NumElements());
    EXPECT_EQ(t.type, t.dims.size() == 1 ? TensorType::kF32 : TensorType::kQ4_0) << t.name;
  }
  const auto preset = *es::model::FindSynthPreset("stories110m");
  EXPECT_EQ(params, es::model::SynthParamCount(preset, 32000));
  EXPECT_NEAR(static_cast<double>(params), 110e6, 1e6);  // "110M"
  // The data section is the size --list reports.
  EXPECT_EQ(m->file().file_size() - m->file().data_offset(),
            es::model::SynthDataBytes(preset, 32000, *es::model::FindQuantFormat("q4_0")));
}

// Parameter counts of the real models (from their published checkpoints).
TEST(SynthPresets, RealModelParameterCounts) {
  auto count = [](const char* name, int vocab) {
    return es::model::SynthParamCount(*es::model::FindSynthPreset(name), vocab);
  };
  EXPECT_EQ(count("llama2-7b", 32000), 6738415616ull);
  EXPECT_EQ(count("llama2-13b", 32000), 13015864320ull);
  EXPECT_EQ(count("tinyllama-1.1b", 32000), 1100048384ull);
  EXPECT_EQ(count("qwen2-0.5b", 151936), 494032768ull);
  // Qwen3: 0.6B (0.44B without the embedding) and 4.0B (3.6B), tied.
  EXPECT_EQ(count("qwen3-0.6b", 151936), 596049920ull);
  EXPECT_EQ(count("qwen3-4b", 151936), 4022468096ull);
  // Gemma 3 1B (999,885,952 parameters) and 4B's language model (3,880,263,168), tied; both
  // carry QK-norm and post-attention/post-FFN norms in every layer.
  EXPECT_EQ(count("gemma3-1b", 262144), 999885952ull);
  EXPECT_EQ(count("gemma3-4b", 262208), 3880263168ull);
  const auto g = *es::model::FindSynthPreset("gemma3-1b");
  EXPECT_EQ(g.head_dim(), 256);
  EXPECT_EQ(g.sliding_window, 512);
  const auto q3 = *es::model::FindSynthPreset("qwen3-0.6b");
  EXPECT_EQ(q3.head_dim(), 128);
  EXPECT_EQ(q3.n_head * q3.head_dim(), 2048);
  const auto q = *es::model::FindSynthPreset("qwen2-0.5b");
  EXPECT_EQ(q.n_head_kv, 2);
  EXPECT_TRUE(q.tied_output);
  EXPECT_TRUE(q.qkv_bias);
  EXPECT_FLOAT_EQ(q.rope_base, 1e6f);
  // Q4_K_M on Qwen2-0.5B: rows of 896 do not hold Q4_K, so they fall back (llama.cpp: Q5_0).
  const auto plan = es::model::PlanTensorTypes(es::model::SynthTensors(q, 151936),
                                               *es::model::FindQuantFormat("q4_k_m"), q.n_layer);
  int fallbacks = 0;
  for (const auto& p : plan) fallbacks += !p.fallback.empty();
  EXPECT_GT(fallbacks, 0);
}

TEST(SynthCli, DeterministicFromSeed) {
  TempDir tmp;
  const std::string base = "--preset tiny-test --type q4_0 --vocab '" + LlamaVocab() + "' ";
  Synth(base + "-o '" + tmp.Path("a.gguf") + "' --seed 9 --threads 1");
  Synth(base + "-o '" + tmp.Path("b.gguf") + "' --seed 9 --threads 2");
  Synth(base + "-o '" + tmp.Path("c.gguf") + "' --seed 10 --threads 2");
  const std::string a = es::test::ReadFile(tmp.Path("a.gguf"));
  const std::string b = es::test::ReadFile(tmp.Path("b.gguf"));
  const std::string c = es::test::ReadFile(tmp.Path("c.gguf"));
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), c.size());
  auto fa = es::gguf::File::Open(tmp.Path("a.gguf"));
  auto fc = es::gguf::File::Open(tmp.Path("c.gguf"));
  for (const auto& t : fa->tensors()) {
    const auto& u = fc->GetTensor(t.name);
    const bool same = std::memcmp(t.data, u.data, t.n_bytes) == 0;
    // Norms are 1 whatever the seed; everything else changes with it.
    EXPECT_EQ(same, t.name.find("norm") != std::string::npos) << t.name;
  }
}

// F32 weights are exactly SynthRow's values; their statistics are those of N(0, 0.02).
TEST(SynthModel, WeightValuesAndStatistics) {
  TempDir tmp;
  const auto preset = *es::model::FindSynthPreset("tiny-test");
  es::model::SynthOptions o;
  o.seed = 123;
  o.threads = 2;
  const auto r = es::model::SynthesizeModel(preset, LlamaVocab(), tmp.Path("f.gguf"),
                                            *es::model::FindQuantFormat("f32"), o);
  EXPECT_EQ(r.n_vocab, 32000);
  auto f = es::gguf::File::Open(tmp.Path("f.gguf"));
  EXPECT_EQ(r.file_bytes, f->file_size());
  std::vector<float> row;
  for (const auto& t : f->tensors()) {
    ASSERT_EQ(t.type, TensorType::kF32);
    const auto x = Dequantize(t);
    if (t.name.find("norm") != std::string::npos) {
      for (float v : x) ASSERT_EQ(v, 1.0f) << t.name;
      continue;
    }
    double sum = 0, sum2 = 0, amax = 0;
    for (float v : x) {
      sum += v;
      sum2 += double(v) * v;
      amax = std::max(amax, double(std::fabs(v)));
    }
    const double n = static_cast<double>(x.size());
    const double mean = sum / n, sd = std::sqrt(sum2 / n - mean * mean);
    EXPECT_LT(std::fabs(mean), 5 * 0.02 / std::sqrt(n) + 1e-6) << t.name;
    EXPECT_NEAR(sd, 0.02, 0.02 * 0.03) << t.name;
    EXPECT_LE(amax, 0.02 * std::sqrt(12.0) * 1.0001) << t.name;  // four uniforms: |z| <= sqrt(12)
    // Rows are exactly the generator's, whatever the threads did.
    const int64_t len = t.dims[0];
    row.resize(static_cast<size_t>(len));
    for (int64_t rr : {int64_t{0}, t.Rows() / 2, t.Rows() - 1}) {
      es::model::SynthRow(123, t.name, rr, row.data(), len, 0.02f);
      EXPECT_EQ(std::memcmp(row.data(), x.data() + rr * len, len * sizeof(float)), 0) << t.name;
    }
  }
}

TEST(SynthCli, ListShowsPresetsWithSizes) {
  const auto r = Synth("--list");
  for (const auto& p : es::model::SynthPresets()) {
    const bool listed = r.out.find(std::string(p.name) + " ") != std::string::npos;
    EXPECT_EQ(listed, !p.hidden) << p.name;
  }
  EXPECT_NE(r.out.find("6.74B"), std::string::npos) << r.out;  // llama2-7b
  EXPECT_NE(r.out.find("q4_k_m"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("GiB"), std::string::npos) << r.out;
  // With a vocabulary file, its size is used.
  const auto v = Synth("--list --vocab '" + Gpt2Vocab() + "'");
  EXPECT_NE(v.out.find("50257"), std::string::npos) << v.out;
}

TEST(SynthCli, BadArguments) {
  TempDir tmp;
  const std::string out = tmp.Path("x.gguf");
  auto r = RunCli("synth --preset nope --vocab '" + LlamaVocab() + "' -o '" + out + "'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("stories110m"), std::string::npos) << r.err;
  r = RunCli("synth --preset tiny-test --type q7_0 --vocab '" + LlamaVocab() + "' -o '" + out +
             "'");
  EXPECT_EQ(r.exit_code, 2);
  r = RunCli("synth --preset tiny-test -o '" + out + "'");
  EXPECT_EQ(r.exit_code, 2);
  // A GGUF without a tokenizer is not a vocabulary.
  es::gguf::Writer w;
  w.SetString("general.architecture", "llama");
  const float one = 1.0f;
  w.AddTensor("x", {1}, TensorType::kF32, &one);
  w.Write(tmp.Path("novocab.gguf"));
  r = RunCli("synth --preset tiny-test --vocab '" + tmp.Path("novocab.gguf") + "' -o '" + out +
             "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("novocab.gguf"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tokenizer.ggml.tokens"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(out));
}

}  // namespace
