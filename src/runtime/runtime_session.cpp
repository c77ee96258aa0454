#include "runtime/runtime_session.h"

#include <algorithm>
#include <cstring>
#include <thread>

namespace es::runtime {
namespace {

int DefaultThreads(int n) {
  if (n > 0) return n;
  return std::max(1u, std::thread::hardware_concurrency());
}

int64_t DefaultCtx(const model::ModelConfig& c, int n) {
  if (n > 0) return n;
  return std::min(c.n_ctx_train, 4096);
}

}  // namespace

Session::Session(const model::LlamaModel& m, const SessionOptions& o)
    : model_(m),
      n_batch_(std::max(1, o.n_batch)),
      pool_(DefaultThreads(o.n_threads)),
      kv_(m.config(), DefaultCtx(m.config(), o.n_ctx), o.kv_type, 0, -1, o.window_kv ? n_batch_ : 0,
          &m),
      ws_(m.config(), n_batch_, static_cast<int>(kv_.n_ctx()), pool_.size()) {
  const auto& c = m.config();
  hidden_.resize(static_cast<size_t>(n_batch_) * c.n_embd);
  logits_last_.resize(c.n_vocab);
}

void Session::Eval(const std::vector<int32_t>& tokens, std::vector<float>* all_logits) {
  const auto& c = model_.config();
  const int64_t n_total = static_cast<int64_t>(tokens.size());
  if (n_total == 0) return;
  if (n_past_ + n_total > kv_.n_ctx())
    throw Error("context is full: " + std::to_string(n_past_ + n_total) +
                " tokens needed but the context holds " + std::to_string(kv_.n_ctx()) +
                " (use a larger -c; the model was trained on " + std::to_string(c.n_ctx_train) +
                ")");
  if (all_logits) all_logits->resize(static_cast<size_t>(n_total) * c.n_vocab);
  for (int64_t off = 0; off < n_total; off += n_batch_) {
    const int n = static_cast<int>(std::min<int64_t>(n_batch_, n_total - off));
    model_.Embed(tokens.data() + off, n, hidden_.data());
    model_.ForwardBlocks(0, c.n_layer, hidden_.data(), n, n_past_, kv_.layers(), ws_, pool_);
    n_past_ += n;
    tokens_.insert(tokens_.end(), tokens.begin() + off, tokens.begin() + off + n);
    const bool last_chunk = off + n == n_total;
    if (all_logits) {
      model_.Head(hidden_.data(), n, all_logits->data() + static_cast<size_t>(off) * c.n_vocab, ws_,
                  pool_);
      if (last_chunk)
        std::memcpy(logits_last_.data(),
                    all_logits->data() + static_cast<size_t>(n_total - 1) * c.n_vocab,
                    sizeof(float) * c.n_vocab);
    } else if (last_chunk) {
      model_.Head(hidden_.data() + static_cast<size_t>(n - 1) * c.n_embd, 1, logits_last_.data(),
                  ws_, pool_);
    }
  }
}

void Session::Truncate(int64_t n) {
  n = std::clamp<int64_t>(n, 0, n_past_);
  if (!kv_.CanTruncate(n, n_past_)) {
    // Sliding-window rings no longer hold the keys just before the cut: recompute the prefix.
    std::vector<int32_t> keep(tokens_.begin(), tokens_.begin() + n);
    n_past_ = 0;
    tokens_.clear();
    kv_.Reset();
    Eval(keep);
    return;
  }
  n_past_ = n;
  tokens_.resize(static_cast<size_t>(n_past_));
}

void Session::Shift(int64_t keep, int64_t discard) {
  const auto first = tokens_.begin() + keep;
  if (!kv_.Shift(model_, keep, discard, n_past_, &pool_)) {
    std::vector<int32_t> kept(tokens_.begin(), first);
    kept.insert(kept.end(), first + discard, tokens_.end());
    const std::vector<float> logits = logits_last_;  // the caller still samples from these
    n_past_ = 0;
    tokens_.clear();
    kv_.Reset();
    Eval(kept);
    logits_last_ = logits;
    return;
  }
  tokens_.erase(first, first + discard);
  n_past_ -= discard;
}

int64_t ContextShiftDiscard(int64_t n_past, int64_t n_ctx, int64_t keep) {
  keep = std::clamp<int64_t>(keep, 0, std::max<int64_t>(0, n_ctx - 4));
  const int64_t left = n_past - keep;
  return std::clamp<int64_t>(left / 2, 0, std::max<int64_t>(0, left - 1));
}

int64_t Session::ShiftContext(int64_t keep) {
  keep = std::clamp<int64_t>(keep, 0, std::max<int64_t>(0, n_ctx() - 4));
  const int64_t discard = ContextShiftDiscard(n_past_, n_ctx(), keep);
  if (discard > 0) Shift(keep, discard);
  return discard;
}

}  // namespace es::runtime
