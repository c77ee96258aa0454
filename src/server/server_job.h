// A request's way through the server: what it asks (GenRequest), what comes back (GenEvent), the
// channel between its HTTP thread and the generation loop (Job), and that loop's interface
// (Backend): the single-device Scheduler or, with --cluster, the ClusterBackend.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/runtime_logprobs.h"
#include "runtime/runtime_sampler.h"

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

// One generated token with its log-probability under the model (log-softmax of the raw logits,
// before penalties and temperature, as OpenAI reports them) and the most likely alternatives.
using TokenLogprob = runtime::TokenLogprob;

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

// Tokens a and b share at their start: what a slot's cache can keep for a new prompt.
inline size_t CommonPrefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

// The generation loop behind the HTTP endpoints.
class Backend {
 public:
  virtual ~Backend() = default;
  // False when the queue is full (the caller answers 503) or the loop is stopping.
  virtual bool Submit(std::shared_ptr<Job> job) = 0;
  // Ends every request (finish_reason "error") and joins the loop's thread.
  virtual void Stop() = 0;
  virtual int n_ctx() const = 0;  // per sequence
  virtual bool context_shift() const = 0;
  virtual int n_slots() const = 0;
  // Slots, caches and threads (or stages), for the start-up line.
  virtual std::string Describe() const = 0;
};

}  // namespace es::server
