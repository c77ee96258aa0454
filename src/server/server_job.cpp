#include "server/server_job.h"

namespace es::server {

bool Job::Wait(GenEvent& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return has_pending_; })) return false;
  out = std::move(pending_);
  pending_ = GenEvent{};
  has_pending_ = false;
  return true;
}

void Job::Push(GenEvent e) {
  {
    std::lock_guard lock(mu_);
    // Merge: a slow reader gets everything since it last looked in one piece.
    pending_.text += e.text;
    for (auto& t : e.tokens) pending_.tokens.push_back(std::move(t));
    if (e.done) {
      pending_.done = true;
      pending_.finish_reason = e.finish_reason;
      pending_.error = e.error;
      pending_.n_prompt = e.n_prompt;
      pending_.n_cached = e.n_cached;
      pending_.n_generated = e.n_generated;
    }
    has_pending_ = true;
  }
  cv_.notify_all();
}

}  // namespace es::server
