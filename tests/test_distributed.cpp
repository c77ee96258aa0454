// Distributed inference through real worker processes on loopback: exactness against the
// single-device run over 1-3 workers, pipelined requests, the CLI front ends, token
// authentication, TLS, and the worker's cache directory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <numeric>

#include "distributed_harness.h"
#include "model/model_quantize.h"
#include "model/model_synth.h"
#include "shard/shard_auth.h"
#include "shard/shard_rpc.h"

namespace es::test {
namespace {

using shard::Coordinator;
using shard::CoordinatorOptions;
using ::testing::HasSubstr;

constexpr const char* kToken = "test-token-0123456789abcdef";

class Distributed : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    token_file_ = dir_->File("token", kToken);
    // No local model: every model reaches the workers through PushModel and their caches.
    for (int i = 1; i <= 3; ++i) {
      const std::string n = "w" + std::to_string(i);
      workers_.push_back(std::make_unique<WorkerProcess>(
          n,
          std::vector<std::string>{"-t", "1", "--token-file", token_file_, "--cache-dir",
                                   dir_->path + "/cache-" + n},
          dir_->path));
    }
  }
  static void TearDownTestSuite() {
    workers_.clear();
    delete dir_;
  }

  static CoordinatorOptions Options(const std::string& cluster, int n_ctx, bool f32) {
    CoordinatorOptions o;
    o.cluster_path = cluster;
    o.security = shard::Security::Load(token_file_, "", "", "");
    o.n_ctx = n_ctx;
    o.n_threads = 1;
    o.wire_f32 = f32;
    o.quiet = true;
    o.log = [](const std::string&) {};
    return o;
  }

  // cluster.yaml for `model` whose only fitting plan uses the first k workers.
  static std::string Cluster(const std::string& model, int n_ctx, int k) {
    const std::string profile = WriteProfile(*dir_, model);
    const auto units = shard::LoadProfile(profile, true).model;
    const auto b = SplitBudgets(units, n_ctx, k);
    std::vector<DeviceLine> devs = {{"src", "", b[0]}};
    for (int i = 0; i < k; ++i)
      devs.push_back({workers_[i]->name(), workers_[i]->address(), b[i + 1]});
    return dir_->File("cluster-" + std::to_string(k) + ".yaml", ClusterYaml(profile, devs));
  }

  static TempDir* dir_;
  static std::string token_file_;
  static std::vector<std::unique_ptr<WorkerProcess>> workers_;
};

TempDir* Distributed::dir_ = nullptr;
std::string Distributed::token_file_;
std::vector<std::unique_ptr<WorkerProcess>> Distributed::workers_;

struct Case {
  std::string model;
};

class Exactness : public Distributed, public ::testing::WithParamInterface<std::string> {};

// A parameter "gen:<preset>" is a family's generated test model (the f16 file test_fidelity
// checks against llama.cpp), written once into the suite's directory; others are shared files.
constexpr const char kGen[] = "gen:";
bool Generated(const std::string& param) {
  return param.rfind(kGen, 0) == 0;
}

std::string FixtureRef(const std::string& preset) {
  return std::filesystem::path(EDGESHARD_SOURCE_DIR "/tests").string() + "/fixtures/ref/" + preset +
         ".f16.ref.json";
}

std::string ModelFor(const std::string& param, TempDir& dir) {
  if (!Generated(param)) return ModelPath(param);
  const std::string preset = param.substr(sizeof(kGen) - 1);
  const std::string out = dir.path + "/" + preset + ".f16.gguf";
  if (!std::filesystem::exists(out)) {
    es::model::SynthOptions so;
    so.threads = 2;
    so.name = "edgeshard test model";
    es::model::SynthesizeModel(*es::model::FindSynthPreset(preset),
                               ModelPath("vocab/ggml-vocab-llama-spm.gguf"), out,
                               *es::model::FindQuantFormat("f16"), so);
  }
  return out;
}

std::vector<std::vector<int32_t>> RefPrompts(const std::string& model, int n_ctx) {
  const std::string ref =
      Generated(model) ? FixtureRef(model.substr(sizeof(kGen) - 1))
                       : ModelsDir() + "/ref/" + model.substr(0, model.size() - 5) + ".ref.json";
  const auto j = nlohmann::json::parse(ReadFile(ref));
  std::vector<std::vector<int32_t>> out;
  for (int c : {0, 2}) {  // a short prompt and one longer than a 256-token step
    auto t = j["cases"][c]["tokens"].get<std::vector<int32_t>>();
    if (static_cast<int>(t.size()) > n_ctx - 40) t.resize(n_ctx - 40);
    out.push_back(t);
  }
  return out;
}

// With F32 activations on the wire (the default), logits after the prompt are bit-identical to
// the single-device run and greedy tokens are identical, through 1, 2 and 3 workers. With the
// opt-in F16 wire the top-10 logits stay within the README's tolerance for quantized files
// (0.1); greedy tokens are identical for the trained model and the F16/F32 files, while on the
// random quantized files (near-uniform outputs, activations re-quantized to 8 bits inside the
// kernels) F16 rounding can flip a near-tie, so there identity is only required with F32.
TEST_P(Exactness, GreedyMatchesSingleDevice) {
  const std::string model = ModelFor(GetParam(), *dir_);
  auto info = Model::Load({.path = model, .progress = {}})->Info();
  const int n_ctx = std::min(info.n_ctx_train, 512);
  const auto prompts = RefPrompts(GetParam(), n_ctx);
  const bool quantized = info.weight_type != "F32" && info.weight_type != "F16";
  std::vector<Reference> refs;
  for (const auto& p : prompts) refs.push_back(SingleDevice(model, p, n_ctx, 32));
  const int max_workers = std::min(3, info.n_layer + 1);  // units after the embedding
  // The generated families run through 2 workers (the family, not the cluster, is under test).
  for (int k = Generated(GetParam()) ? 2 : 1; k <= (Generated(GetParam()) ? 2 : max_workers); ++k) {
    const std::string cluster = Cluster(model, n_ctx, k);
    for (bool f32 : {false, true}) {
      SCOPED_TRACE(GetParam() + ": " + std::to_string(k) + " worker(s), wire " +
                   (f32 ? "F32" : "F16"));
      Coordinator co(model, Options(cluster, n_ctx, f32));
      ASSERT_EQ(co.StageDevices().size(), size_t(k + 1));
      for (size_t i = 0; i < prompts.size(); ++i) {
        const uint64_t s = co.NewSequence();
        const auto logits = co.Eval(s, prompts[i]);
        co.ReleaseSequence(s);
        ASSERT_EQ(logits.size(), refs[i].logits.size());
        if (f32) {
          EXPECT_EQ(logits, refs[i].logits) << "prompt " << i;
        } else {
          std::vector<int> order(logits.size());
          std::iota(order.begin(), order.end(), 0);
          std::partial_sort(order.begin(), order.begin() + 10, order.end(),
                            [&](int x, int y) { return refs[i].logits[x] > refs[i].logits[y]; });
          for (int t = 0; t < 10; ++t)
            EXPECT_NEAR(logits[order[t]], refs[i].logits[order[t]], 0.1) << "prompt " << i;
        }
        const uint64_t g = co.NewSequence();
        const auto r = co.Generate(g, prompts[i], Greedy(32), {});
        co.ReleaseSequence(g);
        EXPECT_EQ(r.tokens.size(), refs[i].tokens.size());
        if (f32 || !quantized) {
          EXPECT_EQ(r.tokens, refs[i].tokens) << "prompt " << i;
          EXPECT_EQ(r.text, refs[i].text);
        }
      }
    }
  }
}

// Quantized KV caches (-ctk/-ctv) reach the workers: through 2 workers on the F32 wire, logits
// and greedy tokens are those of one device with the same cache types.
TEST_F(Distributed, QuantizedKvCachesMatchSingleDevice) {
  const std::string model = ModelPath("synth-llama-spm-256.q8_0.gguf");
  const int n_ctx = 512;
  const auto prompts = RefPrompts("synth-llama-spm-256.q8_0.gguf", n_ctx);
  const std::string cluster = Cluster(model, n_ctx, 2);
  for (const auto& [k, v] : {std::pair{"q8_0", "q8_0"}, std::pair{"q4_0", "f16"}}) {
    SCOPED_TRACE(std::string("K ") + k + ", V " + v);
    auto o = Options(cluster, n_ctx, true);
    o.kv_type = {*es::ParseTypeName(k), *es::ParseTypeName(v)};
    Coordinator co(model, o);
    ASSERT_EQ(co.StageDevices().size(), 3u);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const Reference ref = SingleDevice(model, prompts[i], n_ctx, 32, k, v);
      const uint64_t s = co.NewSequence();
      EXPECT_EQ(co.Eval(s, prompts[i]), ref.logits) << "prompt " << i;
      co.ReleaseSequence(s);
      const uint64_t g = co.NewSequence();
      EXPECT_EQ(co.Generate(g, prompts[i], Greedy(32), {}).tokens, ref.tokens) << "prompt " << i;
      co.ReleaseSequence(g);
    }
  }
}

// A worker holding a GPU shard (`worker --gpu-layers 4`: every block of this 4-block model,
// lavapipe in CI): the source keeps the embedding, the worker runs every block on the GPU with
// its KV cache and the head (32000 rows: slow on lavapipe) on its CPU.
// The GPU is not bit-identical to the CPU: logits after the prompt within the f16 fidelity
// tolerance of the single-device run, greedy tokens identical.
#ifdef EDGESHARD_HAVE_VULKAN
TEST_F(Distributed, WorkerWithAGpuShardMatchesSingleDevice) {
  const std::string model = ModelPath("synth-llama-spm-256.f16.gguf");
  const int n_ctx = 512;
  const auto prompts = RefPrompts("synth-llama-spm-256.f16.gguf", n_ctx);
  WorkerProcess gpu("wgpu",
                    {"-t", "1", "--token-file", token_file_, "--cache-dir",
                     dir_->path + "/cache-wgpu", "--gpu-layers", "4"},
                    dir_->path);
  const std::string profile = WriteProfile(*dir_, model);
  const auto b = SplitBudgets(shard::LoadProfile(profile, true).model, n_ctx, 1);
  const std::string cluster = dir_->File(
      "cluster-gpu.yaml", ClusterYaml(profile, {{"src", "", b[0]}, {"wgpu", gpu.address(), b[1]}}));
  Coordinator co(model, Options(cluster, n_ctx, true));
  ASSERT_EQ(co.StageDevices().size(), 2u);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Reference ref = SingleDevice(model, prompts[i], n_ctx, 32);
    const uint64_t s = co.NewSequence();
    const auto logits = co.Eval(s, prompts[i]);
    co.ReleaseSequence(s);
    ASSERT_EQ(logits.size(), ref.logits.size());
    for (size_t v = 0; v < logits.size(); ++v)
      ASSERT_LE(std::fabs(logits[v] - ref.logits[v]),
                2e-3 * std::max(1.0f, std::fabs(ref.logits[v])))
          << "prompt " << i << " token " << v;
    const uint64_t g = co.NewSequence();
    EXPECT_EQ(co.Generate(g, prompts[i], Greedy(32), {}).tokens, ref.tokens) << "prompt " << i;
    co.ReleaseSequence(g);
  }
  EXPECT_THAT(gpu.Log(), HasSubstr("on vulkan0 ("));
}

// GPUs declared in the cluster file (`gpu_of`), each a device of the planner run by its host:
// placement rules give the source's GPU and a worker's GPU ranges of their own, and the planner
// by itself splits one node between its CPU and a faster GPU. Output as on one device.
TEST_F(Distributed, GpusOfTheirHostsRunThePlansRanges) {
  const std::string model = ModelPath("stories260K.gguf");  // 5 blocks
  const int n_ctx = 256;
  const std::string profile = WriteProfile(*dir_, model);
  shard::Profile g = shard::LoadProfile(profile, true);
  g.gpu = "vulkan0 (test)";
  for (auto& t : g.timing)
    for (auto& d : t.decode) d.ms /= 10;  // a GPU ten times faster than the CPUs
  const std::string gpu_profile = dir_->path + "/gpu-profile.json";
  shard::SaveProfile(g, gpu_profile);
  WorkerProcess& w = *workers_[0];
  const std::string cluster = dir_->File(
      "gpus.yaml",
      "source: src\ndefault_link: {bandwidth_mbps: 1000, rtt_ms: 0.2}\ndevices:\n"
      "  - {name: src, profile: " +
          profile +
          ", memory: 1 GiB}\n"
          "  - {name: src-gpu, gpu_of: src, profile: " +
          gpu_profile +
          ", memory: 1 GiB}\n"
          "  - {name: " +
          w.name() + ", profile: " + profile + ", memory: 1 GiB, address: \"" + w.address() +
          "\"}\n"
          "  - {name: w-gpu, gpu_of: " +
          w.name() + ", profile: " + gpu_profile + ", memory: 1 GiB}\n");
  const std::string rules =
      dir_->File("gpu-rules.yaml",
                 "rules:\n  - {match: \"^token_embd$|^blk\\\\.0$\", device: src}\n"
                 "  - {match: \"^blk\\\\.1$\", device: src-gpu}\n"
                 "  - {match: \"^blk\\\\.[23]$\", device: " +
                     w.name() +
                     "}\n"
                     "  - {match: \".\", device: w-gpu}\n");
  auto m = Model::Load({.path = model, .progress = {}});
  const auto prompt = m->Tokenize("Once upon a time", true);
  const Reference ref = SingleDevice(model, prompt, n_ctx, 24);
  auto check = [&](Coordinator& co) {
    const uint64_t s = co.NewSequence();
    const auto logits = co.Eval(s, prompt);
    co.ReleaseSequence(s);
    ASSERT_EQ(logits.size(), ref.logits.size());
    for (size_t v = 0; v < logits.size(); ++v)
      ASSERT_LE(std::fabs(logits[v] - ref.logits[v]),
                2e-3 * std::max(1.0f, std::fabs(ref.logits[v])))
          << "token " << v;
    const uint64_t q = co.NewSequence();
    EXPECT_EQ(co.Generate(q, prompt, Greedy(24), {}).tokens, ref.tokens);
    co.ReleaseSequence(q);
  };
  {
    auto o = Options(cluster, n_ctx, true);
    o.placement = rules;
    Coordinator co(model, o);
    EXPECT_EQ(co.StageDevices(), (std::vector<std::string>{"src", "src-gpu", w.name(), "w-gpu"}));
    check(co);
    EXPECT_THAT(co.model().GpuPlacement(), HasSubstr("blocks 1-1 on vulkan0 ("));
    EXPECT_THAT(w.Log(), HasSubstr("blocks [2, 5) + head"));
    EXPECT_THAT(w.Log(), HasSubstr("blocks 4-4 and the output head on vulkan0 ("));
    EXPECT_THAT(co.PlanSummary(), HasSubstr("w-gpu (vulkan0 of " + w.name() + ")"));
    const auto rep = co.Report();
    ASSERT_EQ(rep.stages.size(), 4u);
    for (const auto& st : rep.stages) EXPECT_GT(st.compute_ms, 0) << st.device;
  }
  {
    // The planner's own choice: the source's GPU takes every block and the head (ten times
    // faster, a PCIe hop away); the worker stays out.
    Coordinator co(model, Options(cluster, n_ctx, true));
    EXPECT_EQ(co.StageDevices(), (std::vector<std::string>{"src", "src-gpu"}));
    check(co);
    EXPECT_THAT(co.model().GpuPlacement(), HasSubstr("blocks 0-4 and the output head on vulkan0"));
  }
}
#endif

INSTANTIATE_TEST_SUITE_P(
    SharedModels, Exactness,
    ::testing::Values("stories260K.gguf", "llama-2-tiny-random.gguf",
                      "synth-llama-spm-256.f16.gguf", "synth-llama-spm-256.q8_0.gguf",
                      "synth-llama-spm-256.q4_0.gguf", "synth-llama-spm-256.q4_k_m.gguf",
                      "synth-llama-spm-256.q6_k.gguf", "synth-qwen2-gpt2-256.f16.gguf",
                      "synth-qwen2-gpt2-256.q8_0.gguf", "synth-qwen2-gpt2-256.q4_0.gguf",
                      "synth-qwen3.f16.gguf", "synth-gemma3.f16.gguf", "gen:tiny-test-llama3",
                      "gen:tiny-test-phi3", "gen:tiny-test-smollm3", "gen:tiny-test-gemma2",
                      "gen:tiny-test-mistral3", "gen:tiny-test-qwen3moe", "gen:tiny-test-qwen2moe",
                      "gen:tiny-test-mixtral", "gen:tiny-test-gpt-oss"),
    [](const auto& info) {
      std::string n = info.param;
      for (auto& c : n)
        if (!isalnum(static_cast<unsigned char>(c))) c = '_';
      return n;
    });

// Several sequences in flight at once: each one's tokens are its single-device tokens.
TEST_F(Distributed, PipelinedSequencesMatchSingleDevice) {
  const std::string model = ModelPath("stories260K.gguf");
  const int n_ctx = 256;
  const std::vector<std::string> texts = {"Once upon a time", "The little dog", "Tom had a red",
                                          "One day, a girl"};
  Coordinator co(model, Options(Cluster(model, n_ctx, 3), n_ctx, false));
  std::vector<shard::Request> reqs;
  std::vector<Reference> refs;
  for (const auto& t : texts) {
    shard::Request q;
    q.sequence = co.NewSequence();
    q.prompt = co.tokenizer().Encode(t, true, true);
    q.params = Greedy(24);
    refs.push_back(SingleDevice(model, q.prompt, n_ctx, 24));
    reqs.push_back(q);
  }
  const auto res = co.GenerateMany(reqs, 4, 1);
  ASSERT_EQ(res.size(), texts.size());
  for (size_t i = 0; i < res.size(); ++i) EXPECT_EQ(res[i].tokens, refs[i].tokens) << texts[i];
  // Two sequences per step (the batched forward pass): every request still completes.
  for (auto& q : reqs) co.ReleaseSequence(q.sequence), q.sequence = co.NewSequence();
  const auto res2 = co.GenerateMany(reqs, 2, 2);
  for (const auto& r : res2) EXPECT_EQ(r.tokens.size(), 24u);
  const auto rep = co.Report();
  ASSERT_EQ(rep.stages.size(), 4u);
  for (size_t i = 0; i + 1 < rep.stages.size(); ++i) EXPECT_GT(rep.stages[i].wire_bytes, 0);
}

// Plans that give the source blocks of its own (the Even baseline) or everything (Edge-Solo,
// no worker at all) compute the same tokens.
TEST_F(Distributed, SourceStagesWithBlocks) {
  const std::string model = ModelPath("stories260K.gguf");
  const int n_ctx = 256;
  const std::string profile = WriteProfile(*dir_, model);
  const std::string cluster = dir_->File(
      "roomy.yaml", ClusterYaml(profile, {{"src", "", 1 << 30},
                                          {workers_[0]->name(), workers_[0]->address(), 1 << 30},
                                          {workers_[1]->name(), workers_[1]->address(), 1 << 30}}));
  auto m = Model::Load({.path = model, .progress = {}});
  const auto prompt = m->Tokenize("Once upon a time", true);
  const auto ref = SingleDevice(model, prompt, n_ctx, 32);
  for (const std::string baseline : {"Even", "Edge-Solo"}) {
    SCOPED_TRACE(baseline);
    auto o = Options(cluster, n_ctx, true);
    o.baseline = baseline;
    Coordinator co(model, o);
    EXPECT_EQ(co.StageDevices().size(), baseline == "Even" ? 3u : 1u);
    const uint64_t s = co.NewSequence();
    EXPECT_EQ(co.Eval(s, prompt), ref.logits);
    EXPECT_EQ(co.Generate(co.NewSequence(), prompt, Greedy(32), {}).tokens, ref.tokens);
  }
  auto o = Options(cluster, n_ctx, true);
  o.baseline = "Nonsense";
  try {
    Coordinator co(model, o);
    ADD_FAILURE() << "accepted an unknown baseline";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("Even"));
  }
}

// A conversation keeps its cache across turns: the second turn only evaluates what is new.
TEST_F(Distributed, ContinuedSequenceMatchesSingleDevice) {
  const std::string model = ModelPath("stories260K.gguf");
  const int n_ctx = 256;
  Coordinator co(model, Options(Cluster(model, n_ctx, 2), n_ctx, false));
  auto m = Model::Load({.path = model, .progress = {}});
  ContextParams cp;
  cp.n_ctx = n_ctx;
  cp.n_threads = 1;
  Context ctx(m, cp);
  const uint64_t s = co.NewSequence();
  const auto p1 = m->Tokenize("Once upon a time", true);
  const auto p2 = m->Tokenize(" The end. Then", false);
  const auto a1 = ctx.Generate(p1, Greedy(12), {});
  const auto b1 = co.Generate(s, p1, Greedy(12), {});
  EXPECT_EQ(b1.tokens, a1.tokens);
  // Rewind to the prompt (as chat does when a turn differs) and continue with new text.
  ctx.Truncate(static_cast<int64_t>(p1.size()));
  co.Truncate(s, static_cast<int64_t>(p1.size()));
  const auto a2 = ctx.Generate(p2, Greedy(12), {});
  const auto b2 = co.Generate(s, p2, Greedy(12), {});
  EXPECT_EQ(b2.tokens, a2.tokens);
  EXPECT_EQ(co.Tokens(s), ctx.tokens());
}

// gemma3's workers keep sliding-window rings (window 64 + batch 16 - 1): a rewind deeper than
// they hold makes the coordinator send the kept tokens again from position 0, and the result
// still equals one device's.
TEST_F(Distributed, DeepRewindWithSlidingWindowRings) {
  const std::string model = ModelPath("synth-gemma3.f16.gguf");
  const int n_ctx = 256;
  auto o = Options(Cluster(model, n_ctx, 2), n_ctx, true);
  o.n_batch = 16;
  Coordinator co(model, o);
  auto m = Model::Load({.path = model, .progress = {}});
  Context ctx(m, {.n_ctx = n_ctx, .n_threads = 1, .n_batch = 16});
  const uint64_t s = co.NewSequence();
  std::vector<int32_t> p1 = {2};
  for (int i = 1; i < 80; ++i) p1.push_back(100 + (i * 37) % 5000);
  const std::vector<int32_t> p2 = {300, 301, 302, 303};
  EXPECT_EQ(co.Generate(s, p1, Greedy(60), {}).tokens, ctx.Generate(p1, Greedy(60), {}).tokens);
  for (const int64_t cut : {int64_t{130}, int64_t{20}}) {  // within the rings, then beyond
    SCOPED_TRACE(cut);
    ctx.Truncate(cut);
    co.Truncate(s, cut);
    EXPECT_EQ(co.Generate(s, p2, Greedy(12), {}).tokens, ctx.Generate(p2, Greedy(12), {}).tokens);
    EXPECT_EQ(co.Tokens(s), ctx.tokens());
  }
}

// The front ends: `run --cluster` prints what `run` prints; `chat --cluster` answers as `chat`;
// `bench --cluster --json` reports both modes with per-stage costs.
TEST_F(Distributed, CommandLine) {
  const std::string model = ModelPath("stories260K.gguf");
  const std::string cluster = Cluster(model, 256, 2);
  const std::string common = "-m " + model + " -c 256 -t 1 --temp 0 -n 24 ";
  const auto single = RunCli("run " + common + "-p 'Once upon a time'");
  ASSERT_EQ(single.exit_code, 0) << single.err;
  const auto dist = RunCli("run " + common + "-p 'Once upon a time' --cluster " + cluster +
                           " --token-file " + token_file_ + " -v");
  ASSERT_EQ(dist.exit_code, 0) << dist.err;
  EXPECT_EQ(dist.out, single.out);
  EXPECT_THAT(dist.err, HasSubstr("measured vs planned"));
  EXPECT_THAT(dist.err, HasSubstr("| w2 |"));

  const std::string turns = "Hello there\nTell me a story\n";
  const auto chat1 = RunCliWithInput("chat " + common + "--chat-template chatml", turns);
  ASSERT_EQ(chat1.exit_code, 0) << chat1.err;
  const auto chat2 = RunCliWithInput("chat " + common + "--chat-template chatml --cluster " +
                                         cluster + " --token-file " + token_file_,
                                     turns);
  ASSERT_EQ(chat2.exit_code, 0) << chat2.err;
  EXPECT_EQ(chat2.out, chat1.out);

  const auto bench = RunCli("bench -m " + model + " -p 16 -n 8 -r 1 -t 1 --json --cluster " +
                            cluster + " --token-file " + token_file_ + " --sequences 3");
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  const auto j = nlohmann::json::parse(bench.out);
  ASSERT_EQ(j.size(), 3u);  // pp, tg sequential, tg pipeline
  EXPECT_EQ(j[1]["mode"], "sequential");
  EXPECT_EQ(j[2]["mode"], "pipeline");
  EXPECT_EQ(j[2]["sequences"], 3);
  for (int i : {1, 2}) {
    EXPECT_GT(j[i]["median"].get<double>(), 0);
    EXPECT_GT(j[i]["planned_tokens_per_s"].get<double>(), 0);
    const auto& st = j[i]["cluster"]["stages"];
    ASSERT_EQ(st.size(), 3u);
    EXPECT_GT(st[0]["wire_bytes_per_step"].get<double>(), 0);
    EXPECT_GT(st[1]["compute_ms"].get<double>(), 0);
    EXPECT_GT(st[1]["planned_compute_ms"].get<double>(), 0);
    EXPECT_GE(st[1]["link_ms"].get<double>(), 0);
  }
}

// A worker with another token refuses every call and logs it; the coordinator names it.
TEST_F(Distributed, WrongTokenIsRefused) {
  const std::string model = ModelPath("stories260K.gguf");
  const std::string other = dir_->File("other-token", "a-different-token-0123456789");
  WorkerProcess w("intruder", {"-t", "1", "--token-file", other}, dir_->path);
  const std::string profile = WriteProfile(*dir_, model);
  const std::string cluster = dir_->File(
      "wrong.yaml",
      ClusterYaml(profile, {{"src", "", 200 << 10}, {"intruder", w.address(), 1 << 30}}));
  try {
    Coordinator co(model, Options(cluster, 128, false));
    ADD_FAILURE() << "the coordinator accepted a worker with another token";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("intruder"));
    EXPECT_THAT(e.what(), HasSubstr("UNAUTHENTICATED"));
  }
  EXPECT_THAT(w.Log(), HasSubstr("refused Health"));
  EXPECT_THAT(w.Log(), HasSubstr("wrong token"));

  // A call without any proof is refused too.
  auto stub = edgeshard::rpc::Worker::NewStub(
      grpc::CreateChannel(w.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  edgeshard::rpc::HealthReply reply;
  const auto st = stub->Health(&ctx, {}, &reply);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(w.Log(), HasSubstr("no token proof"));
}

// Mutual authentication: a "worker" that accepts every call but cannot prove it holds the
// token is refused by the coordinator.
class ImpostorWorker final : public edgeshard::rpc::Worker::Service {
  grpc::Status Health(grpc::ServerContext*, const edgeshard::rpc::HealthRequest*,
                      edgeshard::rpc::HealthReply* r) override {
    r->set_device("impostor");
    return grpc::Status::OK;
  }
};

TEST_F(Distributed, WorkerWithoutTheTokenIsRefused) {
  const std::string model = ModelPath("stories260K.gguf");
  ImpostorWorker service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_GT(port, 0);
  const std::string profile = WriteProfile(*dir_, model);
  const std::string cluster = dir_->File(
      "impostor.yaml",
      ClusterYaml(profile, {{"src", "", 200 << 10},
                            {"impostor", "127.0.0.1:" + std::to_string(port), 1 << 30}}));
  try {
    Coordinator co(model, Options(cluster, 128, false));
    ADD_FAILURE() << "the coordinator trusted a worker without the token";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("impostor"));
    EXPECT_THAT(e.what(), HasSubstr("did not prove it holds the cluster token"));
  }
  server->Shutdown();
}

// Models sent by the coordinator land in the cache directory under their hash, and a name that
// tries to leave it is refused.
TEST_F(Distributed, WorkerWritesOnlyIntoItsCache) {
  const std::string model = ModelPath("stories260K.gguf");
  TempDir root;
  const std::string cache = root.path + "/cache";
  const std::string profile = WriteProfile(root, model);
  WorkerProcess w(
      "cachew",
      {"-t", "1", "--token-file", token_file_, "--cache-dir", cache, "--profile", profile},
      root.path);
  const std::string cluster = root.File(
      "c.yaml", ClusterYaml(profile, {{"src", "", 200 << 10}, {"cachew", w.address(), 1 << 30}}));
  {
    Coordinator co(model, Options(cluster, 128, false));
    const uint64_t s = co.NewSequence();
    const auto r =
        co.Generate(s, co.tokenizer().Encode("Once upon a time", true, true), Greedy(8), {});
    EXPECT_EQ(r.tokens.size(), 8u);
  }
  const std::string sha = shard::Sha256File(model);
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(cache))
    files.push_back(e.path().filename().string());
  EXPECT_THAT(files, ::testing::ElementsAre(sha + ".gguf"));
  EXPECT_EQ(ReadFile(cache + "/" + sha + ".gguf"), ReadFile(model));

  const auto sec = shard::Security::Load(token_file_, "", "", "");
  shard::WorkerClient client("cachew", w.address(), sec);
  // Health reports what is loaded, the machine's memory and the worker's profile.
  const auto h = client.Health(std::chrono::seconds(5));
  EXPECT_EQ(h.model_sha256(), sha);
  EXPECT_EQ(h.device(), "cachew");
  EXPECT_EQ(h.threads(), 1);
  EXPECT_TRUE(h.has_head());
  EXPECT_GT(h.memory_total_bytes(), 0u);
  EXPECT_EQ(h.sequences(), 0);  // released when the coordinator went away
  EXPECT_THAT(h.profile_json(), HasSubstr("edgeshard-profile/1"));
  for (const std::string& bad :
       {std::string("../../escape"), std::string(64, 'Z'), std::string("/tmp/x")}) {
    try {
      client.PushModel(model, bad, {}, std::chrono::seconds(10));
      ADD_FAILURE() << "accepted model name " << bad;
    } catch (const shard::RpcError& e) {
      EXPECT_EQ(e.code(), grpc::StatusCode::INVALID_ARGUMENT) << e.what();
    }
  }
  // Nothing but the cache (and the test's own files) under the worker's root.
  std::vector<std::string> top;
  for (const auto& e : std::filesystem::directory_iterator(root.path))
    top.push_back(e.path().filename().string());
  EXPECT_THAT(top, ::testing::UnorderedElementsAre("cache", "cachew.log", "c.yaml",
                                                   ::testing::StartsWith("profile-")));
}

// Mutual TLS with a throwaway CA: the right certificates work (and generate exactly); a
// certificate from another CA or no TLS at all is refused.
TEST_F(Distributed, MutualTls) {
  const std::string model = ModelPath("stories260K.gguf");
  TempDir t;
  const std::string d = t.path;
  const std::string ext = t.File("ext.cnf", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  auto sh = [&](const std::string& cmd) {
    ASSERT_EQ(std::system(("cd " + d + " && " + cmd + " 2>/dev/null >/dev/null").c_str()), 0)
        << cmd;
  };
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  for (const std::string ca : {"ca", "rogue"})
    sh("openssl req -x509 " + ec + " -keyout " + ca + ".key -out " + ca +
       ".pem -days 1 -subj /CN=" + ca);
  auto cert = [&](const std::string& name, const std::string& ca) {
    sh("openssl req " + ec + " -keyout " + name + ".key -out " + name + ".csr -subj /CN=" + name);
    sh("openssl x509 -req -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca +
       ".key -CAcreateserial -out " + name + ".pem -days 1 -extfile ext.cnf");
  };
  cert("worker", "ca");
  cert("client", "ca");
  cert("mallory", "rogue");
  // Two workers, so the first also reaches the second over TLS with its own certificate.
  const std::vector<std::string> tls = {
      "-t",         "1",          "--token-file",    token_file_, "--cache-dir",
      d + "/cache", "--tls-cert", d + "/worker.pem", "--tls-key", d + "/worker.key",
      "--tls-ca",   d + "/ca.pem"};
  WorkerProcess w("tlsw", tls, d), w2("tlsw2", tls, d);
  const std::string profile = WriteProfile(t, model);
  const auto b = SplitBudgets(shard::LoadProfile(profile, true).model, 128, 2);
  const std::string cluster = t.File(
      "c.yaml",
      ClusterYaml(profile,
                  {{"src", "", b[0]}, {"tlsw", w.address(), b[1]}, {"tlsw2", w2.address(), b[2]}}));
  auto options = [&](const std::string& who) {
    auto o = Options(cluster, 128, false);
    o.security = shard::Security::Load(token_file_, d + "/ca.pem", d + "/" + who + ".pem",
                                       d + "/" + who + ".key");
    return o;
  };
  {
    Coordinator co(model, options("client"));
    EXPECT_EQ(co.StageDevices().size(), 3u);
    const auto prompt = co.tokenizer().Encode("Once upon a time", true, true);
    const auto ref = SingleDevice(model, prompt, 128, 16);
    const uint64_t s = co.NewSequence();
    EXPECT_EQ(co.Generate(s, prompt, Greedy(16), {}).tokens, ref.tokens);
  }
  for (bool rogue : {true, false}) {
    try {
      Coordinator co(model, rogue ? options("mallory") : Options(cluster, 128, false));
      ADD_FAILURE() << "the worker accepted a coordinator "
                    << (rogue ? "from another CA" : "without TLS");
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("tlsw"));
      EXPECT_THAT(e.what(), HasSubstr("certificate"));
    }
  }
  // The worker logs the refused handshakes.
  EXPECT_THAT(w.Log(), HasSubstr("certificate verify failed"));
  EXPECT_THAT(w.Log(), HasSubstr("Handshake failed"));
}

}  // namespace
}  // namespace es::test
