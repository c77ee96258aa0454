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
#include "server/server_metrics.h"
#include "tokenizer/tokenizer.h"

namespace es::server {

// What a request asks the scheduler to do (already validated and tokenized).
struct GenRequest {
  std::vector<int32_t> prompt;
  runtime::SamplerParams sampling;
  int max_tokens = -1;  // < 0: until end of generation or the context is full
  std::vector<std::string> stop;
  bool ignore_eos = false;
  // Control tokens whose text the output keeps (a chat format's tool-call or thinking markers,
  // e.g. Mistral's [TOOL_CALLS]); others print as nothing.
  std::vector<int32_t> shown_tokens;
  int n_logprobs = -1;  // < 0: none; 0: the chosen token's; k: also the k most likely
  static constexpr int kServerKeep = -2;
  int n_keep = kServerKeep;  // tokens a context shift keeps (-1: the prompt); kServerKeep: --keep
};

// The vocabulary's pieces (as generated text shows them) and end-of-generation tokens as a trie
// for grammar-constrained sampling; n_vocab: the model's (its output layer may be padded).
std::shared_ptr<const runtime::TokenTrie> BuildTokenTrie(const tok::Tokenizer& t, int32_t n_vocab);

// One generated token with its log-probability under the model (log-softmax of the raw logits,
// before penalties and temperature, as OpenAI reports them) and the most likely alternatives.
struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

// Output of a generation, merged since the HTTP side last looked.
struct GenEvent {
  std::string text;                  // newly released text (stop strings never appear)
  std::vector<TokenLogprob> tokens;  // only when logprobs were asked for
  bool done = false;
  std::string finish_reason;  // when done: "stop", "length", "cancelled" or "error"
  std::string error;          // when finish_reason is "error"
  int n_prompt = 0, n_cached = 0, n_generated = 0;
};

// The channel between one request's HTTP thread and the scheduler.
class Job {
 public:
  explicit Job(GenRequest r) : req_(std::move(r)), enqueued_(std::chrono::steady_clock::now()) {}
  const GenRequest& request() const { return req_; }
  std::chrono::steady_clock::time_point enqueued() const { return enqueued_; }

  // HTTP side: the client went away; the scheduler frees the slot before its next step.
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  // HTTP side: waits up to `timeout` for output; false if none came. Merges what is pending.
  bool Wait(GenEvent& out, std::chrono::milliseconds timeout);

  // Scheduler side.
  void Push(GenEvent e);

 private:
  GenRequest req_;
  std::chrono::steady_clock::time_point enqueued_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  GenEvent pending_;
  bool has_pending_ = false;
};

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

class Scheduler {
 public:
  Scheduler(const model::LlamaModel& m, const tok::Tokenizer& t, const SchedulerOptions& o,
            Metrics& metrics);
  ~Scheduler();  // Stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // False when the queue is full (the caller answers 503) or the scheduler is stopping.
  bool Submit(std::shared_ptr<Job> job);
  // Ends every request (finish_reason "error") and joins the thread.
  void Stop();

  int n_ctx() const { return n_ctx_; }
  bool context_shift() const { return context_shift_; }
  int n_slots() const { return static_cast<int>(slots_.size()); }
  int n_threads() const { return pool_.size(); }
  size_t kv_bytes() const;
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
