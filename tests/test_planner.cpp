// The planner's solvers against brute-force enumeration, its baselines, placement rules, the
// paper's scenario and the `plan` command.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "edgeshard/edgeshard.h"
#include "gguf/gguf_file.h"
#include "model/model_llama.h"
#include "model/model_quantize.h"
#include "model/model_synth.h"
#include "planner_harness.h"
#include "shard/shard_cluster.h"
#include "shard/shard_model_units.h"
#include "shard/shard_placement.h"
#include "shard/shard_planner.h"
#include "shard/shard_profile.h"
#include "shard/shard_svg.h"
#include "test_util.h"

namespace es::shard {
namespace {

const std::string kFixtures =
    std::filesystem::path(EDGESHARD_SOURCE_DIR "/tests").string() + "/fixtures/planner/";

TEST(Planner, EvaluateByHand) {
  Problem p;
  p.units = {"token_embd", "blk.0", "output"};
  p.devices = {"a", "b"};
  p.source = 0;
  p.comp_ms = {{1, 10, 4}, {2, 3, 1}};
  p.weight_bytes = {{5, 50, 5}, {5, 50, 5}};
  p.kv_bytes = {{0, 10, 0}, {0, 10, 0}};
  p.budget_bytes = {20, 100};
  p.out_bytes = {1000, 1000, 4};
  p.bw_mbps = {{0, 8}, {8, 0}};
  p.rtt_ms = {{0, 2}, {2, 0}};
  const Evaluation e = Evaluate(p, {{0, 0, 1}, {1, 1, 3}});
  // 1000 B * 8 / 8 Mbps = 1 ms + RTT/2 = 2 ms; the token id back: 32 bits / 8 Mbps + 1 ms.
  ASSERT_EQ(e.comp_ms.size(), 2u);
  EXPECT_DOUBLE_EQ(e.comp_ms[0], 1);
  EXPECT_DOUBLE_EQ(e.comp_ms[1], 4);
  EXPECT_DOUBLE_EQ(e.link_ms[0], 2);
  EXPECT_DOUBLE_EQ(e.link_ms[1], 1.004);
  EXPECT_DOUBLE_EQ(e.step_ms, 1 + 2 + 4 + 1.004);
  EXPECT_DOUBLE_EQ(e.bottleneck_ms, 4);
  EXPECT_TRUE(e.fits());
  const Evaluation solo = Evaluate(p, {{0, 0, 3}});
  EXPECT_DOUBLE_EQ(solo.missing_bytes, 70 - 20);
  EXPECT_DOUBLE_EQ(solo.step_ms, 15);
  // Malformed plans are refused with the reason.
  EXPECT_THROW(Evaluate(p, {{1, 0, 3}}), Error);                        // not the source first
  EXPECT_THROW(Evaluate(p, {{0, 0, 1}, {1, 2, 3}}), Error);             // a gap
  EXPECT_THROW(Evaluate(p, {{0, 0, 1}, {1, 1, 2}, {0, 2, 3}}), Error);  // source twice
  EXPECT_THROW(Evaluate(p, {{0, 0, 1}, {1, 1, 2}}), Error);             // not all units
}

TEST(Planner, LatencyEqualsBruteForce) {
  std::mt19937 rng(1234);
  int feasible = 0, infeasible = 0;
  for (int it = 0; it < 400; ++it) {
    const int D = 1 + it % 6, U = 1 + (it / 6) % 10;
    const Problem p = RandomProblem(rng, D, U);
    const Brute b = BruteForce(p);
    const Solution s = SolveLatency(p);
    ASSERT_EQ(s.feasible, b.latency < kInf) << "instance " << it;
    if (!s.feasible) {
      ++infeasible;
      continue;
    }
    ++feasible;
    EXPECT_TRUE(s.exact);
    EXPECT_TRUE(Near(s.value, b.latency))
        << "instance " << it << ": " << s.value << " vs " << b.latency;
    ExpectValidPlan(p, s, Objective::kLatency);
  }
  EXPECT_GT(feasible, 150);
  EXPECT_GT(infeasible, 20);
}

TEST(Planner, LatencyFallbackBoundsTheOptimum) {
  // With a tiny search budget the solver must still return a valid plan and a true bound.
  std::mt19937 rng(99);
  int stopped = 0;
  for (int it = 0; it < 200; ++it) {
    const Problem p = RandomProblem(rng, 4 + it % 3, 6 + it % 5);
    const Brute b = BruteForce(p);
    SolveOptions o;
    o.max_states = 2;
    o.beam_width = 4;
    const Solution s = SolveLatency(p, o);
    if (!s.exact) ++stopped;
    EXPECT_LE(s.lower_bound, b.latency * (1 + 1e-9)) << it;
    if (s.feasible) {
      ExpectValidPlan(p, s, Objective::kLatency);
      EXPECT_GE(s.value, b.latency * (1 - 1e-9));
    }
  }
  EXPECT_GT(stopped, 20);
}

TEST(Planner, ThroughputExactEqualsBruteForce) {
  std::mt19937 rng(4321);
  int feasible = 0;
  for (int it = 0; it < 400; ++it) {
    const int D = 1 + it % 6, U = 1 + (it / 6) % 10;
    const Problem p = RandomProblem(rng, D, U);
    const Brute b = BruteForce(p);
    const Solution s = SolveThroughputExact(p);
    ASSERT_EQ(s.feasible, b.bottleneck < kInf) << "instance " << it;
    if (!s.feasible) continue;
    ++feasible;
    EXPECT_TRUE(Near(s.value, b.bottleneck))
        << "instance " << it << ": " << s.value << " vs " << b.bottleneck;
    ExpectValidPlan(p, s, Objective::kThroughput);
    // Among the plans of that period, one of least latency.
    EXPECT_TRUE(Near(Evaluate(p, s.stages).step_ms, b.latency_at_best_period)) << "instance " << it;
  }
  EXPECT_GT(feasible, 150);
}

TEST(Planner, ThroughputBeamIsValidAndNeverBeatsTheOptimum) {
  for (const int width : {2, 64}) {
    std::mt19937 rng(777);
    double gap_sum = 0, gap_max = 0;
    int n = 0, misses = 0;
    for (int it = 0; it < 300; ++it) {
      const Problem p = RandomProblem(rng, 3 + it % 4, 4 + it % 7);
      const Solution exact = SolveThroughputExact(p);
      const Solution beam = SolveThroughputBeam(p, width);
      if (!exact.feasible) {
        EXPECT_FALSE(beam.feasible);
        continue;
      }
      if (!beam.feasible) {
        ++misses;
        continue;
      }
      ExpectValidPlan(p, beam, Objective::kThroughput);
      EXPECT_GE(beam.value, exact.value * (1 - 1e-9));
      EXPECT_LE(beam.lower_bound, exact.value * (1 + 1e-9));
      const double gap = beam.value / exact.value - 1;
      gap_sum += gap, gap_max = std::max(gap_max, gap), ++n;
    }
    ASSERT_GT(n, 100);
    std::printf("beam width %d: mean gap %.2f%%, max %.2f%% over %d instances, %d missed\n", width,
                100 * gap_sum / n, 100 * gap_max, n, misses);
  }
}

TEST(Planner, InfeasibleIsExplainedWithTheMissingMemory) {
  std::mt19937 rng(5);
  Problem p = RandomProblem(rng, 3, 6);
  for (auto& b : p.budget_bytes) b = 10;
  EXPECT_FALSE(SolveLatency(p).feasible);
  EXPECT_FALSE(SolveThroughput(p).feasible);
  const std::string msg = ExplainInfeasible(p);
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("no plan fits"), std::string::npos) << msg;
}

TEST(Planner, BaselinesAreWellFormed) {
  std::mt19937 rng(8);
  for (int it = 0; it < 50; ++it) {
    const Problem p = RandomProblem(rng, 1 + it % 6, 2 + it % 12);
    for (Objective obj : {Objective::kLatency, Objective::kThroughput}) {
      const auto bs = Baselines(p, obj);
      ASSERT_EQ(bs.size(), 5u);
      EXPECT_EQ(bs[0].name, "Edge-Solo");
      for (const auto& b : bs)
        if (!b.stages.empty()) {
          EXPECT_NO_THROW(CheckStages(p, b.stages)) << b.name;
        }
      // Even uses every device as long as there are blocks enough.
      if (p.n_units() - 2 >= p.n_devices()) {
        EXPECT_EQ(int(bs[1].stages.size()), p.n_devices());
      }
      // The optimum is never worse than a baseline that fits.
      const Solution s = Solve(p, obj);
      for (const auto& b : bs) {
        if (b.stages.empty()) continue;
        const Evaluation e = Evaluate(p, b.stages);
        if (e.fits()) {
          EXPECT_LE(s.value, ObjectiveValue(obj, e) * (1 + 1e-9)) << b.name;
        }
      }
    }
  }
}

Problem PaperProblem(const std::string& yaml, Objective obj) {
  const Cluster c = LoadCluster(kFixtures + "paper/" + yaml);
  return BuildProblem(c, LoadModelUnits(kFixtures + "paper/llama2-7b-fp32.json"), {obj, 512, 1});
}

TEST(Planner, PaperLatencyScenario) {
  const Problem p = PaperProblem("latency.yaml", Objective::kLatency);
  ASSERT_EQ(p.n_units(), 34);
  EXPECT_DOUBLE_EQ(p.weight_bytes[0][1], 809533440.0);  // 0.754 GiB per block
  const Solution s = SolveLatency(p);
  ASSERT_TRUE(s.feasible);
  EXPECT_TRUE(s.exact);
  const auto bs = Baselines(p, Objective::kLatency);
  const Evaluation solo = Evaluate(p, bs[0].stages);
  EXPECT_FALSE(solo.fits()) << "Edge-Solo must not fit on one Orin NX";
  EXPECT_GT(solo.missing_bytes, 10.0 * (1 << 30));
  ASSERT_EQ(bs[3].name, "Cloud-Edge-Opt");
  ASSERT_FALSE(bs[3].stages.empty());
  EXPECT_EQ(p.devices[bs[3].stages.back().device], "rtx3090");
  const Evaluation cloud = Evaluate(p, bs[3].stages);
  EXPECT_TRUE(cloud.fits());
  EXPECT_LT(s.value, cloud.step_ms) << "the optimum must beat Cloud-Edge-Opt";
  // The 10 Mbps source-cloud link is avoided for activations.
  const Evaluation e = Evaluate(p, s.stages);
  for (size_t i = 0; i + 1 < s.stages.size(); ++i) EXPECT_LT(e.link_ms[i], 10.0) << i;
}

TEST(Planner, PaperThroughputScenario) {
  const Problem p = PaperProblem("throughput.yaml", Objective::kThroughput);
  const Solution s = SolveThroughput(p);
  ASSERT_TRUE(s.feasible);
  EXPECT_TRUE(s.exact);
  for (const auto& b : Baselines(p, Objective::kThroughput)) {
    if (b.stages.empty()) continue;
    const Evaluation e = Evaluate(p, b.stages);
    if (e.fits()) {
      EXPECT_LE(s.value, e.bottleneck_ms) << b.name;
    }
  }
  // Beam search finds the same here (four interchangeable devices).
  EXPECT_NEAR(SolveThroughputBeam(p, 8).value, s.value, 1e-9);
}

// A cluster like a real one: devices of six kinds (own speed and memory, jittered by a few
// percent) spread over four sites, fast links inside a site and slow ones between.
Problem SiteCluster(int devices, int blocks, uint32_t seed) {
  std::mt19937 rng(seed);
  auto uni = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); };
  const double kinds[6][2] = {{9, 8},  {3, 14},   {2.6, 29},
                              {2, 20}, {0.4, 22}, {0.25, 70}};  // ms, blocks
  const double block = 1e9;
  Problem p;
  const int U = blocks + 2;
  for (int u = 0; u < U; ++u)
    p.units.push_back("u" + std::to_string(u)), p.out_bytes.push_back(u == U - 1 ? 4 : 32768);
  std::vector<int> site(devices);
  for (int d = 0; d < devices; ++d) {
    const int k = d == 0 ? 1 : int(rng() % 6);
    site[d] = d == 0 ? 0 : int(rng() % 4);
    p.devices.push_back("d" + std::to_string(d));
    const double s = uni(0.95, 1.05);
    std::vector<double> c(U), w(U, block), kv(U, 0.01 * block);
    for (int u = 0; u < U; ++u) c[u] = kinds[k][0] * s;
    c[0] = 0.01, w[0] = w[U - 1] = 0.55 * block, kv[0] = kv[U - 1] = 0;
    p.comp_ms.push_back(c);
    p.weight_bytes.push_back(w);
    p.kv_bytes.push_back(kv);
    p.budget_bytes.push_back(kinds[k][1] * uni(0.9, 1.1) * block);
  }
  p.bw_mbps.assign(devices, std::vector<double>(devices, 0));
  p.rtt_ms.assign(devices, std::vector<double>(devices, 0));
  for (int a = 0; a < devices; ++a)
    for (int b = 0; b < devices; ++b)
      if (a != b)
        p.bw_mbps[a][b] = site[a] == site[b] ? 1000 : 100,
        p.rtt_ms[a][b] = site[a] == site[b] ? 1 : 10;
  return p;
}

TEST(Planner, LargeClusterSolvesExactly) {
  // 64 devices x 80 blocks, the scale the planner is built for (its time is in bench/, so no
  // wall-clock limit here: under a sanitizer or a busy CPU the default 800 ms would cut the proof).
  SolveOptions unlimited;
  unlimited.time_limit_ms = 0;
  for (uint32_t seed : {1u, 2u, 3u}) {
    const Problem p = SiteCluster(64, 80, seed);
    const Solution s = SolveLatency(p, unlimited);
    ASSERT_TRUE(s.feasible);
    EXPECT_TRUE(s.exact);
    ExpectValidPlan(p, s, Objective::kLatency);
    const Solution t = SolveThroughput(p);  // beam search above 16 devices
    ASSERT_TRUE(t.feasible);
    EXPECT_TRUE(t.exact || t.lower_bound < t.value);  // a heuristic says how far it may be
    EXPECT_LE(t.lower_bound, t.value);
    ExpectValidPlan(p, t, Objective::kThroughput);
  }
}

TEST(Planner, HardInstanceStopsWithAPlanAndABound) {
  // Random links between 64 devices that each hold a few units: a travelling-salesman-like
  // instance. The search stops at its limit and says how far from optimal it may be.
  std::mt19937 rng(64);
  Problem p = RandomProblem(rng, 64, 82);
  for (auto& b : p.budget_bytes) b *= 0.4;
  SolveOptions o;
  o.max_states = 100000;
  const Solution s = SolveLatency(p, o);
  ASSERT_TRUE(s.feasible);
  EXPECT_FALSE(s.exact);
  EXPECT_GT(s.lower_bound, 0);
  EXPECT_LE(s.lower_bound, s.value);
  ExpectValidPlan(p, s, Objective::kLatency);
}

TEST(Planner, BuildProblemAppliesScaleQuantContextAndBatch) {
  Cluster c = LoadCluster(kFixtures + "paper/latency.yaml");
  const ModelUnits m = LoadModelUnits(kFixtures + "paper/llama2-7b-fp32.json");
  c.devices[1].time_scale = 2;
  c.devices[2].quant = TensorType::kQ8_0;
  const Problem a = BuildProblem(c, m, {Objective::kLatency, 512, 1});
  const Problem b = BuildProblem(c, m, {Objective::kLatency, 2048, 4});
  const Problem t = BuildProblem(c, m, {Objective::kThroughput, 2048, 4});
  const UnitInfo& blk = m.units[1];
  const UnitTiming& nx = c.profiles[0].timing[1];
  EXPECT_DOUBLE_EQ(a.comp_ms[0][1], nx.DecodeMs(512));
  EXPECT_DOUBLE_EQ(a.comp_ms[1][1], 2 * nx.DecodeMs(512));  // time_scale
  // Q8_0 matrices: 34 bytes per 32 values instead of 4 bytes per value; time follows the bytes.
  const double q8 = double(blk.weight_bytes - blk.matrix_bytes + blk.matrix_elems / 32 * 34);
  EXPECT_DOUBLE_EQ(a.weight_bytes[2][1], q8);
  EXPECT_DOUBLE_EQ(a.comp_ms[2][1],
                   c.profiles[2].timing[1].DecodeMs(512) * q8 / double(blk.weight_bytes));
  EXPECT_DOUBLE_EQ(a.kv_bytes[0][1], 512.0 * blk.kv_bytes_per_token);
  EXPECT_DOUBLE_EQ(a.kv_bytes[0][0], 0);
  // Latency with a batch: four sequences step together; KV for all four.
  EXPECT_DOUBLE_EQ(b.kv_bytes[0][1], 4 * 2048.0 * blk.kv_bytes_per_token);
  EXPECT_DOUBLE_EQ(b.comp_ms[0][1], nx.DecodeMs(2048) + 3 * nx.prompt_ms_per_token);
  EXPECT_DOUBLE_EQ(b.out_bytes[1], 4.0 * blk.out_bytes_per_token);
  // Throughput: each sequence is its own micro-batch.
  EXPECT_DOUBLE_EQ(t.comp_ms[0][1], nx.DecodeMs(2048));
  EXPECT_DOUBLE_EQ(t.out_bytes[1], double(blk.out_bytes_per_token));
  EXPECT_DOUBLE_EQ(t.kv_bytes[0][1], 4 * 2048.0 * blk.kv_bytes_per_token);
  // Links: the explicit 10 Mbps one and the default.
  EXPECT_DOUBLE_EQ(a.bw_mbps[0][4], 10);
  EXPECT_DOUBLE_EQ(a.bw_mbps[4][0], 10);
  EXPECT_DOUBLE_EQ(a.bw_mbps[2][4], 950);
  EXPECT_DOUBLE_EQ(a.HopMs(1, 2, 4), 65536 * 8 / 950e3 + 2.1);
}

TEST(Placement, RulesBecomeStages) {
  const Problem p = PaperProblem("latency.yaml", Objective::kLatency);
  const std::string rules = R"(rules:
  - match: "^token_embd$|^blk\\.[0-2]$"
    device: orin-nx-1
  - match: "^blk\\.([3-9]|1[0-9]|2[0-9]|3[01])$|^output$"
    device: agx-orin-1
)";
  const auto st = ParsePlacement(rules, "rules.yaml", p);
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0], (Stage{0, 0, 4}));
  EXPECT_EQ(st[1], (Stage{2, 4, 34}));
}

void ExpectPlacementError(const std::string& rules, const std::string& needle) {
  const Problem p = PaperProblem("latency.yaml", Objective::kLatency);
  try {
    ParsePlacement(rules, "rules.yaml", p);
    ADD_FAILURE() << "accepted:\n" << rules;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Placement, ErrorsNameTheLine) {
  ExpectPlacementError("rules:\n  - match: '.'\n    device: nobody\n",
                       "rules.yaml:3: no device named 'nobody'");
  ExpectPlacementError(
      "rules:\n  - match: '.'\n    device: orin-nx-1\n  - match: '(['\n    device: rtx3090\n",
      "rules.yaml:4: match '(['");
  ExpectPlacementError(
      "rules:\n  - match: '.'\n    device: orin-nx-1\n  - match: 'blk'\n    device: rtx3090\n",
      "rules.yaml:4: rule matches no unit");
  ExpectPlacementError("rules:\n  - match: 'blk'\n    device: rtx3090\n",
                       "unit 'token_embd' matches no rule");
  ExpectPlacementError(
      "rules:\n  - match: 'blk\\.1'\n    device: rtx3090\n  - match: '.'\n    device: orin-nx-1\n",
      "rules.yaml:4: device 'orin-nx-1' would hold two ranges");
  ExpectPlacementError("rules:\n  - match: '.'\n    device: rtx3090\n",
                       "rules.yaml:2: unit 'token_embd' must stay on the source");
  ExpectPlacementError("rules:\n  - match: '.'\n    devce: rtx3090\n",
                       "rules.yaml:3: rule: unknown key 'devce'");
}

TEST(Svg, DrawsEveryStage) {
  const Problem p = PaperProblem("latency.yaml", Objective::kLatency);
  const Solution s = SolveLatency(p);
  const std::string svg = PlanSvg(p, s.stages, "paper <latency>");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("paper &lt;latency&gt;"), std::string::npos);
  for (const Stage& st : s.stages) EXPECT_NE(svg.find(p.devices[st.device]), std::string::npos);
}

// ---- the command ----

TEST(PlanCli, PaperLatencyJson) {
  const auto r = test::RunCli("plan --cluster " + kFixtures + "paper/latency.yaml -m " + kFixtures +
                              "paper/llama2-7b-fp32.json --objective latency --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["source"], "orin-nx-1");
  EXPECT_TRUE(j["solver"]["exact"].get<bool>());
  const double opt = j["plan"]["ms_per_token"];
  ASSERT_EQ(j["baselines"].size(), 5u);
  EXPECT_EQ(j["baselines"][0]["name"], "Edge-Solo");
  EXPECT_FALSE(j["baselines"][0]["fits"].get<bool>());
  EXPECT_GT(j["baselines"][0]["missing_bytes"].get<double>(), 0);
  EXPECT_EQ(j["baselines"][3]["name"], "Cloud-Edge-Opt");
  EXPECT_LT(opt, j["baselines"][3]["ms_per_token"].get<double>());
  double mem_ok = true;
  for (const auto& st : j["plan"]["stages"])
    mem_ok = mem_ok && st["weight_bytes"].get<double>() + st["kv_bytes"].get<double>() <=
                           st["budget_bytes"].get<double>();
  EXPECT_TRUE(mem_ok);
}

TEST(PlanCli, TableSvgAndPlacement) {
  const std::string dir = std::filesystem::temp_directory_path() / "es_plan_cli";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/rules.yaml")
      << "rules:\n  - match: '^token_embd$'\n    device: agx-orin-1\n"
         "  - match: '.'\n    device: rtx3090\n";
  const auto r = test::RunCli("plan --cluster " + kFixtures +
                              "paper/throughput.yaml --objective throughput --svg " + dir +
                              "/plan.svg --placement " + dir + "/rules.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* s : {"Optimum:", "tokens/s", "Edge-Solo", "Even", "Cloud-Edge-Even",
                        "Cloud-Edge-Opt", "Memory-proportional", "Placement rules"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  EXPECT_NE(test::ReadFile(dir + "/plan.svg").find("</svg>"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(PlanCli, InfeasibleSaysHowMuchIsMissing) {
  const std::string dir = std::filesystem::temp_directory_path() / "es_plan_infeasible";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/c.yaml")
      << "source: a\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
         "  - {name: a, profile: " +
             kFixtures +
             "paper/orin-nx.json, memory: 4 GiB}\n"
             "  - {name: b, like: a, memory: 4 GiB}\n";
  const auto r = test::RunCli("plan --cluster " + dir + "/c.yaml");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("missing"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GiB"), std::string::npos) << r.err;
  std::filesystem::remove_all(dir);
}

TEST(PlanCli, ModelMismatchIsReported) {
  const auto r = test::RunCli("plan --cluster " + kFixtures + "paper/latency.yaml -m " +
                              test::ModelPath("stories260K.gguf"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("layer units"), std::string::npos) << r.err;
}

// ---- profiling on this machine ----

// Median ms of one decode step of the whole model through the public API at positions ctx..
double MeasuredDecodeMs(const std::string& path, int ctx, int steps) {
  LoadParams lp;
  lp.path = path;
  auto model = Model::Load(lp);
  ContextParams cp;
  cp.n_ctx = ctx + steps + 1;
  cp.n_threads = 1;
  Context c(model, cp);
  std::mt19937 rng(3);
  std::vector<int32_t> prompt(ctx);
  for (auto& t : prompt) t = int32_t(rng() % uint32_t(model->Info().n_vocab));
  c.Eval(prompt);
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    const int32_t tok = int32_t(rng() % uint32_t(model->Info().n_vocab));
    const auto t0 = std::chrono::steady_clock::now();
    c.Eval({tok});
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

TEST(Profile, PredictsTheEnginesDecodeTime) {
  // The profile times every unit alone; the plan adds them up. A whole-model decode step on
  // this machine must come within 25% of that sum. Wall-clock times on a shared machine drift
  // (a neighbour's burst lands in the profile or in the measurement, not both), so each model
  // gets up to three profile-and-measure rounds: a profile that misses a unit or a cost is off
  // in every round, noise is not.
  for (const char* name : {"stories260K.gguf", "synth-llama-spm-256.q8_0.gguf"}) {
    const std::string path = test::ModelPath(name);
    MeasureOptions o;
    o.threads = 1;
    o.ctx = {64, 256};
    o.prompt_batch = 64;
    o.reps = 15;
    const int ctx = 160, steps = 32;
    double best_ratio = 0;
    Profile p;
    double predicted = 0;
    for (int round = 0; round < 3; ++round) {
      // Runs with the CPU to itself (RUN_SERIAL in tests/CMakeLists.txt): other tests running
      // beside it would land in the profile or the measurement and not the other.
      p = MeasureProfile(path, o);
      ASSERT_TRUE(p.has_timing());
      ASSERT_EQ(p.timing.size(), p.model.units.size());
      EXPECT_GT(p.memory_budget_bytes, 0u);
      predicted = 0;
      for (const auto& t : p.timing) predicted += t.DecodeMs(ctx + steps / 2);
      const double measured = MeasuredDecodeMs(path, ctx, steps);
      const double ratio = predicted / measured;
      std::printf("%s round %d: predicted %.4f ms, measured %.4f ms per decode step (%.3f)\n", name,
                  round + 1, predicted, measured, ratio);
      if (round == 0 || std::abs(ratio - 1.0) < std::abs(best_ratio - 1.0)) best_ratio = ratio;
      if (std::abs(ratio - 1.0) <= 0.25) break;
    }
    EXPECT_NEAR(best_ratio, 1.0, 0.25) << name << ": off by more than 25% in three rounds";
    // And through a cluster of this one device, as `plan` does it.
    Profile q = ParseProfile(ProfileToJson(p), "saved", true);
    Cluster c;
    c.file = "one.yaml";
    c.devices.push_back({});
    c.devices[0].name = "here";
    c.profiles.push_back(q);
    const Problem prob = BuildProblem(c, q.model, {Objective::kLatency, ctx + steps / 2, 1});
    const Solution s = SolveLatency(prob);
    ASSERT_TRUE(s.feasible) << "a model this small fits this machine";
    EXPECT_NEAR(s.value, predicted, 1e-6 * predicted);
  }
}

TEST(ProfileCli, WritesAProfileThePlannerReads) {
  const std::string dir = std::filesystem::temp_directory_path() / "es_profile_cli";
  std::filesystem::create_directories(dir);
  const auto r = test::RunCli(
      "profile -m " + test::ModelPath("stories260K.gguf") +
      " -t 1 --ctx 32,128 --batch 32 --reps 3 --memory 2GiB --name box -o " + dir + "/box.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Profile p = LoadProfile(dir + "/box.json", true);
  EXPECT_EQ(p.device, "box");
  EXPECT_EQ(p.memory_budget_bytes, 2ull << 30);
  EXPECT_EQ(p.prompt_batch, 32);
  ASSERT_EQ(p.timing[1].decode.size(), 2u);
  EXPECT_EQ(p.timing[1].decode[1].ctx, 128);
  std::ofstream(dir + "/c.yaml")
      << "source: a\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
         "  - {name: a, profile: box.json}\n  - {name: b, like: a}\n";
  const auto plan = test::RunCli("plan --cluster " + dir + "/c.yaml -m " +
                                 test::ModelPath("stories260K.gguf") + " --json");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_EQ(nlohmann::json::parse(plan.out)["plan"]["stages"].size(),
            1u);  // a tiny model stays home
  EXPECT_EQ(test::RunCli("profile").exit_code, 2);
  EXPECT_EQ(test::RunCli("profile -m " + test::ModelPath("stories260K.gguf")).exit_code,
            2);  // no -o
  std::filesystem::remove_all(dir);
}

TEST(ProfileCli, MeasuresALinkToAnEchoServer) {
  const std::string dir = std::filesystem::temp_directory_path() / "es_profile_link";
  std::filesystem::create_directories(dir);
  const std::string log = dir + "/server.txt";
  // The server serves one connection and gives up after 60 s whatever happens.
  ASSERT_EQ(std::system((test::BinaryPath() +
                         " profile --echo-server 0 --max-connections 1 --timeout-s 60 > " + log +
                         " 2>&1 &")
                            .c_str()),
            0);
  int port = 0;
  for (int i = 0; i < 200 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::sscanf(test::ReadFile(log).c_str(), "echo server listening on port %d", &port);
  }
  ASSERT_GT(port, 0) << test::ReadFile(log);
  const auto r =
      test::RunCli("profile --link 127.0.0.1:" + std::to_string(port) + " --link-mb 4 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["bandwidth_mbps"].get<double>(), 10.0);  // loopback
  EXPECT_GE(j["rtt_ms"].get<double>(), 0.0);
  EXPECT_LT(j["rtt_ms"].get<double>(), 50.0);
  EXPECT_EQ(j["bytes"].get<uint64_t>(), 4u << 20);
  // Nobody listening: a clear error, not a hang.
  const auto bad = test::RunCli("profile --link 127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << bad.err;
  EXPECT_EQ(test::RunCli("profile --link nohostport").exit_code, 2);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace es::shard

// The planner prices the KV cache the stages will hold: F16 by default, block types by their
// bytes per row (profiles store F16 figures; SetKvTypes re-prices them).
TEST(Planner, KvBytesFollowTheCacheTypes) {
  const auto f = es::gguf::File::Open(es::test::ModelPath("synth-llama-spm-256.f16.gguf"));
  const auto f16 = es::shard::UnitsFromGguf(*f);
  const int64_t kv_dim = static_cast<int64_t>(f16.units[1].kv_bytes_per_token / 4);
  ASSERT_GT(kv_dim, 0);
  const es::model::KvTypes mixed{es::TensorType::kQ8_0, es::TensorType::kQ4_0};
  const auto q = es::shard::UnitsFromGguf(*f, mixed);
  EXPECT_EQ(q.units[1].kv_bytes_per_token, uint64_t(kv_dim / 32 * (34 + 18)));
  EXPECT_EQ(q.units[0].kv_bytes_per_token, 0u);
  auto repriced = f16;
  es::shard::SetKvTypes(repriced, mixed);
  for (size_t u = 0; u < q.units.size(); ++u)
    EXPECT_EQ(repriced.units[u].kv_bytes_per_token, q.units[u].kv_bytes_per_token) << u;
  // The wire too: F32 hidden states by default, half with --wire f16; token ids stay 4 bytes.
  EXPECT_EQ(f16.units[1].out_bytes_per_token, uint64_t(f16.n_embd) * 4);
  es::shard::SetF16Wire(repriced);
  EXPECT_EQ(repriced.units[0].out_bytes_per_token, uint64_t(f16.n_embd) * 2);
  EXPECT_EQ(repriced.units[1].out_bytes_per_token, uint64_t(f16.n_embd) * 2);
  EXPECT_EQ(repriced.units.back().out_bytes_per_token, 4u);
}

// A mixture-of-experts block's unit carries its total bytes (what the device must hold) and its
// active bytes (what a decode step reads: the other tensors plus k of n experts' share); a
// profile keeps both.
TEST(Planner, MoeUnitsCarryTotalAndActiveBytes) {
  const auto preset = es::model::FindSynthPreset("tiny-test-qwen3moe");
  ASSERT_TRUE(preset);
  const auto path = std::filesystem::temp_directory_path() / "es_planner_moe.gguf";
  es::model::SynthOptions so;
  so.threads = 2;
  es::model::SynthesizeModel(*preset, es::test::ModelPath("vocab/ggml-vocab-llama-spm.gguf"),
                             path.string(), *es::model::FindQuantFormat("q8_0"), so);
  const auto f = es::gguf::File::Open(path.string());
  const auto m = es::shard::UnitsFromGguf(*f);
  uint64_t experts = 0;
  for (const auto& t : f->tensors())
    if (t.name.rfind("blk.1.", 0) == 0 && t.name.find("_exps.") != std::string::npos)
      experts += t.n_bytes;
  ASSERT_GT(experts, 0u);
  const auto& blk = m.units[2];  // blk.1
  // 4 of 16 experts: three quarters of the expert bytes are not read per token.
  EXPECT_EQ(blk.weight_bytes - blk.active_bytes, experts / 16 * 12);
  EXPECT_EQ(m.units[0].active_bytes, m.units[0].weight_bytes);  // dense units read it all
  es::shard::Profile p;
  p.device = "test";
  p.model = m;
  const auto back = es::shard::ParseProfile(es::shard::ProfileToJson(p), "moe.json", false);
  EXPECT_EQ(back.model.units[2].active_bytes, blk.active_bytes);
  EXPECT_EQ(back.model.units[0].active_bytes, m.units[0].weight_bytes);
  // Planning: a step's measured time scales with the bytes it reads (the active bytes) on a
  // device that stores the matrices as Q4_0; what the device must hold is every expert.
  p.timing.assign(m.units.size(), es::shard::UnitTiming{1.0, 0.0, {{0, 2.0}}});
  p.memory_budget_bytes = 1ull << 34;
  es::shard::Cluster c;
  c.devices.resize(2);
  c.devices[0].name = "a";
  c.devices[1].name = "b";
  c.devices[1].quant = es::TensorType::kQ4_0;
  c.profiles = {p, p};
  c.default_link = es::shard::LinkSpec{1000, 1};
  const auto q = es::shard::BuildProblem(c, m, {es::shard::Objective::kLatency, 64, 1});
  EXPECT_DOUBLE_EQ(q.comp_ms[0][2], 2.0);  // as measured, with real routing
  const double q4_all = double(blk.WeightBytesAs(es::TensorType::kQ4_0));
  const double q4_read = double(blk.ActiveBytesAs(es::TensorType::kQ4_0));
  EXPECT_DOUBLE_EQ(q.weight_bytes[1][2], q4_all);
  EXPECT_DOUBLE_EQ(q.comp_ms[1][2], 2.0 * q4_read / double(blk.active_bytes));
  EXPECT_LT(q4_read, q4_all);
  EXPECT_NE(q.comp_ms[1][2], 2.0 * q4_all / double(blk.weight_bytes));  // not the total's ratio
  std::filesystem::remove(path);
}
