#include "shard/shard_coordinator.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "runtime/runtime_sampler.h"
#include "runtime/runtime_stop.h"
#include "shard/shard_dist_stage.h"
#include "shard/shard_placement.h"
#include "shard/shard_profile.h"
#include "shard/shard_rpc.h"

namespace es::shard {

namespace rpc = edgeshard::rpc;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string FormatBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.2f} {}", b, units[u]);
}

namespace {

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

double WallMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A fault seen by the driver loop: a lost worker, a broken stream or a step past its deadline.
struct Fault {
  std::string reason;
  bool deadline = false;
};

}  // namespace

struct Coordinator::Impl {
  CoordinatorOptions o;
  std::string model_path, model_sha;
  uint64_t model_bytes = 0;
  std::unique_ptr<model::LlamaModel> model;
  std::unique_ptr<tok::Tokenizer> tok;
  Cluster cluster;
  ModelUnits units;
  int n_ctx = 0;
  std::unique_ptr<kernels::ThreadPool> pool;

  struct Device {
    std::unique_ptr<WorkerClient> client;  // null for the source
    std::atomic<bool> lost{false};
    std::atomic<bool> in_plan{false};
    std::atomic<bool> rejoined{false};
    std::string lost_reason;  // guarded by mon_mu
  };
  std::vector<std::unique_ptr<Device>> devs;

  // The current plan.
  uint64_t epoch = 0;
  std::vector<Stage> stages;
  Evaluation planned;
  std::string method;
  std::unique_ptr<StageExecutor> local;

  // Data-path streams of the current plan and what their readers saw.
  std::mutex stream_mu;
  std::unique_ptr<StreamCall> upstream, results;
  std::thread results_reader, upstream_reader;
  std::mutex q_mu;
  std::condition_variable q_cv;
  std::deque<rpc::Result> q;
  std::string broken;  // why a stream ended ("" while both are open)

  // Health monitors, one thread per worker.
  std::vector<std::thread> monitors;
  mutable std::mutex mon_mu;
  std::condition_variable mon_cv;
  bool stop = false;

  // Sequences and the steps they were built from (replayed after a fault).
  struct Entry {
    int64_t pos = 0;
    std::vector<int32_t> tokens;
    bool sample = false;
    std::vector<int32_t> accept;
    std::optional<runtime::SamplerParams> sampling;
    bool want_logits = false;
    bool completed = false;
    int32_t sampled = -1;
  };
  struct Seq {
    std::vector<int32_t> tokens;  // positions issued to the stages
    std::vector<Entry> log;
  };
  std::map<uint64_t, Seq> seqs;
  uint64_t next_seq = 1, next_step = 1;

  // Generation state of one request.
  struct Gen {
    uint64_t seq = 0;
    GenerateParams gp;
    runtime::SamplerParams sp;
    std::function<bool(std::string_view)> on_text;
    std::vector<int32_t> prompt_accept;
    std::deque<int32_t> pending;
    std::vector<float>* prompt_logits = nullptr;  // filled by the prompt's last step
    bool sampler_sent = false, inflight = false, done = false, sampled_once = false;
    int64_t limit = 0;
    std::unique_ptr<runtime::StopMatcher> stop;
    GenerateResult r;
    Clock::time_point t_start, t_sent;
  };
  struct Part {
    uint64_t seq;
    size_t entry;
  };
  struct InFlight {
    std::vector<Part> parts;
    Clock::time_point sent;
    int rows = 0;
    bool decode = false;  // one token per sequence, not a replay: counts in the statistics
    double pos_sum = 0;
  };
  std::map<uint64_t, InFlight> in_flight;
  std::deque<Part> replay;

  // Statistics (decode steps).
  std::vector<double> st_compute, st_link, st_bytes;
  double st_step_ms = 0, st_pos = 0;
  int64_t st_steps = 0;
  int replans = 0;
  std::vector<std::string> events;

  void Log(const std::string& m) {
    if (o.log)
      o.log(m);
    else
      LogLine("edgeshard", m);
  }
  void Event(const std::string& m) {
    events.push_back(m);
    Log(m);
  }

  // ---- devices and plans -------------------------------------------------------------------

  bool Available(int d) const { return !devs[d]->lost.load(); }

  // Errors start with the worker's name; messages about it name it once.
  static std::string StripWho(const Device& dev, const std::string& err) {
    const std::string who = dev.client->Who() + ": ";
    return err.rfind(who, 0) == 0 ? err.substr(who.size()) : err;
  }

  std::string InfeasibleMessage(const Problem& p) const {
    double need = 0, weights = 0, have = 0;
    for (int u = 0; u < p.n_units(); ++u)
      need += p.MemBytes(p.source, u), weights += p.weight_bytes[p.source][u];
    std::string avail;
    for (int d = 0; d < p.n_devices(); ++d)
      if (Available(d)) {
        have += p.budget_bytes[d];
        avail += (avail.empty() ? "" : ", ") + p.devices[d] + " " + FormatBytes(p.budget_bytes[d]);
      }
    std::string lost;
    for (int d = 0; d < p.n_devices(); ++d)
      if (!Available(d)) {
        std::lock_guard<std::mutex> lock(mon_mu);
        lost += (lost.empty() ? "" : "; ") + devs[d]->client->Who() + ": " + devs[d]->lost_reason;
      }
    std::string m = lost.empty() ? "no plan fits the cluster: "
                                 : "lost " + lost + ". No plan fits the remaining devices: ";
    m += fmt::format(
        "the model needs {} (weights {} + KV cache {} for {} positions) and the devices left ({}) "
        "offer {}",
        FormatBytes(need), FormatBytes(weights), FormatBytes(need - weights), n_ctx, avail,
        FormatBytes(have));
    if (need > have) return m + fmt::format("; {} of memory is missing", FormatBytes(need - have));
    return m + "; the total would do, but no contiguous split of the layers fits the devices";
  }

  Problem MakeProblem(int ctx) const {
    Problem p = BuildProblem(cluster, units, {o.objective, ctx, std::max(1, o.plan_batch)});
    for (int d = 0; d < p.n_devices(); ++d)
      if (!Available(d)) p.budget_bytes[d] = 0;
    return p;
  }

  bool manual = true;  // placement/baseline still in force (until a fault)

  void Plan() {
    const Problem p = MakeProblem(n_ctx);
    if (manual && !o.placement.empty()) {
      stages = LoadPlacement(o.placement, p);
      method = "placement rules " + o.placement;
    } else if (manual && !o.baseline.empty()) {
      std::string names;
      method.clear();
      for (const Baseline& b : Baselines(p, o.objective)) {
        names += (names.empty() ? "" : ", ") + b.name;
        if (b.name != o.baseline) continue;
        if (b.stages.empty()) throw Error("baseline '" + b.name + "' does not apply: " + b.note);
        stages = b.stages;
        method = "baseline " + b.name;
      }
      if (method.empty())
        throw Error("no baseline named '" + o.baseline + "' (the planner has: " + names + ")");
    } else {
      const Solution s = Solve(p, o.objective);
      if (!s.feasible) throw Error(InfeasibleMessage(p));
      stages = s.stages;
      method = s.method;
    }
    planned = Evaluate(p, stages);
    if (!planned.fits())
      throw Error(method + " does not fit in memory: " + FormatBytes(planned.missing_bytes) +
                  " over the budgets");
  }

  // Blocks [first, last) of a stage's units: unit 0 is the embedding, the last the head.
  std::pair<int, int> Blocks(const Stage& s) const {
    const int L = model->config().n_layer;
    return {std::clamp(s.first - 1, 0, L), std::clamp(s.last - 1, 0, L)};
  }

  std::string StageText(size_t i) const {
    const Stage& s = stages[i];
    auto [b0, b1] = Blocks(s);
    std::string t = cluster.devices[s.device].name + ": ";
    if (s.first == 0) t += "embedding, ";
    t += b1 > b0 ? fmt::format("blocks {}..{}", b0, b1 - 1) : "no blocks";
    if (s.last == int(units.units.size())) t += ", head + sampling";
    return t;
  }

  void LoadPlan() {
    Teardown();
    ++epoch;
    for (auto& d : devs) d->in_plan = false;
    for (size_t i = 1; i < stages.size(); ++i) {
      Device& dev = *devs[stages[i].device];
      auto [b0, b1] = Blocks(stages[i]);
      rpc::LoadShardRequest req;
      req.set_epoch(epoch);
      req.set_model_sha256(model_sha);
      req.set_model_bytes(model_bytes);
      req.set_first_layer(b0);
      req.set_last_layer(b1);
      req.set_has_head(i + 1 == stages.size());
      req.set_n_ctx(n_ctx);
      req.set_kv_f32(o.kv_f32);
      req.set_max_batch(o.n_batch);
      req.set_wire(o.wire_f32 ? rpc::WIRE_F32 : rpc::WIRE_F16);
      if (i + 1 < stages.size()) {
        const Device& next = *devs[stages[i + 1].device];
        req.set_next_address(next.client->address());
        req.set_next_name(next.client->name());
      }
      auto reply = dev.client->LoadShard(req, milliseconds(120000));
      if (reply.need_model()) {
        Log(dev.client->Who() + " has no copy of the model; sending " +
            FormatBytes(double(model_bytes)));
        Progress bar("sending model to " + dev.client->name(), o.quiet);
        // Generous: the deadline only has to catch a transfer that stopped moving.
        const auto deadline = milliseconds(120000 + model_bytes / 100);
        dev.client->PushModel(model_path, model_sha, std::ref(bar), deadline);
        reply = dev.client->LoadShard(req, milliseconds(120000));
        if (reply.need_model())
          throw Error(dev.client->Who() + " still lacks the model after receiving it");
      }
      dev.in_plan = true;
      if (o.verbose)
        Log(fmt::format("loaded {} in {:.0f} ms ({})", StageText(i), reply.load_ms(),
                        FormatBytes(double(reply.weight_bytes()))));
    }
    StageSpec spec;
    std::tie(spec.first_layer, spec.last_layer) = Blocks(stages[0]);
    spec.embed = true;
    spec.head = stages.size() == 1;
    spec.n_ctx = n_ctx;
    spec.kv_type = o.kv_f32 ? TensorType::kF32 : TensorType::kF16;
    spec.max_batch = o.n_batch;
    model->PrepareLayers(spec.first_layer, spec.last_layer, spec.head);
    local = std::make_unique<StageExecutor>(*model, spec, *pool);
    mon_cv.notify_all();
    OpenStreams();
    st_compute.assign(stages.size(), 0);
    st_link.assign(stages.size(), 0);
    st_bytes.assign(stages.size(), 0);
    st_step_ms = st_pos = 0;
    st_steps = 0;
  }

  void OpenStreams() {
    if (stages.size() < 2) return;
    Device& last = *devs[stages.back().device];
    Device& first = *devs[stages[1].device];
    auto res = last.client->OpenStream(rpc::Open::RESULTS, epoch, milliseconds(5000));
    auto up = first.client->OpenStream(rpc::Open::UPSTREAM, epoch, milliseconds(5000));
    {
      std::lock_guard<std::mutex> lock(q_mu);
      q.clear();
      broken.clear();
    }
    std::lock_guard<std::mutex> lock(stream_mu);
    results = std::move(res);
    upstream = std::move(up);
    results_reader = std::thread([this, call = results.get(), who = last.client->Who()] {
      for (rpc::Frame f; call->Read(&f);)
        if (f.has_result()) {
          std::lock_guard<std::mutex> lock(q_mu);
          q.push_back(std::move(*f.mutable_result()));
          q_cv.notify_all();
        }
      const std::string why = call->EndReason("the results stream from " + who + " ended");
      std::lock_guard<std::mutex> lock(q_mu);
      if (broken.empty()) broken = why;
      q_cv.notify_all();
    });
    upstream_reader = std::thread([this, call = upstream.get(), who = first.client->Who()] {
      for (rpc::Frame f; call->Read(&f);) {
      }
      const std::string why = call->EndReason("the stream to " + who + " ended");
      std::lock_guard<std::mutex> lock(q_mu);
      if (broken.empty()) broken = why;
      q_cv.notify_all();
    });
  }

  void CancelStreams() {
    std::lock_guard<std::mutex> lock(stream_mu);
    if (upstream) upstream->ctx.TryCancel();
    if (results) results->ctx.TryCancel();
  }

  void Teardown() {
    CancelStreams();
    if (results_reader.joinable()) results_reader.join();
    if (upstream_reader.joinable()) upstream_reader.join();
    std::lock_guard<std::mutex> lock(stream_mu);
    upstream.reset();
    results.reset();
    std::lock_guard<std::mutex> qlock(q_mu);
    q.clear();
    broken.clear();
  }

  void StartMonitors() {
    for (size_t d = 0; d < devs.size(); ++d) {
      if (!devs[d]->client) continue;
      monitors.emplace_back([this, d] { Monitor(d); });
    }
  }

  void Monitor(size_t d) {
    Device& dev = *devs[d];
    int strikes = 0;
    bool retry_now = false;
    std::unique_lock<std::mutex> lock(mon_mu);
    while (!stop) {
      const bool watch = dev.in_plan && !dev.lost;
      if (!retry_now) mon_cv.wait_for(lock, watch ? o.health_interval : milliseconds(1000));
      retry_now = false;
      if (stop) break;
      if (!dev.in_plan && !dev.lost) continue;  // not used: nothing to watch
      lock.unlock();
      std::string err;
      rpc::HealthReply h;
      try {
        h = dev.client->Health(o.health_deadline);
      } catch (const Error& e) {
        err = e.what();
      }
      lock.lock();
      if (err.empty()) {
        strikes = 0;
        if (dev.lost) {
          dev.lost = false;
          dev.rejoined = true;
        }
        continue;
      }
      if (dev.lost || !dev.in_plan) continue;
      if (++strikes < o.health_strikes) {
        retry_now = true;  // a second look at once keeps detection within ~2 deadlines
        continue;
      }
      dev.lost_reason = StripWho(dev, err);
      dev.lost = true;
      strikes = 0;
      lock.unlock();
      CancelStreams();  // unblocks a write to a stalled worker
      {
        std::lock_guard<std::mutex> q_lock(q_mu);
        q_cv.notify_all();
      }
      lock.lock();
    }
  }

  // Probes every worker of the plan (after a broken stream or a late step). Workers that do not
  // answer, or answer with another epoch (restarted), are marked lost. Returns their names.
  std::vector<int> FindLost() {
    std::vector<int> lost;
    for (size_t i = 1; i < stages.size(); ++i) {
      const int d = stages[i].device;
      Device& dev = *devs[d];
      if (dev.lost) {
        lost.push_back(d);
        continue;
      }
      std::string err;
      for (int t = 0; t < std::max(1, o.health_strikes); ++t) {
        try {
          const auto h = dev.client->Health(o.health_deadline);
          err = h.epoch() == epoch ? "" : "it restarted and lost its shard";
          break;
        } catch (const Error& e) {
          err = e.what();
        }
      }
      if (err.empty()) continue;
      std::lock_guard<std::mutex> lock(mon_mu);
      dev.lost_reason = StripWho(dev, err);
      dev.lost = true;
      lost.push_back(d);
    }
    return lost;
  }

  std::vector<int> LostInPlan() const {
    std::vector<int> r;
    for (size_t i = 1; i < stages.size(); ++i)
      if (devs[stages[i].device]->lost) r.push_back(stages[i].device);
    return r;
  }

  // ---- steps ------------------------------------------------------------------------------

  Seq& GetSeq(uint64_t id) {
    auto it = seqs.find(id);
    if (it == seqs.end()) throw Error("unknown sequence " + std::to_string(id));
    return it->second;
  }

  // Builds, computes locally and sends one step made of `parts`.
  void Send(const std::vector<Part>& parts, bool decode) {
    rpc::Step st;
    st.set_id(next_step++);
    st.set_wire(o.wire_f32 ? rpc::WIRE_F32 : rpc::WIRE_F16);
    std::vector<int32_t> toks;
    InFlight fl;
    fl.parts = parts;
    fl.decode = decode;
    for (const Part& p : parts) {
      const Entry& e = GetSeq(p.seq).log[p.entry];
      rpc::Segment* seg = st.add_segments();
      seg->set_sequence(p.seq);
      seg->set_pos(e.pos);
      seg->set_n_tokens(static_cast<int>(e.tokens.size()));
      seg->set_sample(e.sample);
      seg->set_want_logits(e.want_logits);
      for (int32_t a : e.accept) seg->add_accept(a);
      if (e.sampling) *seg->mutable_sampling() = ToProto(*e.sampling);
      toks.insert(toks.end(), e.tokens.begin(), e.tokens.end());
      fl.rows += static_cast<int>(e.tokens.size());
      fl.pos_sum += double(e.pos);
    }
    fl.sent = Clock::now();
    std::vector<float> hidden;
    StageExecutor::Output out = local->Run(st, toks, hidden);
    rpc::Timing tm;
    tm.set_stage(cluster.devices[stages[0].device].name);
    tm.set_compute_ms(out.compute_ms);
    in_flight[st.id()] = std::move(fl);
    if (stages.size() == 1) {
      rpc::Result r;
      r.set_step(st.id());
      for (uint64_t s : out.sequences) r.add_sequences(s);
      for (int32_t t : out.tokens) r.add_tokens(t);
      r.mutable_logits()->Add(out.logits.begin(), out.logits.end());
      *r.add_timings() = tm;
      std::lock_guard<std::mutex> lock(q_mu);
      q.push_back(std::move(r));
      return;
    }
    st.set_hidden(EncodeActivations(hidden.data(), hidden.size(), st.wire()));
    *st.add_timings() = tm;
    st.set_sent_unix_ms(WallMs());
    rpc::Frame f;
    *f.mutable_step() = std::move(st);
    bool ok = false;
    {
      std::unique_lock<std::mutex> lock(stream_mu);
      StreamCall* call = upstream.get();
      lock.unlock();  // Write may block on a stalled worker; the monitor cancels it
      ok = call && call->Write(f);
    }
    if (!ok) {
      std::lock_guard<std::mutex> lock(q_mu);
      if (broken.empty())
        broken = "sending to " + devs[stages[1].device]->client->Who() + " failed";
    }
  }

  // Waits for the next result; throws Fault when a worker is lost or a stream breaks.
  rpc::Result Wait(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(q_mu);
    while (true) {
      if (!q.empty()) {
        rpc::Result r = std::move(q.front());
        q.pop_front();
        return r;
      }
      for (int d : LostInPlan()) {
        std::lock_guard<std::mutex> m(mon_mu);
        throw Fault{devs[d]->client->Who() + " stopped answering: " + devs[d]->lost_reason};
      }
      if (!broken.empty()) throw Fault{broken};
      if (Clock::now() >= deadline) throw Fault{"a step is past its deadline", true};
      q_cv.wait_for(lock, milliseconds(20));
    }
  }

  Clock::time_point StepDeadline() const {
    int rows = 0;
    for (const auto& [id, f] : in_flight) rows = std::max(rows, f.rows);
    Clock::time_point oldest = Clock::now();
    for (const auto& [id, f] : in_flight) oldest = std::min(oldest, f.sent);
    return oldest + o.step_deadline_base + o.step_deadline_per_row * rows;
  }

  // After a fault: find the lost workers, replan without them, reload, and queue every logged
  // step again. Throws es::Error when nothing fits any more or the fault was not a lost worker.
  void Recover(const Fault& f) {
    std::vector<int> lost = FindLost();
    if (lost.empty()) {
      if (f.deadline) {
        Log("warning: " + f.reason + ", but every worker answers; waiting longer");
        for (auto& [id, fl] : in_flight) fl.sent = Clock::now();
        return;
      }
      // A stream ended while every worker is alive: a worker refused it (see its log).
      Teardown();
      throw Error("distributed generation failed: " + f.reason +
                  " although every worker answers (see the workers' logs)");
    }
    for (int d : lost) {
      std::lock_guard<std::mutex> lock(mon_mu);
      Event(fmt::format("lost {}: {}", devs[d]->client->Who(), devs[d]->lost_reason));
    }
    if (manual && (!o.placement.empty() || !o.baseline.empty()))
      Event("the manual plan no longer applies; the planner chooses from here on");
    manual = false;
    for (int attempt = 0;; ++attempt) {
      try {
        Plan();
        LoadPlan();
        break;
      } catch (const RpcError& e) {
        if (!e.unreachable() || attempt > int(devs.size())) throw;
        const auto more = FindLost();
        if (more.empty()) throw;
        for (int d : more) Event(fmt::format("lost {} while replanning", devs[d]->client->Who()));
      }
    }
    ++replans;
    Event(fmt::format("replanned on {} device(s): {}", stages.size(), PlanLine()));
    QueueReplay();
  }

  void QueueReplay() {
    in_flight.clear();
    replay.clear();
    for (auto& [id, s] : seqs)
      for (size_t i = 0; i < s.log.size(); ++i) replay.push_back({id, i});
  }

  std::string PlanLine() const {
    std::string t;
    for (size_t i = 0; i < stages.size(); ++i) t += (i ? " -> " : "") + StageText(i);
    return t;
  }

  // A device that came back is taken into the plan at the start of the next request.
  void MaybeRejoin() {
    bool any = false;
    for (auto& d : devs)
      if (d->rejoined.exchange(false)) {
        any = true;
        Event(d->client->Who() + " is back and may rejoin");
      }
    if (!any) return;
    manual = false;
    const auto old = stages;
    Plan();
    if (stages == old) return;
    LoadPlan();
    ++replans;
    Event(fmt::format("replanned on {} device(s): {}", stages.size(), PlanLine()));
    QueueReplay();
    DrainReplay();
  }

  // ---- the driver ---------------------------------------------------------------------------

  void Finish(Gen& g) {
    g.done = true;
    if (g.r.stop_reason != "stop" && g.r.stop_reason != "cancelled") {
      const std::string rest = g.stop->Flush();
      if (!rest.empty()) {
        g.r.text += rest;
        if (g.on_text) g.on_text(rest);
      }
    }
  }

  void OnToken(Gen& g, int32_t id) {
    const Seq& s = GetSeq(g.seq);
    if (!g.sampled_once) {
      g.sampled_once = true;
      g.r.prompt_ms = MsSince(g.t_start);
    } else {
      g.r.decode_ms += MsSince(g.t_sent);
      ++g.r.n_decode;
    }
    if (!g.gp.ignore_eos && tok->IsEog(id)) {
      g.r.stop_reason = "eos";
      return Finish(g);
    }
    g.r.tokens.push_back(id);
    auto fed = g.stop->Feed(tok->TokenToPiece(id));
    if (!fed.text.empty()) {
      g.r.text += fed.text;
      if (g.on_text && !g.on_text(fed.text)) {
        g.r.stop_reason = "cancelled";
        return Finish(g);
      }
    }
    if (fed.stopped) {
      g.r.stop_reason = "stop";
      return Finish(g);
    }
    if (static_cast<int64_t>(g.r.tokens.size()) >= g.limit) return Finish(g);
    if (static_cast<int64_t>(s.tokens.size()) >= n_ctx) {
      g.r.stop_reason = "context";
      return Finish(g);
    }
    g.pending.push_back(id);
  }

  // The next chunk of a request as a logged entry.
  Part NextEntry(Gen& g, int max_rows) {
    Seq& s = GetSeq(g.seq);
    Entry e;
    e.pos = static_cast<int64_t>(s.tokens.size());
    const size_t n = std::min<size_t>({static_cast<size_t>(o.n_batch), g.pending.size(),
                                       static_cast<size_t>(std::max(1, max_rows))});
    for (size_t i = 0; i < n; ++i) e.tokens.push_back(g.pending[i]);
    g.pending.erase(g.pending.begin(), g.pending.begin() + static_cast<std::ptrdiff_t>(n));
    e.sample = g.pending.empty() && g.limit > 0;
    e.want_logits = g.pending.empty() && g.prompt_logits && !g.sampler_sent;
    if (e.sample) {
      if (!g.sampler_sent) {
        e.sampling = g.sp;
        e.accept = g.prompt_accept;
        g.sampler_sent = true;
      } else {
        e.accept = e.tokens;  // the token sampled last is recorded before the next draw
      }
    }
    s.tokens.insert(s.tokens.end(), e.tokens.begin(), e.tokens.end());
    s.log.push_back(std::move(e));
    g.inflight = true;
    g.t_sent = Clock::now();
    return {g.seq, s.log.size() - 1};
  }

  void HandleResult(const rpc::Result& r, std::map<uint64_t, Gen*>& gens) {
    if (!r.error().empty()) throw Error("distributed generation failed: " + r.error());
    auto it = in_flight.find(r.step());
    if (it == in_flight.end()) return;  // from before a replan
    InFlight fl = std::move(it->second);
    in_flight.erase(it);
    if (fl.decode && static_cast<size_t>(r.timings_size()) == stages.size()) {
      const double wall = MsSince(fl.sent);
      double inner = 0;
      for (size_t i = 0; i < stages.size(); ++i) {
        st_compute[i] += r.timings(i).compute_ms();
        inner += r.timings(i).compute_ms();
        if (i + 1 < stages.size()) {
          st_link[i] += r.timings(i + 1).link_ms();
          st_bytes[i] += double(r.timings(i + 1).wire_bytes());
          inner += r.timings(i + 1).link_ms();
        }
      }
      if (stages.size() > 1) {
        st_link.back() += std::max(0.0, wall - inner);  // token ids back to the source
        st_bytes.back() += 4.0 * r.tokens_size();
      }
      st_step_ms += wall;
      st_pos += fl.pos_sum / std::max<size_t>(1, fl.parts.size());
      ++st_steps;
    }
    int k = 0;
    const size_t V = static_cast<size_t>(model->config().n_vocab);
    size_t logit_off = 0;
    for (const Part& p : fl.parts) {
      Entry& e = GetSeq(p.seq).log[p.entry];
      const float* logits = nullptr;
      if (e.want_logits) {
        if (logit_off + V > static_cast<size_t>(r.logits_size()))
          throw Error("the last stage returned fewer logits than asked for");
        logits = r.logits().data() + logit_off;
        logit_off += V;
      }
      int32_t tok = -1;
      if (e.sample) {
        if (k >= r.tokens_size() || r.sequences(k) != p.seq)
          throw Error("the last stage returned tokens for other sequences than it was sent");
        tok = r.tokens(k++);
      }
      if (e.completed) {  // a replayed step: its token was already delivered
        if (e.sample && tok != e.sampled)
          Event(fmt::format("warning: replay of sequence {} sampled {} where it had {}", p.seq, tok,
                            e.sampled));
        continue;
      }
      e.completed = true;
      e.sampled = tok;
      auto g = gens.find(p.seq);
      if (g == gens.end()) continue;
      g->second->inflight = false;
      if (logits && g->second->prompt_logits) g->second->prompt_logits->assign(logits, logits + V);
      if (e.sample)
        OnToken(*g->second, tok);
      else if (g->second->pending.empty())
        Finish(*g->second);  // max_tokens 0
    }
  }

  // Sends every queued replay step and waits until the caches are rebuilt.
  void DrainReplay() {
    std::map<uint64_t, Gen*> none;
    Run(none, 64, 1);
  }

  // The scheduling loop: sends replays first, then new steps of ready requests, keeping up to
  // `depth` steps in flight; handles faults.
  void Run(std::map<uint64_t, Gen*>& gens, int depth, int micro_batch) {
    while (true) {
      try {
        while (!replay.empty() && static_cast<int>(in_flight.size()) < std::max(depth, 16)) {
          Part p = replay.front();
          replay.pop_front();
          if (!seqs.count(p.seq)) continue;
          Send({p}, false);
        }
        if (replay.empty()) {
          while (static_cast<int>(in_flight.size()) < depth) {
            std::vector<Part> parts;
            int rows = 0;
            bool decode = true;
            for (auto& [id, g] : gens) {
              if (static_cast<int>(parts.size()) >= micro_batch || rows >= o.n_batch) break;
              if (g->done || g->inflight || g->pending.empty()) continue;
              parts.push_back(NextEntry(*g, o.n_batch - rows));
              const auto& e = GetSeq(id).log.back();
              rows += static_cast<int>(e.tokens.size());
              decode = decode && e.tokens.size() == 1 && g->sampled_once;
            }
            if (parts.empty()) break;
            Send(parts, decode);
          }
        }
        bool busy = !in_flight.empty() || !replay.empty();
        if (!busy) {
          for (auto& [id, g] : gens)
            if (!g->done) {
              // Nothing in flight and nothing to send: the request is complete.
              if (!g->inflight && g->pending.empty()) Finish(*g);
            }
          return;
        }
        if (in_flight.empty()) continue;
        const rpc::Result r = Wait(StepDeadline());
        HandleResult(r, gens);
      } catch (const Fault& f) {
        Recover(f);
      }
    }
  }
};

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
  if (m.o.n_ctx > c.n_ctx_train)
    throw Error("context length " + std::to_string(m.o.n_ctx) +
                " exceeds the model's training context " + std::to_string(c.n_ctx_train));
  m.n_ctx = m.o.n_ctx > 0 ? m.o.n_ctx : std::min(c.n_ctx_train, 4096);
  m.o.n_batch = std::max(1, m.o.n_batch);
  m.pool = std::make_unique<kernels::ThreadPool>(
      m.o.n_threads > 0 ? m.o.n_threads : int(std::max(1u, std::thread::hardware_concurrency())));
  m.model_bytes = m.model->file().file_size();
  {
    Progress bar("hashing " + model_path, m.o.quiet);
    m.model_sha = Sha256File(model_path, std::ref(bar));
  }
  m.cluster = LoadCluster(m.o.cluster_path);
  m.units = UnitsFromGguf(m.model->file());
  for (size_t d = 0; d < m.cluster.devices.size(); ++d) {
    const DeviceSpec& spec = m.cluster.devices[d];
    auto dev = std::make_unique<Impl::Device>();
    if (spec.quant)
      throw Error(m.o.cluster_path + ":" + std::to_string(spec.line) + ": device '" + spec.name +
                  "': 'quant' is not supported by distributed inference yet (workers run the "
                  "model's own encoding)");
    if (int(d) != m.cluster.source) {
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
  for (size_t i = 1; i < m.stages.size(); ++i) {
    auto& dev = *m.devs[m.stages[i].device];
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
  for (size_t i = 0; i < m.stages.size(); ++i)
    t += fmt::format("  stage {}: {}{} (compute {:.2f} ms, send {:.2f} ms, weights {}, KV {})\n", i,
                     m.StageText(i),
                     i == 0 ? "" : " @ " + m.devs[m.stages[i].device]->client->address(),
                     m.planned.comp_ms[i], m.planned.link_ms[i],
                     FormatBytes(m.planned.weight_bytes[i]), FormatBytes(m.planned.kv_bytes[i]));
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
  m.local->Release(sequence);
  for (size_t i = 1; i < m.stages.size(); ++i) {
    auto& dev = *m.devs[m.stages[i].device];
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
  n = std::clamp<int64_t>(n, 0, static_cast<int64_t>(s.tokens.size()));
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

std::vector<GenerateResult> Coordinator::GenerateMany(std::vector<Request> requests, int in_flight,
                                                      int micro_batch) {
  Impl& m = *impl_;
  m.MaybeRejoin();
  std::vector<std::unique_ptr<Impl::Gen>> gens;
  std::map<uint64_t, Impl::Gen*> by_seq;
  for (auto& rq : requests) {
    Impl::Seq& s = m.GetSeq(rq.sequence);
    if (by_seq.count(rq.sequence))
      throw Error("sequence " + std::to_string(rq.sequence) + " is in two requests at once");
    auto g = std::make_unique<Impl::Gen>();
    g->seq = rq.sequence;
    g->gp = rq.params;
    g->on_text = rq.on_text;
    g->r.n_prompt = static_cast<int>(rq.prompt.size());
    g->r.stop_reason = "length";
    if (rq.prompt.empty() && s.tokens.empty()) throw Error("the prompt is empty");
    if (static_cast<int64_t>(s.tokens.size() + rq.prompt.size()) >= m.n_ctx)
      throw Error("the prompt needs " + std::to_string(s.tokens.size() + rq.prompt.size()) +
                  " positions but the context holds " + std::to_string(m.n_ctx) +
                  " (use a larger -c)");
    g->prompt_accept = rq.prompt;
    g->prompt_logits = rq.prompt_logits;
    g->pending.assign(rq.prompt.begin(), rq.prompt.end());
    if (g->pending.empty()) {
      // Logits of the last position are not kept between requests: compute them again.
      g->pending.push_back(s.tokens.back());
      Truncate(rq.sequence, static_cast<int64_t>(s.tokens.size()) - 1);
    }
    const auto& sp = rq.params.sampling;
    g->sp.temperature = sp.temperature;
    g->sp.top_k = sp.top_k;
    g->sp.top_p = sp.top_p;
    g->sp.min_p = sp.min_p;
    g->sp.repeat_penalty = sp.repeat_penalty;
    g->sp.frequency_penalty = sp.frequency_penalty;
    g->sp.presence_penalty = sp.presence_penalty;
    g->sp.penalty_last_n = sp.penalty_last_n;
    // A random seed is drawn here, so a replay after a fault draws the same numbers.
    g->sp.seed =
        sp.seed == runtime::Sampler::kRandomSeed ? (std::random_device{}() & 0x7FFFFFFFu) : sp.seed;
    runtime::Sampler check(g->sp, m.model->config().n_vocab);  // validates the settings
    g->limit = rq.params.max_tokens < 0 ? INT64_MAX : rq.params.max_tokens;
    g->stop = std::make_unique<runtime::StopMatcher>(rq.params.stop);
    g->t_start = Clock::now();
    by_seq[rq.sequence] = g.get();
    gens.push_back(std::move(g));
  }
  m.Run(by_seq, std::max(1, in_flight), std::max(1, micro_batch));
  std::vector<GenerateResult> out;
  for (auto& g : gens) out.push_back(std::move(g->r));
  return out;
}

ClusterReport Coordinator::Report() const {
  const Impl& m = *impl_;
  ClusterReport r;
  r.objective = m.o.objective == Objective::kLatency ? "latency" : "throughput";
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
    if (i < m.st_compute.size()) {
      s.compute_ms = m.st_compute[i] / n;
      s.link_ms = m.st_link[i] / n;
      s.wire_bytes = m.st_bytes[i] / n;
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
