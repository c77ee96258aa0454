// Token sampling: the llama.cpp default chain (penalties -> top-k -> top-p -> min-p ->
// temperature -> seeded random draw), with every buffer allocated once at construction.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

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

  // Throws es::Error if n_vocab < 1, penalty_last_n < 0 or a logit_bias id is outside the
  // vocabulary.
  explicit Sampler(const SamplerParams& params, int32_t n_vocab);

  // Picks the next token from `logits` (n_vocab floats). NaN logits count as -inf.
  int32_t Sample(const float* logits);
  // Records a token in the penalty window (prompt tokens too, as llama.cpp does).
  // Throws es::Error for ids outside [0, n_vocab).
  void Accept(int32_t token);
  // Forgets the penalty window and restarts the random sequence (a new one if the seed is random).
  void Reset();

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
  void LoadCandidates(const float* logits);
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
};

}  // namespace es::runtime
