// Helpers shared by the context-shift tests (test_context_shift, test_server_context_shift).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "edgeshard/edgeshard.h"
#include "test_util.h"

namespace es::test {

// A prompt of n tokens: BOS, then a spread of ordinary ids.
inline std::vector<int32_t> Prompt(int n) {
  std::vector<int32_t> p = {1};
  for (int i = 1; i < n; ++i) p.push_back(100 + (i * 37) % 5000);
  return p;
}

inline std::shared_ptr<Model> LoadApi(const std::string& rel) {
  LoadParams lp;
  lp.path = ModelPath(rel);
  return Model::Load(lp);
}

// Greedy tokens from a Context on synth-gemma3 (batch 16, context shift on).
inline std::vector<int32_t> ContextGreedy(const std::vector<int32_t>& prompt, int n_ctx, int n,
                                          const std::string& cache_type_k = "f16",
                                          const std::string& cache_type_v = "f16") {
  Context ctx(LoadApi("synth-gemma3.f16.gguf"), {.n_ctx = n_ctx,
                                                 .n_threads = 2,
                                                 .n_batch = 16,
                                                 .cache_type_k = cache_type_k,
                                                 .cache_type_v = cache_type_v});
  GenerateParams g;
  g.max_tokens = n;
  g.sampling.temperature = 0;
  g.ignore_eos = true;
  g.context_shift = true;
  return ctx.Generate(prompt, g, nullptr).tokens;
}

}  // namespace es::test
