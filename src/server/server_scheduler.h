// Continuous batching: one thread owns the model and a fixed pool of slots (one KV cache each,
// allocated at start). Every step runs ONE forward pass over a decode row per active sequence
// plus prompt chunks of newly admitted ones, so the weights are read once per step for all of
// them. Requests join between steps; a finished or cancelled one frees its slot at once, and
// the slot keeps its tokens so a later request sharing that prefix skips recomputing it.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/kernels.h"
#include "model/model_llama.h"
#include "runtime/runtime_kv_cache.h"
#include "runtime/runtime_sampler.h"
#include "runtime/runtime_stop.h"
#include "server/server_job.h"
#include "server/server_metrics.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_trie.h"

namespace es::server {

struct SchedulerOptions {
  int n_slots = 4;
  int n_ctx = 0;       // per slot; 0: min(model's training context, 4096)
  int n_batch = 256;   // rows per forward pass (decode rows + prompt chunks)
  int n_threads = 0;   // 0: all hardware threads
  int max_queue = 64;  // requests waiting for a slot before new ones are refused
  model::KvTypes kv_type{};
  // When a slot's context fills: keep its first n_keep tokens (plus a leading BOS; -1: the
  // prompt), drop half of the rest and go on, as llama.cpp's server does; off: finish "length".
  bool context_shift = true;
  int n_keep = 0;
  int step_delay_ms = 0;  // testing aid: sleep after each step, to make tiny models slow
};

class Scheduler : public Backend {
 public:
  Scheduler(const model::LlamaModel& m, const tok::Tokenizer& t, const SchedulerOptions& o,
            Metrics& metrics);
  ~Scheduler() override;  // Stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // False when the queue is full (the caller answers 503) or the scheduler is stopping.
  bool Submit(std::shared_ptr<Job> job) override;
  // Ends every request (finish_reason "error") and joins the thread.
  void Stop() override;

  int n_ctx() const override { return n_ctx_; }
  bool context_shift() const override { return context_shift_; }
  int n_slots() const override { return static_cast<int>(slots_.size()); }
  std::string Describe() const override;
  int n_threads() const { return pool_.size(); }
  size_t kv_bytes() const;
  // Activations and logits of a step, besides the model and the slots' caches.
  size_t buffer_bytes() const {
    return ws_.bytes() +
           sizeof(float) * (hidden_.capacity() + head_in_.capacity() + logits_.capacity());
  }
  model::KvTypes kv_types() const {
    return slots_.empty() ? model::KvTypes{} : slots_[0].kv->types();
  }

 private:
  struct Slot {
    std::unique_ptr<runtime::KvCache> kv;
    std::vector<int32_t> cached;   // tokens whose keys/values the cache holds, positions 0..n-1
    std::shared_ptr<Job> job;      // null: free
    std::vector<int32_t> pending;  // prompt tokens still to evaluate
    size_t pending_pos = 0;
    int32_t next = -1;  // sampled token waiting for its decode row
    std::unique_ptr<runtime::Sampler> sampler;
    std::unique_ptr<runtime::StopMatcher> stop;
    int n_prompt = 0, n_cached = 0, n_generated = 0;
    // Cached tokens a later request may reuse: after a context shift only the kept prefix holds
    // the keys and values a fresh evaluation would give.
    size_t reusable = SIZE_MAX;
    bool first_token = true;
    uint64_t last_used = 0;
  };

  void Loop();
  void Admit();
  void Step();
  void Assign(Slot& s, std::shared_ptr<Job> job);
  // After sampling `tok` for s: stop checks, output, and the next decode row or the end.
  void HandleToken(Slot& s, int32_t tok, TokenLogprob lp);
  // Makes room in a full slot before `tok` is evaluated; false when nothing can be dropped.
  bool ShiftContext(Slot& s, int32_t tok);
  // Sends the last event and frees the slot (keeping its cached tokens).
  void Finish(Slot& s, const std::string& reason, const std::string& error = "", GenEvent ev = {});
  void UpdateGauges();

  const model::LlamaModel& model_;
  const tok::Tokenizer& tok_;
  Metrics& metrics_;
  int n_ctx_, n_batch_, max_queue_, step_delay_ms_;
  bool context_shift_;
  int n_keep_;
  kernels::ThreadPool pool_;
  model::Workspace ws_;
  std::vector<Slot> slots_;
  std::vector<int32_t> batch_tokens_;
  std::vector<model::BatchRow> batch_rows_;
  std::vector<float> hidden_, head_in_, logits_;
  std::vector<int32_t> sampled_;        // per sampled row of a step
  std::vector<TokenLogprob> logprobs_;  // per sampled row, when asked for
  uint64_t clock_ = 0;                  // orders admissions and slot use
  // The vocabulary as a byte trie for grammar masks, built when the first grammar comes.
  std::shared_ptr<const runtime::TokenTrie> trie_;
  std::atomic<int> n_free_{0};  // free slots, read by Submit

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  std::mutex join_mu_;
  std::thread thread_;
};

}  // namespace es::server
