#include "server/server_cluster.h"

#include <fmt/format.h>

#include <algorithm>

#include "edgeshard/error.h"

namespace es::server {
namespace {

using Clock = std::chrono::steady_clock;

// The coordinator's stop reasons in OpenAI's words.
std::string FinishReason(const std::string& r) {
  if (r == "eos" || r == "stop") return "stop";
  if (r == "cancelled" || r == "error") return r;
  return "length";  // "length", "context"
}

}  // namespace

ClusterBackend::ClusterBackend(const std::string& model_path, shard::CoordinatorOptions co,
                               const ClusterServeOptions& o, Metrics& metrics)
    : metrics_(metrics), max_queue_(o.max_queue) {
  if (o.n_slots < 1) throw Error("--parallel must be at least 1");
  // The plan keeps room for every slot's KV caches on the stages.
  co.plan_batch = std::max(co.plan_batch, o.n_slots);
  co.n_batch = std::max(co.n_batch, o.n_slots);
  co_ = std::make_unique<shard::Coordinator>(model_path, co);
  const int stages = static_cast<int>(co_->StageDevices().size());
  fixed_in_flight_ = o.in_flight;
  fixed_micro_batch_ = o.micro_batch;
  load_hold_ms_ = o.load_hold_ms;
  SetPace(o.n_slots);
  slots_.resize(static_cast<size_t>(o.n_slots));
  for (auto& s : slots_) s.seq = co_->NewSequence();
  n_free_ = o.n_slots;
  std::string devs;
  for (const auto& d : co_->StageDevices()) devs += (devs.empty() ? "" : " -> ") + d;
  describe_ = fmt::format(
      "{} slots x {} tokens over {} stage(s) ({}), {}, {} wire{}", o.n_slots, co_->n_ctx(), stages,
      devs,
      o.in_flight > 0 || o.micro_batch > 0
          ? fmt::format("{} step(s) in flight x {} sequence(s)", in_flight_, micro_batch_)
          : fmt::format("steps in flight x sequences per step follow the load ({} x {} for {})",
                        in_flight_, micro_batch_, o.n_slots),
      co.wire_f32 ? "f32" : "f16", co.follow_load ? ", the plan follows the load" : "");
  metrics_.SetSlots(0, o.n_slots);
  Refresh(true);
  thread_ = std::thread([this] { Loop(); });
}

ClusterBackend::~ClusterBackend() {
  Stop();
}

int ClusterBackend::n_ctx() const {
  return co_->n_ctx();
}

std::string ClusterBackend::Describe() const {
  return describe_;
}

bool ClusterBackend::Submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard lock(mu_);
    // Free slots take requests at the next step; beyond them, at most max_queue_ may wait.
    if (stopping_ || static_cast<int>(queue_.size()) >= max_queue_ + n_free_) return false;
    queue_.push_back(std::move(job));
    metrics_.SetQueueDepth(static_cast<int>(queue_.size()));
  }
  cv_.notify_all();
  return true;
}

void ClusterBackend::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  std::lock_guard join(join_mu_);
  if (thread_.joinable()) thread_.join();
}

void ClusterBackend::Assign(Slot& s, std::shared_ptr<Job> job) {
  const GenRequest& r = job->request();
  const size_t keep = CommonPrefix(co_->Tokens(s.seq), r.prompt);
  co_->Truncate(s.seq, static_cast<int64_t>(keep));
  // The request goes on after `keep` either way: a cut before a sliding window's reach keeps
  // those tokens for the coordinator to evaluate again first (Coordinator::Truncate), so only
  // what is still cached counts as reused.
  const size_t reused = co_->Tokens(s.seq).size();
  shard::Request rq;
  rq.sequence = s.seq;
  rq.prompt.assign(r.prompt.begin() + static_cast<std::ptrdiff_t>(keep), r.prompt.end());
  rq.accept_before.assign(r.prompt.begin(), r.prompt.begin() + static_cast<std::ptrdiff_t>(keep));
  rq.params.max_tokens = r.max_tokens;
  rq.params.stop = r.stop;
  rq.params.ignore_eos = r.ignore_eos;
  rq.sampler = r.sampling;
  rq.n_logprobs = r.n_logprobs;
  rq.shown_tokens = r.shown_tokens;
  Slot* slot = &s;
  rq.on_logprob = [slot](const runtime::TokenLogprob& lp) { slot->lp.push_back(lp); };
  rq.on_text = [this, slot](std::string_view text) {
    if (slot->first_token) {
      slot->first_token = false;
      metrics_.TimeToFirstToken(
          std::chrono::duration<double>(Clock::now() - slot->job->enqueued()).count());
    }
    GenEvent ev;
    ev.text = std::string(text);
    ev.tokens = std::move(slot->lp);
    slot->lp.clear();
    slot->job->Push(std::move(ev));
    return true;
  };
  s.job = std::move(job);
  s.lp.clear();
  s.n_prompt = static_cast<int>(r.prompt.size());
  s.n_cached = static_cast<int>(std::min(reused, r.prompt.size() - 1));
  s.first_token = true;
  s.last_used = ++clock_;
  try {
    co_->Begin(std::move(rq));
  } catch (const Error& e) {
    shard::Finished f{s.seq, {}, e.what()};
    f.result.stop_reason = "error";
    Finish(s, f);
    return;
  }
  metrics_.PromptTokens(s.n_prompt - s.n_cached, s.n_cached);
}

void ClusterBackend::Finish(Slot& s, const shard::Finished& f) {
  GenEvent ev;
  ev.tokens = std::move(s.lp);
  s.lp.clear();
  ev.done = true;
  ev.finish_reason = FinishReason(f.result.stop_reason);
  ev.error = f.error;
  ev.n_prompt = s.n_prompt;
  ev.n_cached = s.n_cached;
  ev.n_generated = static_cast<int>(f.result.tokens.size());
  metrics_.GeneratedTokens(ev.n_generated);
  metrics_.GenerationFinished(ev.finish_reason);
  generated_ += ev.n_generated;
  s.job->Push(std::move(ev));
  s.job.reset();
  std::lock_guard lock(mu_);
  ++n_free_;
}

void ClusterBackend::Admit() {
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::lock_guard lock(mu_);
      if (queue_.empty() || n_free_ == 0) break;
      job = std::move(queue_.front());
      queue_.pop_front();
      --n_free_;
      metrics_.SetQueueDepth(static_cast<int>(queue_.size()));
    }
    if (job->cancelled()) {
      GenEvent ev;
      ev.done = true;
      ev.finish_reason = "cancelled";
      job->Push(std::move(ev));
      metrics_.GenerationFinished("cancelled");
      std::lock_guard lock(mu_);
      ++n_free_;
      continue;
    }
    // The free slot that shares the longest prefix with the prompt, else the least recently
    // used one.
    Slot* best = nullptr;
    size_t best_common = 0;
    for (auto& s : slots_) {
      if (s.job) continue;
      const size_t c = CommonPrefix(co_->Tokens(s.seq), job->request().prompt);
      if (!best || c > best_common || (c == best_common && s.last_used < best->last_used))
        best = &s, best_common = c;
    }
    Assign(*best, std::move(job));
  }
}

void ClusterBackend::Loop() {
  while (true) {
    {
      std::unique_lock lock(mu_);
      if (stopping_) break;
      if (co_->Active() == 0 && queue_.empty())
        cv_.wait_for(lock, std::chrono::milliseconds(200),
                     [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
    }
    Admit();
    int busy = 0;
    for (auto& s : slots_) {
      if (s.job && s.job->cancelled()) co_->Cancel(s.seq);
      busy += s.job != nullptr;
    }
    Pace(busy);
    const auto finished = co_->Pump(in_flight_, micro_batch_, std::chrono::milliseconds(20));
    for (const auto& f : finished)
      for (auto& s : slots_)
        if (s.job && s.seq == f.sequence) Finish(s, f);
    int active = 0;
    for (const auto& s : slots_) active += s.job != nullptr;
    metrics_.SetSlots(active, static_cast<int>(slots_.size()));
    Refresh(false);
  }
  // Stopping: every open request ends now.
  for (auto& s : slots_)
    if (s.job) co_->Cancel(s.seq);
  for (auto& s : slots_) {
    if (!s.job) continue;
    shard::Finished f{s.seq, {}, "the server is shutting down"};
    f.result.stop_reason = "error";
    Finish(s, f);
  }
  std::lock_guard lock(mu_);
  for (auto& job : queue_) {
    GenEvent ev;
    ev.done = true;
    ev.finish_reason = "error";
    ev.error = "the server is shutting down";
    job->Push(std::move(ev));
  }
  queue_.clear();
}

// Steps in flight and sequences per step for `active` sequences, where the options leave it open.
void ClusterBackend::SetPace(int active) {
  const auto pace = co_->PaceFor(active);
  in_flight_ = fixed_in_flight_ > 0 ? fixed_in_flight_ : pace.in_flight;
  micro_batch_ = fixed_micro_batch_ > 0 ? fixed_micro_batch_ : pace.micro_batch;
}

// The pace for the requests running now; and, once the number of requests (running and
// waiting) has held for load_hold_ms, the plan for that many.
void ClusterBackend::Pace(int busy) {
  SetPace(busy);
  int load = busy;
  {
    std::lock_guard lock(mu_);
    load += static_cast<int>(queue_.size());
  }
  const auto now = Clock::now();
  if (load != load_seen_) {
    load_seen_ = load;
    load_since_ = now;
  }
  if (load > 0 && now - load_since_ >= std::chrono::milliseconds(load_hold_ms_)) co_->SetLoad(load);
}

void ClusterBackend::Refresh(bool force) {
  const auto now = Clock::now();
  if (!force && now - status_at_ < std::chrono::milliseconds(250)) return;
  nlohmann::json j = co_->Status();
  int active = 0;
  for (const auto& s : slots_) active += s.job != nullptr;
  // Generated tokens per second over the last 10 s.
  rate_.emplace_back(now, generated_);
  while (rate_.size() > 1 && now - rate_.front().first > std::chrono::seconds(10))
    rate_.pop_front();
  const double span = std::chrono::duration<double>(now - rate_.front().first).count();
  const double tps = span > 0 ? double(generated_ - rate_.front().second) / span : 0.0;
  size_t queued = 0;
  {
    std::lock_guard lock(mu_);
    queued = queue_.size();
  }
  j["server"] = {{"slots", slots_.size()},
                 {"active", active},
                 {"queued", queued},
                 {"in_flight", in_flight_},
                 {"micro_batch", micro_batch_},
                 {"generated_tokens", generated_},
                 {"tokens_per_s", tps}};
  std::lock_guard lock(status_mu_);
  status_ = std::move(j);
  status_at_ = now;
}

nlohmann::json ClusterBackend::Status() const {
  std::lock_guard lock(status_mu_);
  return status_;
}

}  // namespace es::server
