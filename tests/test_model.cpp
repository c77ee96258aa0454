// Model loading: hyperparameters from metadata, and clear errors for models we cannot run.
#include <gtest/gtest.h>

#include <algorithm>
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

// gemma3's sliding-window layers keep only their window plus a batch of keys (a ring); global
// layers keep the whole context. Ring or not, the logits are the same bit for bit: a prompt of
// several batches, decoding past the point where the rings wrap, and a Truncate that rewinds
// further than the rings can (the prefix is evaluated again).
TEST(Model, SlidingWindowRingMatchesFullCache) {
  auto m = es::model::LlamaModel::Load(ModelPath("synth-gemma3.f16.gguf"));
  ASSERT_EQ(m->config().sliding_window, 64);
  for (const es::TensorType type : {es::TensorType::kF16, es::TensorType::kF32}) {
    SCOPED_TRACE(type == es::TensorType::kF16 ? "F16 KV" : "F32 KV");
    const size_t elem = type == es::TensorType::kF16 ? 2 : 4;
    es::runtime::SessionOptions so;
    so.n_ctx = 400;
    so.n_threads = 2;
    so.n_batch = 16;
    so.kv_type = type;
    es::runtime::Session ring(*m, so);
    so.window_kv = false;
    es::runtime::Session full(*m, so);
    // Layers 0-2 keep 64 + 16 - 1 positions, layer 3 all 400 (K and V of 128 values).
    EXPECT_EQ(ring.kv_bytes(), (3u * 79 + 400) * 2 * 128 * elem);
    EXPECT_EQ(full.kv_bytes(), 4u * 400 * 2 * 128 * elem);
    std::vector<int32_t> prompt = {1};
    for (int i = 0; i < 150; ++i) prompt.push_back(100 + (i * 37) % 5000);
    std::vector<float> a, b;
    ring.Eval(prompt, &a);
    full.Eval(prompt, &b);
    ASSERT_EQ(a, b);
    for (int step = 0; step < 100; ++step) {
      const auto& l = ring.last_logits();
      const int32_t next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      ring.Eval({next});
      full.Eval({next});
      ASSERT_EQ(ring.last_logits(), full.last_logits()) << "step " << step;
    }
    for (int64_t keep : {int64_t{240}, int64_t{100}}) {  // within the rings' slack, then beyond
      ring.Truncate(keep);
      full.Truncate(keep);
      ring.Eval({5, 6, 7});
      full.Eval({5, 6, 7});
      ASSERT_EQ(ring.last_logits(), full.last_logits()) << "after Truncate(" << keep << ")";
    }
  }
}

}  // namespace
