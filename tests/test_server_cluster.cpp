// `serve --cluster` with real worker processes on loopback, driven by the official OpenAI npm
// client (tests/server/cluster.mjs): 8 concurrent greedy streams equal the same requests served
// by one device; a worker SIGKILLed mid-stream costs nothing (replan + replay); with too little
// memory left the requests end with an OpenAI-shaped error naming the lost device; the cluster
// page renders in headless Chromium.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <initializer_list>
#include <thread>

#include "distributed_harness.h"
#include "server_harness.h"

namespace es::test {
namespace {

namespace fs = std::filesystem;
using namespace srv;  // NOLINT: the server harness
using ::testing::HasSubstr;
using json = nlohmann::json;

constexpr int kCtx = 256;
constexpr int kSlots = 8;
const fs::path kNodeDir = fs::path(EDGESHARD_SOURCE_DIR) / "tests" / "server";
const std::string kKey = "cluster-test-key";

// Three workers hold a third of the blocks each; a fourth can hold any third but is 3x slower,
// so the planner takes it only when one of the three is lost.
struct ServedCluster {
  TempDir dir;
  std::string token, model, profile, cluster;
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  ServedCluster() {
    token = dir.File("token", "serve-cluster-token-0123456789");
    model = ModelPath("stories260K.gguf");
    profile = WriteProfile(dir, model);
    for (int i = 1; i <= 4; ++i)
      workers.push_back(std::make_unique<WorkerProcess>(
          "w" + std::to_string(i),
          std::vector<std::string>{"-t", "1", "--token-file", token, "-m", model}, dir.path));
    const auto units = shard::LoadProfile(profile, true).model;
    // Memory for every slot's KV cache.
    const auto b = SplitBudgets(units, kCtx * kSlots, 3);
    std::string y = "source: src\ndefault_link: {bandwidth_mbps: 1000, rtt_ms: 0.2}\ndevices:\n";
    y += "  - {name: src, profile: " + profile + ", memory: " + std::to_string(b[0]) + "}\n";
    for (size_t i = 0; i < workers.size(); ++i) {
      const uint64_t mem = i < 3 ? b[i + 1] : std::max({b[1], b[2], b[3]});
      y += "  - {name: " + workers[i]->name() + ", profile: " + profile +
           ", memory: " + std::to_string(mem) + ", address: \"" + workers[i]->address() + "\"" +
           (i == 3 ? ", time_scale: 3" : "") + "}\n";
    }
    cluster = dir.File("cluster.yaml", y);
  }
  std::vector<std::string> ServeArgs() const {
    return {"-m", model, "--cluster", cluster, "--token-file", token, "--parallel",      "8",
            "-c", "256", "-t",        "1",     "--api-key",    kKey,  "--chat-template", "chatml"};
  }
  WorkerProcess& Worker(const std::string& name) {
    for (auto& w : workers)
      if (w->name() == name) return *w;
    throw std::runtime_error("no worker " + name);
  }
};

bool NodeModulesReady() {
  if (fs::exists(kNodeDir / "node_modules" / "openai" / "package.json")) return true;
  ADD_FAILURE() << "the OpenAI client for the server tests is not installed: run `npm ci --prefix "
                << kNodeDir.string() << "`";
  return false;
}

json RunStreams(const ServerProcess& cluster, const ServerProcess& single,
                const std::string& extra = "") {
  auto r = Shell("cd '" + kNodeDir.string() + "' && timeout 300 node cluster.mjs --cluster " +
                 cluster.url() + " --single " + single.url() + " --key " + kKey + " " + extra);
  const size_t brace = r.out.rfind("\n{");
  json j =
      json::parse(brace == std::string::npos ? r.out : r.out.substr(brace + 1), nullptr, false);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(j.is_object()) << r.out;
  return j;
}

TEST(ServeCluster, EightStreamsMatchOneDeviceThroughFaults) {
  if (!NodeModulesReady()) return;
  ServedCluster c;
  ServerProcess single({"-m", c.model, "--parallel", "8", "-c", "256", "-t", "1", "--api-key", kKey,
                        "--chat-template", "chatml"});
  ServerProcess server(c.ServeArgs());
  ASSERT_GT(server.port(), 0);
  ASSERT_GT(single.port(), 0);
  auto st = json::parse(Get(server.port(), "/cluster.json", kKey).body);
  ASSERT_EQ(st["stages"].size(), 4u) << st.dump(2);  // the source and three workers
  std::vector<std::string> plan;
  for (const auto& s : st["stages"]) plan.push_back(s["device"]);
  EXPECT_THAT(plan, ::testing::ElementsAre("src", "w1", "w2", "w3")) << st.dump(2);

  // 8 concurrent streams through the stages, each identical to one device's answer.
  json j = RunStreams(server, single);
  EXPECT_EQ(j["identical"], true) << j.dump(2);
  EXPECT_GT(j["tokens"].get<int>(), 8 * 8) << j.dump(2);
  std::printf("[ cluster  ] 8 streams, %d tokens in %.2f s\n", j["tokens"].get<int>(),
              j["seconds"].get<double>());

  // Log-probabilities come from the last stage: the same as one device's (F32 on the wire).
  const std::string lp_req =
      R"({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "logprobs": 3})";
  auto a = json::parse(Post(server.port(), "/v1/completions", lp_req, kKey).body);
  auto b = json::parse(Post(single.port(), "/v1/completions", lp_req, kKey).body);
  ASSERT_TRUE(a.contains("choices")) << a.dump();
  ASSERT_TRUE(b.contains("choices")) << b.dump();
  const auto& la = a["choices"][0]["logprobs"];
  const auto& lb = b["choices"][0]["logprobs"];
  EXPECT_EQ(la["tokens"], lb["tokens"]);
  ASSERT_EQ(la["token_logprobs"].size(), 8u) << a.dump();
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_NEAR(la["token_logprobs"][i].get<double>(), lb["token_logprobs"][i].get<double>(), 1e-5);
    EXPECT_EQ(la["top_logprobs"][i].size(), 3u);
  }

  // Structured output: the last stage samples under the grammar, as one device does.
  const std::string js_req =
      R"({"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0, "json_schema":
          {"type": "object", "properties": {"ok": {"type": "boolean"},
           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
           "required": ["ok", "n"], "additionalProperties": false}})";
  a = json::parse(Post(server.port(), "/v1/completions", js_req, kKey).body);
  b = json::parse(Post(single.port(), "/v1/completions", js_req, kKey).body);
  ASSERT_TRUE(a.contains("choices")) << a.dump();
  EXPECT_EQ(a["choices"][0]["text"], b["choices"][0]["text"]) << a.dump() << b.dump();
  const json doc = json::parse(a["choices"][0]["text"].get<std::string>(), nullptr, false);
  EXPECT_TRUE(doc.is_object() && doc["ok"].is_boolean() && doc["n"].is_number_integer())
      << a.dump();

  // Again, with w2 SIGKILLed once 40 chunks have arrived: the coordinator replans onto w4 and
  // replays every sequence; no stream loses or repeats a token.
  j = RunStreams(server, single,
                 "--kill-pid " + std::to_string(c.Worker("w2").pid()) + " --kill-after 40");
  EXPECT_EQ(j["identical"], true) << j.dump(2);
  EXPECT_EQ(j["killed"], true) << j.dump(2);
  st = json::parse(Get(server.port(), "/cluster.json", kKey).body);
  plan.clear();
  for (const auto& s : st["stages"]) plan.push_back(s["device"]);
  EXPECT_THAT(plan, ::testing::Contains("w4")) << st.dump(2);
  EXPECT_THAT(plan, ::testing::Not(::testing::Contains("w2"))) << st.dump(2);
  EXPECT_THAT(st["events"].dump(), HasSubstr("lost worker 'w2'")) << st.dump(2);
  // Every run repeats the same prompts: the slots' cached prefixes are reused, also after the
  // replay rebuilt them on the new plan.
  auto m = Metrics(server.port(), kKey);
  EXPECT_GT(m["edgeshard_prompt_tokens_cached_total"], 8 * 20) << "prefix reuse";

  // w2 comes back: the next requests bring it into the plan again (it is faster than w4). Then w3
  // is stopped (SIGSTOP: it hangs rather than dies) mid-stream; w4 takes its blocks.
  c.Worker("w2").Restart();
  j = RunStreams(server, single,
                 "--kill-pid " + std::to_string(c.Worker("w3").pid()) +
                     " --kill-after 40 --kill-signal SIGSTOP");
  EXPECT_EQ(j["identical"], true) << j.dump(2);
  st = json::parse(Get(server.port(), "/cluster.json", kKey).body);
  plan.clear();
  for (const auto& s : st["stages"]) plan.push_back(s["device"]);
  EXPECT_THAT(plan, ::testing::ElementsAre("src", "w1", "w2", "w4")) << st.dump(2);
  // The rejoin event names w2 (the earlier "lost worker 'w2'" must not satisfy this).
  bool w2_back = false;
  for (const auto& e : st["events"])
    w2_back = w2_back || (e.get<std::string>().find("'w2'") != std::string::npos &&
                          e.get<std::string>().find("is back") != std::string::npos);
  EXPECT_TRUE(w2_back) << st.dump(2);
  EXPECT_THAT(st["events"].dump(), HasSubstr("lost worker 'w3'")) << st.dump(2);

  m = Metrics(server.port(), kKey);
  EXPECT_EQ(m["edgeshard_requests_total{reason=\"error\"}"], 0);
  EXPECT_EQ(m["edgeshard_slots_active"], 0);
}
// With two workers gone nothing fits: open requests end with an error that names the lost device
// and the missing memory; the server itself keeps answering.
TEST(ServeCluster, NoFeasiblePlanIsAnOpenAIError) {
  ServedCluster c;
  ServerProcess server(c.ServeArgs());
  ASSERT_GT(server.port(), 0);
  c.Worker("w4").Stop();
  c.Worker("w2").Stop();
  const std::string body = R"({"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0})";
  auto r = Post(server.port(), "/v1/completions", body, kKey);
  ASSERT_GE(r.status, 400) << r.body;
  auto e = json::parse(r.body, nullptr, false);
  ASSERT_TRUE(e.is_object() && e.contains("error")) << r.body;
  const std::string msg = e["error"]["message"];
  EXPECT_THAT(msg, HasSubstr("w2")) << msg;
  EXPECT_THAT(msg, HasSubstr("missing")) << msg;
  EXPECT_EQ(Get(server.port(), "/health").status, 200);
}

// `--objective load` (serve's default): with one request the server takes the plan of least
// latency, with four the pipelined one, switching between steps while streams run; every stream
// still equals one device's. The profile makes each further row of a step cost a full row (no
// batching gain), so only a pipeline serves many requests faster; links of 4 ms RTT make every
// extra stage cost a single request time.
TEST(ServeCluster, PlanFollowsTheLoad) {
  if (!NodeModulesReady()) return;
  TempDir dir;
  const std::string token = dir.File("token", "serve-cluster-token-0123456789");
  const std::string model = ModelPath("stories260K.gguf");
  shard::Profile prof = shard::LoadProfile(WriteProfile(dir, model), true);
  double total = 0;
  for (size_t u = 0; u < prof.timing.size(); ++u) {
    prof.timing[u].row_ms = prof.timing[u].DecodeMs(16);
    if (u > 0) total += prof.timing[u].DecodeMs(kCtx);
  }
  const std::string profile = dir.path + "/rows.json";
  shard::SaveProfile(prof, profile);
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  for (const char* name : {"wa", "wb"})
    workers.push_back(std::make_unique<WorkerProcess>(
        name, std::vector<std::string>{"-t", "1", "--token-file", token, "-m", model}, dir.path));
  // The source holds the embedding only; either worker could hold the rest, 5 ms per token.
  const int kParallel = 4;
  uint64_t all = 0;
  for (const auto& u : prof.model.units) all += UnitBytes(u, kCtx * kParallel);
  const uint64_t src = UnitBytes(prof.model.units[0], kCtx * kParallel) + 1024;
  std::string y = "source: src\ndefault_link: {bandwidth_mbps: 1000, rtt_ms: 4}\ndevices:\n";
  y += "  - {name: src, profile: " + profile + ", memory: " + std::to_string(src) + "}\n";
  for (auto& w : workers)
    y += "  - {name: " + w->name() + ", profile: " + profile + ", memory: " + std::to_string(all) +
         ", time_scale: " + std::to_string(5.0 / total) + ", address: \"" + w->address() + "\"}\n";
  const std::string cluster = dir.File("cluster.yaml", y);
  ServerProcess server({"-m", model, "--cluster", cluster, "--token-file", token, "--parallel", "4",
                        "-c", "256", "-t", "1", "--api-key", kKey, "--chat-template", "chatml",
                        "--load-hold", "0"});
  ServerProcess single({"-m", model, "--parallel", "4", "-c", "256", "-t", "1", "--api-key", kKey,
                        "--chat-template", "chatml"});
  ASSERT_GT(server.port(), 0);
  ASSERT_GT(single.port(), 0);
  auto stages = [&] {
    const auto st = json::parse(Get(server.port(), "/cluster.json", kKey).body);
    std::vector<std::string> v;
    for (const auto& s : st["stages"]) v.push_back(s["device"]);
    return v;
  };
  // Planned for all 4 slots busy: a pipeline through both workers.
  EXPECT_EQ(stages().size(), 3u);
  // The planner runs beside the streams: on a loaded machine (ctest -j2) its answer can land
  // after a short run has ended, so the checks wait for the event (up to 20 s) rather than
  // expect it by the run's last token.
  json st;
  auto await_event = [&](std::initializer_list<const char*> texts) {
    for (int i = 0; i < 400; ++i) {
      st = json::parse(Get(server.port(), "/cluster.json", kKey).body);
      for (const auto& e : st["events"])
        for (const char* t : texts)
          if (e.get<std::string>().find(t) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };
  json j = RunStreams(server, single, "--streams 1 --max-tokens 120");
  EXPECT_EQ(j["identical"], true) << j.dump(2);
  EXPECT_TRUE(await_event({"replanned for 1 stream(s)"})) << st.dump(2);
  EXPECT_EQ(stages().size(), 2u) << st.dump(2);
  j = RunStreams(server, single, "--streams 4 --max-tokens 120");
  EXPECT_EQ(j["identical"], true) << j.dump(2);
  EXPECT_TRUE(await_event({"replanned for 3 stream(s)", "replanned for 4 stream(s)"}))
      << st.dump(2);
  for (const auto& e : st["events"]) std::printf("[ event    ] %s\n", e.get<std::string>().c_str());
  auto m = Metrics(server.port(), kKey);
  EXPECT_EQ(m["edgeshard_requests_total{reason=\"error\"}"], 0);
}

// A sliding-window model (gemma3 synth: window 64; with -b 16 the stages' rings hold 79 rows): a
// request that shares only a short prefix with its slot's cached tokens cuts before the rings'
// reach, so the coordinator evaluates the kept prefix again before the rest. The answers equal
// one device's (the server once sent that prefix twice).
TEST(ServeCluster, SlidingWindowPrefixCutMatchesOneDevice) {
  TempDir dir;
  const std::string token = dir.File("token", "serve-cluster-token-0123456789");
  const std::string model = ModelPath("synth-gemma3.f16.gguf");
  const std::string profile = WriteProfile(dir, model);
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  for (const char* name : {"w1", "w2"})
    workers.push_back(std::make_unique<WorkerProcess>(
        name, std::vector<std::string>{"-t", "1", "--token-file", token, "-m", model}, dir.path));
  const auto b = SplitBudgets(shard::LoadProfile(profile, true).model, kCtx, 2);
  const std::string cluster =
      dir.File("cluster.yaml", ClusterYaml(profile, {{"src", "", b[0]},
                                                     {"w1", workers[0]->address(), b[1]},
                                                     {"w2", workers[1]->address(), b[2]}}));
  const std::vector<std::string> common = {
      "-m",        model, "--parallel",      "1",     "-c", "256", "-t", "1", "-b", "16",
      "--api-key", kKey,  "--chat-template", "chatml"};
  std::vector<std::string> args = common;
  for (const char* a : {"--cluster", cluster.c_str(), "--token-file", token.c_str()})
    args.push_back(a);
  ServerProcess server(args);
  ServerProcess single(common);
  ASSERT_GT(server.port(), 0);
  ASSERT_GT(single.port(), 0);
  std::string story;
  for (int i = 0; i < 8; ++i)
    story += "The quick brown fox jumps over the lazy dog near the river. ";
  const std::vector<std::string> prompts = {story, "The quick brown fox sat by the fire and"};
  for (const auto& p : prompts) {
    const std::string req =
        json{{"prompt", p}, {"max_tokens", 40}, {"temperature", 0}, {"ignore_eos", true}}.dump();
    auto a = json::parse(Post(server.port(), "/v1/completions", req, kKey).body, nullptr, false);
    auto e = json::parse(Post(single.port(), "/v1/completions", req, kKey).body, nullptr, false);
    ASSERT_TRUE(a.contains("choices")) << a.dump();
    ASSERT_TRUE(e.contains("choices")) << e.dump();
    EXPECT_EQ(a["choices"][0]["text"], e["choices"][0]["text"]) << p;
    EXPECT_GT(a["usage"]["prompt_tokens"].get<int>(), 5);
  }
}

// The page loads in headless Chromium (Debian's `chromium`): its script fetches /cluster.json
// and draws the devices and the plan; a screenshot is kept under the build directory.
TEST(ServeCluster, PageRendersInChromium) {
  ServedCluster c;
  ServerProcess server(c.ServeArgs());
  ASSERT_GT(server.port(), 0);
  auto page = Get(server.port(), "/cluster?api_key=" + kKey);
  ASSERT_EQ(page.status, 200);
  EXPECT_EQ(Get(server.port(), "/cluster").status, 401);  // the key is needed here too
  const auto chromium = Shell("command -v chromium || command -v chromium-browser");
  ASSERT_EQ(chromium.exit_code, 0) << "headless Chromium is needed: install Debian's `chromium` "
                                      "(scripts/setup does)";
  std::string bin = chromium.out.substr(0, chromium.out.find('\n'));
  const std::string url = server.url() + "/cluster?api_key=" + kKey;
  const std::string flags =
      " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
      "--user-data-dir=" +
      c.dir.path + "/chromium --virtual-time-budget=4000 ";
  auto dom = Shell("timeout 120 " + bin + flags + "--dump-dom '" + url + "' 2>/dev/null");
  ASSERT_EQ(dom.exit_code, 0) << dom.out;
  for (const char* name : {"w1", "w2", "w3", "w4"})
    EXPECT_THAT(dom.out, HasSubstr(std::string("<td>") + name + "</td>")) << dom.out;
  EXPECT_THAT(dom.out, HasSubstr("<svg")) << dom.out;
  EXPECT_THAT(dom.out, HasSubstr("class=\"stage\"")) << dom.out;
  const std::string shot = fs::absolute(fs::path("cluster-page.png")).string();
  fs::remove(shot);
  auto s = Shell("timeout 120 " + bin + flags + "--window-size=1200,1600 --screenshot=" + shot +
                 " '" + url + "' 2>&1");
  EXPECT_EQ(s.exit_code, 0) << s.out;
  EXPECT_TRUE(fs::exists(shot) && fs::file_size(shot) > 10000) << s.out;
  std::printf("[ page     ] screenshot: %s\n", shot.c_str());
}

}  // namespace
}  // namespace es::test
