// `edgeshard bench`: prompt-processing and generation speed, medians over repetitions.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/cli_command.h"
#include "cli/cli_common.h"

namespace es::cli {
namespace {

struct BenchOptions {
  std::string model;
  int n_prompt = 512;
  int n_gen = 128;
  std::vector<int> threads = {0};
  int reps = 5;
  int batch = 512;
  bool json = false;
};

struct Stats {
  double median, min, max, stddev;
};

Stats Summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  double mean = 0;
  for (double x : v) mean += x;
  mean /= n;
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  return {med, v.front(), v.back(), n > 1 ? std::sqrt(var / (n - 1)) : 0.0};
}

int Bench(const BenchOptions& o) {
  auto model = LoadModel(o.model);
  const auto info = model->Info();
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> tok(0, info.n_vocab - 1);
  nlohmann::json results = nlohmann::json::array();
  if (!o.json) {
    std::printf("| model | type | size | threads | test | t/s (median) | min | max | stddev |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
  }
  using Clock = std::chrono::steady_clock;
  for (int t : o.threads) {
    ContextParams cp;
    cp.n_threads = t;
    cp.n_ctx = std::min(info.n_ctx_train, std::max(o.n_prompt, o.n_gen) + 1);
    cp.n_batch = o.batch;
    Context ctx(model, cp);
    auto run = [&](const char* kind, int n, bool prompt) {
      if (n <= 0) return;
      std::vector<double> tps;
      for (int r = -1; r < o.reps; ++r) {  // r == -1 is an untimed warm-up
        ctx.Truncate(0);
        std::vector<int32_t> toks(n);
        for (auto& x : toks) x = tok(rng);
        const auto t0 = Clock::now();
        if (prompt) {
          ctx.Eval(toks);
        } else {
          for (int i = 0; i < n; ++i) ctx.Eval({toks[i]});
        }
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (r >= 0) tps.push_back(n / s);
      }
      const Stats st = Summarize(tps);
      const std::string test = std::string(kind) + std::to_string(n);
      if (o.json) {
        results.push_back({{"model", o.model}, {"type", info.weight_type}, {"size_bytes", info.file_bytes},
                           {"threads", ctx.n_threads()}, {"test", test}, {"n_tokens", n}, {"reps", o.reps},
                           {"tokens_per_s", tps}, {"median", st.median}, {"min", st.min}, {"max", st.max},
                           {"stddev", st.stddev}});
      } else {
        std::printf("| %s | %s | %s | %d | %s | %.2f | %.2f | %.2f | %.2f |\n", info.name.c_str(),
                    info.weight_type.c_str(), HumanBytes(static_cast<double>(info.file_bytes)).c_str(),
                    ctx.n_threads(), test.c_str(), st.median, st.min, st.max, st.stddev);
        std::fflush(stdout);
      }
    };
    run("pp", o.n_prompt, true);
    run("tg", o.n_gen, false);
  }
  if (o.json) std::printf("%s\n", results.dump(2).c_str());
  return kExitOk;
}

const bool registered = RegisterCommand("bench", [](CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand("bench", "measure prompt processing and generation speed");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->required()->check(CLI::ExistingFile);
  cmd->add_option("-p,--n-prompt", o->n_prompt, "prompt tokens (pp test; 0 skips)")->check(CLI::Range(0, 1 << 20));
  cmd->add_option("-n,--n-gen", o->n_gen, "generated tokens (tg test; 0 skips)")->check(CLI::Range(0, 1 << 20));
  cmd->add_option("-t,--threads", o->threads, "thread counts, comma separated")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024));
  cmd->add_option("-r,--repetitions", o->reps, "timed repetitions per test")->check(CLI::Range(1, 1000));
  cmd->add_option("-b,--batch", o->batch, "prompt tokens per forward pass")->check(CLI::Range(1, 65536));
  cmd->add_flag("--json", o->json, "print results as JSON");
  return [o]() { return Bench(*o); };
});

}  // namespace
}  // namespace es::cli
