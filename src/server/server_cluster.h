// `serve --cluster`: the server's generation loop over a cluster of workers. Requests take slots
// (one coordinator sequence each, kept between requests for prefix reuse) and become generations
// the coordinator pipelines through the stages: up to one step per stage travels at once, each a
// micro-batch of sequences, and requests join and leave between steps. A lost worker is replaced
// by a replan and a replay of every sequence's steps (streams go on, no token lost or repeated);
// when nothing fits any more, the open requests end with an error naming what is missing.
#pragma once
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "server/server_job.h"
#include "server/server_metrics.h"
#include "shard/shard_coordinator.h"

namespace es::server {

struct ClusterServeOptions {
  int n_slots = 4;      // sequences generated together
  int max_queue = 64;   // requests waiting for a slot before new ones are refused
  int in_flight = 0;    // steps travelling at once (0: chosen per step for the sequences there are)
  int micro_batch = 0;  // sequences per step (0: likewise)
  // With CoordinatorOptions::follow_load: how long the number of requests must hold before the
  // plan is made for it (the tail of a burst is not a new load).
  int load_hold_ms = 1000;
};

class ClusterBackend : public Backend {
 public:
  // Loads the source's part of the model, plans and loads the workers' shards (see Coordinator).
  ClusterBackend(const std::string& model_path, shard::CoordinatorOptions co,
                 const ClusterServeOptions& o, Metrics& metrics);
  ~ClusterBackend() override;  // Stop()

  bool Submit(std::shared_ptr<Job> job) override;
  void Stop() override;
  int n_ctx() const override;
  // The stages' caches cannot shift: a full context ends the generation ("length").
  bool context_shift() const override { return false; }
  int n_slots() const override { return static_cast<int>(slots_.size()); }
  std::string Describe() const override;

  const model::LlamaModel& model() const { return co_->model(); }
  const tok::Tokenizer& tokenizer() const { return co_->tokenizer(); }
  // What GET /cluster.json shows (the loop refreshes it between steps) plus the server's view:
  // active slots, queue, generated tokens per second.
  nlohmann::json Status() const;

 private:
  struct Slot {
    uint64_t seq = 0;
    std::shared_ptr<Job> job;               // null: free
    std::vector<runtime::TokenLogprob> lp;  // log-probabilities not yet sent with text
    int n_prompt = 0, n_cached = 0;
    bool first_token = true;
    uint64_t last_used = 0;
  };

  void Loop();
  void Admit();
  void Assign(Slot& s, std::shared_ptr<Job> job);
  void Finish(Slot& s, const shard::Finished& f);
  void Refresh(bool force);
  void SetPace(int active);
  void Pace(int busy);

  Metrics& metrics_;
  std::unique_ptr<shard::Coordinator> co_;
  int in_flight_ = 1, micro_batch_ = 1, max_queue_ = 64;
  int fixed_in_flight_ = 0, fixed_micro_batch_ = 0;  // the options (0: follow the pace)
  int load_hold_ms_ = 1000, load_seen_ = 0;
  std::chrono::steady_clock::time_point load_since_{};
  std::string describe_;
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
  int64_t generated_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  int n_free_ = 0;
  bool stopping_ = false;
  std::mutex join_mu_;
  std::thread thread_;

  mutable std::mutex status_mu_;
  nlohmann::json status_;
  std::chrono::steady_clock::time_point status_at_{};
  std::deque<std::pair<std::chrono::steady_clock::time_point, int64_t>> rate_;
};

}  // namespace es::server
