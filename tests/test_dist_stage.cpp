// StageExecutor and the activation codec against malformed steps, as a worker receives them
// (regressions from tests/fuzz/fuzz_step.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "edgeshard/error.h"
#include "kernels/kernels.h"
#include "model/model_llama.h"
#include "shard/shard_dist_stage.h"
#include "test_util.h"

namespace es::test {
namespace {

namespace rpc = edgeshard::rpc;
using shard::DecodeActivations;
using shard::EncodeActivations;

TEST(DistStage, ActivationsRoundTrip) {
  const std::vector<float> x = {0.5f, -2.0f, 1024.0f};
  for (auto wire : {rpc::WIRE_F16, rpc::WIRE_F32}) {
    std::vector<float> y(x.size());
    DecodeActivations(EncodeActivations(x.data(), x.size(), wire), wire, y.data(), y.size());
    EXPECT_EQ(y, x);
  }
}

TEST(DistStage, NonFiniteActivationsAreRefused) {
  // The fuzzer's input: F16 NaN bits made the blocks' exp convert NaN to int (undefined).
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    const std::vector<float> x = {1.0f, bad};
    for (auto wire : {rpc::WIRE_F16, rpc::WIRE_F32}) {
      std::vector<float> y(x.size());
      EXPECT_THROW(
          DecodeActivations(EncodeActivations(x.data(), x.size(), wire), wire, y.data(), y.size()),
          Error);
    }
  }
}

// A last stage over all of stories260K, and a one-row step with `sampling` for a new sequence.
struct Stage {
  std::unique_ptr<model::LlamaModel> m = model::LlamaModel::Load(ModelPath("stories260K.gguf"));
  kernels::ThreadPool pool{1};
  shard::StageExecutor exec{
      *m, {.last_layer = m->config().n_layer, .head = true, .n_ctx = 16, .max_batch = 2}, pool};

  shard::StageExecutor::Output Run(const rpc::SamplingConfig& sampling) {
    rpc::Step step;
    auto* seg = step.add_segments();
    seg->set_sequence(1);
    seg->set_n_tokens(1);
    seg->set_sample(true);
    *seg->mutable_sampling() = sampling;
    std::vector<float> hidden(m->config().n_embd, 0.5f);
    return exec.Run(step, {}, hidden);
  }
};

TEST(DistStage, HugePenaltyWindowIsRefused) {
  // The fuzzer's input: penalty_last_n 2^31-1 from the wire made the sampler allocate 8 GiB.
  Stage st;
  rpc::SamplingConfig c;
  c.set_penalty_last_n(std::numeric_limits<int32_t>::max());
  EXPECT_THROW(st.Run(c), Error);
  c.set_penalty_last_n(-1);
  EXPECT_THROW(st.Run(c), Error);
  EXPECT_EQ(st.exec.sequences(), 0);
  c.set_penalty_last_n(64);
  EXPECT_EQ(st.Run(c).tokens.size(), 1u);
}

}  // namespace
}  // namespace es::test
