#include "runtime/runtime_sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "edgeshard/error.h"

namespace es::runtime {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Descending logit; equal logits keep the lower id first, so results never depend on how the
// standard library orders ties.
bool Before(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

}  // namespace

Sampler::Sampler(const SamplerParams& params, int32_t n_vocab,
                 std::shared_ptr<const TokenTrie> trie)
    : params_(params), n_vocab_(n_vocab), trie_(std::move(trie)) {
  if (n_vocab < 1)
    throw Error("sampler: vocabulary size " + std::to_string(n_vocab) +
                " is invalid, expected >= 1");
  if (params.penalty_last_n < 0)
    throw Error("sampler: penalty_last_n " + std::to_string(params.penalty_last_n) +
                " is invalid, expected >= 0");
  for (const auto& [id, bias] : params.logit_bias)
    if (id < 0 || id >= n_vocab)
      throw Error("sampler: logit_bias token id " + std::to_string(id) +
                  " is outside the vocabulary [0, " + std::to_string(n_vocab) + ")");
  if (params_.grammar) {
    if (!trie_ || trie_->n_vocab() != n_vocab)
      throw Error("sampler: a grammar needs the vocabulary's token trie (" +
                  std::to_string(n_vocab) + " tokens)");
    try {
      matcher_ = std::make_unique<GrammarMatcher>(params_.grammar);
    } catch (const Error& e) {
      Fail(e.what());
    }
  }
  cand_.resize(static_cast<size_t>(n_vocab));
  if (params_.penalty_last_n > 0) {
    ring_.resize(static_cast<size_t>(params_.penalty_last_n));
    counts_.assign(static_cast<size_t>(n_vocab), 0);
  }
  Reseed();
}

void Sampler::Reseed() {
  if (params_.seed == kRandomSeed) {
    std::random_device rd;
    seed_cur_ = rd();
  } else {
    seed_cur_ = params_.seed;
  }
  if (seed_cur_ <= 0xFFFFFFFFull) {
    // 32-bit seeds seed the engine directly, as llama.cpp does, so a seed means the same there.
    rng_.seed(static_cast<uint32_t>(seed_cur_));
  } else {
    std::seed_seq seq{static_cast<uint32_t>(seed_cur_), static_cast<uint32_t>(seed_cur_ >> 32)};
    rng_.seed(seq);
  }
}

void Sampler::Reset() {
  if (!ring_.empty()) {
    std::fill(counts_.begin(), counts_.end(), 0);
    ring_head_ = 0;
    ring_size_ = 0;
  }
  n_cand_ = 0;
  dead_end_ = false;
  grammar_error_.clear();
  if (params_.grammar) {
    try {
      if (matcher_)
        matcher_->Reset();
      else
        matcher_ = std::make_unique<GrammarMatcher>(params_.grammar);
    } catch (const Error& e) {
      Fail(e.what());
    }
  }
  Reseed();
}

void Sampler::Accept(int32_t token, bool advance_grammar) {
  if (token < 0 || token >= n_vocab_)
    throw Error("sampler: token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                std::to_string(n_vocab_) + ")");
  if (advance_grammar && matcher_ && !dead_end_) {
    bool ok = false;
    try {
      ok = matcher_->AcceptToken(*trie_, token);
    } catch (const Error& e) {
      Fail(e.what());
      ok = true;
    }
    if (!ok)
      throw Error("sampler: token " + std::to_string(token) + " does not fit the grammar here");
  }
  if (ring_.empty()) return;
  if (ring_size_ == ring_.size()) {
    --counts_[static_cast<size_t>(ring_[ring_head_])];
  } else {
    ++ring_size_;
  }
  ring_[ring_head_] = token;
  ++counts_[static_cast<size_t>(token)];
  ring_head_ = (ring_head_ + 1) % ring_.size();
}

void Sampler::LoadCandidates(const float* logits) {
  for (int32_t i = 0; i < n_vocab_; ++i) {
    const float l = logits[i];
    cand_[static_cast<size_t>(i)] = {i, std::isnan(l) ? kNegInf : l, 0.0f};
  }
  n_cand_ = static_cast<size_t>(n_vocab_);
}

// Candidates are still in id order here.
void Sampler::ApplyBias() {
  for (const auto& [id, bias] : params_.logit_bias) {
    float& l = cand_[static_cast<size_t>(id)].logit;
    l += bias;
    if (std::isnan(l)) l = kNegInf;  // +inf bias on a -inf logit
  }
}

void Sampler::ApplyPenalties() {
  if (ring_.empty()) return;
  const float rep = params_.repeat_penalty;
  const float freq = params_.frequency_penalty;
  const float pres = params_.presence_penalty;
  if (rep == 1.0f && freq == 0.0f && pres == 0.0f) return;
  // Candidates are still in id order here.
  for (size_t i = 0; i < n_cand_; ++i) {
    const int32_t c = counts_[static_cast<size_t>(cand_[i].id)];
    if (c == 0) continue;
    float& l = cand_[i].logit;
    // Dividing a negative logit would make the token more likely, so those are multiplied.
    if (l <= 0.0f) {
      l *= rep;
    } else {
      l /= rep;
    }
    l -= static_cast<float>(c) * freq + pres;
    if (std::isnan(l)) l = kNegInf;
  }
}

void Sampler::TopK(int k) {
  const size_t n = n_cand_;
  const size_t kk = (k <= 0 || static_cast<size_t>(k) >= n) ? n : static_cast<size_t>(k);
  if (kk < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(kk),
                      cand_.begin() + static_cast<std::ptrdiff_t>(n), Before);
  } else {
    std::sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(n), Before);
  }
  n_cand_ = kk;
}

// Candidates must be sorted. Probabilities in float, as llama.cpp computes them.
void Sampler::Softmax() {
  const float max_l = cand_[0].logit;
  float sum = 0.0f;
  if (max_l == kNegInf) {
    // Nothing is possible: fall back to a uniform choice rather than dividing 0 by 0.
    for (size_t i = 0; i < n_cand_; ++i) cand_[i].p = 1.0f;
  } else if (std::isinf(max_l)) {
    for (size_t i = 0; i < n_cand_; ++i) cand_[i].p = cand_[i].logit == max_l ? 1.0f : 0.0f;
  } else {
    for (size_t i = 0; i < n_cand_; ++i) cand_[i].p = std::exp(cand_[i].logit - max_l);
  }
  for (size_t i = 0; i < n_cand_; ++i) sum += cand_[i].p;
  for (size_t i = 0; i < n_cand_; ++i) cand_[i].p /= sum;
}

// Inverse-CDF draw in double precision with a 53-bit uniform: the same numbers libstdc++'s
// std::discrete_distribution (which llama.cpp uses) produces, without its per-call allocation.
int32_t Sampler::Draw() {
  if (n_cand_ < 2) return cand_[0].id;
  double total = 0.0;
  for (size_t i = 0; i < n_cand_; ++i) total += static_cast<double>(cand_[i].p);
  const double u = std::generate_canonical<double, std::numeric_limits<double>::digits>(rng_);
  double cum = 0.0;
  for (size_t i = 0; i + 1 < n_cand_; ++i) {
    cum += static_cast<double>(cand_[i].p) / total;
    if (cum >= u) return cand_[i].id;
  }
  return cand_[n_cand_ - 1].id;
}

// Removes the candidates `mask` does not allow; the rest keep their (id) order.
void Sampler::KeepAllowed(const uint64_t* mask) {
  size_t k = 0;
  for (size_t i = 0; i < n_cand_; ++i) {
    const auto id = static_cast<uint32_t>(cand_[i].id);
    if ((mask[id / 64] >> (id % 64)) & 1) cand_[k++] = cand_[i];
  }
  n_cand_ = k;
}

void Sampler::Fail(const std::string& why) {
  dead_end_ = true;
  grammar_error_ = why;
}

int32_t Sampler::Sample(const float* logits) {
  if (!params_.grammar) return Chain(logits, nullptr);
  if (!dead_end_) {
    try {
      if (!matcher_->Done()) {
        const int32_t t = Chain(logits, nullptr);
        if (matcher_->TokenAllowed(*trie_, t)) return t;
      }
      if (matcher_->FillMask(*trie_, mask_) > 0) return Chain(logits, mask_.data());
      Fail("the grammar allows no token of this vocabulary here");
    } catch (const Error& e) {
      Fail(e.what());
    }
  }
  // The grammar cannot go on: end the generation.
  mask_.assign((static_cast<size_t>(n_vocab_) + 63) / 64, 0);
  for (int32_t id : trie_->eog_ids())
    mask_[static_cast<size_t>(id) / 64] |= uint64_t{1} << (id % 64);
  return trie_->eog_ids().empty() ? Chain(logits, nullptr) : Chain(logits, mask_.data());
}

int32_t Sampler::Chain(const float* logits, const uint64_t* mask) {
  const bool adjust =
      !params_.logit_bias.empty() ||
      (!ring_.empty() && (params_.repeat_penalty != 1.0f || params_.frequency_penalty != 0.0f ||
                          params_.presence_penalty != 0.0f));
  if (mask) {
    // Constrained: the allowed tokens only, then the usual chain over them. Without biases
    // and penalties only the allowed ones are loaded (few, where JSON punctuation is due).
    if (adjust) {
      LoadCandidates(logits);
      ApplyBias();
      ApplyPenalties();
      KeepAllowed(mask);
    } else {
      n_cand_ = 0;
      for (size_t w = 0; w * 64 < static_cast<size_t>(n_vocab_); ++w)
        for (uint64_t bits = mask[w]; bits; bits &= bits - 1) {
          const auto id = static_cast<int32_t>(w * 64 + static_cast<size_t>(__builtin_ctzll(bits)));
          const float l = logits[id];
          cand_[n_cand_++] = {id, std::isnan(l) ? kNegInf : l, 0.0f};
        }
    }
    if (!(params_.temperature > 0.0f)) {
      size_t best = 0;
      for (size_t i = 1; i < n_cand_; ++i)
        if (cand_[i].logit > cand_[best].logit) best = i;
      cand_[0] = {cand_[best].id, cand_[best].logit, 1.0f};
      n_cand_ = 1;
      return cand_[0].id;
    }
    return Truncate();
  }
  if (!(params_.temperature > 0.0f)) {
    // Greedy: the first maximum in id order, so the lowest id wins ties.
    int32_t best = 0;
    float best_l = kNegInf;
    if (adjust) {
      LoadCandidates(logits);
      ApplyBias();
      ApplyPenalties();
      for (size_t i = 0; i < n_cand_; ++i)
        if (cand_[i].logit > best_l) best_l = cand_[i].logit, best = cand_[i].id;
    } else {
      for (int32_t i = 0; i < n_vocab_; ++i)
        if (logits[i] > best_l) best_l = logits[i], best = i;  // NaN never compares greater
    }
    cand_[0] = {best, best_l, 1.0f};
    n_cand_ = 1;
    return best;
  }

  LoadCandidates(logits);
  ApplyBias();
  ApplyPenalties();
  return Truncate();
}

int32_t Sampler::Truncate() {
  TopK(params_.top_k);  // leaves the candidates sorted even when top-k is off

  if (params_.top_p < 1.0f) {
    Softmax();
    float cum = 0.0f;
    size_t keep = n_cand_;
    for (size_t i = 0; i < n_cand_; ++i) {
      cum += cand_[i].p;
      if (cum >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n_cand_ = keep;
  }

  if (params_.min_p > 0.0f) {
    // p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p); the top token always stays.
    const float min_logit = cand_[0].logit + std::log(params_.min_p);
    size_t keep = 1;
    while (keep < n_cand_ && cand_[keep].logit >= min_logit) ++keep;
    n_cand_ = keep;
  }

  for (size_t i = 0; i < n_cand_; ++i) cand_[i].logit /= params_.temperature;
  Softmax();
  return Draw();
}

}  // namespace es::runtime
