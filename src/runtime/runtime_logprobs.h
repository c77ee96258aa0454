// Log-probabilities as OpenAI reports them: log-softmax of the raw logits (before penalties,
// bias and temperature), for the chosen token and the most likely alternatives. Shared by the
// server's scheduler and the last stage of a cluster, so both report the same numbers.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace es::runtime {

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // the k most likely, best first (ties: lower id)
};

// `scratch` is reused between calls to avoid allocating n_vocab ints per token.
TokenLogprob Logprobs(const float* logits, int n_vocab, int32_t tok, int k,
                      std::vector<int32_t>& scratch);

}  // namespace es::runtime
