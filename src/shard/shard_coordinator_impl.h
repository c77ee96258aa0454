// The coordinator's state and its methods, shared by shard_coordinator.cpp (the public API and
// the step driver) and shard_coordinator_plan.cpp (devices, plans, streams, monitors). Internal
// to src/shard.
#pragma once
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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
#include "shard/shard_coordinator.h"
#include "shard/shard_dist_stage.h"
#include "shard/shard_placement.h"
#include "shard/shard_profile.h"
#include "shard/shard_rpc.h"

namespace es::shard {

namespace rpc = edgeshard::rpc;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace coord {

inline double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

inline double WallMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A fault seen by the driver loop: a lost worker, a broken stream or a step past its deadline.
struct Fault {
  std::string reason;
  bool deadline = false;
};

}  // namespace coord

using coord::Fault;
using coord::MsSince;
using coord::WallMs;

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

  // The current plan. Epochs start at the wall clock in microseconds, not at 0: a worker ends
  // the streams of an older epoch when a plan loads, and a coordinator started after another one
  // (a restarted server) must not reuse its predecessor's numbers, or steps still travelling
  // between workers from the old plan would reach the new one's caches.
  uint64_t epoch = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count());
  std::vector<Stage> stages;
  // How the plan runs: one hop per worker, the source's first. A host's stage and its GPU's are
  // one hop: its worker (or the source) runs both ranges, the GPU's on its Vulkan device.
  struct Hop {
    int device = 0;                   // the host: a worker's device, or the source
    int first = 0, last = 0;          // units
    int gpu = -1;                     // the GPU device among the hop's stages, -1: none
    int gpu_first = 0, gpu_last = 0;  // its units
  };
  std::vector<Hop> hops;
  std::vector<int> stage_hop;  // [stage]: its hop
  void MakeHops();
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
    uint64_t uid = 0;  // tells a step's part apart from a later entry at the same index
    int64_t pos = 0;
    std::vector<int32_t> tokens;
    bool sample = false;
    std::vector<int32_t> accept;
    std::optional<runtime::SamplerParams> sampling;
    bool want_logits = false;
    int n_logprobs = 0;  // as the wire carries it: 0 none, k + 1 for k alternatives
    bool completed = false;
    int32_t sampled = -1;
  };
  struct Seq {
    std::vector<int32_t> tokens;  // positions issued to the stages
    std::vector<Entry> log;
    // Kept tokens to evaluate again from position 0 before the next prompt: a Truncate went
    // further back than the stages' sliding-window rings reach.
    std::vector<int32_t> redo;
  };
  std::map<uint64_t, Seq> seqs;
  uint64_t next_seq = 1, next_step = 1, next_uid = 1;

  // Generation state of one request.
  struct Gen {
    uint64_t seq = 0;
    GenerateParams gp;
    runtime::SamplerParams sp;
    std::function<bool(std::string_view)> on_text;
    std::vector<int32_t> prompt_accept;
    std::deque<int32_t> pending;
    std::vector<float>* prompt_logits = nullptr;  // filled by the prompt's last step
    int n_logprobs = -1;
    std::function<void(const runtime::TokenLogprob&)> on_logprob;
    std::vector<int32_t> shown_tokens;
    bool sampler_sent = false, inflight = false, done = false, sampled_once = false;
    int64_t limit = 0;
    std::unique_ptr<runtime::StopMatcher> stop;
    GenerateResult r;
    Clock::time_point t_start, t_sent;
  };
  // One sequence's entry in a step. A Truncate or Release while the step travels (a slot taken
  // by a new request during a replay) makes it stale: its result is then skipped, using what
  // the step asked for (sample, logits, log-probabilities), which Send records here.
  struct Part {
    uint64_t seq = 0;
    size_t entry = 0;
    uint64_t uid = 0;
    bool sample = false, want_logits = false, logprobs = false;
  };
  // The entry a part names, or null when the sequence no longer holds it.
  Entry* Live(const Part& p) {
    auto it = seqs.find(p.seq);
    if (it == seqs.end() || p.entry >= it->second.log.size()) return nullptr;
    Entry& e = it->second.log[p.entry];
    return e.uid == p.uid ? &e : nullptr;
  }
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
  // Continuous generation (Begin/Pump): the generations not yet returned, and why the cluster
  // has no plan when recovery failed ("" while it has one).
  std::map<uint64_t, std::unique_ptr<Gen>> live;
  std::map<uint64_t, Gen*> live_index;
  std::string plan_error;
  // The current plan's picture for Status(), drawn once per plan (epoch), not per poll.
  mutable std::string svg;
  mutable uint64_t svg_epoch = 0;

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

  // A GPU is as available as its host's worker.
  bool Available(int d) const { return !devs[cluster.Host(d)]->lost.load(); }

  // Errors start with the worker's name; messages about it name it once.
  static std::string StripWho(const Device& dev, const std::string& err);
  std::string InfeasibleMessage(const Problem& p) const;
  Problem MakeProblem(int ctx) const;
  bool manual = true;  // placement/baseline still in force (until a fault)

  // Following the load (shard_coordinator_load.cpp).
  struct LoadChoice {
    std::vector<Stage> stages;  // empty: nothing fits
    int in_flight = 1, micro_batch = 1;
    double tokens_per_s = 0;
    std::string method;
  };
  int planned_streams = 0;  // the load the current plan was made for (follow_load)
  int checked_streams = 0;  // the last load FollowLoad looked at
  int load_streams = 0;     // the load the server reports (SetLoad; 0: none yet)
  std::map<std::pair<int, uint64_t>, LoadChoice> load_plans;  // (streams, devices available)
  mutable std::map<int, LoadChoice> paces;                    // current plan: streams -> pace
  mutable uint64_t paces_epoch = 0;
  mutable std::map<int, Problem> step_problems;  // StepProblem by k, for the devices in step_avail
  mutable uint64_t step_avail = 0;
  uint64_t AvailableMask() const;  // bit d: device d is not lost
  // Costs of one step of k sequences (memory: every slot's caches, as the plan keeps them).
  const Problem& StepProblem(int k) const;
  LoadChoice BestPace(const std::vector<Stage>& st, int n) const;
  const LoadChoice& PlanForStreams(int n);
  bool FollowLoad(int n);
  void Plan();
  // Blocks [first, last) of a stage's units: unit 0 is the embedding, the last the head.
  std::pair<int, int> Blocks(const Stage& s) const;
  std::string StageText(size_t i) const;
  void LoadPlan();
  void OpenStreams();
  void CancelStreams();
  void Teardown();
  void StartMonitors();
  void Monitor(size_t d);
  // Probes every worker of the plan (after a broken stream or a late step). Workers that do not
  // answer, or answer with another epoch (restarted), are marked lost. Returns their names.
  std::vector<int> FindLost();
  std::vector<int> LostInPlan() const;

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
    fl.decode = decode;
    for (Part p : parts) {
      const Entry& e = GetSeq(p.seq).log[p.entry];
      p.sample = e.sample;
      p.want_logits = e.want_logits;
      p.logprobs = e.n_logprobs > 0;
      fl.parts.push_back(p);
      rpc::Segment* seg = st.add_segments();
      seg->set_sequence(p.seq);
      seg->set_pos(e.pos);
      seg->set_n_tokens(static_cast<int>(e.tokens.size()));
      seg->set_sample(e.sample);
      seg->set_want_logits(e.want_logits);
      seg->set_n_logprobs(e.n_logprobs);
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
    tm.set_stage(cluster.devices[hops[0].device].name);
    tm.set_compute_ms(out.compute_ms);
    in_flight[st.id()] = std::move(fl);
    if (hops.size() == 1) {
      rpc::Result r;
      r.set_step(st.id());
      StageExecutor::Fill(out, r);
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
      if (broken.empty()) broken = "sending to " + devs[hops[1].device]->client->Who() + " failed";
    }
  }

  // Waits for the next result until `until`; throws Fault when a worker is lost, a stream
  // breaks or the step deadline passes.
  std::optional<rpc::Result> Wait(Clock::time_point deadline,
                                  Clock::time_point until = Clock::time_point::max()) {
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
      const auto now = Clock::now();
      if (now >= deadline) throw Fault{"a step is past its deadline", true};
      if (now >= until) return std::nullopt;
      q_cv.wait_for(lock, std::min<Clock::duration>(milliseconds(20), until - now));
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
    Plan();
    LoadWithRetry();
    ++replans;
    Event(fmt::format("replanned on {} device(s): {}", stages.size(), PlanLine()));
    QueueReplay();
  }

  // Loads the plan just made. A worker that cannot load it because it is gone or stalled is
  // marked lost and the plan is made again without it.
  void LoadWithRetry() {
    for (int attempt = 0;; ++attempt) {
      try {
        LoadPlan();
        return;
      } catch (const RpcError& e) {
        if (!e.unreachable() || attempt > int(devs.size())) throw;
        const auto more = FindLost();
        if (more.empty()) throw;
        for (int d : more) Event(fmt::format("lost {} while replanning", devs[d]->client->Who()));
        Plan();
      }
    }
  }

  void QueueReplay() {
    in_flight.clear();
    replay.clear();
    for (auto& [id, s] : seqs)
      for (size_t i = 0; i < s.log.size(); ++i) replay.push_back({id, i, s.log[i].uid});
  }

  std::string PlanLine() const {
    std::string t;
    for (size_t i = 0; i < stages.size(); ++i) t += (i ? " -> " : "") + StageText(i);
    return t;
  }

  // A device that came back is taken into the plan at the start of the next request (`drain`:
  // rebuild the caches now), or between steps while generations run (Pump replays them).
  void MaybeRejoin(bool drain = true) {
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
    LoadWithRetry();
    ++replans;
    Event(fmt::format("replanned on {} device(s): {}", stages.size(), PlanLine()));
    QueueReplay();
    if (drain) DrainReplay();
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
    const bool shown =
        std::find(g.shown_tokens.begin(), g.shown_tokens.end(), id) != g.shown_tokens.end();
    auto fed = g.stop->Feed(tok->TokenToPiece(id, shown));
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
    e.n_logprobs = e.sample && g.n_logprobs >= 0 ? g.n_logprobs + 1 : 0;
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
    e.uid = next_uid++;
    s.log.push_back(std::move(e));
    g.inflight = true;
    g.t_sent = Clock::now();
    return {g.seq, s.log.size() - 1, s.log.back().uid};
  }

  void HandleResult(const rpc::Result& r, std::map<uint64_t, Gen*>& gens) {
    if (!r.error().empty()) throw Error("distributed generation failed: " + r.error());
    auto it = in_flight.find(r.step());
    if (it == in_flight.end()) return;  // from before a replan
    InFlight fl = std::move(it->second);
    in_flight.erase(it);
    if (fl.decode && static_cast<size_t>(r.timings_size()) == hops.size()) {
      const double wall = MsSince(fl.sent);
      double inner = 0;
      for (size_t i = 0; i < hops.size(); ++i) {
        st_compute[i] += r.timings(i).compute_ms();
        inner += r.timings(i).compute_ms();
        if (i + 1 < hops.size()) {
          st_link[i] += r.timings(i + 1).link_ms();
          st_bytes[i] += double(r.timings(i + 1).wire_bytes());
          inner += r.timings(i + 1).link_ms();
        }
      }
      if (hops.size() > 1) {
        st_link.back() += std::max(0.0, wall - inner);  // token ids back to the source
        st_bytes.back() += 4.0 * r.tokens_size();
      }
      st_step_ms += wall;
      st_pos += fl.pos_sum / std::max<size_t>(1, fl.parts.size());
      ++st_steps;
    }
    int k = 0, k_lp = 0;
    const size_t V = static_cast<size_t>(model->config().n_vocab);
    size_t logit_off = 0;
    for (const Part& p : fl.parts) {
      const float* logits = nullptr;
      if (p.want_logits) {
        if (logit_off + V > static_cast<size_t>(r.logits_size()))
          throw Error("the last stage returned fewer logits than asked for");
        logits = r.logits().data() + logit_off;
        logit_off += V;
      }
      int32_t tok = -1;
      if (p.sample) {
        if (k >= r.tokens_size() || r.sequences(k) != p.seq)
          throw Error("the last stage returned tokens for other sequences than it was sent");
        tok = r.tokens(k++);
      }
      const rpc::TokenLogprobs* lp = nullptr;
      if (p.sample && p.logprobs) {
        if (k_lp >= r.logprobs_size())
          throw Error("the last stage returned fewer log-probabilities than asked for");
        lp = &r.logprobs(k_lp++);
      }
      Entry* live_entry = Live(p);
      if (!live_entry) continue;  // truncated or released while the step travelled
      Entry& e = *live_entry;
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
      if (g->second->done) continue;  // cancelled while the step travelled
      if (logits && g->second->prompt_logits) g->second->prompt_logits->assign(logits, logits + V);
      // The end-of-generation token is not part of the output: no log-probability for it.
      if (lp && g->second->on_logprob && (g->second->gp.ignore_eos || !this->tok->IsEog(tok))) {
        runtime::TokenLogprob t{tok, lp->logprob(), {}};
        for (int i = 0; i < lp->top_tokens_size() && i < lp->top_logprobs_size(); ++i)
          t.top.emplace_back(lp->top_tokens(i), lp->top_logprobs(i));
        g->second->on_logprob(t);
      }
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

  // Sends replays first, then new steps of ready requests, keeping up to `depth` steps in flight.
  void SendReady(std::map<uint64_t, Gen*>& gens, int depth, int micro_batch) {
    while (!replay.empty() && static_cast<int>(in_flight.size()) < std::max(depth, 16)) {
      Part p = replay.front();
      replay.pop_front();
      if (!Live(p)) continue;  // truncated or released since the replay was queued
      Send({p}, false);
    }
    if (!replay.empty()) return;
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

  // Nothing in flight and nothing to send: every request still open is complete.
  void FinishIdle(std::map<uint64_t, Gen*>& gens) {
    for (auto& [id, g] : gens)
      if (!g->done && !g->inflight && g->pending.empty()) Finish(*g);
  }

  // The scheduling loop until every request of `gens` is done; handles faults.
  void Run(std::map<uint64_t, Gen*>& gens, int depth, int micro_batch) {
    while (true) {
      try {
        SendReady(gens, depth, micro_batch);
        if (in_flight.empty() && replay.empty()) return FinishIdle(gens);
        if (in_flight.empty()) continue;
        if (auto r = Wait(StepDeadline())) HandleResult(*r, gens);
      } catch (const Fault& f) {
        Recover(f);
      }
    }
  }

  // One round of continuous generation: sends what is ready and handles results until `until`.
  void PumpLive(int depth, int micro_batch, Clock::time_point until) {
    try {
      MaybeRejoin(false);
      FollowLoad(load_streams);
      while (true) {
        SendReady(live_index, depth, micro_batch);
        if (in_flight.empty() && replay.empty()) return FinishIdle(live_index);
        if (in_flight.empty()) continue;
        auto r = Wait(StepDeadline(), until);
        if (!r) return;
        HandleResult(*r, live_index);
      }
    } catch (const Fault& f) {
      Recover(f);
    }
  }
};

}  // namespace es::shard
