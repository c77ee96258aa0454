#include "shard/shard_dist_stage.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <set>

#include "runtime/runtime_logprobs.h"
#include "tokenizer/tokenizer_trie.h"

namespace es::shard {

namespace rpc = edgeshard::rpc;

size_t WireBytesPerValue(rpc::WireType wire) {
  return wire == rpc::WIRE_F32 ? 4 : 2;
}

std::string EncodeActivations(const float* x, size_t n, rpc::WireType wire) {
  std::string out(n * WireBytesPerValue(wire), '\0');
  if (wire == rpc::WIRE_F32) {
    std::memcpy(out.data(), x, n * sizeof(float));
  } else {
    for (size_t i = 0; i < n; ++i) {
      const f16_t h = F32ToF16(x[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

void DecodeActivations(const std::string& bytes, rpc::WireType wire, float* out, size_t n) {
  const size_t want = n * WireBytesPerValue(wire);
  if (bytes.size() != want)
    throw Error("activations of " + std::to_string(bytes.size()) + " bytes, expected " +
                std::to_string(want) + " (" + std::to_string(n) + " values as " +
                (wire == rpc::WIRE_F32 ? "F32" : "F16") + ")");
  if (wire == rpc::WIRE_F32) {
    std::memcpy(out, bytes.data(), want);
  } else {
    for (size_t i = 0; i < n; ++i) {
      f16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      out[i] = F16ToF32(h);
    }
  }
  // NaN or infinity would only give garbage logits, and the kernels' float-to-int conversions
  // (exp) are undefined for them: a peer sending such values gets an error instead.
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(out[i]))
      throw Error("activations hold a non-finite value at index " + std::to_string(i));
}

runtime::SamplerParams FromProto(const rpc::SamplingConfig& c) {
  runtime::SamplerParams p;
  p.temperature = c.temperature();
  p.top_k = c.top_k();
  p.top_p = c.top_p();
  p.min_p = c.min_p();
  p.repeat_penalty = c.repeat_penalty();
  p.frequency_penalty = c.frequency_penalty();
  p.presence_penalty = c.presence_penalty();
  p.penalty_last_n = c.penalty_last_n();
  p.seed = c.seed();
  if (c.bias_tokens_size() != c.bias_values_size())
    throw Error("logit_bias has " + std::to_string(c.bias_tokens_size()) + " tokens but " +
                std::to_string(c.bias_values_size()) + " values");
  for (int i = 0; i < c.bias_tokens_size(); ++i)
    p.logit_bias.emplace_back(c.bias_tokens(i), c.bias_values(i));
  if (!c.grammar().empty())
    p.grammar =
        runtime::Grammar::Parse(c.grammar(), c.grammar_root().empty() ? "root" : c.grammar_root());
  return p;
}

rpc::SamplingConfig ToProto(const runtime::SamplerParams& p) {
  rpc::SamplingConfig c;
  c.set_temperature(p.temperature);
  c.set_top_k(p.top_k);
  c.set_top_p(p.top_p);
  c.set_min_p(p.min_p);
  c.set_repeat_penalty(p.repeat_penalty);
  c.set_frequency_penalty(p.frequency_penalty);
  c.set_presence_penalty(p.presence_penalty);
  c.set_penalty_last_n(p.penalty_last_n);
  c.set_seed(p.seed);
  for (const auto& [t, b] : p.logit_bias) {
    c.add_bias_tokens(t);
    c.add_bias_values(b);
  }
  if (p.grammar) {
    c.set_grammar(p.grammar->source);
    c.set_grammar_root(p.grammar->root_name);
  }
  return c;
}

StageExecutor::StageExecutor(const model::LlamaModel& m, const StageSpec& spec,
                             kernels::ThreadPool& pool)
    : model_(m),
      spec_(spec),
      pool_(pool),
      ws_(m.config(), std::max(1, spec.max_batch), spec.n_ctx, pool.size()) {
  const auto& c = m.config();
  if (spec.first_layer < 0 || spec.last_layer > c.n_layer || spec.first_layer > spec.last_layer)
    throw Error("layer range [" + std::to_string(spec.first_layer) + ", " +
                std::to_string(spec.last_layer) + ") is outside the model's " +
                std::to_string(c.n_layer) + " blocks");
  if (spec.n_ctx < 1) throw Error("a stage needs a context of at least one position");
  if (spec.max_batch < 1) throw Error("a stage needs a batch of at least one row");
  rows_.resize(spec.max_batch);
  if (spec.head) logits_.resize(c.n_vocab);
}

StageExecutor::Seq& StageExecutor::Get(uint64_t id) {
  auto it = seqs_.find(id);
  if (it != seqs_.end()) return it->second;
  Seq s;
  if (spec_.last_layer > spec_.first_layer) {
    // A sequence gets at most max_batch rows a step: sliding-window layers keep rings.
    // The shard's GPU blocks keep their caches on the device.
    s.kv = std::make_unique<runtime::KvCache>(model_.config(), spec_.n_ctx, spec_.kv_type,
                                              spec_.first_layer, spec_.last_layer, spec_.max_batch,
                                              &model_);
  }
  return seqs_.emplace(id, std::move(s)).first->second;
}

namespace {
constexpr int32_t kMaxPenaltyLastN = 1 << 20;
constexpr int kMaxLogprobs = 20;  // alternatives per token, as the server's fields allow
}  // namespace

void StageExecutor::Fill(Output& out, rpc::Result& r) {
  for (uint64_t s : out.sequences) r.add_sequences(s);
  for (int32_t t : out.tokens) r.add_tokens(t);
  r.mutable_logits()->Add(out.logits.begin(), out.logits.end());
  for (auto& lp : out.logprobs) *r.add_logprobs() = std::move(lp);
}

StageExecutor::Output StageExecutor::Run(const rpc::Step& step, const std::vector<int32_t>& tokens,
                                         std::vector<float>& hidden) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const auto& c = model_.config();
  const size_t d = c.n_embd;
  if (step.segments_size() == 0) throw Error("step " + std::to_string(step.id()) + " is empty");
  int64_t n = 0;
  std::set<uint64_t> in_step;
  for (const auto& seg : step.segments()) {
    const std::string who = "sequence " + std::to_string(seg.sequence());
    if (!in_step.insert(seg.sequence()).second)
      throw Error(who + " appears twice in step " + std::to_string(step.id()));
    if (seg.n_tokens() < 1) throw Error(who + ": a segment needs at least one token");
    auto it = seqs_.find(seg.sequence());
    const int64_t past = it == seqs_.end() ? 0 : it->second.n_past;
    // A position before the end rewinds the sequence (a truncated context); a gap is an error.
    if (seg.pos() < 0 || seg.pos() > past)
      throw Error(who + ": step starts at position " + std::to_string(seg.pos()) +
                  " but the stage holds " + std::to_string(past) + " positions");
    if (it != seqs_.end() && it->second.kv && !it->second.kv->CanTruncate(seg.pos(), past))
      throw Error(who + ": step rewinds from position " + std::to_string(past) + " to " +
                  std::to_string(seg.pos()) +
                  ", further back than its sliding-window caches hold; start the sequence over "
                  "from position 0");
    if (seg.pos() + seg.n_tokens() > spec_.n_ctx)
      throw Error(who + ": positions up to " + std::to_string(seg.pos() + seg.n_tokens()) +
                  " do not fit the context of " + std::to_string(spec_.n_ctx));
    // The sampler allocates its penalty window up front: a peer's 2^31 would be 8 GiB. The bound
    // is the one the command line's --repeat-last-n accepts.
    if (seg.has_sampling() &&
        (seg.sampling().penalty_last_n() < 0 || seg.sampling().penalty_last_n() > kMaxPenaltyLastN))
      throw Error(who + ": penalty_last_n " + std::to_string(seg.sampling().penalty_last_n()) +
                  " is outside [0, " + std::to_string(kMaxPenaltyLastN) + "]");
    n += seg.n_tokens();
  }
  if (n > spec_.max_batch)
    throw Error("step " + std::to_string(step.id()) + " has " + std::to_string(n) +
                " rows, the stage was loaded for at most " + std::to_string(spec_.max_batch));
  hidden.resize(static_cast<size_t>(n) * d);
  if (spec_.embed) {
    if (static_cast<int64_t>(tokens.size()) != n)
      throw Error("the source stage got " + std::to_string(tokens.size()) + " tokens for " +
                  std::to_string(n) + " rows");
    model_.Embed(tokens.data(), static_cast<int>(n), hidden.data());
  }
  // Caches first, so the forward pass sees every sequence's storage.
  int64_t r = 0;
  for (const auto& seg : step.segments()) {
    Seq& s = Get(seg.sequence());
    for (int i = 0; i < seg.n_tokens(); ++i, ++r)
      rows_[r] = model::BatchRow{s.kv ? s.kv->layers() : nullptr, seg.pos() + i};
  }
  if (spec_.last_layer > spec_.first_layer) {
    if (step.segments_size() == 1) {
      // One sequence: the same call the single-device session makes, so results match it bit
      // for bit.
      const auto& seg = step.segments(0);
      model_.ForwardBlocks(spec_.first_layer, spec_.last_layer, hidden.data(), static_cast<int>(n),
                           seg.pos(), rows_[0].kv, ws_, pool_);
    } else {
      model_.ForwardBlocks(spec_.first_layer, spec_.last_layer, hidden.data(), static_cast<int>(n),
                           rows_.data(), ws_, pool_);
    }
  }
  Output out;
  r = 0;
  for (const auto& seg : step.segments()) {
    Seq& s = seqs_.at(seg.sequence());
    s.n_past = seg.pos() + seg.n_tokens();
    r += seg.n_tokens();
    if (!spec_.head) continue;
    if (seg.has_sampling()) {
      runtime::SamplerParams sp = FromProto(seg.sampling());
      // The vocabulary as a trie for grammar masks, built when the first grammar comes.
      if (sp.grammar && !trie_)
        trie_ = tok::BuildTokenTrie(*tok::Tokenizer::FromGGUF(model_.file()), c.n_vocab);
      s.sampler = std::make_unique<runtime::Sampler>(sp, c.n_vocab, sp.grammar ? trie_ : nullptr);
    }
    if (!s.sampler && (seg.sample() || seg.accept_size() > 0))
      throw Error("sequence " + std::to_string(seg.sequence()) +
                  ": no sampler yet (its first sampling step must carry the sampling settings)");
    // The segment that brings the sampler accepts the prompt (penalty window only); later ones
    // accept the token sampled last, which also moves a grammar on.
    for (int32_t t : seg.accept()) s.sampler->Accept(t, !seg.has_sampling());
    if (!seg.sample() && !seg.want_logits()) continue;
    model_.Head(hidden.data() + static_cast<size_t>(r - 1) * d, 1, logits_.data(), ws_, pool_);
    if (seg.want_logits()) out.logits.insert(out.logits.end(), logits_.begin(), logits_.end());
    if (!seg.sample()) continue;
    out.sequences.push_back(seg.sequence());
    out.tokens.push_back(s.sampler->Sample(logits_.data()));
    if (seg.n_logprobs() > 0) {
      const auto lp = runtime::Logprobs(logits_.data(), c.n_vocab, out.tokens.back(),
                                        std::min(seg.n_logprobs() - 1, kMaxLogprobs), scratch_);
      rpc::TokenLogprobs& m = out.logprobs.emplace_back();
      m.set_logprob(lp.logprob);
      for (const auto& [id, v] : lp.top) {
        m.add_top_tokens(id);
        m.add_top_logprobs(v);
      }
    }
  }
  out.compute_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  return out;
}

void StageExecutor::Release(uint64_t sequence) {
  seqs_.erase(sequence);
}
void StageExecutor::ReleaseAll() {
  seqs_.clear();
}

size_t StageExecutor::kv_bytes() const {
  size_t b = 0;
  for (const auto& [id, s] : seqs_)
    if (s.kv) b += s.kv->bytes();
  return b;
}

}  // namespace es::shard
