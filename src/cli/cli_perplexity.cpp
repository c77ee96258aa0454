// `edgeshard perplexity`: llama.cpp's method. Tokenize the whole text (with BOS), cut it into
// chunks of n_ctx tokens, put BOS first in each chunk, evaluate each chunk in one batch, and
// average the negative log-likelihood of the second half of every chunk; PPL = exp(mean).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/cli_command.h"
#include "cli/cli_common.h"

namespace es::cli {
namespace {

struct PplOptions {
  ModelOptions model;
  std::string file;
  int chunks = -1;
};

int Perplexity(PplOptions o) {
  std::ifstream f(o.file, std::ios::binary);
  if (!f) throw Error(o.file + ": cannot read the text file");
  std::stringstream ss;
  ss << f.rdbuf();
  const int n_ctx = o.model.ctx > 0 ? o.model.ctx : 512;
  auto model = LoadModel(o.model.model);
  auto tokens = model->Tokenize(ss.str(), true, false);
  const int bos = model->PromptBosToken();
  const int max_chunks = static_cast<int>(tokens.size()) / n_ctx;
  if (max_chunks < 1)
    throw Error(o.file + ": the text has " + std::to_string(tokens.size()) + " tokens, at least " +
                std::to_string(n_ctx) + " (one chunk of -c tokens) are needed");
  const int n_chunks = o.chunks > 0 ? std::min(o.chunks, max_chunks) : max_chunks;
  auto cp = MakeContextParams(o.model);
  cp.n_ctx = n_ctx;
  cp.n_batch = n_ctx;
  Context ctx(model, cp);
  const int n_vocab = model->Info().n_vocab;
  const int first = n_ctx / 2;
  double nll = 0;
  long count = 0;
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "perplexity: %zu tokens, %d chunks of %d\n", tokens.size(), n_chunks, n_ctx);
  for (int c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> chunk(tokens.begin() + static_cast<long>(c) * n_ctx, tokens.begin() + static_cast<long>(c + 1) * n_ctx);
    if (bos >= 0) chunk[0] = bos;
    ctx.Truncate(0);
    ctx.Eval(chunk, &logits);
    for (int j = first; j < n_ctx - 1; ++j) {
      const float* row = logits.data() + static_cast<size_t>(j) * n_vocab;
      const float mx = *std::max_element(row, row + n_vocab);
      double sum = 0;
      for (int v = 0; v < n_vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
      const int32_t target = tokens[static_cast<size_t>(c) * n_ctx + j + 1];
      nll += -(static_cast<double>(row[target]) - mx - std::log(sum));
      ++count;
    }
    std::printf("[%d]%.4f,", c + 1, std::exp(nll / count));
    std::fflush(stdout);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\nFinal estimate: PPL = %.4f\n", std::exp(nll / count));
  std::fprintf(stderr, "perplexity: %ld scored tokens, %.2f s\n", count, secs);
  return kExitOk;
}

const bool registered = RegisterCommand("perplexity", [](CLI::App& app) {
  auto o = std::make_shared<PplOptions>();
  auto* cmd = app.add_subcommand("perplexity", "perplexity of a model on a text file (llama.cpp's method)");
  AddModelOptions(cmd, o->model);
  cmd->add_option("-f,--file", o->file, "text file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--chunks", o->chunks, "evaluate at most N chunks")->check(CLI::Range(1, 1 << 30));
  return [o]() { return Perplexity(*o); };
});

}  // namespace
}  // namespace es::cli
