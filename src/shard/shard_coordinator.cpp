#include "shard/shard_coordinator.h"

#include <fmt/format.h>

#include <random>

#include "runtime/runtime_kv_cache.h"
#include "shard/shard_coordinator_impl.h"

namespace es::shard {

std::string FormatBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.2f} {}", b, units[u]);
}

Coordinator::Coordinator(const std::string& model_path, const CoordinatorOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.o = options;
  m.model_path = model_path;
  m.model =
      model::LlamaModel::Load(model_path, {.progress = {}, .prefault = false, .interleave = false});
  m.tok = tok::Tokenizer::FromGGUF(m.model->file());
  const auto& c = m.model->config();
  if (m.tok->n_vocab() != c.n_vocab)
    throw Error(model_path + ": the vocabulary has " + std::to_string(m.tok->n_vocab()) +
                " tokens but token_embd.weight has " + std::to_string(c.n_vocab) + " rows");
  if (m.o.n_ctx < 0) throw Error("context length must be positive");
  // Beyond the training context the file's RoPE scaling applies (the front end warns).
  m.n_ctx = m.o.n_ctx > 0 ? m.o.n_ctx : std::min(c.n_ctx_train, 4096);
  m.o.n_batch = std::max(1, m.o.n_batch);
  m.pool = std::make_unique<kernels::ThreadPool>(
      m.o.n_threads > 0 ? m.o.n_threads : int(std::max(1u, std::thread::hardware_concurrency())));
  m.model_bytes = m.model->file().file_size();
  {
    Progress bar("hashing " + model_path, m.o.quiet);
    m.model_sha = Sha256File(model_path, std::ref(bar));
  }
  m.cluster = m.o.cluster_path == "auto"
                  ? DiscoverCluster(model_path, m.o.security, m.o.discovery, m.model_sha)
                  : LoadCluster(m.o.cluster_path);
  m.units = UnitsFromGguf(m.model->file(), m.o.kv_type);
  if (!m.o.wire_f32) SetF16Wire(m.units);  // the planner prices the wire that is used
  for (size_t d = 0; d < m.cluster.devices.size(); ++d) {
    const DeviceSpec& spec = m.cluster.devices[d];
    auto dev = std::make_unique<Impl::Device>();
    if (spec.quant)
      throw Error(m.o.cluster_path + ":" + std::to_string(spec.line) + ": device '" + spec.name +
                  "': 'quant' is not supported by distributed inference yet (workers run the "
                  "model's own encoding)");
    if (int(d) != m.cluster.source && spec.gpu_of < 0) {  // a GPU: its host's worker runs it
      if (spec.address.empty())
        throw Error(m.o.cluster_path + ":" + std::to_string(spec.line) + ": device '" + spec.name +
                    "' has no 'address' (host:port of its `edgeshard worker`)");
      dev->client = std::make_unique<WorkerClient>(spec.name, spec.address, m.o.security);
    }
    m.devs.push_back(std::move(dev));
  }
  // Which workers answer; a refusal (wrong token or certificate) is an error, silence is not.
  for (size_t d = 0; d < m.devs.size(); ++d) {
    auto& dev = *m.devs[d];
    if (!dev.client) continue;
    try {
      const auto h = dev.client->Health(milliseconds(3000));
      if (m.o.verbose)
        m.Log(fmt::format("{}: {} threads, {} available", dev.client->Who(), h.threads(),
                          FormatBytes(double(h.memory_available_bytes()))));
    } catch (const RpcError& e) {
      if (!e.unreachable()) throw;
      dev.lost = true;
      dev.lost_reason = Impl::StripWho(dev, e.what());
      // A refused TLS handshake looks like an unreachable worker; say so.
      const std::string w = e.what();
      if (w.find("Socket closed") != std::string::npos || w.find("andshake") != std::string::npos)
        dev.lost_reason +=
            " (if the worker runs: TLS on one side only, or a certificate its CA did not sign?)";
      m.Event("warning: " + dev.client->Who() + ": " + dev.lost_reason + "; planning without it");
    }
  }
  m.planned_streams = m.checked_streams = std::max(1, m.o.plan_batch);
  m.Plan();
  m.LoadPlan();
  m.StartMonitors();
  if (m.o.verbose) m.Log("plan: " + m.PlanLine());
}

Coordinator::~Coordinator() {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mon_mu);
    m.stop = true;
  }
  m.mon_cv.notify_all();
  for (auto& t : m.monitors) t.join();
  m.Teardown();
  // Free the workers' caches now rather than when the next plan arrives.
  for (size_t i = 1; i < m.hops.size(); ++i) {
    auto& dev = *m.devs[m.hops[i].device];
    if (dev.lost) continue;
    try {
      dev.client->Release(m.epoch, {}, milliseconds(1000));
    } catch (const Error&) {
    }
  }
}

const tok::Tokenizer& Coordinator::tokenizer() const {
  return *impl_->tok;
}
const model::LlamaModel& Coordinator::model() const {
  return *impl_->model;
}
int Coordinator::n_ctx() const {
  return impl_->n_ctx;
}

std::vector<std::string> Coordinator::StageDevices() const {
  std::vector<std::string> r;
  for (const auto& s : impl_->stages) r.push_back(impl_->cluster.devices[s.device].name);
  return r;
}

std::string Coordinator::PlanSummary() const {
  const Impl& m = *impl_;
  std::string t = fmt::format(
      "plan ({} objective, {}): {} stage(s), planned {:.2f} ms/token, "
      "slowest stage {:.2f} ms\n",
      m.o.objective == Objective::kLatency ? "latency" : "throughput", m.method, m.stages.size(),
      m.planned.step_ms, m.planned.bottleneck_ms);
  for (size_t i = 0; i < m.stages.size(); ++i) {
    const int host = m.cluster.Host(m.stages[i].device);
    t += fmt::format("  stage {}: {}{} (compute {:.2f} ms, send {:.2f} ms, weights {}, KV {})\n", i,
                     m.StageText(i),
                     host == m.cluster.source ? "" : " @ " + m.devs[host]->client->address(),
                     m.planned.comp_ms[i], m.planned.link_ms[i],
                     FormatBytes(m.planned.weight_bytes[i]), FormatBytes(m.planned.kv_bytes[i]));
  }
  return t;
}

uint64_t Coordinator::NewSequence() {
  const uint64_t id = impl_->next_seq++;
  impl_->seqs[id];
  return id;
}

void Coordinator::ReleaseSequence(uint64_t sequence) {
  Impl& m = *impl_;
  if (!m.seqs.erase(sequence)) return;
  if (m.local) m.local->Release(sequence);  // (none while a failed load is retried)
  for (size_t i = 1; i < m.hops.size(); ++i) {
    auto& dev = *m.devs[m.hops[i].device];
    if (dev.lost) continue;
    try {
      dev.client->Release(m.epoch, {sequence}, milliseconds(2000));
    } catch (const Error&) {
      // A worker that is gone holds nothing; the monitor reports it.
    }
  }
}

void Coordinator::Truncate(uint64_t sequence, int64_t n) {
  Impl::Seq& s = impl_->GetSeq(sequence);
  const auto n_past = static_cast<int64_t>(s.tokens.size());
  n = std::clamp<int64_t>(n, 0, n_past);
  // The stages' rings (KvCache with max_batch n_batch) hold the last RowsKept positions of a
  // sliding-window layer; a cut before their window starts the sequence over.
  const auto& c = impl_->model->config();
  for (int l = 0; l < c.n_layer && n > 0; ++l) {
    const int64_t rows = runtime::KvCache::RowsKept(c, l, impl_->n_ctx, impl_->o.n_batch);
    if (rows < impl_->n_ctx && std::max<int64_t>(0, n - c.Window(l) + 1) < n_past - rows) {
      s.redo.assign(s.tokens.begin(), s.tokens.begin() + n);
      s.tokens.clear();
      s.log.clear();
      return;
    }
  }
  s.tokens.resize(static_cast<size_t>(n));
  // Steps wholly past the cut are never needed again; one that straddles it is kept whole, so a
  // replay computes its kept positions exactly as before. The next step rewinds the stages.
  while (!s.log.empty() && s.log.back().pos >= n) s.log.pop_back();
}

const std::vector<int32_t>& Coordinator::Tokens(uint64_t sequence) const {
  return impl_->GetSeq(sequence).tokens;
}

GenerateResult Coordinator::Generate(uint64_t sequence, const std::vector<int32_t>& prompt,
                                     const GenerateParams& params,
                                     const std::function<bool(std::string_view)>& on_text) {
  std::vector<Request> reqs(1);
  reqs[0].sequence = sequence;
  reqs[0].prompt = prompt;
  reqs[0].params = params;
  reqs[0].on_text = on_text;
  return GenerateMany(std::move(reqs), 1, 1)[0];
}

std::vector<float> Coordinator::Eval(uint64_t sequence, const std::vector<int32_t>& tokens) {
  std::vector<Request> reqs(1);
  std::vector<float> logits;
  reqs[0].sequence = sequence;
  reqs[0].prompt = tokens;
  reqs[0].params.max_tokens = 0;
  reqs[0].prompt_logits = &logits;
  GenerateMany(std::move(reqs), 1, 1);
  return logits;
}

namespace {

// A request as the driver's generation state; throws es::Error for a bad one.
std::unique_ptr<Coordinator::Impl::Gen> MakeGen(Coordinator& co, Coordinator::Impl& m,
                                                Request& rq) {
  Coordinator::Impl::Seq& s = m.GetSeq(rq.sequence);
  auto g = std::make_unique<Coordinator::Impl::Gen>();
  g->seq = rq.sequence;
  g->gp = rq.params;
  g->on_text = rq.on_text;
  g->n_logprobs = rq.n_logprobs;
  g->on_logprob = rq.on_logprob;
  g->shown_tokens = rq.shown_tokens;
  g->r.n_prompt = static_cast<int>(rq.prompt.size());
  g->r.stop_reason = "length";
  if (rq.prompt.empty() && s.tokens.empty() && s.redo.empty()) throw Error("the prompt is empty");
  const size_t need = s.tokens.size() + s.redo.size() + rq.prompt.size();
  if (static_cast<int64_t>(need) >= m.n_ctx)
    throw Error("the prompt needs " + std::to_string(need) + " positions but the context holds " +
                std::to_string(m.n_ctx) + " (use a larger -c)");
  g->prompt_accept = rq.accept_before;
  g->prompt_accept.insert(g->prompt_accept.end(), rq.prompt.begin(), rq.prompt.end());
  g->prompt_logits = rq.prompt_logits;
  g->pending.assign(s.redo.begin(), s.redo.end());
  g->pending.insert(g->pending.end(), rq.prompt.begin(), rq.prompt.end());
  s.redo.clear();
  if (g->pending.empty()) {
    // Logits of the last position are not kept between requests: compute them again.
    g->pending.push_back(s.tokens.back());
    co.Truncate(rq.sequence, static_cast<int64_t>(s.tokens.size()) - 1);
  }
  if (rq.sampler) {
    g->sp = *rq.sampler;
  } else {
    const auto& sp = rq.params.sampling;
    g->sp.temperature = sp.temperature;
    g->sp.top_k = sp.top_k;
    g->sp.top_p = sp.top_p;
    g->sp.min_p = sp.min_p;
    g->sp.repeat_penalty = sp.repeat_penalty;
    g->sp.frequency_penalty = sp.frequency_penalty;
    g->sp.presence_penalty = sp.presence_penalty;
    g->sp.penalty_last_n = sp.penalty_last_n;
    g->sp.seed = sp.seed;
  }
  // A random seed is drawn here, so a replay after a fault draws the same numbers.
  if (g->sp.seed == runtime::Sampler::kRandomSeed)
    g->sp.seed = std::random_device{}() & 0x7FFFFFFFu;
  // Validates the settings (the grammar is the last stage's, with its vocabulary trie).
  runtime::SamplerParams check_sp = g->sp;
  check_sp.grammar = nullptr;
  runtime::Sampler check(check_sp, m.model->config().n_vocab);
  g->limit = rq.params.max_tokens < 0 ? INT64_MAX : rq.params.max_tokens;
  g->stop = std::make_unique<runtime::StopMatcher>(rq.params.stop);
  g->t_start = Clock::now();
  return g;
}

}  // namespace

std::vector<GenerateResult> Coordinator::GenerateMany(std::vector<Request> requests, int in_flight,
                                                      int micro_batch) {
  Impl& m = *impl_;
  if (!m.live.empty()) throw Error("GenerateMany while continuous generations run");
  m.MaybeRejoin();
  std::vector<std::unique_ptr<Impl::Gen>> gens;
  std::map<uint64_t, Impl::Gen*> by_seq;
  for (auto& rq : requests) {
    if (by_seq.count(rq.sequence))
      throw Error("sequence " + std::to_string(rq.sequence) + " is in two requests at once");
    auto g = MakeGen(*this, m, rq);
    by_seq[rq.sequence] = g.get();
    gens.push_back(std::move(g));
  }
  m.Run(by_seq, std::max(1, in_flight), std::max(1, micro_batch));
  std::vector<GenerateResult> out;
  for (auto& g : gens) out.push_back(std::move(g->r));
  return out;
}

void Coordinator::Begin(Request request) {
  Impl& m = *impl_;
  if (m.live.count(request.sequence))
    throw Error("sequence " + std::to_string(request.sequence) + " is already generating");
  if (!m.plan_error.empty()) {
    // The last fault left no plan: try again with the devices there are now (a lost worker may
    // be back). The caches went with the plan, so every sequence starts over.
    if (!m.live.empty()) throw Error(m.plan_error);
    try {
      m.manual = false;
      m.Plan();
      m.LoadPlan();
    } catch (const Error& e) {
      m.plan_error = e.what();
      throw Error(m.plan_error);
    }
    for (auto& [id, s] : m.seqs) s = Impl::Seq{};
    m.in_flight.clear();
    m.replay.clear();
    m.plan_error.clear();
    ++m.replans;
    m.Event(fmt::format("replanned on {} device(s): {}", m.stages.size(), m.PlanLine()));
  }
  auto g = MakeGen(*this, m, request);
  m.live_index[request.sequence] = g.get();
  m.live[request.sequence] = std::move(g);
}

void Coordinator::Cancel(uint64_t sequence) {
  auto it = impl_->live.find(sequence);
  if (it == impl_->live.end() || it->second->done) return;
  it->second->r.stop_reason = "cancelled";
  it->second->done = true;
}

int Coordinator::Active() const {
  return static_cast<int>(impl_->live.size());
}

std::vector<Finished> Coordinator::Pump(int in_flight, int micro_batch,
                                        std::chrono::milliseconds wait) {
  Impl& m = *impl_;
  std::vector<Finished> out;
  if (m.live.empty()) return out;
  try {
    m.PumpLive(std::max(1, in_flight), std::max(1, micro_batch), Clock::now() + wait);
  } catch (const std::exception& e) {
    // Recovery failed (or a stage sent what cannot be used): nothing can be finished on this
    // plan. Every stage's caches are gone; the next Begin plans again.
    m.plan_error = e.what();
    m.Event("error: " + m.plan_error);
    m.Teardown();
    m.in_flight.clear();
    m.replay.clear();
    for (auto& [id, g] : m.live) {
      Finished f{id, std::move(g->r), m.plan_error};
      f.result.stop_reason = "error";
      out.push_back(std::move(f));
    }
    m.live.clear();
    m.live_index.clear();
    return out;
  }
  for (auto it = m.live.begin(); it != m.live.end();) {
    Impl::Gen& g = *it->second;
    if (!g.done || g.inflight) {
      ++it;
      continue;
    }
    out.push_back({it->first, std::move(g.r), ""});
    m.live_index.erase(it->first);
    it = m.live.erase(it);
  }
  return out;
}

ClusterReport Coordinator::Report() const {
  const Impl& m = *impl_;
  ClusterReport r;
  r.objective = m.o.follow_load ? fmt::format("load ({} stream(s))", m.planned_streams)
                : m.o.objective == Objective::kLatency ? "latency"
                                                       : "throughput";
  r.plan_method = m.method;
  r.replans = m.replans;
  r.events = m.events;
  r.decode_steps = m.st_steps;
  const double n = double(std::max<int64_t>(1, m.st_steps));
  // Planned costs at the context the measured steps ran at.
  const int ctx = m.st_steps ? std::max(1, int(m.st_pos / n)) : m.n_ctx;
  Evaluation ev = m.planned;
  try {
    ev = Evaluate(m.MakeProblem(ctx), m.stages);
  } catch (const Error&) {
  }
  r.planned_step_ms = ev.step_ms;
  r.planned_bottleneck_ms = ev.bottleneck_ms;
  r.step_ms = m.st_step_ms / n;
  for (size_t i = 0; i < m.stages.size(); ++i) {
    StageReport s;
    s.device = m.cluster.devices[m.stages[i].device].name;
    s.first_unit = m.stages[i].first;
    s.last_unit = m.stages[i].last;
    s.planned_compute_ms = ev.comp_ms[i];
    s.planned_link_ms = ev.link_ms[i];
    // Measured per hop (a worker's step): a host's and its GPU's stages share theirs, split by
    // their planned compute; the link after the hop is the last stage's.
    const size_t h = i < m.stage_hop.size() ? size_t(m.stage_hop[i]) : m.st_compute.size();
    if (h < m.st_compute.size()) {
      double hop_planned = 0;
      for (size_t j = 0; j < m.stages.size(); ++j)
        if (m.stage_hop[j] == int(h)) hop_planned += ev.comp_ms[j];
      const double share = hop_planned > 0 ? ev.comp_ms[i] / hop_planned : 1.0;
      s.compute_ms = m.st_compute[h] * share / n;
      if (i + 1 == m.stages.size() || m.stage_hop[i + 1] != int(h)) {
        s.link_ms = m.st_link[h] / n;
        s.wire_bytes = m.st_bytes[h] / n;
      }
    }
    s.steps = m.st_steps;
    r.stages.push_back(s);
  }
  return r;
}

void Coordinator::ResetStats() {
  Impl& m = *impl_;
  std::fill(m.st_compute.begin(), m.st_compute.end(), 0.0);
  std::fill(m.st_link.begin(), m.st_link.end(), 0.0);
  std::fill(m.st_bytes.begin(), m.st_bytes.end(), 0.0);
  m.st_step_ms = m.st_pos = 0;
  m.st_steps = 0;
}

}  // namespace es::shard
