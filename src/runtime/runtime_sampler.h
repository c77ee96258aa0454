// Token sampling: the llama.cpp default chain (penalties -> top-k -> top-p -> min-p ->
// temperature -> seeded random draw), with every buffer allocated once at construction; an
// optional grammar constrains the tokens before the chain.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "runtime/runtime_grammar.h"

namespace es::runtime {

struct SamplerParams {
  float temperature = 0.8f;        // <= 0: greedy argmax (penalties still apply)
  int top_k = 40;                  // <= 0: off
  float top_p = 0.95f;             // >= 1: off
  float min_p = 0.05f;             // <= 0: off
  float repeat_penalty = 1.0f;     // 1: off
  float frequency_penalty = 0.0f;  // subtracted once per occurrence in the window
  float presence_penalty = 0.0f;   // subtracted once if the token is in the window
  int penalty_last_n = 64;         // window of accepted tokens the penalties look at; 0: off
  uint64_t seed = 0xFFFFFFFF;      // this value means: pick a random seed
  // Added to a token's logit before everything else (llama.cpp's chain order); -inf bans it.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Non-null: only tokens the grammar allows are sampled (structured output). A request with a
  // grammar is one where this is set.
  std::shared_ptr<const Grammar> grammar;
};

// One surviving candidate of the chain: its (penalised, tempered) logit and probability.
struct Candidate {
  int32_t id;
  float logit;
  float p;
};

class Sampler {
 public:
  static constexpr uint64_t kRandomSeed = 0xFFFFFFFF;

  // Throws es::Error if n_vocab < 1, penalty_last_n < 0, a logit_bias id is outside the
  // vocabulary, or params.grammar is set without a token trie of n_vocab tokens.
  explicit Sampler(const SamplerParams& params, int32_t n_vocab,
                   std::shared_ptr<const TokenTrie> trie = nullptr);

  // Picks the next token from `logits` (n_vocab floats). NaN logits count as -inf. With a
  // grammar, as llama.cpp's common sampler: the chain's unconstrained pick is kept when the
  // grammar allows it, else the chain runs again over the allowed tokens only (so greedy picks
  // what masking first would). Where the grammar allows no token at all, end-of-generation
  // tokens are offered and grammar_dead_end() turns true.
  int32_t Sample(const float* logits);
  // Records a token in the penalty window (prompt tokens too, as llama.cpp does); a generated
  // token (advance_grammar) also moves the grammar on. Throws es::Error for ids outside
  // [0, n_vocab) and for a token the grammar does not allow.
  void Accept(int32_t token, bool advance_grammar = false);
  // Forgets the penalty window and the grammar's progress and restarts the random sequence (a new
  // one if the seed is random).
  void Reset();
  // The grammar reached a point no token of the vocabulary can continue, or needed more work
  // than allowed (a pathological grammar); grammar_error() says which.
  bool grammar_dead_end() const { return dead_end_; }
  const std::string& grammar_error() const { return grammar_error_; }
  const GrammarMatcher* grammar() const { return matcher_.get(); }

  // The candidates that survived the chain in the last Sample call, most probable first, with
  // the probabilities the draw used (they sum to 1). Greedy sampling leaves just the chosen token
  // with p = 1. Valid until the next Sample call.
  std::span<const Candidate> candidates() const { return {cand_.data(), n_cand_}; }

  const SamplerParams& params() const { return params_; }
  int32_t n_vocab() const { return n_vocab_; }
  // The seed actually in use (resolved when the configured seed is random).
  uint64_t seed() const { return seed_cur_; }

 private:
  void Reseed();
  int32_t Chain(const float* logits, const uint64_t* mask);
  void LoadCandidates(const float* logits);
  void KeepAllowed(const uint64_t* mask);
  int32_t Truncate();                 // top-k, top-p, min-p, temperature and the draw
  void Fail(const std::string& why);  // the grammar cannot go on: why
  void ApplyPenalties();
  void ApplyBias();
  void TopK(int k);
  void Softmax();
  int32_t Draw();

  SamplerParams params_;
  int32_t n_vocab_;
  uint64_t seed_cur_ = 0;
  std::mt19937 rng_;

  std::vector<Candidate> cand_;  // n_vocab entries, reused
  size_t n_cand_ = 0;

  // Penalty window: ring buffer of the last penalty_last_n accepted tokens and their counts.
  std::vector<int32_t> ring_;
  size_t ring_head_ = 0;  // next slot to write
  size_t ring_size_ = 0;
  std::vector<int32_t> counts_;  // per token id, occurrences in the window

  std::shared_ptr<const TokenTrie> trie_;
  std::unique_ptr<GrammarMatcher> matcher_;
  std::vector<uint64_t> mask_;  // allowed tokens, one bit each
  bool dead_end_ = false;
  std::string grammar_error_;
};

}  // namespace es::runtime
