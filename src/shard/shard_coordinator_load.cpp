// The coordinator under a changing load (`serve --cluster`): how many steps to keep in flight
// with how many sequences each, and which plan serves the number of streams there are now.
//
// One plan cannot serve every load well. A single stream waits for each token's round trip, so
// it wants the plan of least latency; many streams keep every stage busy, so they want the plan
// whose slowest stage is fastest. With n streams as m micro-batches the round of n tokens takes
// max(step latency, m x slowest stage) (CycleMs), with the costs of a step of ceil(n / m)
// sequences; the planner's SolveCycle finds the plan of least round time for each m.
#include <fmt/format.h>

#include <algorithm>

#include "shard/shard_coordinator_impl.h"

namespace es::shard {

uint64_t Coordinator::Impl::AvailableMask() const {
  uint64_t avail = 0;
  for (size_t d = 0; d < devs.size(); ++d)
    if (Available(int(d))) avail |= 1ull << d;
  return avail;
}

const Problem& Coordinator::Impl::StepProblem(int k) const {
  k = std::max(1, k);
  // Built once per batch size while the same devices are up (budgets of lost ones are 0).
  if (const uint64_t avail = AvailableMask(); avail != step_avail) {
    step_problems.clear();
    step_avail = avail;
  }
  auto [it, fresh] = step_problems.try_emplace(k);
  if (fresh) {
    it->second = BuildProblem(cluster, units, {Objective::kLatency, n_ctx, k}, o.n_batch);
    const Problem mem = MakeProblem(n_ctx);
    it->second.kv_bytes = mem.kv_bytes;
    it->second.budget_bytes = mem.budget_bytes;
  }
  return it->second;
}

namespace {

// The (steps m, sequences per step k) worth trying for n streams: m up to twice the stages
// (more only splits the sequences finer than the stages can overlap), and of the m giving the
// same k only the smallest (more steps of the same batch are never better).
std::vector<std::pair<int, int>> Splits(int n, int stages) {
  std::vector<std::pair<int, int>> v;
  const int max_steps = std::max(1, std::min(n, 2 * std::max(1, stages)));
  for (int m = 1; m <= max_steps; ++m) {
    const int k = (n + m - 1) / m;
    if (v.empty() || v.back().second != k) v.emplace_back(m, k);
  }
  return v;
}

constexpr double kSwitchGain = 1.1;  // predicted tokens/s of the new plan over the current one

}  // namespace

Coordinator::Impl::LoadChoice Coordinator::Impl::BestPace(const std::vector<Stage>& st,
                                                          int n) const {
  LoadChoice best;
  best.stages = st;
  for (const auto& [m, k] : Splits(n, int(st.size()))) {
    const double cycle = CycleMs(Evaluate(StepProblem(k), st), m);
    const double tps = cycle > 0 ? 1000.0 * n / cycle : 0;
    if (tps > best.tokens_per_s) best.tokens_per_s = tps, best.in_flight = m, best.micro_batch = k;
  }
  return best;
}

const Coordinator::Impl::LoadChoice& Coordinator::Impl::PlanForStreams(int n) {
  auto [it, fresh] = load_plans.try_emplace({n, AvailableMask()});
  if (!fresh) return it->second;
  LoadChoice& best = it->second;
  // Interactive budgets: these searches run between serving steps.
  SolveOptions so;
  so.time_limit_ms = 50;
  so.max_states = 50000;
  for (const auto& [m, k] : Splits(n, int(devs.size()))) {
    const Solution s = SolveCycle(StepProblem(k), m, so);
    if (!s.feasible) continue;
    // The plan's own best pace may use another m than the one it was found for.
    LoadChoice c = BestPace(s.stages, n);
    if (c.tokens_per_s > best.tokens_per_s) {
      c.method = fmt::format("planned for {} stream(s): {} step(s) in flight x {} sequence(s), {}",
                             n, c.in_flight, c.micro_batch, s.method);
      best = std::move(c);
    }
  }
  return best;
}

bool Coordinator::Impl::FollowLoad(int n) {
  if (!o.follow_load || !plan_error.empty() || n < 1) return false;
  if (manual && (!o.placement.empty() || !o.baseline.empty())) return false;
  n = std::clamp(n, 1, std::max(1, o.plan_batch));
  if (n == checked_streams) return false;
  checked_streams = n;
  const LoadChoice& want = PlanForStreams(n);
  if (want.stages.empty() || want.stages == stages) return false;
  const LoadChoice now = BestPace(stages, n);
  // A switch reloads shards and replays the live sequences once: worth it for a load that holds
  // (the server waits --load-hold before asking), unless the gain is within the cost model's
  // error.
  if (want.tokens_per_s < kSwitchGain * now.tokens_per_s) return false;
  const int from = planned_streams;
  planned_streams = n;
  // Idle sequences (a slot's cached prefix) start over rather than being replayed.
  for (auto& [id, s] : seqs)
    if (!live.count(id)) s = Seq{};
  stages = want.stages;
  method = want.method;
  planned = Evaluate(MakeProblem(n_ctx), stages);
  LoadWithRetry();
  ++replans;
  Event(fmt::format(
      "replanned for {} stream(s) (was {}): {:.1f} instead of {:.1f} tokens/s predicted: {}", n,
      from, want.tokens_per_s, now.tokens_per_s, PlanLine()));
  QueueReplay();
  return true;
}

Coordinator::Pace Coordinator::PaceFor(int active) const {
  const Impl& m = *impl_;
  const int n = std::max(1, active);
  if (m.paces_epoch != m.epoch) m.paces.clear(), m.paces_epoch = m.epoch;
  auto it = m.paces.find(n);
  if (it == m.paces.end()) it = m.paces.emplace(n, m.BestPace(m.stages, n)).first;
  return {it->second.in_flight, it->second.micro_batch};
}

void Coordinator::SetLoad(int streams) {
  impl_->load_streams = streams;
}

}  // namespace es::shard
