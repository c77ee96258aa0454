// `edgeshard chat`: an interactive conversation using the model's chat template. The KV
// cache is kept across turns: each turn only evaluates what differs from the cached tokens.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/cli_command.h"
#include "cli/cli_common.h"
#include "shard/shard_dist_cli.h"

namespace es::cli {
namespace {

struct ChatOptions {
  ModelOptions model;
  GenerateParams gen;
  std::string system;
  ChatTemplateOptions tmpl;
  std::string chat_template;            // resolved from tmpl
  std::vector<std::string> jinja_vars;  // NAME=VALUE template variables
  bool verbose = false;
  shard::ClusterCliOptions cluster;  // --cluster: chat on a cluster's workers
};

int Chat(ChatOptions o) {
  o.chat_template = ChatTemplateText(o.tmpl);
  if (!o.cluster.cluster.empty() && !o.jinja_vars.empty())
    throw Error("--jinja-var is not supported with --cluster");
  o.model.memory.CheckLocal(o.cluster.cluster);
  if (!o.cluster.cluster.empty())
    return shard::ClusterChat(o.cluster,
                              {o.model.model, o.model.threads, o.model.ctx, o.model.batch,
                               o.model.cache_type_k, o.model.cache_type_v},
                              o.gen, o.system, o.chat_template, o.verbose);
  auto model = LoadModel(o.model.model, o.model.memory);
  Context ctx(model, MakeContextParams(o.model));
  ReportMemory("chat", *model, ctx);
  WarnBeyondTraining("chat", ctx.n_ctx(), model->Info().n_ctx_train);
  const bool tty = isatty(STDIN_FILENO);
  std::vector<ChatTurn> turns;
  if (!o.system.empty()) turns.push_back({"system", o.system});
  // Validate the template before the first prompt, so a bad one fails at once.
  model->ApplyChatTemplate({{"user", "hi"}}, true, o.chat_template, o.jinja_vars);
  if (tty)
    std::fprintf(stderr,
                 "edgeshard chat: type a message; /reset starts over, /exit or Ctrl-D quits\n");
  std::string line;
  bool shifted = false;     // a context shift dropped part of the conversation from the cache
  std::string text_so_far;  // the conversation rendered up to the last reply
  while (true) {
    if (tty) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      turns.resize(o.system.empty() ? 0 : 1);
      ctx.Truncate(0);
      shifted = false;
      continue;
    }
    if (line.empty()) continue;
    turns.push_back({"user", line});
    const std::string text = model->ApplyChatTemplate(turns, true, o.chat_template, o.jinja_vars);
    // Templates that write the BOS text themselves must not get a second one.
    auto with_bos = model->Tokenize(text, true, true);
    auto without = model->Tokenize(text, false, true);
    auto tokens = (with_bos.size() > 1 && without.size() > 0 && with_bos[0] == without[0] &&
                   with_bos[1] == without[0])
                      ? without
                      : with_bos;
    const auto& cached = ctx.tokens();
    size_t keep = 0;
    while (keep < cached.size() && keep < tokens.size() && cached[keep] == tokens[keep]) ++keep;
    if (keep == tokens.size()) --keep;  // at least one token to evaluate, to get fresh logits
    std::vector<int32_t> fresh(tokens.begin() + static_cast<std::ptrdiff_t>(keep), tokens.end());
    // After a context shift the cache no longer holds the whole conversation: append only what
    // this turn adds to the text already rendered (as llama.cpp's chat does).
    const std::string before = text_so_far;
    if (shifted && text.compare(0, before.size(), before) == 0) {
      fresh = model->Tokenize(text.substr(before.size()), false, true);
      keep = static_cast<size_t>(ctx.n_past());
    }
    ctx.Truncate(static_cast<int64_t>(keep));
    auto r = ctx.Generate(fresh, o.gen, [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("\n");
    std::fflush(stdout);
    if (o.verbose)
      std::fprintf(stderr, "[%zu cached, %zu evaluated, %zu generated, %.1f tokens/s, stop: %s]\n",
                   keep, fresh.size(), r.tokens.size(),
                   r.decode_ms > 0 ? 1000.0 * r.n_decode / r.decode_ms : 0.0,
                   r.stop_reason.c_str());
    turns.push_back({"assistant", r.text});
    shifted = shifted || r.n_shifts > 0;
    text_so_far = model->ApplyChatTemplate(turns, false, o.chat_template, o.jinja_vars);
    if (r.stop_reason == "context") {
      std::fprintf(stderr,
                   "edgeshard chat: error: the context of %d tokens is full (use a larger -c, "
                   "--context-shift or /reset)\n",
                   ctx.n_ctx());
      return kExitFailure;
    }
  }
  return kExitOk;
}

const bool registered = RegisterCommand("chat", [](CLI::App& app) {
  auto o = std::make_shared<ChatOptions>();
  o->gen.max_tokens = -1;
  auto* cmd = app.add_subcommand("chat", "interactive chat with the model's chat template");
  AddModelOptions(cmd, o->model);
  AddSamplingOptions(cmd, o->gen);
  AddContextShiftOptions(cmd, o->gen.context_shift, o->gen.n_keep);
  cmd->add_option("--system", o->system, "system prompt");
  AddChatTemplateOptions(cmd, o->tmpl);
  cmd->add_option("--jinja-var", o->jinja_vars,
                  "extra chat template variable NAME=VALUE, VALUE in JSON or a plain string "
                  "(e.g. enable_thinking=false); repeatable")
      ->allow_extra_args(false);
  cmd->add_flag("-v,--verbose", o->verbose, "print cache use and speed after each reply");
  shard::AddClusterOptions(cmd, o->cluster, shard::ClusterCommand::kChat);
  return [o]() { return Chat(*o); };
});

}  // namespace
}  // namespace es::cli
