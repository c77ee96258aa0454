#include "runtime/runtime_logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace es::runtime {

TokenLogprob Logprobs(const float* logits, int n_vocab, int32_t tok, int k,
                      std::vector<int32_t>& idx) {
  // NaN logits count as -inf, as in the sampler.
  auto val = [&](int32_t i) {
    const float l = logits[i];
    return std::isnan(l) ? -std::numeric_limits<float>::infinity() : l;
  };
  float mx = -std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i < n_vocab; ++i) mx = std::max(mx, val(i));
  double sum = 0;
  for (int32_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(val(i) - mx));
  const float lse = mx + static_cast<float>(std::log(sum));
  TokenLogprob r;
  r.id = tok;
  r.logprob = val(tok) - lse;
  if (k > 0) {
    k = std::min(k, n_vocab);
    idx.resize(static_cast<size_t>(n_vocab));
    for (int32_t i = 0; i < n_vocab; ++i) idx[static_cast<size_t>(i)] = i;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
      return val(a) > val(b) || (val(a) == val(b) && a < b);
    });
    for (int i = 0; i < k; ++i)
      r.top.emplace_back(idx[static_cast<size_t>(i)], val(idx[static_cast<size_t>(i)]) - lse);
  }
  return r;
}

}  // namespace es::runtime
