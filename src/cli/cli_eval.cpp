// `edgeshard eval`: teacher-forced top-k logits at every prompt position after one batched
// pass, and optionally the greedy continuation, in the schema of the llama.cpp references.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <numeric>

#include "cli/cli_command.h"
#include "cli/cli_common.h"

namespace es::cli {
namespace {

struct EvalOptions {
  ModelOptions model;
  std::string prompt;
  int top = 10;
  int greedy = 0;
  bool json = false;
  bool no_bos = false;
};

std::string Hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) h += d[c >> 4], h += d[c & 15];
  return h;
}

int Eval(EvalOptions o) {
  auto model = LoadModel(o.model.model, o.model.memory);
  const auto tokens = model->Tokenize(o.prompt, !o.no_bos, true);
  if (tokens.empty()) throw UsageError("the prompt produced no tokens");
  const int n_vocab = model->Info().n_vocab;
  auto params = MakeContextParams(o.model);
  // Just what the prompt and the continuation need; eval never shifts the context.
  if (o.model.ctx == 0) params.n_ctx = static_cast<int>(tokens.size()) + o.greedy + 1;
  params.n_batch = static_cast<int>(tokens.size());  // one batched pass
  Context ctx(model, params);
  ReportMemory("eval", *model, ctx);
  WarnBeyondTraining("eval", ctx.n_ctx(), model->Info().n_ctx_train);
  std::vector<float> logits;
  ctx.Eval(tokens, &logits);

  const int k = std::min(o.top, n_vocab);
  nlohmann::json top = nlohmann::json::array();
  std::vector<int> idx(n_vocab);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const float* row = logits.data() + i * n_vocab;
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    nlohmann::json pos = nlohmann::json::array();
    for (int j = 0; j < k; ++j) pos.push_back({idx[j], row[idx[j]]});
    top.push_back(std::move(pos));
  }
  std::vector<int32_t> greedy;
  std::string greedy_text;
  for (int g = 0; g < o.greedy; ++g) {
    const auto& l = ctx.last_logits();
    const int32_t t = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    greedy.push_back(t);
    greedy_text += model->TokenToPiece(t);
    if (model->IsEndOfGeneration(t) || g + 1 == o.greedy) break;
    ctx.Eval({t});
  }
  nlohmann::json c = {{"prompt", o.prompt}, {"tokens", tokens}, {"top", top}};
  if (o.greedy > 0) {
    c["greedy"] = greedy;
    c["greedy_hex"] = Hex(greedy_text);
  }
  if (o.json) {
    nlohmann::json out = {
        {"model", o.model.model}, {"n_vocab", n_vocab}, {"cases", nlohmann::json::array({c})}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return kExitOk;
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::printf("%4zu %6d %-16s", i, tokens[i],
                ("'" + model->TokenToPiece(tokens[i]) + "'").c_str());
    for (const auto& p : top[i]) std::printf(" %d:%.4f", p[0].get<int>(), p[1].get<float>());
    std::printf("\n");
  }
  if (!greedy.empty()) std::printf("greedy: %s\n", greedy_text.c_str());
  return kExitOk;
}

const bool registered = RegisterCommand("eval", [](CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  auto* cmd = app.add_subcommand("eval", "top-k logits at every prompt position (fidelity checks)");
  AddModelOptions(cmd, o->model);
  cmd->add_option("-p,--prompt", o->prompt, "prompt text")->required();
  cmd->add_option("--top", o->top, "logits to print per position")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--greedy", o->greedy, "also decode N greedy tokens")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_flag("--json", o->json, "JSON in the schema of the llama.cpp reference files");
  cmd->add_flag("--no-bos", o->no_bos, "do not add the beginning-of-sequence token");
  return [o]() { return Eval(*o); };
});

}  // namespace
}  // namespace es::cli
