// Faults in distributed inference, with real worker processes: a worker killed (SIGKILL) or
// stopped (SIGSTOP) mid-generation is detected, the coordinator replans on the remaining
// devices, rebuilds the lost caches and finishes with the single-device tokens; with no
// feasible plan left the error names the lost device and the missing memory; a worker that
// comes back rejoins.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "distributed_harness.h"
#include "shard/shard_auth.h"

namespace es::test {
namespace {

using shard::Coordinator;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr int kCtx = 256;
constexpr int kTokens = 48;
constexpr int kFaultAt = 8;  // the fault happens after this many tokens were returned

struct Cluster3 {
  TempDir dir;
  std::string token, model, profile;
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  std::vector<std::string> events;
  explicit Cluster3(int n_workers) {
    token = dir.File("token", "fault-test-token-0123456789");
    model = ModelPath("stories260K.gguf");
    profile = WriteProfile(dir, model);
    for (int i = 1; i <= n_workers; ++i) {
      const std::string n = "w" + std::to_string(i);
      workers.push_back(std::make_unique<WorkerProcess>(
          n, std::vector<std::string>{"-t", "1", "--token-file", token, "-m", model}, dir.path));
    }
  }
  WorkerProcess& Worker(const std::string& name) {
    for (auto& w : workers)
      if (w->name() == name) return *w;
    throw std::runtime_error("no worker " + name);
  }
  // Blocks + head split in two groups; workers 1 and 2 hold one group each, worker 3 (if any)
  // either group but runs `spare_scale` times slower, so the planner uses it only when needed.
  std::string Cluster(double spare_scale = 1.0) {
    const auto units = shard::LoadProfile(profile, true).model;
    const auto b = SplitBudgets(units, kCtx, 2);
    std::string y = "source: src\ndefault_link: {bandwidth_mbps: 1000, rtt_ms: 0.2}\ndevices:\n";
    y += "  - {name: src, profile: " + profile + ", memory: " + std::to_string(b[0]) + "}\n";
    for (size_t i = 0; i < workers.size(); ++i) {
      const uint64_t mem = i < 2 ? b[i + 1] : std::max(b[1], b[2]);
      y += "  - {name: " + workers[i]->name() + ", profile: " + profile +
           ", memory: " + std::to_string(mem) + ", address: \"" + workers[i]->address() + "\"" +
           (i >= 2 ? ", time_scale: " + std::to_string(spare_scale) : "") + "}\n";
    }
    return dir.File("cluster.yaml", y);
  }
  shard::CoordinatorOptions Options(const std::string& cluster) {
    return QuietOptions(cluster, token, kCtx,
                        [this](const std::string& m) { events.push_back(m); });
  }
  bool Logged(const std::string& what) const {
    for (const auto& e : events)
      if (e.find(what) != std::string::npos) return true;
    return false;
  }
};

// Generates kTokens with `fault` applied to the worker of stage `stage` after kFaultAt tokens.
// Returns the result and how long the fault took to be noticed and repaired (printed only).
GenerateResult GenerateWithFault(Cluster3& s, Coordinator& co, const std::vector<int32_t>& prompt,
                                 const GenerateParams& gp, size_t stage, int sig,
                                 std::string* victim) {
  *victim = co.StageDevices().at(stage);
  int n = 0;
  Clock::time_point t_fault;
  const auto r = co.Generate(co.NewSequence(), prompt, gp, [&](std::string_view) {
    if (++n == kFaultAt) {
      s.Worker(*victim).Signal(sig);
      t_fault = Clock::now();
    }
    return true;
  });
  std::printf("[ fault    ] %s on %s: request finished %.0f ms after the fault\n",
              sig == SIGKILL ? "SIGKILL" : "SIGSTOP", victim->c_str(),
              std::chrono::duration<double, std::milli>(Clock::now() - t_fault).count());
  return r;
}

TEST(DistributedFaults, LastStageKilledMidGeneration) {
  Cluster3 s(3);
  Coordinator co(s.model, s.Options(s.Cluster()));
  ASSERT_EQ(co.StageDevices().size(), 3u);
  const auto prompt = co.tokenizer().Encode("Once upon a time", true, true);
  const auto ref = SingleDevice(s.model, prompt, kCtx, kTokens);
  std::string victim;
  const auto r = GenerateWithFault(s, co, prompt, Greedy(kTokens), 2, SIGKILL, &victim);
  EXPECT_EQ(r.tokens, ref.tokens);  // nothing lost, nothing duplicated
  EXPECT_EQ(r.text, ref.text);
  EXPECT_TRUE(s.Logged("lost worker '" + victim + "'")) << ::testing::PrintToString(s.events);
  const auto devs = co.StageDevices();
  EXPECT_EQ(std::count(devs.begin(), devs.end(), victim), 0);
  EXPECT_GE(co.Report().replans, 1);  // more only if a loaded machine delays a Health reply
}

// The sampler lives on the last stage: after losing it, a seeded random draw continues exactly.
TEST(DistributedFaults, SeededSamplingSurvivesLosingTheSampler) {
  Cluster3 s(3);
  Coordinator co(s.model, s.Options(s.Cluster()));
  const auto prompt = co.tokenizer().Encode("Once upon a time", true, true);
  GenerateParams gp;
  gp.max_tokens = kTokens;
  gp.sampling.temperature = 0.9f;
  gp.sampling.seed = 1234;
  gp.sampling.repeat_penalty = 1.1f;
  auto m = Model::Load({.path = s.model, .progress = {}});
  ContextParams cp;
  cp.n_ctx = kCtx;
  cp.n_threads = 1;
  Context ctx(m, cp);
  const auto ref = ctx.Generate(prompt, gp, {});
  std::string victim;
  const auto r = GenerateWithFault(s, co, prompt, gp, 2, SIGKILL, &victim);
  EXPECT_EQ(r.tokens, ref.tokens);
}

TEST(DistributedFaults, MiddleStageKilledMidGeneration) {
  Cluster3 s(3);
  Coordinator co(s.model, s.Options(s.Cluster()));
  const auto prompt = co.tokenizer().Encode("One day, a girl", true, true);
  const auto ref = SingleDevice(s.model, prompt, kCtx, kTokens);
  std::string victim;
  const auto r = GenerateWithFault(s, co, prompt, Greedy(kTokens), 1, SIGKILL, &victim);
  EXPECT_EQ(r.tokens, ref.tokens);
  EXPECT_TRUE(s.Logged("lost worker '" + victim + "'"));
}

// A stopped worker keeps its connections open: only the Health deadline can notice it.
TEST(DistributedFaults, StalledWorkerHitsTheDeadline) {
  Cluster3 s(3);
  Coordinator co(s.model, s.Options(s.Cluster()));
  const auto prompt = co.tokenizer().Encode("Once upon a time", true, true);
  const auto ref = SingleDevice(s.model, prompt, kCtx, kTokens);
  std::string victim;
  const auto r = GenerateWithFault(s, co, prompt, Greedy(kTokens), 1, SIGSTOP, &victim);
  EXPECT_EQ(r.tokens, ref.tokens);
  EXPECT_TRUE(s.Logged("lost worker '" + victim + "'"));
  EXPECT_TRUE(s.Logged("DEADLINE_EXCEEDED")) << ::testing::PrintToString(s.events);
  for (const auto& e : s.events) std::printf("[ event    ] %s\n", e.c_str());
  s.Worker(victim).Signal(SIGCONT);
}

// Two workers, both needed: losing one leaves no plan, and the error says which device was lost
// and how much memory is missing.
TEST(DistributedFaults, NoFeasiblePlanNamesTheLostDevice) {
  Cluster3 s(2);
  Coordinator co(s.model, s.Options(s.Cluster()));
  const auto prompt = co.tokenizer().Encode("Once upon a time", true, true);
  std::string victim;
  try {
    GenerateWithFault(s, co, prompt, Greedy(kTokens), 2, SIGKILL, &victim);
    ADD_FAILURE() << "generation finished without the lost worker";
  } catch (const Error& e) {
    std::printf("[ error    ] %s\n", e.what());
    EXPECT_THAT(e.what(), HasSubstr("lost worker '" + victim + "'"));
    EXPECT_THAT(e.what(), HasSubstr("of memory is missing"));
  }
}

// A worker that comes back is planned in again at the next request (it is faster than the
// spare that replaced it), and the next request is exact on it.
TEST(DistributedFaults, RestartedWorkerRejoins) {
  Cluster3 s(3);
  Coordinator co(s.model, s.Options(s.Cluster(/*spare_scale=*/4.0)));
  const auto first = co.StageDevices();
  ASSERT_EQ(std::count(first.begin(), first.end(), "w3"), 0);  // the slow spare is not used
  const auto prompt = co.tokenizer().Encode("Once upon a time", true, true);
  const auto ref = SingleDevice(s.model, prompt, kCtx, kTokens);
  std::string victim;
  EXPECT_EQ(GenerateWithFault(s, co, prompt, Greedy(kTokens), 1, SIGKILL, &victim).tokens,
            ref.tokens);
  const auto during = co.StageDevices();
  EXPECT_EQ(std::count(during.begin(), during.end(), "w3"), 1);
  s.Worker(victim).Restart();
  // The monitor polls lost workers once a second.
  const auto t0 = Clock::now();
  while (!s.Logged("is back") && Clock::now() - t0 < std::chrono::seconds(20)) {
    const auto r = co.Generate(co.NewSequence(), prompt, Greedy(kTokens), {});
    EXPECT_EQ(r.tokens, ref.tokens);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  EXPECT_TRUE(s.Logged("'" + victim + "'") && s.Logged("is back"))
      << ::testing::PrintToString(s.events);
  EXPECT_EQ(co.StageDevices(), first);
}

// A server restarted on the same workers plans again with a new coordinator. Its epochs must
// not repeat the old coordinator's: a worker ends a stream only when the epoch changes, so steps
// of the old plan still travelling between workers would reach the new plan's caches (seen as
// "step starts at position 24 but the stage holds 0 positions" when a restarted `serve --cluster`
// ordered the workers differently).
TEST(DistributedFaults, ACoordinatorAfterAnotherTakesNewEpochs) {
  Cluster3 s(2);
  std::vector<int32_t> tokens;
  for (int round = 0; round < 2; ++round) {
    Coordinator co(s.model, s.Options(s.Cluster()));
    const auto p = co.tokenizer().Encode("Once upon a time", true, true);
    const auto r = co.Generate(co.NewSequence(), p, Greedy(8), {});
    if (round == 0) tokens = r.tokens;
    EXPECT_EQ(r.tokens, tokens);
  }
  // "epoch N: blocks [...]" once per load, in the order loaded.
  std::vector<unsigned long long> epochs;
  const std::string log = s.Worker("w1").Log();
  for (size_t at = log.find("epoch "); at != std::string::npos; at = log.find("epoch ", at + 1))
    if (log.find(": blocks", at) == log.find(':', at))
      epochs.push_back(std::stoull(log.substr(at + 6)));
  ASSERT_EQ(epochs.size(), 2u) << log;
  EXPECT_LT(epochs[0], epochs[1]) << log;
}

}  // namespace
}  // namespace es::test
