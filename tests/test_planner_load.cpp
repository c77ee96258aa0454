// Planning for a load: the plan of least round time for n sequences as m micro-batches
// (SolveCycle) against brute-force enumeration, and a profile's row cost in a batched step.
#include <gtest/gtest.h>

#include <random>

#include "planner_harness.h"
#include "shard/shard_cluster.h"
#include "shard/shard_planner.h"
#include "shard/shard_profile.h"

namespace es::shard {
namespace {

TEST(PlannerLoad, CycleEqualsBruteForce) {
  std::mt19937 rng(2468);
  int feasible = 0, differs = 0;
  for (int it = 0; it < 300; ++it) {
    const int D = 1 + it % 5, U = 1 + (it / 5) % 9;
    const Problem p = RandomProblem(rng, D, U);
    const Brute b = BruteForce(p);
    for (const int m : {1, 2, 3, 6}) {
      double best = kInf;
      for (const auto& [period, latency] : b.plans)
        best = std::min(best, std::max(latency, m * period));
      const Solution s = SolveCycle(p, m);
      ASSERT_EQ(s.feasible, best < kInf) << "instance " << it << ", m " << m;
      if (!s.feasible) continue;
      ++feasible;
      EXPECT_TRUE(s.exact);
      EXPECT_TRUE(Near(s.value, best))
          << "instance " << it << ", m " << m << ": " << s.value << " vs " << best;
      EXPECT_TRUE(Near(s.value, CycleMs(Evaluate(p, s.stages), m)));
      ASSERT_NO_THROW(CheckStages(p, s.stages));
      // One micro-batch waits for its round trip: the latency optimum.
      if (m == 1) {
        EXPECT_TRUE(Near(s.value, b.latency)) << "instance " << it;
      }
      // Many: the slowest stage times m, at least.
      EXPECT_GE(s.value, m * b.bottleneck * (1 - 1e-9));
      differs += m == 6 && !Near(s.value, std::max(b.latency, 6 * b.bottleneck));
    }
  }
  EXPECT_GT(feasible, 400);
  // Instances where neither the latency nor the bottleneck optimum alone gives the answer.
  EXPECT_GT(differs, 0);
}

TEST(PlannerLoad, BatchedStepCostsUseTheMeasuredRowCost) {
  // Three units on one device: a step of k sequences costs decode + (k - 1) x row_ms, and a
  // profile without row_ms falls back to the prompt rate.
  Profile prof;
  prof.device = "d";
  prof.memory_budget_bytes = 1ull << 30;
  prof.prompt_batch = 64;
  prof.threads = 1;
  prof.model.name = "m";
  prof.model.n_layer = 1;
  prof.model.units = {{}, {}, {}};
  prof.model.units[0].name = "token_embd";
  prof.model.units[1].name = "blk.0";
  prof.model.units[2].name = "output";
  for (auto& u : prof.model.units)
    u.weight_bytes = u.active_bytes = 1000, u.out_bytes_per_token = 8;
  prof.timing = {UnitTiming{0.5, 2.0, {{0, 10.0}}}, UnitTiming{0.5, 0.0, {{0, 20.0}}},
                 UnitTiming{0.5, 1.0, {{0, 5.0}}}};
  Cluster c;
  c.file = "one.yaml";
  c.devices.resize(1);
  c.devices[0].name = "d";
  c.profiles = {prof};
  const Problem p = BuildProblem(c, prof.model, {Objective::kLatency, 16, 4});
  EXPECT_DOUBLE_EQ(p.comp_ms[0][0], 10.0 + 3 * 2.0);
  EXPECT_DOUBLE_EQ(p.comp_ms[0][1], 20.0 + 3 * 0.5);
  EXPECT_DOUBLE_EQ(p.comp_ms[0][2], 5.0 + 3 * 1.0);
  // And row_ms survives the JSON round trip.
  const Profile back = ParseProfile(ProfileToJson(prof), "p.json", true);
  EXPECT_DOUBLE_EQ(back.timing[0].row_ms, 2.0);
  EXPECT_DOUBLE_EQ(back.timing[1].row_ms, 0.0);
}

}  // namespace
}  // namespace es::shard
