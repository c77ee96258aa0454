// `edgeshard run`: generate text from a prompt, streamed to stdout; timings to stderr.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/cli_command.h"
#include "cli/cli_common.h"
#include "shard/shard_dist_cli.h"

namespace es::cli {
namespace {

struct RunOptions {
  ModelOptions model;
  GenerateParams gen;
  std::string prompt;
  std::string prompt_file;
  bool no_bos = false;
  bool verbose = false;
  shard::ClusterCliOptions cluster;  // --cluster: run on a cluster's workers
};

int Run(const RunOptions& o) {
  std::string prompt = o.prompt;
  if (!o.prompt_file.empty()) {
    std::ifstream f(o.prompt_file, std::ios::binary);
    if (!f) throw Error(o.prompt_file + ": cannot read the prompt file");
    std::stringstream ss;
    ss << f.rdbuf();
    prompt = ss.str();
  }
  o.model.memory.CheckLocal(o.cluster.cluster);
  if (!o.cluster.cluster.empty())
    return shard::ClusterRun(o.cluster,
                             {o.model.model, o.model.threads, o.model.ctx, o.model.batch,
                              o.model.cache_type_k, o.model.cache_type_v},
                             o.gen, prompt, o.no_bos);
  double load_ms = 0;
  auto model = LoadModel(o.model.model, o.model.memory, &load_ms);
  Context ctx(model, MakeContextParams(o.model));
  const auto info = model->Info();
  WarnBeyondTraining("run", ctx.n_ctx(), info.n_ctx_train);
  const auto tokens = model->Tokenize(prompt, !o.no_bos, true);
  std::fprintf(stderr,
               "edgeshard: %s (%s, %d layers, %s) loaded in %.0f ms; context %d tokens, KV cache "
               "%s, %d threads\n",
               o.model.model.c_str(), info.arch.c_str(), info.n_layer, info.weight_type.c_str(),
               load_ms, ctx.n_ctx(), KvCacheText(ctx.kv_bytes(), o.model).c_str(), ctx.n_threads());
  ReportMemory("run", *model, ctx);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
  auto r = ctx.Generate(tokens, o.gen, [](std::string_view text) {
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
  if (r.n_shifts > 0) std::fprintf(stderr, "context shifts: %d\n", r.n_shifts);
  if (r.stop_reason == "context") {
    std::fprintf(stderr,
                 "edgeshard run: error: the context of %d tokens is full; generation stopped (use "
                 "a larger -c, or --context-shift)\n",
                 ctx.n_ctx());
    return kExitFailure;
  }
  return kExitOk;
}

const bool registered = RegisterCommand("run", [](CLI::App& app) {
  auto opts = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "generate text from a prompt");
  AddModelOptions(cmd, opts->model);
  AddSamplingOptions(cmd, opts->gen);
  AddContextShiftOptions(cmd, opts->gen.context_shift, opts->gen.n_keep);
  auto* p = cmd->add_option("-p,--prompt", opts->prompt, "prompt text");
  auto* f = cmd->add_option("-f,--file", opts->prompt_file, "read the prompt from a file")
                ->check(CLI::ExistingFile);
  p->excludes(f);
  cmd->add_flag("--no-bos", opts->no_bos, "do not add the beginning-of-sequence token");
  shard::AddClusterOptions(cmd, opts->cluster, shard::ClusterCommand::kRun);
  return [opts, p, f]() {
    if (p->count() == 0 && f->count() == 0)
      throw UsageError("a prompt is required: -p TEXT or -f FILE");
    return Run(*opts);
  };
});

}  // namespace
}  // namespace es::cli
