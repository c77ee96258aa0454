// Server counters and gauges, rendered in the Prometheus text format for GET /metrics.
// Updated by the HTTP threads and the scheduler; one mutex is enough at these rates.
#pragma once
#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

namespace es::server {

class Metrics {
 public:
  Metrics();

  // One finished HTTP request to `endpoint` (e.g. "/v1/completions") with its status code.
  void HttpRequest(const std::string& endpoint, int status);
  // A generation ended: reason is "stop", "length", "cancelled" or "error".
  void GenerationFinished(const std::string& reason);
  // Prompt tokens of an admitted request: evaluated now, and reused from a slot's cache.
  void PromptTokens(int64_t evaluated, int64_t cached);
  void GeneratedTokens(int64_t n);
  // A full slot dropped `discarded` positions to go on generating.
  void ContextShift(int64_t discarded);
  void TimeToFirstToken(double seconds);
  void SetQueueDepth(int n);
  void SetSlots(int active, int total);
  void SetKvCache(int64_t used_tokens, int64_t capacity_tokens);
  // A batched forward step over `rows` rows took `seconds`.
  void Step(int rows, double seconds);

  std::string Render() const;

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr std::array<double, 10> kTtftBuckets = {0.005, 0.01, 0.025, 0.05, 0.1,
                                                          0.25,  0.5,  1.0,   2.5,  10.0};
  mutable std::mutex mu_;
  Clock::time_point start_;
  std::map<std::pair<std::string, int>, int64_t> http_;
  std::map<std::string, int64_t> finished_;
  int64_t prompt_tokens_ = 0, prompt_cached_ = 0, generated_ = 0;
  int64_t shifts_ = 0, shifted_out_ = 0;
  std::array<int64_t, kTtftBuckets.size()> ttft_counts_{};
  int64_t ttft_n_ = 0;
  double ttft_sum_ = 0;
  int queue_depth_ = 0, slots_active_ = 0, slots_total_ = 0;
  int64_t kv_used_ = 0, kv_capacity_ = 0;
  int64_t steps_ = 0, step_rows_ = 0;
  double step_seconds_ = 0;
  // Generated tokens per moment over the last kRateWindow, for the tokens/s gauge.
  mutable std::deque<std::pair<Clock::time_point, int64_t>> recent_;
  static constexpr double kRateWindow = 10.0;
};

}  // namespace es::server
