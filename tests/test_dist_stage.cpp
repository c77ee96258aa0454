// StageExecutor and the activation codec against malformed steps, as a worker receives them
// (regressions from tests/fuzz/fuzz_step.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "edgeshard/error.h"
#include "shard/shard_dist_stage.h"

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

}  // namespace
}  // namespace es::test
