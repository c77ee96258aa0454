// A session runs one sequence through a model: it owns the KV cache, the activations and
// the thread pool, all allocated when it is created.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/kernels.h"
#include "model/model_llama.h"
#include "runtime/runtime_kv_cache.h"

namespace es::runtime {

struct SessionOptions {
  int n_ctx = 0;      // 0: min(model's training context, 4096)
  int n_threads = 0;  // 0: all hardware threads
  int n_batch = 256;  // prompt tokens per forward pass
  model::KvTypes kv_type{};
  // Sliding-window layers keep only their window plus a batch of keys (off: the whole context,
  // for tests that compare the two).
  bool window_kv = true;
};

// Positions a context shift drops from n_past, as llama.cpp's server computes it: keep at most
// n_ctx - 4, then half of what follows, leaving at least one of those (0: nothing to drop).
int64_t ContextShiftDiscard(int64_t n_past, int64_t n_ctx, int64_t keep);

class Session {
 public:
  Session(const model::LlamaModel& m, const SessionOptions& opts);

  const model::LlamaModel& model() const { return model_; }
  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const { return kv_.n_ctx(); }
  size_t kv_bytes() const { return kv_.bytes(); }
  int n_threads() const { return pool_.size(); }
  int n_batch() const { return n_batch_; }
  // Activations and logits: what the session holds besides the model and its KV cache.
  size_t buffer_bytes() const {
    return ws_.bytes() +
           sizeof(float) * (hidden_.capacity() + logits_.capacity() + logits_last_.capacity());
  }

  // Appends tokens to the sequence. Afterwards last_logits() holds the logits after the last
  // token; if all_logits is given it receives [tokens.size(), n_vocab] logits (teacher forcing).
  void Eval(const std::vector<int32_t>& tokens, std::vector<float>* all_logits = nullptr);
  const std::vector<float>& last_logits() const { return logits_last_; }
  // Forgets positions >= n (keeps a shared prefix for the next turn). When that drops more
  // positions than the sliding-window rings have spare, the prefix is evaluated again.
  void Truncate(int64_t n);
  // Context shift: forgets positions keep .. keep+discard-1 and moves the later ones `discard`
  // positions earlier, re-rotating their cached keys, so generation can go on in a full context
  // (llama.cpp's seq_rm + seq_add). last_logits() is left as it was. When a sliding-window ring
  // no longer holds keys the next position needs, the kept tokens are evaluated again.
  void Shift(int64_t keep, int64_t discard);
  // The shift llama.cpp makes when the context is full: after the first `keep` positions (at
  // most n_ctx - 4), half of the rest. Returns the positions discarded (0: nothing to drop).
  int64_t ShiftContext(int64_t keep);
  const KvCache& kv() const { return kv_; }
  // The tokens whose keys and values the cache holds, in order.
  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  const model::LlamaModel& model_;
  int n_batch_;
  kernels::ThreadPool pool_;
  KvCache kv_;
  model::Workspace ws_;
  std::vector<float> hidden_;
  std::vector<float> logits_;       // [n_batch, n_vocab] when all positions are wanted
  std::vector<float> logits_last_;  // [n_vocab]
  int64_t n_past_ = 0;
  std::vector<int32_t> tokens_;
};

}  // namespace es::runtime
