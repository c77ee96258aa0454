#include "shard/shard_dist_frontend.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/model_config.h"
#include "shard/shard_coordinator.h"
#include "tokenizer/tokenizer_chat.h"

namespace es::shard {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

CoordinatorOptions CoordinatorOptionsFor(const ClusterCliOptions& c, const ClusterModelArgs& m) {
  CoordinatorOptions o;
  o.cluster_path = c.cluster;
  // "load" (serve): starts from the plan for every slot busy, a throughput plan.
  o.objective = c.objective == "latency" ? Objective::kLatency : Objective::kThroughput;
  o.follow_load = c.objective == "load";
  std::string token_file = c.token_file;
  if (token_file.empty())
    if (const char* e = std::getenv("EDGESHARD_TOKEN_FILE"); e && *e) token_file = e;
  if (token_file.empty())
    throw Error("--cluster needs the cluster's token: --token-file FILE (or EDGESHARD_TOKEN_FILE)");
  o.security = Security::Load(token_file, c.tls_ca, c.tls_cert, c.tls_key);
  o.wire_f32 = c.wire == "f32";
  o.placement = c.placement;
  o.baseline = c.baseline;
  o.n_ctx = m.ctx;
  o.n_batch = m.batch;
  o.n_threads = m.threads;
  o.kv_type = {model::ParseKvType(m.cache_type_k, "--cache-type-k"),
               model::ParseKvType(m.cache_type_v, "--cache-type-v")};
  o.verbose = c.verbose;
  o.discovery = DiscoveryFromCli(c, m.threads);
  if (!c.verbose) o.discovery.log = {};
  return o;
}

namespace {

std::string Units(const StageReport& s, int n_units) {
  std::string t;
  if (s.first_unit == 0) t += "embd";
  const int b0 = std::max(1, s.first_unit), b1 = std::min(n_units - 1, s.last_unit);
  if (b1 > b0) t += (t.empty() ? "" : "+") + fmt::format("blk.{}-{}", b0 - 1, b1 - 2);
  if (s.last_unit == n_units) t += (t.empty() ? "" : "+") + std::string("head");
  return t;
}

void PrintReport(const ClusterReport& r, int n_units) {
  std::fprintf(stderr,
               "per decode step (%lld steps), measured vs planned (%s objective):\n"
               "| stage | device | units | compute ms | planned | link ms (to next) | planned | "
               "wire bytes |\n|---|---|---|---|---|---|---|---|\n",
               static_cast<long long>(r.decode_steps), r.objective.c_str());
  for (size_t i = 0; i < r.stages.size(); ++i) {
    const auto& s = r.stages[i];
    std::fprintf(stderr, "| %zu | %s | %s | %.2f | %.2f | %.2f | %.2f | %.0f |\n", i,
                 s.device.c_str(), Units(s, n_units).c_str(), s.compute_ms, s.planned_compute_ms,
                 s.link_ms, s.planned_link_ms, s.wire_bytes);
  }
  std::fprintf(stderr, "step: %.2f ms measured, %.2f ms planned; slowest stage planned %.2f ms\n",
               r.step_ms, r.planned_step_ms, r.planned_bottleneck_ms);
  for (const auto& e : r.events) std::fprintf(stderr, "event: %s\n", e.c_str());
}

nlohmann::json ReportJson(const ClusterReport& r, int n_units) {
  nlohmann::json st = nlohmann::json::array();
  for (const auto& s : r.stages)
    st.push_back({{"device", s.device},
                  {"units", Units(s, n_units)},
                  {"first_unit", s.first_unit},
                  {"last_unit", s.last_unit},
                  {"compute_ms", s.compute_ms},
                  {"planned_compute_ms", s.planned_compute_ms},
                  {"link_ms", s.link_ms},
                  {"planned_link_ms", s.planned_link_ms},
                  {"wire_bytes_per_step", s.wire_bytes}});
  return {{"objective", r.objective},
          {"plan_method", r.plan_method},
          {"decode_steps", r.decode_steps},
          {"step_ms", r.step_ms},
          {"planned_step_ms", r.planned_step_ms},
          {"planned_bottleneck_ms", r.planned_bottleneck_ms},
          {"replans", r.replans},
          {"events", r.events},
          {"stages", st}};
}

int NUnits(const Coordinator& co) {
  return co.model().config().n_layer + 2;
}

// As the single-device commands: a context beyond the training one runs, with a warning. The
// workers do not shift the context, so a full one ends the generation.
void WarnContext(const char* command, const std::string& model, int n_ctx,
                 const GenerateParams& gen) {
  const auto f = gguf::File::Open(model);
  const int train = model::ReadModelConfig(*f).n_ctx_train;
  if (n_ctx > train)
    std::fprintf(stderr,
                 "edgeshard %s: warning: the context of %d tokens is longer than the model was "
                 "trained on (%d); the file's RoPE scaling applies, but quality may degrade\n",
                 command, n_ctx, train);
  if (gen.context_shift && gen.max_tokens < 0)
    std::fprintf(stderr,
                 "edgeshard %s: note: --cluster does not shift the context; generation ends when "
                 "its %d tokens are full\n",
                 command, n_ctx);
}

}  // namespace

int ClusterRun(const ClusterCliOptions& c, const ClusterModelArgs& m, const GenerateParams& gen,
               const std::string& prompt, bool no_bos) {
  const auto t0 = Clock::now();
  Coordinator co(m.model, CoordinatorOptionsFor(c, m));
  const double load_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const auto tokens = co.tokenizer().Encode(prompt, !no_bos, true);
  WarnContext("run", m.model, co.n_ctx(), gen);
  const auto devs = co.StageDevices();
  std::string list;
  for (const auto& d : devs) list += (list.empty() ? "" : ", ") + d;
  std::fprintf(stderr, "edgeshard: %s on %zu device(s) (%s), ready in %.0f ms; context %d tokens\n",
               m.model.c_str(), devs.size(), list.c_str(), load_ms, co.n_ctx());
  if (c.verbose) std::fprintf(stderr, "%s", co.PlanSummary().c_str());
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
  const uint64_t seq = co.NewSequence();
  auto r = co.Generate(seq, tokens, gen, [](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::printf("\n");
  std::fflush(stdout);
  const double pp = r.prompt_ms > 0 ? 1000.0 * r.n_prompt / r.prompt_ms : 0;
  const double tg = r.decode_ms > 0 ? 1000.0 * r.n_decode / r.decode_ms : 0;
  std::fprintf(stderr,
               "load: %.0f ms | prompt: %d tokens, %.1f ms, %.2f tokens/s | generation: %zu "
               "tokens, %.2f tokens/s | stop: %s\n",
               load_ms, r.n_prompt, r.prompt_ms, pp, r.tokens.size(), tg, r.stop_reason.c_str());
  const auto rep = co.Report();
  if (c.verbose)
    PrintReport(rep, NUnits(co));
  else
    for (const auto& e : rep.events) std::fprintf(stderr, "event: %s\n", e.c_str());
  if (r.stop_reason == "context") {
    std::fprintf(stderr,
                 "edgeshard run: error: the context of %d tokens is full (use a larger -c; "
                 "--cluster does not shift the context)\n",
                 co.n_ctx());
    return 1;
  }
  return 0;
}

int ClusterChat(const ClusterCliOptions& c, const ClusterModelArgs& m, const GenerateParams& gen,
                const std::string& system, const std::string& chat_template, bool verbose) {
  ClusterCliOptions cc = c;
  cc.verbose = c.verbose || verbose;
  Coordinator co(m.model, CoordinatorOptionsFor(cc, m));
  const auto& t = co.tokenizer();
  WarnContext("chat", m.model, co.n_ctx(), gen);
  const std::string tmpl = tok::ChatTemplateOrDefault(chat_template, t.ChatTemplate(), m.model);
  const std::string bos = t.bos() >= 0 ? t.TokenText(t.bos()) : "";
  const std::string eos = t.eos() >= 0 ? t.TokenText(t.eos()) : "";
  std::vector<tok::ChatMessage> turns;
  if (!system.empty()) turns.push_back({"system", system});
  tok::ApplyChatTemplate(tmpl, {{"user", "hi"}}, true, bos, eos);  // fails early on a bad one
  const bool tty = isatty(STDIN_FILENO);
  if (tty)
    std::fprintf(stderr,
                 "edgeshard chat (%zu devices): type a message; /reset starts over, /exit or "
                 "Ctrl-D quits\n",
                 co.StageDevices().size());
  const uint64_t seq = co.NewSequence();
  std::string line;
  while (true) {
    if (tty) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      turns.resize(system.empty() ? 0 : 1);
      co.Truncate(seq, 0);
      continue;
    }
    if (line.empty()) continue;
    turns.push_back({"user", line});
    const std::string text = tok::ApplyChatTemplate(tmpl, turns, true, bos, eos);
    auto with_bos = t.Encode(text, true, true);
    auto without = t.Encode(text, false, true);
    auto tokens = (with_bos.size() > 1 && !without.empty() && with_bos[0] == without[0] &&
                   with_bos[1] == without[0])
                      ? without
                      : with_bos;
    const auto& cached = co.Tokens(seq);
    size_t keep = 0;
    while (keep < cached.size() && keep < tokens.size() && cached[keep] == tokens[keep]) ++keep;
    if (keep == tokens.size()) --keep;
    co.Truncate(seq, static_cast<int64_t>(keep));
    std::vector<int32_t> fresh(tokens.begin() + static_cast<std::ptrdiff_t>(keep), tokens.end());
    auto r = co.Generate(seq, fresh, gen, [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("\n");
    std::fflush(stdout);
    if (cc.verbose) {
      std::fprintf(stderr, "[%zu cached, %zu evaluated, %zu generated, %.1f tokens/s, stop: %s]\n",
                   keep, fresh.size(), r.tokens.size(),
                   r.decode_ms > 0 ? 1000.0 * r.n_decode / r.decode_ms : 0.0,
                   r.stop_reason.c_str());
      PrintReport(co.Report(), NUnits(co));
    }
    turns.push_back({"assistant", r.text});
    if (r.stop_reason == "context") {
      std::fprintf(stderr,
                   "edgeshard chat: error: the context of %d tokens is full (--cluster does not "
                   "shift the context)\n",
                   co.n_ctx());
      return 1;
    }
  }
  return 0;
}

int ClusterBench(const ClusterCliOptions& c, const std::string& model, int n_prompt, int n_gen,
                 int threads, int reps, int batch, bool json) {
  ClusterModelArgs m;
  m.model = model;
  m.threads = threads;
  m.batch = batch;
  {
    const auto f = gguf::File::Open(model);
    const int train = model::ReadModelConfig(*f).n_ctx_train;
    m.ctx = std::min(train, std::max(n_prompt, n_gen) + 2);
  }
  CoordinatorOptions o = CoordinatorOptionsFor(c, m);
  // Latency plans one sequence; throughput plans each pipelined sequence as a micro-batch (the
  // batch then only sizes the KV caches).
  o.plan_batch = o.objective == Objective::kThroughput ? std::max(1, c.sequences) : 1;
  Coordinator co(model, o);
  const int stages = static_cast<int>(co.StageDevices().size());
  const int S = c.sequences > 0 ? c.sequences : 2 * stages;
  const int n_vocab = co.model().config().n_vocab;
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> tok(0, n_vocab - 1);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> v(n);
    for (auto& x : v) x = tok(rng);
    return v;
  };
  GenerateParams greedy;
  greedy.max_tokens = n_gen;
  greedy.ignore_eos = true;
  greedy.sampling.temperature = 0;
  greedy.sampling.seed = 1;
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  nlohmann::json results = nlohmann::json::array();
  if (!json) {
    std::string list;
    for (const auto& d : co.StageDevices()) list += (list.empty() ? "" : ", ") + d;
    std::printf("cluster %s: %d stage(s) (%s), %s objective\n\n", c.cluster.c_str(), stages,
                list.c_str(), c.objective.c_str());
    std::printf(
        "| mode | test | sequences | t/s (median) | planned t/s | ms/token | planned ms |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
  }
  auto record = [&](const std::string& mode, const std::string& test, int seqs,
                    const std::vector<double>& tps, bool decode) {
    const ClusterReport rep = co.Report();
    const double med = median(tps);
    double planned = 0;
    if (decode && rep.planned_step_ms > 0)
      planned = mode == "sequential" ? 1000.0 / rep.planned_step_ms
                                     : 1000.0 * std::min(1.0 / rep.planned_bottleneck_ms,
                                                         seqs / rep.planned_step_ms);
    if (json) {
      nlohmann::json j = {{"model", model}, {"mode", mode},
                          {"test", test},   {"sequences", seqs},
                          {"reps", reps},   {"tokens_per_s", tps},
                          {"median", med},  {"planned_tokens_per_s", planned},
                          {"wire", c.wire}};
      if (decode) j["cluster"] = ReportJson(rep, NUnits(co));
      results.push_back(j);
    } else {
      std::printf("| %s | %s | %d | %.2f | %s | %s | %s |\n", mode.c_str(), test.c_str(), seqs, med,
                  decode ? fmt::format("{:.2f}", planned).c_str() : "-",
                  decode ? fmt::format("{:.2f}", rep.step_ms).c_str() : "-",
                  decode ? fmt::format("{:.2f}", rep.planned_step_ms).c_str() : "-");
      std::fflush(stdout);
      if (c.verbose && decode) PrintReport(rep, NUnits(co));
    }
  };
  if (n_prompt > 0) {
    std::vector<double> tps;
    for (int r = -1; r < reps; ++r) {
      const uint64_t seq = co.NewSequence();
      GenerateParams none = greedy;
      none.max_tokens = 0;
      const auto t0 = Clock::now();
      co.Generate(seq, random_tokens(n_prompt), none, {});
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      co.ReleaseSequence(seq);
      if (r >= 0) tps.push_back(n_prompt / s);
    }
    record("sequential", "pp" + std::to_string(n_prompt), 1, tps, false);
  }
  if (n_gen > 0) {
    std::vector<double> tps;
    for (int r = -1; r < reps; ++r) {
      if (r == 0) co.ResetStats();
      const uint64_t seq = co.NewSequence();
      const auto res = co.Generate(seq, random_tokens(1), greedy, {});
      co.ReleaseSequence(seq);
      if (r >= 0 && res.decode_ms > 0) tps.push_back(1000.0 * res.n_decode / res.decode_ms);
    }
    record("sequential", "tg" + std::to_string(n_gen), 1, tps, true);
    tps.clear();
    for (int r = -1; r < reps; ++r) {
      if (r == 0) co.ResetStats();
      std::vector<Request> reqs(S);
      for (auto& q : reqs)
        q.sequence = co.NewSequence(), q.prompt = random_tokens(1), q.params = greedy;
      const auto t0 = Clock::now();
      const auto res = co.GenerateMany(reqs, S, c.micro_batch);
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      size_t n = 0;
      for (const auto& x : res) n += x.tokens.size();
      for (const auto& q : reqs) co.ReleaseSequence(q.sequence);
      if (r >= 0) tps.push_back(n / s);
    }
    record("pipeline", "tg" + std::to_string(n_gen), S, tps, true);
  }
  if (json) std::printf("%s\n", results.dump(2).c_str());
  return 0;
}

}  // namespace es::shard
