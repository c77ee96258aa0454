// The coordinator of distributed inference. It runs on the source device of a cluster.yaml:
// plans (shard_planner.h) which workers hold which layer ranges, loads those shards, keeps the
// embedding and its own stage, and generates with the same semantics as es::Context::Generate.
// Activations flow worker to worker; the last worker samples and returns token ids.
//
// Faults: Health is polled on every worker of the plan; a worker that dies or stalls is declared
// lost after `health_strikes` failed polls. The coordinator then replans on the remaining
// devices, reloads shards, rebuilds every KV cache by replaying the steps it logged (same
// chunks, same order, so the caches are bit-identical), and carries on. Tokens already returned
// are kept; replayed steps only check that they sample the same tokens again.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "edgeshard/edgeshard.h"
#include "model/model_llama.h"
#include "runtime/runtime_logprobs.h"
#include "runtime/runtime_sampler.h"
#include "shard/shard_auth.h"
#include "shard/shard_discovery.h"
#include "shard/shard_planner.h"
#include "tokenizer/tokenizer.h"

namespace es::shard {

struct CoordinatorOptions {
  std::string cluster_path;  // "auto": discover the workers (docs/distributed.md, Discovery)
  DiscoveryOptions discovery;
  Objective objective = Objective::kLatency;
  Security security;
  // Activations between stages: F32 (default: exact, identical to one device) or F16 (half the
  // bytes, lossy: rounded once per hop).
  bool wire_f32 = true;
  int n_ctx = 0;           // 0: min(model's context, 4096)
  int n_batch = 256;       // prompt tokens per step (as the single-device session)
  int n_threads = 0;       // the source stage's threads (0: all cores)
  model::KvTypes kv_type;  // the KV caches of every stage
  int plan_batch = 1;      // sequences the plan is made for (memory for their KV caches)
  // Serving: plan for the number of sequences actually served (1..plan_batch), as micro-batched
  // steps, and replan when the load the server reports (SetLoad) changes enough. `objective`
  // then only names the starting point.
  bool follow_load = false;
  // Instead of the solver's plan (both for comparisons; after a fault the solver takes over):
  std::string placement;  // rules.yaml (shard_placement.h)
  std::string baseline;   // a planner baseline by name: Even, Edge-Solo, Memory-proportional, ...
  bool verbose = false;
  bool quiet = false;  // no progress bars
  // Fault detection: poll every worker's Health this often with this deadline; a worker is lost
  // after `health_strikes` failures in a row.
  std::chrono::milliseconds health_interval{250};
  std::chrono::milliseconds health_deadline{700};
  int health_strikes = 2;
  // A step whose result has not come back after base + per_row x rows triggers a health check.
  std::chrono::milliseconds step_deadline_base{10000};
  std::chrono::milliseconds step_deadline_per_row{50};
  // Messages for the user (plan, faults, replans); default: stderr.
  std::function<void(const std::string&)> log;
};

// Measured against planned costs, per stage (decode steps: one token per sequence).
struct StageReport {
  std::string device;
  int first_unit = 0, last_unit = 0;  // planner units [first, last)
  double planned_compute_ms = 0;      // one decode step
  double planned_link_ms = 0;         // to the next stage (the last: token ids to the source)
  double compute_ms = 0;              // measured mean per decode step
  double link_ms = 0;                 // measured mean per decode step, to the next stage
  double wire_bytes = 0;              // bytes sent to the next stage per decode step
  int64_t steps = 0;
};

struct ClusterReport {
  std::string objective, plan_method;
  std::vector<StageReport> stages;
  double planned_step_ms = 0, planned_bottleneck_ms = 0;
  double step_ms = 0;  // measured mean wall time of a decode step (send to token back)
  int64_t decode_steps = 0;
  int replans = 0;
  std::vector<std::string> events;  // lost devices, replans, rejoins
};

struct Request {
  uint64_t sequence = 0;
  std::vector<int32_t> prompt;
  GenerateParams params;
  std::function<bool(std::string_view)> on_text;  // may be empty
  // If set, receives the logits after the prompt's last token (as computed by the last stage).
  std::vector<float>* prompt_logits = nullptr;
  // The server's path: the runtime's full sampler settings (logit_bias, ...) instead of
  // params.sampling, and per generated token its log-probability with the n_logprobs most
  // likely alternatives (n_logprobs < 0: none), computed by the last stage.
  std::optional<runtime::SamplerParams> sampler;
  // Control tokens whose text the output keeps (a chat format's tool-call markers).
  std::vector<int32_t> shown_tokens;
  // Tokens the sampler's penalty window records before the prompt (a reused cached prefix).
  std::vector<int32_t> accept_before;
  int n_logprobs = -1;
  std::function<void(const runtime::TokenLogprob&)> on_logprob;
};

// A generation that ended, as Coordinator::Pump returns it.
struct Finished {
  uint64_t sequence = 0;
  GenerateResult result;  // stop_reason "error" when it could not be finished
  std::string error;      // then: why (a lost device and the missing memory, ...)
};

class Coordinator {
 public:
  // Loads the tokenizer and the source's weights (pages are read only for its own stage),
  // reads the cluster, checks every worker, plans and loads the shards.
  Coordinator(const std::string& model_path, const CoordinatorOptions& options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  const tok::Tokenizer& tokenizer() const;
  const model::LlamaModel& model() const;
  int n_ctx() const;
  // The devices of the current plan, source first.
  std::vector<std::string> StageDevices() const;
  // A table of the current plan.
  std::string PlanSummary() const;

  // A sequence is one conversation: its KV caches live on every stage until released.
  uint64_t NewSequence();
  void ReleaseSequence(uint64_t sequence);
  // Drops positions >= n (keeps a shared prefix for the next turn). The next request continues
  // after position n even when Tokens() then holds fewer: a cut before a sliding window's reach
  // keeps the n tokens to evaluate again ahead of that request's prompt.
  void Truncate(uint64_t sequence, int64_t n);
  const std::vector<int32_t>& Tokens(uint64_t sequence) const;

  // Sequential mode: es::Context::Generate's semantics, one step in flight.
  GenerateResult Generate(uint64_t sequence, const std::vector<int32_t>& prompt,
                          const GenerateParams& params,
                          const std::function<bool(std::string_view)>& on_text);
  // Appends `tokens` and returns the logits after the last one (nothing is sampled).
  std::vector<float> Eval(uint64_t sequence, const std::vector<int32_t>& tokens);
  // Pipeline mode: up to `in_flight` steps travel the stages at once, each holding up to
  // `micro_batch` sequences. With micro_batch 1 every sequence computes exactly as it would
  // alone.
  std::vector<GenerateResult> GenerateMany(std::vector<Request> requests, int in_flight,
                                           int micro_batch = 1);

  // Continuous generation (`serve --cluster`): generations join and leave between steps while
  // up to `in_flight` steps travel the stages, each with up to `micro_batch` sequences. One
  // thread calls Begin, Cancel and Pump. Begin throws es::Error for a bad request, or when the
  // cluster has no plan (after a fault nothing fit) and still cannot make one.
  void Begin(Request request);
  // Ends a generation early (stop_reason "cancelled"); Pump returns it once no step of it is
  // travelling, and only then may its sequence be used again.
  void Cancel(uint64_t sequence);
  int Active() const;  // generations Pump has not returned yet
  // Sends what is ready, handles results for up to `wait`, recovers from lost workers (replan +
  // replay: no token lost or repeated) and returns the generations that ended. If recovery
  // fails (no plan fits the devices left), every active generation ends with that error.
  std::vector<Finished> Pump(int in_flight, int micro_batch, std::chrono::milliseconds wait);

  // Serving `active` sequences on the current plan: how many steps to keep in flight and how
  // many sequences each carries (the pair of least predicted round time, from the profiles).
  struct Pace {
    int in_flight = 1, micro_batch = 1;
  };
  Pace PaceFor(int active) const;
  // follow_load: the number of sequences being served now. The next Pump makes the plan for
  // that many and switches to it (between steps; the caches of idle sequences are dropped, live
  // ones replayed exactly) when it is predicted to serve them at least 10% faster.
  void SetLoad(int streams);

  ClusterReport Report() const;
  void ResetStats();

  struct Impl;  // internal: shard_coordinator_impl.h
  // Devices (name, address, threads, memory, in the plan or lost), links, the plan's stages and
  // its SVG picture, measured costs and events: what GET /cluster.json shows.
  nlohmann::json Status() const;

 private:
  std::unique_ptr<Impl> impl_;
};

// "1.5 MiB" style sizes for messages.
std::string FormatBytes(double bytes);

}  // namespace es::shard
