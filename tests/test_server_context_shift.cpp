// Context shift and sliding-window rings in the distributed build: the server's scheduler (slots
// of ring-sized local layers, generation past a full slot), worker stage caches and the planner's
// per-block figures. The single-process checks are in test_context_shift.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "context_shift_util.h"
#include "gguf/gguf_file.h"
#include "model/model_llama.h"
#include "server/server_scheduler.h"
#include "shard/shard_dist_stage.h"
#include "shard/shard_model_units.h"
#include "tokenizer/tokenizer.h"

namespace es::test {
namespace {

// The server's scheduler, in process: slots of ring-sized local layers, greedy output equal to a
// Context's, and generation past a full slot.
struct Sched {
  std::unique_ptr<model::LlamaModel> m;
  std::unique_ptr<gguf::File> f;
  std::unique_ptr<tok::Tokenizer> t;
  server::Metrics metrics;
  std::unique_ptr<server::Scheduler> s;
  Sched(const std::string& rel, server::SchedulerOptions o) {
    m = model::LlamaModel::Load(ModelPath(rel));
    t = tok::Tokenizer::FromGGUF(m->file());
    s = std::make_unique<server::Scheduler>(*m, *t, o, metrics);
  }
  std::pair<std::vector<int32_t>, std::string> Greedy(const std::vector<int32_t>& prompt, int n) {
    server::GenRequest r;
    r.prompt = prompt;
    r.sampling.temperature = 0;
    r.max_tokens = n;
    r.ignore_eos = true;
    r.n_logprobs = 0;
    auto job = std::make_shared<server::Job>(r);
    EXPECT_TRUE(s->Submit(job));
    std::vector<int32_t> out;
    server::GenEvent e;
    while (true) {
      if (!job->Wait(e, std::chrono::milliseconds(60000))) break;
      for (const auto& tl : e.tokens) out.push_back(tl.id);
      if (e.done) return {out, e.finish_reason};
    }
    return {out, "timeout"};
  }
};

TEST(ContextShift, ServerSlotsUseRingsAndMatchAContext) {
  server::SchedulerOptions o;
  o.n_slots = 2;
  o.n_ctx = 400;
  o.n_batch = 16;
  o.n_threads = 2;
  Sched sc("synth-gemma3.f16.gguf", o);
  // Layers 0-2 keep 64 + 16 - 1 positions, layer 3 all 400 (K and V of 128 F16 values).
  EXPECT_EQ(sc.s->kv_bytes(), 2u * (3 * 79 + 400) * 2 * 128 * 2);
  const auto prompt = Prompt(150);
  const auto want = ContextGreedy(prompt, 400, 40);
  const auto [got, reason] = sc.Greedy(prompt, 40);
  EXPECT_EQ(reason, "length");
  EXPECT_EQ(got, want);
}

// Slots with quantized caches (serve -ctk/-ctv): their size, and the greedy output of a Context
// with the same cache types.
TEST(ContextShift, ServerSlotsTakeQuantizedCaches) {
  for (const auto& [k, v, row] : {std::tuple{"q8_0", "q8_0", 2 * 136}, {"q4_0", "f16", 72 + 256}}) {
    server::SchedulerOptions o;
    o.n_slots = 2;
    o.n_ctx = 400;
    o.n_batch = 16;
    o.n_threads = 2;
    o.kv_type = {*ParseTypeName(k), *ParseTypeName(v)};
    Sched sc("synth-gemma3.f16.gguf", o);
    EXPECT_EQ(sc.s->kv_bytes(), 2u * (3 * 79 + 400) * row) << k << "/" << v;
    const auto prompt = Prompt(150);
    const auto [got, reason] = sc.Greedy(prompt, 40);
    EXPECT_EQ(reason, "length");
    EXPECT_EQ(got, ContextGreedy(prompt, 400, 40, k, v)) << k << "/" << v;
  }
}

TEST(ContextShift, ServerGoesOnPastAFullSlot) {
  for (const bool shift : {true, false}) {
    server::SchedulerOptions o;
    o.n_slots = 1;
    o.n_ctx = 100;
    o.n_batch = 16;
    o.n_threads = 2;
    o.context_shift = shift;
    Sched sc("synth-gemma3.f16.gguf", o);
    const auto prompt = Prompt(70);
    const auto [got, reason] = sc.Greedy(prompt, 150);
    EXPECT_EQ(reason, "length");
    if (!shift) {
      EXPECT_EQ(got.size(), 31u);  // 100 positions: the last token is never evaluated
      continue;
    }
    ASSERT_EQ(got.size(), 150u);
    // The same shifts through a Context give the same tokens.
    EXPECT_EQ(ContextGreedy(prompt, 100, 150), got);
  }
}

TEST(ContextShift, WorkerStageCachesUseRings) {
  auto m = model::LlamaModel::Load(ModelPath("synth-gemma3.f16.gguf"));
  kernels::ThreadPool pool{1};
  shard::StageExecutor exec{*m,
                            {.first_layer = 0,
                             .last_layer = m->config().n_layer,
                             .embed = true,
                             .head = false,
                             .n_ctx = 400,
                             .max_batch = 16},
                            pool};
  edgeshard::rpc::Step step;
  auto* seg = step.add_segments();
  seg->set_sequence(1);
  seg->set_n_tokens(4);
  std::vector<float> hidden;
  exec.Run(step, {1, 2, 3, 4}, hidden);
  EXPECT_EQ(exec.kv_bytes(), (3u * 79 + 400) * 2 * 128 * 2);
  // A rewind further back than the rings hold is refused, not computed wrong.
  for (int64_t pos = 4; pos < 200; pos += 16) {
    edgeshard::rpc::Step s;
    auto* sg = s.add_segments();
    sg->set_sequence(1);
    sg->set_pos(pos);
    sg->set_n_tokens(16);
    std::vector<int32_t> toks(16, 7);
    exec.Run(s, toks, hidden);
  }
  edgeshard::rpc::Step back;
  auto* sg = back.add_segments();
  sg->set_sequence(1);
  sg->set_pos(50);
  sg->set_n_tokens(1);
  EXPECT_THROW(exec.Run(back, {7}, hidden), Error);
}

// The planner's per-block figures mark sliding-window blocks, so their KV counts a ring.
TEST(ContextShift, PlannerUnitsKnowTheWindow) {
  const auto f = gguf::File::Open(ModelPath("synth-gemma3.f16.gguf"));
  const auto units = shard::UnitsFromGguf(*f);
  ASSERT_EQ(units.units.size(), 6u);
  for (int b = 0; b < 4; ++b) EXPECT_EQ(units.units[b + 1].kv_window, b < 3 ? 64u : 0u) << b;
}

}  // namespace
}  // namespace es::test
