#include "server/server_scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "edgeshard/error.h"
#include "runtime/runtime_session.h"

namespace es::server {
namespace {

using Clock = std::chrono::steady_clock;

int ResolveCtx(const model::ModelConfig& c, int n_ctx) {
  if (n_ctx < 0) throw Error("context length must be positive (got " + std::to_string(n_ctx) + ")");
  // Beyond the training context the file's RoPE scaling applies; `serve` warns.
  return n_ctx == 0 ? std::min(c.n_ctx_train, 4096) : n_ctx;
}

int ResolveThreads(int n) {
  return n > 0 ? n : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

Scheduler::Scheduler(const model::LlamaModel& m, const tok::Tokenizer& t, const SchedulerOptions& o,
                     Metrics& metrics)
    : model_(m),
      tok_(t),
      metrics_(metrics),
      n_ctx_(ResolveCtx(m.config(), o.n_ctx)),
      n_batch_(std::max(o.n_batch, o.n_slots)),
      max_queue_(o.max_queue),
      step_delay_ms_(o.step_delay_ms),
      context_shift_(o.context_shift),
      n_keep_(o.n_keep),
      pool_(ResolveThreads(o.n_threads)),
      ws_(m.config(), n_batch_, n_ctx_, pool_.size()) {
  const auto& c = m.config();
  if (o.n_slots < 1)
    throw Error("--parallel must be at least 1 (got " + std::to_string(o.n_slots) + ")");
  if (o.max_queue < 0)
    throw Error("the queue length must be >= 0 (got " + std::to_string(o.max_queue) + ")");
  slots_.resize(static_cast<size_t>(o.n_slots));
  // A slot gets at most n_batch_ rows a step, so its sliding-window layers keep rings.
  for (auto& s : slots_) {
    s.kv = std::make_unique<runtime::KvCache>(c, n_ctx_, o.kv_type, 0, -1, n_batch_, &model_);
  }
  n_free_ = o.n_slots;
  hidden_.resize(static_cast<size_t>(n_batch_) * c.n_embd);
  head_in_.resize(slots_.size() * c.n_embd);
  logits_.resize(slots_.size() * c.n_vocab);
  UpdateGauges();
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() {
  Stop();
}

size_t Scheduler::kv_bytes() const {
  size_t b = 0;
  for (const auto& s : slots_) b += s.kv->bytes();
  return b;
}

std::string Scheduler::Describe() const {
  // Where the blocks run when some are on a GPU (-ngl), the GPU as its driver names it.
  std::string gpu;
  if (const std::string g = model_.GpuPlacement(); !g.empty()) gpu = ", " + g;
  return fmt::format("{} slots x {} tokens, KV cache {:.1f} MiB{}, {} threads{}", n_slots(),
                     n_ctx(), static_cast<double>(kv_bytes()) / (1 << 20),
                     model::KvTypesNote(kv_types()), n_threads(), gpu);
}

bool Scheduler::Submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard lock(mu_);
    // Free slots take requests at the next step; beyond them, at most max_queue_ may wait.
    if (stopping_ || static_cast<int>(queue_.size()) >= max_queue_ + n_free_.load()) return false;
    queue_.push_back(std::move(job));
    metrics_.SetQueueDepth(static_cast<int>(queue_.size()));
  }
  cv_.notify_all();
  return true;
}

void Scheduler::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  std::lock_guard lock(join_mu_);  // Stop may be called from several threads at once
  if (thread_.joinable()) thread_.join();
}

void Scheduler::Loop() {
  while (true) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] {
        return stopping_ || !queue_.empty() ||
               std::any_of(slots_.begin(), slots_.end(),
                           [](const Slot& s) { return s.job != nullptr; });
      });
      if (stopping_) break;
    }
    Admit();
    Step();
  }
  for (auto& s : slots_)
    if (s.job) Finish(s, "error", "the server is shutting down");
  std::lock_guard lock(mu_);
  for (auto& job : queue_) {
    GenEvent e;
    e.done = true;
    e.finish_reason = "error";
    e.error = "the server is shutting down";
    job->Push(std::move(e));
  }
  queue_.clear();
}

void Scheduler::Admit() {
  std::vector<std::shared_ptr<Job>> take, dropped;
  {
    std::lock_guard lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->cancelled()) {
        dropped.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    const auto n_free =
        std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.job == nullptr; });
    while (!queue_.empty() && static_cast<int64_t>(take.size()) < n_free) {
      take.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    metrics_.SetQueueDepth(static_cast<int>(queue_.size()));
  }
  for (auto& job : dropped) {
    GenEvent e;
    e.done = true;
    e.finish_reason = "cancelled";
    e.n_prompt = static_cast<int>(job->request().prompt.size());
    job->Push(std::move(e));
    metrics_.GenerationFinished("cancelled");
  }
  for (auto& job : take) {
    // Prefer the free slot whose cached tokens cover at least half of this prompt (a
    // conversation's next turn, a shared system prompt); else the least recently used one, so
    // a mere shared BOS does not evict a useful cache.
    const auto& prompt = job->request().prompt;
    Slot *best = nullptr, *lru = nullptr;
    size_t best_lcp = 0;
    for (auto& s : slots_) {
      if (s.job) continue;
      const size_t lcp = CommonPrefix(s.cached, prompt);
      if (lcp > best_lcp) best = &s, best_lcp = lcp;
      if (!lru || s.last_used < lru->last_used) lru = &s;
    }
    Assign(best && 2 * best_lcp >= prompt.size() ? *best : *lru, std::move(job));
  }
}

void Scheduler::Assign(Slot& s, std::shared_ptr<Job> job) {
  const GenRequest& r = job->request();
  size_t keep = std::min(CommonPrefix(s.cached, r.prompt), s.reusable);
  if (keep >= r.prompt.size()) keep = r.prompt.size() - 1;  // evaluate one token for fresh logits
  // Sliding-window rings may no longer hold the window before the cut: start over.
  if (!s.kv->CanTruncate(static_cast<int64_t>(keep), static_cast<int64_t>(s.cached.size())))
    keep = 0;
  if (keep == 0) s.kv->Reset();
  s.cached.resize(keep);
  s.reusable = SIZE_MAX;
  s.pending.assign(r.prompt.begin() + static_cast<std::ptrdiff_t>(keep), r.prompt.end());
  s.pending_pos = 0;
  s.next = -1;
  if (r.sampling.grammar && !trie_) trie_ = tok::BuildTokenTrie(tok_, model_.config().n_vocab);
  s.sampler = std::make_unique<runtime::Sampler>(r.sampling, model_.config().n_vocab,
                                                 r.sampling.grammar ? trie_ : nullptr);
  for (int32_t t : r.prompt) s.sampler->Accept(t);  // penalties see the prompt, as in llama.cpp
  s.stop = std::make_unique<runtime::StopMatcher>(r.stop);
  s.n_prompt = static_cast<int>(r.prompt.size());
  s.n_cached = static_cast<int>(keep);
  s.n_generated = 0;
  s.first_token = true;
  s.last_used = ++clock_;
  s.job = std::move(job);
  --n_free_;
  metrics_.PromptTokens(static_cast<int64_t>(r.prompt.size() - keep), static_cast<int64_t>(keep));
}

void Scheduler::Step() {
  for (auto& s : slots_)
    if (s.job && s.job->cancelled()) Finish(s, "cancelled");

  const auto& c = model_.config();
  batch_tokens_.clear();
  batch_rows_.clear();
  std::vector<std::pair<Slot*, int>> want;  // slots that sample after this step, and their row
  auto add_row = [&](Slot& s, int32_t token) {
    batch_tokens_.push_back(token);
    batch_rows_.push_back(model::BatchRow{s.kv->layers(), static_cast<int64_t>(s.cached.size())});
    s.cached.push_back(token);
  };
  // One decode row per generating sequence first, so they never wait behind long prompts.
  for (auto& s : slots_) {
    if (!s.job || s.next < 0) continue;
    add_row(s, s.next);
    s.next = -1;
    want.emplace_back(&s, static_cast<int>(batch_rows_.size()) - 1);
  }
  // Then prompt chunks, oldest request first, up to the batch size.
  std::vector<Slot*> prefill;
  for (auto& s : slots_)
    if (s.job && s.pending_pos < s.pending.size()) prefill.push_back(&s);
  std::sort(prefill.begin(), prefill.end(),
            [](Slot* a, Slot* b) { return a->last_used < b->last_used; });
  for (Slot* s : prefill) {
    const size_t room = static_cast<size_t>(n_batch_) - batch_rows_.size();
    if (room == 0) break;
    const size_t n = std::min(room, s->pending.size() - s->pending_pos);
    for (size_t i = 0; i < n; ++i) add_row(*s, s->pending[s->pending_pos + i]);
    s->pending_pos += n;
    if (s->pending_pos == s->pending.size())
      want.emplace_back(s, static_cast<int>(batch_rows_.size()) - 1);
  }
  const int n = static_cast<int>(batch_rows_.size());
  if (n == 0) {
    UpdateGauges();
    return;
  }

  const auto t0 = Clock::now();
  try {
    model_.Embed(batch_tokens_.data(), n, hidden_.data());
    model_.ForwardBlocks(0, c.n_layer, hidden_.data(), n, batch_rows_.data(), ws_, pool_);
    // The head only for rows that are sampled: the last prompt row and the decode rows.
    for (size_t k = 0; k < want.size(); ++k)
      std::memcpy(head_in_.data() + k * c.n_embd,
                  hidden_.data() + static_cast<size_t>(want[k].second) * c.n_embd,
                  sizeof(float) * c.n_embd);
    if (!want.empty())
      model_.Head(head_in_.data(), static_cast<int>(want.size()), logits_.data(), ws_, pool_);
  } catch (const std::exception& e) {
    // The caches of the sequences in this batch may be half written: forget them.
    for (auto& s : slots_) {
      if (!s.job) continue;
      s.cached.clear();
      Finish(s, "error", e.what());
    }
    UpdateGauges();
    return;
  }
  metrics_.Step(n, std::chrono::duration<double>(Clock::now() - t0).count());

  // Sampling scans the whole vocabulary per sequence: spread it over the pool. Each sampler
  // belongs to one slot, so the draws are independent; the rest is done in order below.
  sampled_.assign(want.size(), -1);
  logprobs_.assign(want.size(), TokenLogprob{});
  pool_.ParallelFor(static_cast<int64_t>(want.size()), [&](int64_t b, int64_t e, int) {
    std::vector<int32_t> idx;
    for (auto k = static_cast<size_t>(b); k < static_cast<size_t>(e); ++k) {
      Slot& s = *want[k].first;
      const float* logits = logits_.data() + k * c.n_vocab;
      sampled_[k] = s.sampler->Sample(logits);
      const int n_lp = s.job->request().n_logprobs;
      if (n_lp >= 0) logprobs_[k] = runtime::Logprobs(logits, c.n_vocab, sampled_[k], n_lp, idx);
    }
  });
  for (size_t k = 0; k < want.size(); ++k)
    HandleToken(*want[k].first, sampled_[k], std::move(logprobs_[k]));
  UpdateGauges();
  if (step_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_delay_ms_));
}

void Scheduler::HandleToken(Slot& s, int32_t tok, TokenLogprob lp) {
  const GenRequest& r = s.job->request();
  if (s.first_token) {
    s.first_token = false;
    metrics_.TimeToFirstToken(
        std::chrono::duration<double>(Clock::now() - s.job->enqueued()).count());
  }
  GenEvent ev;
  if (s.sampler->grammar_dead_end()) {
    ev.text = s.stop->Flush();
    Finish(s, "error", s.sampler->grammar_error(), std::move(ev));
    return;
  }
  if (!r.ignore_eos && tok_.IsEog(tok)) {
    ev.text = s.stop->Flush();
    Finish(s, "stop", "", std::move(ev));
    return;
  }
  s.sampler->Accept(tok, true);
  ++s.n_generated;
  metrics_.GeneratedTokens(1);
  if (r.n_logprobs >= 0) ev.tokens.push_back(std::move(lp));
  const bool shown =
      std::find(r.shown_tokens.begin(), r.shown_tokens.end(), tok) != r.shown_tokens.end();
  auto fed = s.stop->Feed(tok_.TokenToPiece(tok, shown));
  ev.text = std::move(fed.text);
  if (fed.stopped) {
    Finish(s, "stop", "", std::move(ev));
  } else if ((r.max_tokens >= 0 && s.n_generated >= r.max_tokens) ||
             (s.cached.size() >= static_cast<size_t>(n_ctx_) && !ShiftContext(s, tok))) {
    // The last token is never evaluated, so a full context still lets it out.
    ev.text += s.stop->Flush();
    Finish(s, "length", "", std::move(ev));
  } else {
    // After a shift that must evaluate the kept tokens again, tok is the last of those.
    if (s.pending_pos == s.pending.size()) s.next = tok;
    if (!ev.text.empty() || !ev.tokens.empty()) s.job->Push(std::move(ev));
  }
}

bool Scheduler::ShiftContext(Slot& s, int32_t tok) {
  if (!context_shift_) return false;
  const auto n_past = static_cast<int64_t>(s.cached.size());
  const auto n_prompt = static_cast<int64_t>(s.n_prompt);
  const bool bos = tok_.add_bos() && !s.cached.empty() && s.cached[0] == tok_.bos();
  const int n_keep =
      s.job->request().n_keep == GenRequest::kServerKeep ? n_keep_ : s.job->request().n_keep;
  int64_t keep = n_keep < 0 || n_keep > n_prompt ? n_prompt : n_keep + bos;
  keep = std::clamp<int64_t>(keep, 0, std::max(0, n_ctx_ - 4));
  const int64_t discard = runtime::ContextShiftDiscard(n_past, n_ctx_, keep);
  if (discard == 0) return false;
  const auto first = s.cached.begin() + keep;
  if (s.kv->Shift(model_, keep, discard, n_past, &pool_)) {
    s.cached.erase(first, first + discard);
  } else {
    // A ring lost keys the next position needs: evaluate the kept tokens and tok as a prompt
    // chunk; its last row's logits give the next token.
    s.pending.assign(s.cached.begin(), first);
    s.pending.insert(s.pending.end(), first + discard, s.cached.end());
    s.pending.push_back(tok);
    s.pending_pos = 0;
    s.cached.clear();
    s.kv->Reset();
  }
  s.reusable = static_cast<size_t>(keep);
  metrics_.ContextShift(discard);
  return true;
}

void Scheduler::Finish(Slot& s, const std::string& reason, const std::string& error, GenEvent ev) {
  ev.done = true;
  ev.finish_reason = reason;
  ev.error = error;
  ev.n_prompt = s.n_prompt;
  ev.n_cached = s.n_cached;
  ev.n_generated = s.n_generated;
  s.job->Push(std::move(ev));
  metrics_.GenerationFinished(reason);
  // The slot is free at once; its cached tokens stay for a later request with the same prefix.
  s.job.reset();
  s.sampler.reset();
  s.stop.reset();
  s.pending.clear();
  s.pending_pos = 0;
  s.next = -1;
  s.last_used = ++clock_;
  ++n_free_;
}

void Scheduler::UpdateGauges() {
  int active = 0;
  int64_t used = 0;
  for (const auto& s : slots_) {
    active += s.job != nullptr;
    used += static_cast<int64_t>(s.cached.size());
  }
  metrics_.SetSlots(active, static_cast<int>(slots_.size()));
  metrics_.SetKvCache(used, static_cast<int64_t>(slots_.size()) * n_ctx_);
}

}  // namespace es::server
