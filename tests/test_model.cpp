// Model loading: hyperparameters from metadata, and clear errors for models we cannot run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "model/model_llama.h"
#include "runtime/runtime_kv_cache.h"
#include "runtime/runtime_session.h"
#include "test_util.h"

namespace {

using es::test::ModelPath;

// Copies a shared model to a temp file, replacing every occurrence of `from` by `to` (same
// length), and returns the copy's path.
std::string PatchedCopy(const std::string& model, const std::string& from, const std::string& to,
                        const std::string& name) {
  std::string bytes = es::test::ReadFile(ModelPath(model));
  EXPECT_EQ(from.size(), to.size());
  size_t n = 0;
  for (auto at = bytes.find(from); at != std::string::npos; at = bytes.find(from, at + 1), ++n)
    bytes.replace(at, from.size(), to);
  EXPECT_GT(n, 0u) << from;
  const std::string out = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(out, std::ios::binary) << bytes;
  return out;
}

std::string LoadError(const std::string& path) {
  try {
    es::model::LlamaModel::Load(path);
  } catch (const es::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Model, HyperparametersFromMetadata) {
  auto m = es::model::LlamaModel::Load(ModelPath("stories260K.gguf"));
  const auto& c = m->config();
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_layer, 5);
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.n_head, 8);
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.n_ff, 172);
  EXPECT_EQ(c.n_vocab, 512);
  EXPECT_EQ(c.n_rot, 8);
  EXPECT_FALSE(c.rope_neox);
  EXPECT_FALSE(c.tied_output);

  auto q = es::model::LlamaModel::Load(ModelPath("synth-qwen2-gpt2-256.q8_0.gguf"));
  EXPECT_EQ(q->config().arch, "qwen2");
  EXPECT_TRUE(q->config().rope_neox);
  EXPECT_TRUE(q->config().qkv_bias);
  EXPECT_TRUE(q->config().tied_output);
  EXPECT_EQ(q->config().n_head_kv, 2);
}

TEST(Model, UnsupportedArchitectureIsClearError) {
  auto p = PatchedCopy("stories260K.gguf", std::string("\x05\0\0\0\0\0\0\0llama", 13),
                       std::string("\x05\0\0\0\0\0\0\0gptxx", 13), "es_arch.gguf");
  const std::string err = LoadError(p);
  EXPECT_NE(err.find("architecture 'gptxx' is not supported"), std::string::npos) << err;
  EXPECT_NE(err.find(p), std::string::npos) << err;
  std::filesystem::remove(p);
}

TEST(Model, MissingTensorIsClearError) {
  auto p = PatchedCopy("stories260K.gguf", "blk.3.ffn_up.weight", "blk.3.ffn_xx.weight",
                       "es_missing.gguf");
  const std::string err = LoadError(p);
  EXPECT_NE(err.find("'blk.3.ffn_up.weight' is missing"), std::string::npos) << err;
  std::filesystem::remove(p);
}

TEST(Model, WrongShapeIsClearError) {
  // output_norm.weight: name, n_dims = 1, dim 64 -> 32.
  const std::string name = "output_norm.weight";
  std::string from = name + std::string("\x01\0\0\0\x40\0\0\0\0\0\0\0", 12);
  std::string to = name + std::string("\x01\0\0\0\x20\0\0\0\0\0\0\0", 12);
  auto p = PatchedCopy("stories260K.gguf", from, to, "es_shape.gguf");
  const std::string err = LoadError(p);
  EXPECT_NE(err.find("'output_norm.weight' has shape [32], expected [64]"), std::string::npos)
      << err;
  std::filesystem::remove(p);
}

TEST(Model, KvCacheSizeIsKnownUpFrontAndOverflowIsAnError) {
  auto m = es::model::LlamaModel::Load(ModelPath("stories260K.gguf"));
  const auto& c = m->config();
  // 5 layers x (K + V) x 32 positions x 32 KV dims x 2 bytes.
  EXPECT_EQ(es::runtime::KvCache::BytesNeeded(c, 32, es::TensorType::kF16, c.n_layer),
            5u * 2 * 32 * 32 * 2);
  es::runtime::SessionOptions so;
  so.n_ctx = 8;
  so.n_threads = 1;
  es::runtime::Session s(*m, so);
  EXPECT_EQ(s.kv_bytes(), 5u * 2 * 8 * 32 * 2);
  s.Eval({1, 2, 3, 4, 5, 6});
  EXPECT_THROW(s.Eval({7, 8, 9}), es::Error);
  EXPECT_EQ(s.n_past(), 6);  // a refused batch leaves the cache as it was
  s.Eval({7, 8});
  EXPECT_EQ(s.n_past(), 8);
}

TEST(Model, BadTokenIdIsAnError) {
  auto m = es::model::LlamaModel::Load(ModelPath("stories260K.gguf"));
  es::runtime::SessionOptions so;
  so.n_ctx = 8;
  so.n_threads = 1;
  es::runtime::Session s(*m, so);
  EXPECT_THROW(s.Eval({1, 512}), es::Error);
  EXPECT_THROW(s.Eval({-1}), es::Error);
}

TEST(Model, BatchedAndTokenByTokenAgree) {
  // The prompt path (matrix-matrix) and the decode path (matrix-vector) compute the same thing.
  for (const char* name :
       {"stories260K.gguf", "synth-llama-spm-256.q4_k_m.gguf", "synth-qwen2-gpt2-256.q4_0.gguf"}) {
    auto m = es::model::LlamaModel::Load(ModelPath(name));
    const std::vector<int32_t> toks = {1, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110};
    es::runtime::SessionOptions so;
    so.n_ctx = 32;
    so.n_threads = 2;
    es::runtime::Session batched(*m, so), single(*m, so);
    batched.Eval(toks);
    for (int32_t t : toks) single.Eval({t});
    const auto& a = batched.last_logits();
    const auto& b = single.last_logits();
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_NEAR(a[i], b[i], 1e-4 * std::max(1.0f, std::fabs(a[i]))) << name << " " << i;
  }
}

}  // namespace
