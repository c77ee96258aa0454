#include "server/server_metrics.h"

#include <algorithm>
#include <cstdio>

namespace es::server {
namespace {

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void Header(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void Sample(std::string& out, const std::string& name, double v) {
  out += name + " " + Num(v) + "\n";
}

}  // namespace

Metrics::Metrics() : start_(Clock::now()) {}

void Metrics::HttpRequest(const std::string& endpoint, int status) {
  std::lock_guard lock(mu_);
  ++http_[{endpoint, status}];
}

void Metrics::GenerationFinished(const std::string& reason) {
  std::lock_guard lock(mu_);
  ++finished_[reason];
}

void Metrics::PromptTokens(int64_t evaluated, int64_t cached) {
  std::lock_guard lock(mu_);
  prompt_tokens_ += evaluated;
  prompt_cached_ += cached;
}

void Metrics::GeneratedTokens(int64_t n) {
  std::lock_guard lock(mu_);
  generated_ += n;
  recent_.emplace_back(Clock::now(), n);
  // Bounded: entries older than the window are dropped here as well as when rendering.
  const auto cutoff = Clock::now() - std::chrono::duration<double>(kRateWindow);
  while (!recent_.empty() && recent_.front().first < cutoff) recent_.pop_front();
}

void Metrics::ContextShift(int64_t discarded) {
  std::lock_guard lock(mu_);
  ++shifts_;
  shifted_out_ += discarded;
}

void Metrics::TimeToFirstToken(double s) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < kTtftBuckets.size(); ++i)
    if (s <= kTtftBuckets[i]) ++ttft_counts_[i];
  ++ttft_n_;
  ttft_sum_ += s;
}

void Metrics::SetQueueDepth(int n) {
  std::lock_guard lock(mu_);
  queue_depth_ = n;
}

void Metrics::SetSlots(int active, int total) {
  std::lock_guard lock(mu_);
  slots_active_ = active;
  slots_total_ = total;
}

void Metrics::SetKvCache(int64_t used, int64_t capacity) {
  std::lock_guard lock(mu_);
  kv_used_ = used;
  kv_capacity_ = capacity;
}

void Metrics::Step(int rows, double seconds) {
  std::lock_guard lock(mu_);
  ++steps_;
  step_rows_ += rows;
  step_seconds_ += seconds;
}

std::string Metrics::Render() const {
  std::lock_guard lock(mu_);
  std::string o;
  const auto now = Clock::now();
  const double uptime = std::chrono::duration<double>(now - start_).count();

  Header(o, "edgeshard_http_requests_total", "counter",
         "HTTP requests answered, by endpoint and status code.");
  for (const auto& [key, n] : http_)
    Sample(o,
           "edgeshard_http_requests_total{endpoint=\"" + key.first + "\",code=\"" +
               std::to_string(key.second) + "\"}",
           static_cast<double>(n));
  Header(o, "edgeshard_requests_total", "counter",
         "Generations finished, by reason (stop, length, cancelled, error).");
  for (const char* r : {"stop", "length", "cancelled", "error"}) {
    auto it = finished_.find(r);
    Sample(o, std::string("edgeshard_requests_total{reason=\"") + r + "\"}",
           it == finished_.end() ? 0.0 : static_cast<double>(it->second));
  }
  Header(o, "edgeshard_prompt_tokens_total", "counter", "Prompt tokens evaluated.");
  Sample(o, "edgeshard_prompt_tokens_total", static_cast<double>(prompt_tokens_));
  Header(o, "edgeshard_prompt_tokens_cached_total", "counter",
         "Prompt tokens reused from a slot's KV cache instead of being evaluated.");
  Sample(o, "edgeshard_prompt_tokens_cached_total", static_cast<double>(prompt_cached_));
  Header(o, "edgeshard_generated_tokens_total", "counter", "Tokens generated.");
  Sample(o, "edgeshard_generated_tokens_total", static_cast<double>(generated_));

  Header(o, "edgeshard_context_shifts_total", "counter",
         "Context shifts: a full slot dropped the older half of its tokens and went on.");
  Sample(o, "edgeshard_context_shifts_total", static_cast<double>(shifts_));
  Header(o, "edgeshard_context_shift_tokens_total", "counter",
         "Positions dropped by context shifts.");
  Sample(o, "edgeshard_context_shift_tokens_total", static_cast<double>(shifted_out_));

  Header(o, "edgeshard_time_to_first_token_seconds", "histogram",
         "Time from a request's arrival in the queue to its first generated token.");
  for (size_t i = 0; i < kTtftBuckets.size(); ++i)
    Sample(o, "edgeshard_time_to_first_token_seconds_bucket{le=\"" + Num(kTtftBuckets[i]) + "\"}",
           static_cast<double>(ttft_counts_[i]));
  Sample(o, "edgeshard_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
         static_cast<double>(ttft_n_));
  Sample(o, "edgeshard_time_to_first_token_seconds_sum", ttft_sum_);
  Sample(o, "edgeshard_time_to_first_token_seconds_count", static_cast<double>(ttft_n_));

  const auto cutoff = now - std::chrono::duration<double>(kRateWindow);
  while (!recent_.empty() && recent_.front().first < cutoff) recent_.pop_front();
  int64_t recent_tokens = 0;
  for (const auto& e : recent_) recent_tokens += e.second;
  Header(o, "edgeshard_generation_tokens_per_second", "gauge",
         "Generated tokens per second over all sequences, averaged over the last 10 s.");
  Sample(o, "edgeshard_generation_tokens_per_second",
         static_cast<double>(recent_tokens) / std::clamp(uptime, 1e-3, kRateWindow));

  Header(o, "edgeshard_batch_steps_total", "counter", "Batched forward steps run.");
  Sample(o, "edgeshard_batch_steps_total", static_cast<double>(steps_));
  Header(o, "edgeshard_batch_rows_total", "counter", "Token rows computed by the batched steps.");
  Sample(o, "edgeshard_batch_rows_total", static_cast<double>(step_rows_));
  Header(o, "edgeshard_batch_seconds_total", "counter", "Time spent in batched steps.");
  Sample(o, "edgeshard_batch_seconds_total", step_seconds_);

  Header(o, "edgeshard_queue_depth", "gauge", "Requests waiting for a free slot.");
  Sample(o, "edgeshard_queue_depth", queue_depth_);
  Header(o, "edgeshard_slots_active", "gauge", "Slots generating for a request.");
  Sample(o, "edgeshard_slots_active", slots_active_);
  Header(o, "edgeshard_slots_total", "gauge", "Slots (sequences that can run together).");
  Sample(o, "edgeshard_slots_total", slots_total_);
  Header(o, "edgeshard_kv_cache_tokens", "gauge",
         "Positions held in the KV caches of all slots (active and cached prompts).");
  Sample(o, "edgeshard_kv_cache_tokens", static_cast<double>(kv_used_));
  Header(o, "edgeshard_kv_cache_capacity_tokens", "gauge", "Positions all KV caches can hold.");
  Sample(o, "edgeshard_kv_cache_capacity_tokens", static_cast<double>(kv_capacity_));
  Header(o, "edgeshard_kv_cache_usage_ratio", "gauge",
         "kv_cache_tokens / kv_cache_capacity_tokens.");
  Sample(
      o, "edgeshard_kv_cache_usage_ratio",
      kv_capacity_ > 0 ? static_cast<double>(kv_used_) / static_cast<double>(kv_capacity_) : 0.0);
  Header(o, "edgeshard_uptime_seconds", "gauge", "Seconds since the server started.");
  Sample(o, "edgeshard_uptime_seconds", uptime);
  return o;
}

}  // namespace es::server
