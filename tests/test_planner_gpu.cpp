// GPUs as devices of the planner: `gpu_of` in cluster files (validation, links priced as PCIe or
// unified memory), GPU profiles, and the rule that a host's CPU and GPU stages are consecutive
// (one worker runs both), checked against brute-force enumeration.
#include <gtest/gtest.h>
#include <stdlib.h>

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

const char* kGpus = R"(source: box
default_link: {bandwidth_mbps: 1000, rtt_ms: 1}
devices:
  - name: box
    profile: cpu.json
  - name: box-gpu
    gpu_of: box
    profile: gpu.json
    memory: 8 GiB
  - name: jetson
    address: 10.0.0.3:7070
    profile: cpu.json
  - name: jetson-gpu
    gpu_of: jetson
    gpu: vulkan1
    host_link: unified
    profile: gpu.json
  - name: far
    address: 10.0.0.4:7070
    profile: cpu.json
links:
  - {between: [jetson, far], bandwidth_mbps: 50, rtt_ms: 9}
)";

TEST(ClusterGpu, ParsesGpusAndPricesTheirLinks) {
  Cluster c = ParseCluster(kGpus, "/cfg/c.yaml");
  ASSERT_EQ(c.devices.size(), 5u);
  EXPECT_EQ(c.devices[1].gpu_of, 0);
  EXPECT_EQ(c.devices[1].gpu, 0);
  EXPECT_EQ(c.devices[3].gpu_of, 2);
  EXPECT_EQ(c.devices[3].gpu, 1);
  EXPECT_EQ(c.Host(1), 0);
  EXPECT_EQ(c.Host(3), 2);
  EXPECT_EQ(c.Host(4), 4);
  // box-gpu: no host_link, profile not loaded (ParseCluster only): PCIe.
  EXPECT_DOUBLE_EQ(c.Link(0, 1).bandwidth_mbps, kPcieLink.bandwidth_mbps);
  EXPECT_DOUBLE_EQ(c.Link(1, 0).rtt_ms, kPcieLink.rtt_ms);
  EXPECT_DOUBLE_EQ(c.Link(2, 3).bandwidth_mbps, kUnifiedLink.bandwidth_mbps);
  // A GPU reaches the network through its host: jetson-gpu -> far is jetson -> far.
  EXPECT_DOUBLE_EQ(c.Link(3, 4).bandwidth_mbps, 50);
  EXPECT_DOUBLE_EQ(c.Link(4, 3).rtt_ms, 9);
  EXPECT_DOUBLE_EQ(c.Link(1, 3).bandwidth_mbps, 1000);  // box -> jetson, the default
  // With profiles: a unified-memory GPU's profile, its measured crossing as the RTT.
  Profile gpu;
  gpu.gpu = "vulkan0 (test)";
  gpu.unified_memory = true;
  gpu.crossing_ms = 0.25;
  c.profiles = {Profile{}, gpu, Profile{}, gpu, Profile{}};
  EXPECT_DOUBLE_EQ(c.Link(0, 1).bandwidth_mbps, kUnifiedLink.bandwidth_mbps);
  EXPECT_DOUBLE_EQ(c.Link(0, 1).rtt_ms, 0.25);
  EXPECT_DOUBLE_EQ(c.Link(2, 3).rtt_ms, kUnifiedLink.rtt_ms);  // host_link given: kept
}

void ExpectGpuError(const std::string& from, const std::string& to, const std::string& needle) {
  std::string text = kGpus;
  const size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  try {
    ParseCluster(text, "c.yaml");
    ADD_FAILURE() << "accepted:\n" << text;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ClusterGpu, ErrorsNameTheLine) {
  ExpectGpuError("    gpu_of: box\n", "    gpu_of: boxx\n",
                 "c.yaml:7: device 'box-gpu': gpu_of: no device named 'boxx'");
  ExpectGpuError("    gpu_of: jetson\n", "    gpu_of: box\n",
                 "'box' already has a GPU ('box-gpu'); a worker runs one GPU");
  ExpectGpuError("    gpu_of: jetson\n", "    gpu_of: box-gpu\n", "'box-gpu' is itself a GPU");
  ExpectGpuError("    gpu: vulkan1\n", "    gpu: cuda0\n", "c.yaml:15: device 'jetson-gpu': gpu:");
  ExpectGpuError("    host_link: unified\n", "    host_link: usb\n",
                 "c.yaml:16: device 'jetson-gpu': host_link: expected pcie, unified");
  ExpectGpuError("    host_link: unified\n", "    host_link: {bandwidth_mbps: 100}\n",
                 "host_link: missing 'rtt_ms'");
  ExpectGpuError("    gpu_of: box\n", "    gpu_of: box\n    address: 1.2.3.4:5\n",
                 "a GPU has no address of its own");
  ExpectGpuError("    gpu_of: box\n", "    gpu: vulkan0\n", "name its host with 'gpu_of'");
  ExpectGpuError("source: box", "source: box-gpu", "c.yaml:1: source: 'box-gpu' is a GPU");
  ExpectGpuError("between: [jetson, far]", "between: [jetson-gpu, far]",
                 "link: 'jetson-gpu' is a GPU: it reaches other devices through its host");
}

std::string WriteProfileFile(const std::string& dir, const std::string& name, bool gpu) {
  Profile p;
  p.device = name;
  p.threads = 1;
  p.prompt_batch = 8;
  p.memory_budget_bytes = 1 << 30;
  if (gpu) p.gpu = "vulkan0 (test)", p.crossing_ms = 0.05;
  p.model.name = "m";
  p.model.n_layer = 1;
  for (const char* u : {"token_embd", "blk.0", "output"}) {
    UnitInfo info;
    info.name = u;
    info.weight_bytes = info.active_bytes = 100;
    info.out_bytes_per_token = 16;
    p.model.units.push_back(info);
    UnitTiming t;
    t.prompt_ms_per_token = 0.1;
    t.decode = {{0, gpu ? 0.1 : 1.0}};
    p.timing.push_back(t);
  }
  const std::string path = dir + "/" + name + ".json";
  SaveProfile(p, path);
  return path;
}

TEST(ClusterGpu, ProfilesMustMatchTheKindOfDevice) {
  char tmpl[] = "/tmp/es_planner_gpu_XXXXXX";
  struct Dir {
    std::string path;
    ~Dir() { std::filesystem::remove_all(path); }
  } dir{mkdtemp(tmpl)};
  WriteProfileFile(dir.path, "cpu", false);
  WriteProfileFile(dir.path, "gpu", true);
  // A GPU profile round-trips its fields.
  const Profile g = LoadProfile(dir.path + "/gpu.json", true);
  EXPECT_EQ(g.gpu, "vulkan0 (test)");
  EXPECT_DOUBLE_EQ(g.crossing_ms, 0.05);
  EXPECT_FALSE(g.unified_memory);
  auto load = [&](const std::string& text) {
    std::ofstream(dir.path + "/c.yaml") << text;
    return LoadCluster(dir.path + "/c.yaml");
  };
  const Cluster ok = load(
      "source: a\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
      "  - {name: a, profile: cpu.json}\n  - {name: g, gpu_of: a, profile: gpu.json}\n");
  // PCIe, with the profile's measured crossing (0.05 ms) as its round trip.
  EXPECT_DOUBLE_EQ(ok.Link(0, 1).bandwidth_mbps, kPcieLink.bandwidth_mbps);
  EXPECT_DOUBLE_EQ(ok.Link(0, 1).rtt_ms, 0.05);
  try {
    load(
        "source: a\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
        "  - {name: a, profile: cpu.json}\n  - {name: g, gpu_of: a, profile: cpu.json}\n");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c.yaml:5: device 'g': its profile"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("edgeshard profile --device vulkan0"), std::string::npos)
        << e.what();
  }
  try {
    load(
        "source: a\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
        "  - {name: a, profile: gpu.json}\n");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("declare the GPU as a device with 'gpu_of: HOST'"),
              std::string::npos)
        << e.what();
  }
}

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
