// `edgeshard perplexity`: llama.cpp's method. Tokenize the whole text (with BOS), cut it into
// chunks of n_ctx tokens, put BOS first in each chunk, evaluate each chunk in one batch, and
// average the negative log-likelihood of the second half of every chunk; PPL = exp(mean).
//
// --save-kl-base FILE keeps the full log-probabilities of those scored positions; --kl-base FILE
// then scores another encoding of the same model against them: KL divergence base||this and top-1
// agreement, the accuracy side of "F16 / Q8_0 / Q4_0: memory, speed, accuracy drop".
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
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
  std::string save_kl_base;
  std::string kl_base;
};

// Base file: header, the token ids of the scored chunks, then per scored position n_vocab f32
// log-probabilities. f32 keeps tiny divergences (Q8_0 vs F16) measurable; the size is
// n_chunks * (n_ctx/2 - 1) * n_vocab * 4 bytes, reported when it is written.
constexpr char kKlMagic[8] = {'E', 'S', 'K', 'L', 'B', 'A', 'S', 'E'};
struct KlHeader {
  char magic[8];
  uint32_t version = 1;
  uint32_t n_vocab = 0;
  uint32_t n_ctx = 0;
  uint32_t n_chunks = 0;
};

void LogSoftmax(const float* row, int n, std::vector<float>& out) {
  out.resize(static_cast<size_t>(n));
  const float mx = *std::max_element(row, row + n);
  double sum = 0;
  for (int v = 0; v < n; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
  const double lse = mx + std::log(sum);
  for (int v = 0; v < n; ++v) out[static_cast<size_t>(v)] = static_cast<float>(row[v] - lse);
}

struct KlStats {
  std::vector<double> kl;  // per scored position
  long same_top1 = 0;
  double base_nll = 0;
};

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const size_t i =
      std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

int Perplexity(PplOptions o) {
  std::ifstream f(o.file, std::ios::binary);
  if (!f) throw Error(o.file + ": cannot read the text file");
  std::stringstream ss;
  ss << f.rdbuf();
  const int n_ctx = o.model.ctx > 0 ? o.model.ctx : 512;
  auto model = LoadModel(o.model.model, o.model.memory);
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
  ReportMemory("perplexity", *model, ctx);
  WarnBeyondTraining("perplexity", n_ctx, model->Info().n_ctx_train);
  const int n_vocab = model->Info().n_vocab;
  const int first = n_ctx / 2;
  const size_t row_bytes = static_cast<size_t>(n_vocab) * sizeof(float);

  std::ofstream save;
  std::ifstream base;
  KlHeader hdr;
  std::memcpy(hdr.magic, kKlMagic, sizeof kKlMagic);
  hdr.n_vocab = static_cast<uint32_t>(n_vocab);
  hdr.n_ctx = static_cast<uint32_t>(n_ctx);
  hdr.n_chunks = static_cast<uint32_t>(n_chunks);
  const std::vector<int32_t> scored(tokens.begin(),
                                    tokens.begin() + static_cast<long>(n_chunks) * n_ctx);
  if (!o.save_kl_base.empty() && o.save_kl_base == o.kl_base)
    throw Error(
        "--save-kl-base and --kl-base name the same file: save the base in one run, compare in "
        "another");
  if (!o.save_kl_base.empty()) {
    save.open(o.save_kl_base, std::ios::binary | std::ios::trunc);
    if (!save) throw Error(o.save_kl_base + ": cannot write the KL base file");
    save.write(reinterpret_cast<const char*>(&hdr), sizeof hdr);
    save.write(reinterpret_cast<const char*>(scored.data()),
               static_cast<std::streamsize>(scored.size() * sizeof(int32_t)));
  }
  if (!o.kl_base.empty()) {
    base.open(o.kl_base, std::ios::binary);
    if (!base) throw Error(o.kl_base + ": cannot read the KL base file");
    KlHeader b;
    base.read(reinterpret_cast<char*>(&b), sizeof b);
    if (!base || std::memcmp(b.magic, kKlMagic, sizeof kKlMagic) != 0 || b.version != 1)
      throw Error(o.kl_base + ": not a KL base file (write one with --save-kl-base)");
    if (b.n_vocab != hdr.n_vocab || b.n_ctx != hdr.n_ctx)
      throw Error(o.kl_base + ": was written with a vocabulary of " + std::to_string(b.n_vocab) +
                  " and -c " + std::to_string(b.n_ctx) + ", this run has " +
                  std::to_string(n_vocab) + " and -c " + std::to_string(n_ctx) +
                  ": compare encodings of the same model with the same -c");
    if (b.n_chunks < hdr.n_chunks)
      throw Error(o.kl_base + ": holds " + std::to_string(b.n_chunks) + " chunks, this run needs " +
                  std::to_string(n_chunks) + ": pass --chunks " + std::to_string(b.n_chunks));
    std::vector<int32_t> base_tokens(static_cast<size_t>(b.n_chunks) * b.n_ctx);
    base.read(reinterpret_cast<char*>(base_tokens.data()),
              static_cast<std::streamsize>(base_tokens.size() * sizeof(int32_t)));
    if (!base) throw Error(o.kl_base + ": truncated (token table)");
    if (!std::equal(scored.begin(), scored.end(), base_tokens.begin()))
      throw Error(o.kl_base +
                  ": was written for a different text or tokenizer: the token ids differ");
  }

  double nll = 0;
  long count = 0;
  KlStats kl;
  std::vector<float> logits, logp, base_logp(static_cast<size_t>(n_vocab));
  const auto t0 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "perplexity: %zu tokens, %d chunks of %d, KV cache %s\n", tokens.size(),
               n_chunks, n_ctx, KvCacheText(ctx.kv_bytes(), o.model).c_str());
  for (int c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> chunk(tokens.begin() + static_cast<long>(c) * n_ctx,
                               tokens.begin() + static_cast<long>(c + 1) * n_ctx);
    if (bos >= 0) chunk[0] = bos;
    ctx.Truncate(0);
    ctx.Eval(chunk, &logits);
    for (int j = first; j < n_ctx - 1; ++j) {
      LogSoftmax(logits.data() + static_cast<size_t>(j) * n_vocab, n_vocab, logp);
      const int32_t target = tokens[static_cast<size_t>(c) * n_ctx + j + 1];
      nll -= logp[static_cast<size_t>(target)];
      ++count;
      if (save.is_open())
        save.write(reinterpret_cast<const char*>(logp.data()),
                   static_cast<std::streamsize>(row_bytes));
      if (base.is_open()) {
        base.read(reinterpret_cast<char*>(base_logp.data()),
                  static_cast<std::streamsize>(row_bytes));
        if (!base)
          throw Error(o.kl_base + ": truncated (log-probabilities of chunk " +
                      std::to_string(c + 1) + ")");
        double d = 0;
        for (size_t v = 0; v < base_logp.size(); ++v)
          d += std::exp(static_cast<double>(base_logp[v])) *
               (static_cast<double>(base_logp[v]) - logp[v]);
        kl.kl.push_back(std::max(0.0, d));  // rounding can make an identical pair -1e-17
        kl.base_nll -= base_logp[static_cast<size_t>(target)];
        kl.same_top1 += std::max_element(base_logp.begin(), base_logp.end()) - base_logp.begin() ==
                        std::max_element(logp.begin(), logp.end()) - logp.begin();
      }
    }
    std::printf("[%d]%.4f,", c + 1, std::exp(nll / count));
    std::fflush(stdout);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\nFinal estimate: PPL = %.4f\n", std::exp(nll / count));
  std::fprintf(stderr, "perplexity: %ld scored tokens, %.2f s\n", count, secs);
  if (save.is_open()) {
    save.close();
    if (!save) throw Error(o.save_kl_base + ": write failed (disk full?)");
    std::fprintf(stderr, "perplexity: saved %ld rows of log-probabilities to %s (%.1f MiB)\n",
                 count, o.save_kl_base.c_str(),
                 static_cast<double>(count) * static_cast<double>(row_bytes) / (1 << 20));
  }
  if (base.is_open()) {
    double mean = 0, sq = 0;
    for (double d : kl.kl) mean += d;
    mean /= static_cast<double>(count);
    for (double d : kl.kl) sq += (d - mean) * (d - mean);
    const double se =
        count > 1 ? std::sqrt(sq / static_cast<double>(count - 1) / static_cast<double>(count)) : 0;
    const double base_ppl = std::exp(kl.base_nll / count), ppl = std::exp(nll / count);
    std::printf("KL divergence against %s (%ld positions):\n", o.kl_base.c_str(), count);
    std::printf("  base PPL              %.4f\n", base_ppl);
    std::printf("  this PPL              %.4f (%+.3f%%)\n", ppl, 100 * (ppl - base_ppl) / base_ppl);
    std::printf("  mean KL divergence    %.6f +/- %.1e\n", mean, se);
    std::printf("  median KL divergence  %.6f\n", Percentile(kl.kl, 0.5));
    std::printf("  99th pct KL           %.6f\n", Percentile(kl.kl, 0.99));
    std::printf("  max KL divergence     %.6f\n", *std::max_element(kl.kl.begin(), kl.kl.end()));
    std::printf("  same top-1            %.3f%%\n",
                100.0 * static_cast<double>(kl.same_top1) / static_cast<double>(count));
  }
  return kExitOk;
}

const bool registered = RegisterCommand("perplexity", [](CLI::App& app) {
  auto o = std::make_shared<PplOptions>();
  auto* cmd =
      app.add_subcommand("perplexity", "perplexity of a model on a text file (llama.cpp's method)");
  AddModelOptions(cmd, o->model);
  cmd->add_option("-f,--file", o->file, "text file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--chunks", o->chunks, "evaluate at most N chunks")
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option(
      "--save-kl-base", o->save_kl_base,
      "save the scored positions' full log-probabilities to FILE (the base for --kl-base)");
  cmd->add_option(
         "--kl-base", o->kl_base,
         "report KL divergence and top-1 agreement against a file written by --save-kl-base")
      ->check(CLI::ExistingFile);
  return [o]() { return Perplexity(*o); };
});

}  // namespace
}  // namespace es::cli
