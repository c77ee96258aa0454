// Constrained decoding cost: decode tokens/s with a JSON schema grammar against without, same
// model, same sampling settings (the server's defaults). Not a Google Benchmark: each mode runs
// `--runs` times, alternating, and the medians go to stdout. Usage:
//   bench_grammar MODEL.gguf [--tokens 256] [--threads 1] [--runs 3] [--schema FILE.json]
// Use a model with a large vocabulary (the mask covers every token), e.g. one with Qwen2's
// 151936 tokens: `edgeshard synth` makes one, or ../shared/models/synth-qwen3.f16.gguf.
// When the grammar is complete the generation goes on with a new sampler (the grammar from its
// start, nothing cached: the next request), so both modes decode the same number of tokens.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "model/model_llama.h"
#include "runtime/runtime_json_schema.h"
#include "runtime/runtime_sampler.h"
#include "runtime/runtime_session.h"
#include "tokenizer/tokenizer.h"

using namespace es;
using Clock = std::chrono::steady_clock;

namespace {

// A list of records, as a structured-output request would ask for.
const char* kSchema = R"({
  "type": "object", "additionalProperties": false, "required": ["people"],
  "properties": {"people": {"type": "array", "maxItems": 1000, "items": {
    "type": "object", "additionalProperties": false,
    "required": ["name", "age", "email", "tags", "active"],
    "properties": {
      "name": {"type": "string", "maxLength": 24},
      "age": {"type": "integer", "minimum": 0, "maximum": 120},
      "email": {"type": "string"},
      "tags": {"type": "array", "items": {"enum": ["admin", "user", "guest"]}, "maxItems": 4},
      "active": {"type": "boolean"}}}}}})";

struct Result {
  double tok_s = 0, sample_ms = 0;  // per token: whole step rate, time in Sample
  std::string text;
  int restarts = 0;
};

Result Decode(const model::LlamaModel& m, const tok::Tokenizer& t,
              const std::shared_ptr<const runtime::TokenTrie>& trie,
              std::shared_ptr<const runtime::Grammar> g, int n_tokens, int threads) {
  runtime::SessionOptions so;
  so.n_ctx = n_tokens + 64;
  so.n_threads = threads;
  runtime::Session s(m, so);
  runtime::SamplerParams p;  // the server's defaults: temperature 0.8 after top-k 40 etc.
  p.seed = 1234;
  p.grammar = std::move(g);
  auto sampler =
      std::make_unique<runtime::Sampler>(p, m.config().n_vocab, p.grammar ? trie : nullptr);
  s.Eval(t.Encode("Here is the JSON:", true, false));
  Result r;
  double sample_s = 0;
  const auto t0 = Clock::now();
  for (int i = 0; i < n_tokens; ++i) {
    const auto ts = Clock::now();
    const int32_t tok = sampler->Sample(s.last_logits().data());
    if (p.grammar && trie->eog(tok)) {
      // The next document, as the next request would be: a new sampler, nothing cached.
      ++r.restarts;
      sampler =
          std::make_unique<runtime::Sampler>(p, m.config().n_vocab, p.grammar ? trie : nullptr);
    } else {
      sampler->Accept(tok, true);
    }
    sample_s += std::chrono::duration<double>(Clock::now() - ts).count();
    if (r.text.size() < 400) r.text += t.TokenToPiece(tok);
    s.Eval({tok});
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  r.tok_s = n_tokens / secs;
  r.sample_ms = 1e3 * sample_s / n_tokens;
  return r;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr,
                 "usage: bench_grammar MODEL.gguf [--tokens N] [--threads N] [--runs N] "
                 "[--schema FILE]\n");
    return 2;
  }
  const std::string path = argv[1];
  int n_tokens = 256, threads = 1, runs = 3;
  std::string schema_text = kSchema;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--tokens") {
      n_tokens = std::stoi(argv[i + 1]);
    } else if (k == "--threads") {
      threads = std::stoi(argv[i + 1]);
    } else if (k == "--runs") {
      runs = std::stoi(argv[i + 1]);
    } else if (k == "--schema") {
      std::ifstream f(argv[i + 1]);
      std::stringstream ss;
      ss << f.rdbuf();
      schema_text = ss.str();
    } else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  try {
    const auto m = model::LlamaModel::Load(path);
    const auto file = gguf::File::Open(path);
    const auto t = tok::Tokenizer::FromGGUF(*file);
    const int32_t n_vocab = m->config().n_vocab;
    auto t0 = Clock::now();
    std::vector<std::string> pieces(static_cast<size_t>(n_vocab));
    std::vector<bool> eog(pieces.size());
    for (int32_t i = 0; i < std::min(n_vocab, t->n_vocab()); ++i) {
      pieces[static_cast<size_t>(i)] = t->TokenToPiece(i);
      eog[static_cast<size_t>(i)] = t->IsEog(i);
    }
    const auto trie = std::make_shared<const runtime::TokenTrie>(pieces, eog);
    const double trie_ms = 1e3 * std::chrono::duration<double>(Clock::now() - t0).count();
    const auto g = runtime::CompileJsonSchema(nlohmann::json::parse(schema_text));
    std::vector<double> free_r, gram_r, free_s, gram_s;
    Result last;
    for (int r = 0; r < runs; ++r) {
      const Result a = Decode(*m, *t, trie, nullptr, n_tokens, threads);
      last = Decode(*m, *t, trie, g, n_tokens, threads);
      free_r.push_back(a.tok_s), free_s.push_back(a.sample_ms);
      gram_r.push_back(last.tok_s), gram_s.push_back(last.sample_ms);
    }
    std::printf("model %s, vocabulary %d, %d tokens, %d thread(s), %d run(s), trie %.0f ms\n",
                path.c_str(), n_vocab, n_tokens, threads, runs, trie_ms);
    std::printf("| mode | tokens/s | sampling ms/token |\n|---|---|---|\n");
    std::printf("| unconstrained | %.1f | %.3f |\n", Median(free_r), Median(free_s));
    std::printf("| json schema | %.1f | %.3f |\n", Median(gram_r), Median(gram_s));
    std::printf(
        "constrained / unconstrained tokens/s: %.3f (masking costs %.1f%%); documents completed "
        "in the last run: %d\n",
        Median(gram_r) / Median(free_r), 100.0 * (1.0 - Median(gram_r) / Median(free_r)),
        last.restarts);
    // The same from the sampling times alone, which the machine's noise touches less.
    std::printf(
        "sampling time added by the grammar: %.3f ms/token = %.1f%% of an unconstrained "
        "step\n",
        Median(gram_s) - Median(free_s),
        100.0 * (Median(gram_s) - Median(free_s)) * Median(free_r) / 1e3);
    std::printf("constrained text starts: %s\n", last.text.substr(0, 300).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_grammar: %s\n", e.what());
    return 1;
  }
  return 0;
}
