// The coordinator's devices and plans: planning, loading shards, opening and closing streams,
// health monitors and finding lost workers.
#include <fmt/format.h>

#include "shard/shard_coordinator_impl.h"

namespace es::shard {

// Errors start with the worker's name; messages about it name it once.
std::string Coordinator::Impl::StripWho(const Device& dev, const std::string& err) {
  const std::string who = dev.client->Who() + ": ";
  return err.rfind(who, 0) == 0 ? err.substr(who.size()) : err;
}

std::string Coordinator::Impl::InfeasibleMessage(const Problem& p) const {
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
    if (devs[d]->lost) {
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

Problem Coordinator::Impl::MakeProblem(int ctx) const {
  Problem p =
      BuildProblem(cluster, units, {o.objective, ctx, std::max(1, o.plan_batch)}, o.n_batch);
  for (int d = 0; d < p.n_devices(); ++d)
    if (!Available(d)) p.budget_bytes[d] = 0;
  return p;
}

void Coordinator::Impl::Plan() {
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
  } else if (o.follow_load) {
    const LoadChoice& c = PlanForStreams(std::max(1, planned_streams));
    if (c.stages.empty()) throw Error(InfeasibleMessage(p));
    stages = c.stages;
    method = c.method;
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
std::pair<int, int> Coordinator::Impl::Blocks(const Stage& s) const {
  const int L = model->config().n_layer;
  return {std::clamp(s.first - 1, 0, L), std::clamp(s.last - 1, 0, L)};
}

std::string Coordinator::Impl::StageText(size_t i) const {
  const Stage& s = stages[i];
  auto [b0, b1] = Blocks(s);
  std::string t = cluster.devices[s.device].name + ": ";
  if (cluster.devices[s.device].gpu_of >= 0)
    t = fmt::format("{} (vulkan{} of {}): ", cluster.devices[s.device].name,
                    cluster.devices[s.device].gpu,
                    cluster.devices[cluster.devices[s.device].gpu_of].name);
  if (s.first == 0) t += "embedding, ";
  t += b1 > b0 ? fmt::format("blocks {}..{}", b0, b1 - 1) : "no blocks";
  if (s.last == int(units.units.size())) t += ", head + sampling";
  return t;
}

void Coordinator::Impl::MakeHops() {
  hops.clear();
  stage_hop.clear();
  for (const Stage& st : stages) {
    const int host = cluster.Host(st.device);
    if (hops.empty() || hops.back().device != host) hops.push_back({host, st.first, st.first});
    Hop& h = hops.back();
    h.last = st.last;
    if (st.device != host) h.gpu = st.device, h.gpu_first = st.first, h.gpu_last = st.last;
    stage_hop.push_back(int(hops.size()) - 1);
  }
}

void Coordinator::Impl::LoadPlan() {
  Teardown();
  ++epoch;
  MakeHops();
  for (auto& d : devs) d->in_plan = false;
  const int n_units = int(units.units.size());
  for (size_t i = 1; i < hops.size(); ++i) {
    const Hop& hop = hops[i];
    Device& dev = *devs[hop.device];
    auto [b0, b1] = Blocks({hop.device, hop.first, hop.last});
    rpc::LoadShardRequest req;
    req.set_epoch(epoch);
    req.set_model_sha256(model_sha);
    req.set_model_bytes(model_bytes);
    req.set_first_layer(b0);
    req.set_last_layer(b1);
    req.set_has_head(i + 1 == hops.size());
    req.set_n_ctx(n_ctx);
    req.set_cache_type_k(TypeName(o.kv_type.k));
    req.set_cache_type_v(TypeName(o.kv_type.v));
    req.set_max_batch(o.n_batch);
    req.set_wire(o.wire_f32 ? rpc::WIRE_F32 : rpc::WIRE_F16);
    // A host whose GPU the cluster declares runs on it what the plan says (nothing, when the
    // GPU has no stage); otherwise the worker's own --gpu-layers apply.
    bool declared = false;
    for (const DeviceSpec& d : cluster.devices) declared = declared || d.gpu_of == hop.device;
    req.set_use_gpu(declared);
    if (hop.gpu >= 0) {
      auto [g0, g1] = Blocks({hop.gpu, hop.gpu_first, hop.gpu_last});
      req.set_gpu_device(cluster.devices[hop.gpu].gpu);
      req.set_gpu_first_layer(g0);
      req.set_gpu_last_layer(g1);
      req.set_gpu_head(hop.gpu_last == n_units);
    } else {
      req.set_gpu_first_layer(b1);
      req.set_gpu_last_layer(b1);
    }
    if (i + 1 < hops.size()) {
      const Device& next = *devs[hops[i + 1].device];
      req.set_next_address(next.client->address());
      req.set_next_name(next.client->name());
    }
    // The load's deadline allows for a slow disk; a worker stalled since the plan was made
    // (SIGSTOP, a hung host) fails this quick probe instead of holding every request that long.
    dev.client->Health(o.health_deadline);
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
      for (size_t s = 0; s < stages.size(); ++s)
        if (stage_hop[s] == int(i))
          Log(fmt::format("loaded {} in {:.0f} ms ({})", StageText(s), reply.load_ms(),
                          FormatBytes(double(reply.weight_bytes()))));
  }
  StageSpec spec;
  const Hop& mine = hops[0];
  std::tie(spec.first_layer, spec.last_layer) = Blocks({mine.device, mine.first, mine.last});
  spec.embed = true;
  spec.head = hops.size() == 1;
  spec.n_ctx = n_ctx;
  spec.kv_type = o.kv_type;
  spec.max_batch = o.n_batch;
  // The source's own GPU, when the plan gives it a range; its other blocks take the CPU layout.
  local.reset();
  int g0 = spec.last_layer, g1 = spec.last_layer;
  bool gpu_head = false;
  if (mine.gpu >= 0) {
    std::tie(g0, g1) = Blocks({mine.gpu, mine.gpu_first, mine.gpu_last});
    gpu_head = mine.gpu_last == n_units;
  }
  model->OffloadRangeToGpu(mine.gpu >= 0 ? cluster.devices[mine.gpu].gpu : 0, g0, g1, gpu_head);
  model->PrepareLayers(spec.first_layer, g0, spec.head && !gpu_head);
  model->PrepareLayers(g1, spec.last_layer, false);
  local = std::make_unique<StageExecutor>(*model, spec, *pool);
  mon_cv.notify_all();
  OpenStreams();
  st_compute.assign(hops.size(), 0);
  st_link.assign(hops.size(), 0);
  st_bytes.assign(hops.size(), 0);
  st_step_ms = st_pos = 0;
  st_steps = 0;
}

void Coordinator::Impl::OpenStreams() {
  if (hops.size() < 2) return;
  Device& last = *devs[hops.back().device];
  Device& first = *devs[hops[1].device];
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

void Coordinator::Impl::CancelStreams() {
  std::lock_guard<std::mutex> lock(stream_mu);
  if (upstream) upstream->ctx.TryCancel();
  if (results) results->ctx.TryCancel();
}

void Coordinator::Impl::Teardown() {
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

void Coordinator::Impl::StartMonitors() {
  for (size_t d = 0; d < devs.size(); ++d) {
    if (!devs[d]->client) continue;
    monitors.emplace_back([this, d] { Monitor(d); });
  }
}

void Coordinator::Impl::Monitor(size_t d) {
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
std::vector<int> Coordinator::Impl::FindLost() {
  std::vector<int> lost;
  for (size_t i = 1; i < hops.size(); ++i) {
    const int d = hops[i].device;
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

std::vector<int> Coordinator::Impl::LostInPlan() const {
  std::vector<int> r;
  for (size_t i = 1; i < hops.size(); ++i)
    if (devs[hops[i].device]->lost) r.push_back(hops[i].device);
  return r;
}

}  // namespace es::shard
