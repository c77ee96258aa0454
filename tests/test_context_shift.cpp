// Context shift (llama.cpp's seq_rm + seq_add): when the context is full, positions after the
// first `keep` are dropped and the later ones move back, their cached keys re-rotated. Checked
// against fresh evaluations, through the API and the CLI (the server's scheduler, worker stages
// and planner: test_server_context_shift.cpp, distributed builds only).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "context_shift_util.h"
#include "edgeshard/edgeshard.h"
#include "gguf/gguf_file.h"
#include "model/model_llama.h"
#include "model/model_quantize.h"
#include "model/model_synth.h"
#include "runtime/runtime_session.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace es::test {
namespace {

int32_t Argmax(const std::vector<float>& l) {
  return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
}

void ExpectClose(const std::vector<float>& a, const std::vector<float>& b,
                 const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  float worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  EXPECT_LE(worst, 1e-2f) << what;
  EXPECT_EQ(Argmax(a), Argmax(b)) << what;
  ::testing::Test::RecordProperty(what, std::to_string(worst));  // in --gtest_output=xml
}

// A one-block model written from a synth preset: with one block the cached keys and values of
// a token depend only on it and its position, so after a shift the cache must hold what a fresh
// evaluation of the kept tokens at their new positions gives.
std::string OneBlockModel(const char* preset) {
  auto p = *model::FindSynthPreset(preset);
  p.n_layer = 1;
  const std::string out = std::filesystem::temp_directory_path() /
                          ("es_shift_" + std::string(preset) + "_" + std::to_string(getpid()));
  model::SynthOptions so;
  so.threads = 2;
  model::SynthesizeModel(p, ModelPath("vocab/ggml-vocab-llama-spm.gguf"), out,
                         *model::FindQuantFormat("f16"), so);
  return out;
}

runtime::SessionOptions Opts(int n_ctx, TensorType kv = TensorType::kF16) {
  runtime::SessionOptions so;
  so.n_ctx = n_ctx;
  so.n_threads = 2;
  so.n_batch = 16;
  so.kv_type = kv;
  return so;
}

TEST(ContextShift, OneBlockShiftEqualsFreshEvaluation) {
  // gemma3's block 0 is a sliding-window layer (window 64, ring 64 + 16 - 1 < 160 positions).
  for (const char* preset : {"tiny-test", "tiny-test-gemma3"}) {
    const std::string path = OneBlockModel(preset);
    auto m = model::LlamaModel::Load(path);
    std::filesystem::remove(path);  // the mapping stays valid until the model is gone
    for (const TensorType kv : {TensorType::kF16, TensorType::kF32}) {
      // keep 1: the ring holds the window; keep 60: it lost kept positions the next one sees,
      // so the kept tokens are evaluated again.
      for (const int64_t keep : {int64_t{1}, int64_t{60}}) {
        const std::string what = std::string(preset) + (kv == TensorType::kF16 ? " f16" : " f32") +
                                 " keep " + std::to_string(keep);
        runtime::Session s(*m, Opts(160, kv));
        s.Eval(Prompt(160));
        const int64_t discard = s.ShiftContext(keep);
        EXPECT_EQ(discard, (160 - keep) / 2) << what;
        ASSERT_EQ(s.n_past(), 160 - discard) << what;
        const auto prompt = Prompt(160);
        EXPECT_TRUE(std::equal(prompt.begin(), prompt.begin() + keep, s.tokens().begin())) << what;
        EXPECT_TRUE(
            std::equal(prompt.begin() + keep + discard, prompt.end(), s.tokens().begin() + keep))
            << what;
        runtime::Session fresh(*m, Opts(160, kv));
        fresh.Eval(s.tokens());
        for (int step = 0; step < 3; ++step) {
          const int32_t next = Argmax(fresh.last_logits());
          s.Eval({next});
          fresh.Eval({next});
          ExpectClose(s.last_logits(), fresh.last_logits(), what + " step " + std::to_string(step));
        }
      }
    }
  }
}

// Models of several blocks: a kept token's keys in block 0 depend on it and its position only,
// so they must equal a fresh evaluation's (F16 rounding apart); rings and full caches agree.
TEST(ContextShift, SharedModelsBlockZeroKeysAndRingsAgree) {
  for (const char* name : {"synth-llama-spm-256.f16.gguf", "synth-qwen2-gpt2-256.f16.gguf",
                           "synth-qwen3.f16.gguf", "synth-gemma3.f16.gguf"}) {
    auto m = model::LlamaModel::Load(ModelPath(name));
    const auto& c = m->config();
    runtime::Session ring(*m, Opts(200));
    auto so = Opts(200);
    so.window_kv = false;
    runtime::Session full(*m, so);
    const auto prompt = Prompt(200);
    ring.Eval(prompt);
    full.Eval(prompt);
    ASSERT_EQ(ring.ShiftContext(1), 99) << name;
    ASSERT_EQ(full.ShiftContext(1), 99) << name;
    runtime::Session fresh(*m, Opts(200));
    fresh.Eval(ring.tokens());
    const model::KvLayer& a = ring.kv().layers()[0];
    const model::KvLayer& b = fresh.kv().layers()[0];
    float worst = 0;
    // Positions the ring still holds (a global layer: all of them).
    const int64_t n = ring.n_past();
    for (int64_t p = std::max<int64_t>(1, n - 60); p < n; ++p)
      for (int j = 0; j < c.kv_dim(); ++j) {
        const float x = F16ToF32(static_cast<const f16_t*>(a.k)[a.Row(p) * c.kv_dim() + j]);
        const float y = F16ToF32(static_cast<const f16_t*>(b.k)[b.Row(p) * c.kv_dim() + j]);
        worst = std::max(worst, std::fabs(x - y));
      }
    EXPECT_LE(worst, 1e-2f) << name;
    ::testing::Test::RecordProperty(name, std::to_string(worst));
    for (int step = 0; step < 20; ++step) {
      const int32_t next = Argmax(full.last_logits());
      ring.Eval({next});
      full.Eval({next});
      ASSERT_EQ(ring.last_logits(), full.last_logits()) << name << " step " << step;
    }
  }
}

TEST(ContextShift, GenerateGoesOnPastAFullContextAndKeeps) {
  auto model = LoadApi("synth-gemma3.f16.gguf");
  const auto prompt = Prompt(70);  // longer than the window of 64
  GenerateParams g;
  g.max_tokens = 150;
  g.sampling.temperature = 0;
  g.ignore_eos = true;
  g.context_shift = false;
  {
    Context ctx(model, {.n_ctx = 100, .n_threads = 2, .n_batch = 16});
    const auto r = ctx.Generate(prompt, g, nullptr);
    EXPECT_EQ(r.stop_reason, "context");
    EXPECT_EQ(r.n_shifts, 0);
  }
  g.context_shift = true;
  for (const int keep : {0, 5, -1}) {
    g.n_keep = keep;
    Context ctx(model, {.n_ctx = 100, .n_threads = 2, .n_batch = 16});
    const auto r = ctx.Generate(prompt, g, nullptr);
    EXPECT_EQ(r.stop_reason, "length") << keep;
    EXPECT_EQ(r.tokens.size(), 150u) << keep;
    EXPECT_GT(r.n_shifts, 0) << keep;
    // The BOS (the vocabulary adds one) plus --keep tokens stay; -1 keeps the whole prompt.
    const size_t kept = keep < 0 ? prompt.size() : static_cast<size_t>(keep) + 1;
    ASSERT_GE(ctx.tokens().size(), kept);
    EXPECT_TRUE(std::equal(prompt.begin(), prompt.begin() + kept, ctx.tokens().begin())) << keep;
  }
}

TEST(ContextShift, CliRunShiftsAndEvalDoesNot) {
  const std::string m = ModelPath("stories260K.gguf");
  auto r =
      RunCli("run -m '" + m + "' -p 'Once upon a time' -c 48 -n 120 --temp 0 --ignore-eos -t 2");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("context shifts:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generation: 120 tokens"), std::string::npos) << r.err;
  r = RunCli("run -m '" + m +
             "' -p 'Once upon a time' -c 48 -n 120 --temp 0 --ignore-eos -t 2 --no-context-shift");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("is full"), std::string::npos) << r.err;
  r = RunCli("run -m '" + m + "' -p 'Once upon a time' -c 48 -n 120 --temp 0 --ignore-eos -t 2 " +
             "--keep 3");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // eval never shifts: a context too small for the continuation is an error.
  r = RunCli("eval -m '" + m + "' -p 'Once upon a time' -c 12 --greedy 20 -t 2");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("context is full"), std::string::npos) << r.err;
}

// chat: replies go on past a full context, and the next turn appends to what the shifted cache
// holds instead of evaluating the whole conversation again (which no longer fits).
TEST(ContextShift, CliChatShiftsAcrossTurns) {
  const std::string cmd = "chat -m '" + ModelPath("stories260K.gguf") +
                          "' -c 64 -n 50 --temp 0 --ignore-eos --chat-template chatml -v -t 2";
  auto r = RunCliWithInput(cmd, "hello there\nand again\nonce more\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  size_t replies = 0;
  for (size_t at = r.err.find("50 generated"); at != std::string::npos;
       at = r.err.find("50 generated", at + 1))
    ++replies;
  EXPECT_EQ(replies, 3u) << r.err;
  r = RunCliWithInput(cmd + " --no-context-shift", "hello there\nand again\n");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("is full"), std::string::npos) << r.err;
}

TEST(ContextShift, ContextBeyondTrainingWarnsAndRuns) {
  const std::string m = ModelPath("stories260K.gguf");
  auto model = model::LlamaModel::Load(m);
  const int train = model->config().n_ctx_train;
  const std::string c = std::to_string(train * 2);
  auto r = RunCli("run -m '" + m + "' -p 'Once upon a time' -n 8 --temp 0 -t 2 -c " + c);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("longer than the model was trained on"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("context " + c + " tokens"), std::string::npos) << r.err;
  r = RunCli("eval -m '" + m + "' -p 'Once upon a time' --top 2 -t 2 -c " + c);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("longer than the model was trained on"), std::string::npos) << r.err;
  // perplexity: one chunk of -c tokens, evaluated whole (never shifted).
  const std::string text =
      std::filesystem::temp_directory_path() / ("es_ppl_" + std::to_string(getpid()) + ".txt");
  {
    std::string t;
    for (int i = 0; i < 400; ++i) t += "Once upon a time there was a little girl. ";
    FILE* f = std::fopen(text.c_str(), "w");
    std::fwrite(t.data(), 1, t.size(), f);
    std::fclose(f);
  }
  r = RunCli("perplexity -m '" + m + "' -f '" + text + "' -t 2 --chunks 1 -c " + c);
  std::filesystem::remove(text);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("longer than the model was trained on"), std::string::npos) << r.err;
}
}  // namespace
}  // namespace es::test
