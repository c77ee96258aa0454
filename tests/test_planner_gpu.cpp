// GPUs as devices of the planner: the rule that a host's CPU and GPU stages are consecutive (one
// worker runs both), checked against brute-force enumeration; one node split between its CPU and
// GPU; a GPU profile measured and planned with. (Cluster files with GPUs: test_cluster.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "planner_harness.h"
#include "shard/shard_cluster.h"
#include "shard/shard_placement.h"
#include "shard/shard_planner.h"
#include "shard/shard_profile.h"
#include "test_util.h"

namespace es::shard {
namespace {

// Random instances where some devices are GPUs of others: every solver's plan keeps a host's
// stages together and is as good as the best such plan found by enumeration.
TEST(PlannerGpu, HostsStagesStayConsecutiveAndSolversStayExact) {
  std::mt19937 rng(77);
  int with_gpu_stage = 0, feasible = 0;
  for (int it = 0; it < 300; ++it) {
    const int D = 2 + it % 5, U = 2 + (it / 5) % 9;
    Problem p = RandomProblem(rng, D, U);
    p.host.resize(D);
    for (int d = 0; d < D; ++d) p.host[d] = d;
    // Each non-source device may be the GPU of an earlier host (one GPU per host).
    std::vector<bool> has_gpu(D, false);
    for (int d = 0; d < D; ++d) {
      const int h = std::uniform_int_distribution<int>(0, D - 1)(rng);
      if (d == p.source || h == d || p.host[h] != h || has_gpu[h] || has_gpu[d] ||
          std::uniform_int_distribution<int>(0, 1)(rng) == 0)
        continue;
      p.host[d] = h, has_gpu[h] = true;
      // A fast GPU with a fast link to its host: plans want it.
      for (double& c : p.comp_ms[d]) c *= 0.2;
      p.bw_mbps[d][h] = p.bw_mbps[h][d] = 1e5;
      p.rtt_ms[d][h] = p.rtt_ms[h][d] = 0.01;
    }
    const Brute b = BruteForce(p);
    const Solution lat = SolveLatency(p);
    ASSERT_EQ(lat.feasible, b.latency < kInf) << "instance " << it;
    if (!lat.feasible) continue;
    ++feasible;
    ExpectValidPlan(p, lat, Objective::kLatency);
    EXPECT_TRUE(Near(lat.value, b.latency)) << it << ": " << lat.value << " vs " << b.latency;
    const Solution thr = SolveThroughputExact(p);
    ASSERT_TRUE(thr.feasible) << it;
    ExpectValidPlan(p, thr, Objective::kThroughput);
    EXPECT_TRUE(Near(thr.value, b.bottleneck)) << it << ": " << thr.value << " vs " << b.bottleneck;
    const Solution beam = SolveThroughputBeam(p, 4);
    if (beam.feasible) ExpectValidPlan(p, beam, Objective::kThroughput);
    for (const Baseline& base : Baselines(p, Objective::kLatency))
      if (!base.stages.empty()) {
        EXPECT_NO_THROW(CheckStages(p, base.stages)) << base.name;
      }
    for (const Stage& s : lat.stages) with_gpu_stage += p.Host(s.device) != s.device;
  }
  EXPECT_GT(feasible, 100);
  EXPECT_GT(with_gpu_stage, 30);
}

// One node: a CPU with room for everything and a GPU ten times faster with room for half the
// blocks. The plan splits the model between them; the GPU takes the head.
TEST(PlannerGpu, SplitsOneNodeBetweenItsCpuAndGpu) {
  Problem p;
  const int blocks = 8;
  p.units.push_back("token_embd");
  for (int b = 0; b < blocks; ++b) p.units.push_back("blk." + std::to_string(b));
  p.units.push_back("output");
  const int U = blocks + 2;
  p.devices = {"box", "box-gpu"};
  p.host = {0, 0};
  p.source = 0;
  p.comp_ms = {std::vector<double>(U, 10.0), std::vector<double>(U, 1.0)};
  p.weight_bytes.assign(2, std::vector<double>(U, 100));
  p.kv_bytes.assign(2, std::vector<double>(U, 0));
  p.budget_bytes = {1e9, 500};
  p.out_bytes.assign(U, 4096);
  p.bw_mbps = {{0, kPcieLink.bandwidth_mbps}, {kPcieLink.bandwidth_mbps, 0}};
  p.rtt_ms = {{0, kPcieLink.rtt_ms}, {kPcieLink.rtt_ms, 0}};
  const Solution s = SolveLatency(p);
  ASSERT_TRUE(s.feasible);
  ASSERT_EQ(s.stages.size(), 2u);
  EXPECT_EQ(s.stages[0], (Stage{0, 0, U - 5}));
  EXPECT_EQ(s.stages[1], (Stage{1, U - 5, U}));  // five units of 100 bytes: the GPU's 500
  // A third device between a host's CPU and its GPU is refused.
  p.devices.push_back("other");
  p.host.push_back(2);
  p.comp_ms.push_back(std::vector<double>(U, 1.0));
  p.weight_bytes.push_back(std::vector<double>(U, 100));
  p.kv_bytes.push_back(std::vector<double>(U, 0));
  p.budget_bytes.push_back(1e9);
  p.bw_mbps = {{0, 1e5, 100}, {1e5, 0, 100}, {100, 100, 0}};
  p.rtt_ms = {{0, 0.02, 1}, {0.02, 0, 1}, {1, 1, 0}};
  try {
    CheckStages(p, {{0, 0, 2}, {2, 2, 4}, {1, 4, U}});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("share a host but their stages are apart"),
              std::string::npos)
        << e.what();
  }
  // Placement rules may name the GPU.
  const auto st = ParsePlacement(
      "rules:\n  - {match: \"^token_embd$|^blk\\\\.[0-3]$\", device: box}\n"
      "  - {match: \".\", device: box-gpu}\n",
      "r.yaml", p);
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[1], (Stage{1, 5, U}));
}

#ifdef EDGESHARD_HAVE_VULKAN
// `profile --device vulkan0` (lavapipe in CI): every unit measured on the GPU, the budget its
// memory, its name and crossing time recorded; a cluster file declares it with gpu_of and `plan`
// plans with it.
TEST(ProfileCli, MeasuresAGpuThePlannerReads) {
  const std::string dir = std::filesystem::temp_directory_path() / "es_profile_gpu";
  std::filesystem::create_directories(dir);
  const std::string model = test::ModelPath("stories260K.gguf");
  const std::string common = " --ctx 32,128 --batch 32 --reps 3 -t 1 -m " + model;
  auto r = test::RunCli("profile --name box -o " + dir + "/box.json" + common);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::RunCli("profile --device vulkan0 --name box-gpu -o " + dir + "/gpu.json" + common);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("on vulkan0 ("), std::string::npos) << r.err;
  const Profile g = LoadProfile(dir + "/gpu.json", true);
  EXPECT_EQ(g.gpu.rfind("vulkan0 (", 0), 0u) << g.gpu;
  EXPECT_GT(g.memory_budget_bytes, 0u);
  EXPECT_GE(g.crossing_ms, 0);
  ASSERT_EQ(g.timing.size(), g.model.units.size());
  for (size_t u = 1; u < g.timing.size(); ++u) {
    ASSERT_EQ(g.timing[u].decode.size(), 2u);
    EXPECT_GT(g.timing[u].prompt_ms_per_token, 0) << u;
  }
  std::ofstream(dir + "/c.yaml")
      << "source: box\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
         "  - {name: box, profile: box.json}\n  - {name: box-gpu, gpu_of: box, profile: "
         "gpu.json}\n";
  const auto plan = test::RunCli("plan --cluster " + dir + "/c.yaml --json");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_NE(plan.out.find("box-gpu"), std::string::npos) << plan.out;
  const auto missing = test::RunCli("profile --device vulkan9 -o " + dir + "/x.json" + common);
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("vulkan9: no such device"), std::string::npos) << missing.err;
  EXPECT_EQ(test::RunCli("profile --device cuda0 -o " + dir + "/x.json" + common).exit_code, 2);
  std::filesystem::remove_all(dir);
}
#endif

}  // namespace
}  // namespace es::shard
