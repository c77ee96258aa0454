#include "shard/shard_planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <queue>
#include <unordered_map>

#include "shard/shard_planner_search.h"

namespace es::shard {
namespace {

using namespace planner;

// ---- latency -------------------------------------------------------------------------------

// Relaxation of the latency problem: devices may repeat (each range must still fit its device
// alone). With prices, every byte a range occupies on device d costs price[d] ms more: the
// Lagrangian relaxation of the memory budgets, which stops the relaxation from reusing a fast
// device's memory for free. H[c][d]: cheapest run of units [c, U) and the token's return when d
// starts at c (its incoming link paid).
struct Relaxed {
  std::vector<std::vector<double>> H;
  std::vector<std::vector<int>> end;   // [c][d]: the end of d's range on the cheapest run
  std::vector<std::vector<int>> succ;  // [e][d]: the next device after a cut at e
};

Relaxed RelaxedCostToGo(const Tables& t, const std::vector<double>& price) {
  const Problem& p = t.p;
  Relaxed r;
  r.H.assign(t.U, std::vector<double>(t.D, kInf));
  r.end.assign(t.U, std::vector<int>(t.D, -1));
  r.succ.assign(t.U, std::vector<int>(t.D, -1));
  std::vector<std::vector<double>> next(t.U, std::vector<double>(t.D, kInf));  // [e][d]: hop + H
  for (int c = t.U - 1; c >= 0; --c) {
    for (int d = 0; d < t.D; ++d) {
      if ((c == 0) != (d == p.source)) continue;
      for (int e = c + 1; e <= t.emax[d][c]; ++e) {
        const double v =
            t.Comp(d, c, e) + price[d] * t.Mem(d, c, e) + (e == t.U ? t.Ret(d) : next[e][d]);
        if (v < r.H[c][d]) r.H[c][d] = v, r.end[c][d] = e;
      }
    }
    if (c == 0) break;
    for (int d = 0; d < t.D; ++d)
      for (int d2 = 0; d2 < t.D; ++d2)
        if (d2 != d && d2 != p.source && r.H[c][d2] < kInf &&
            t.Hop(c - 1, d, d2) + r.H[c][d2] < next[c][d])
          next[c][d] = t.Hop(c - 1, d, d2) + r.H[c][d2], r.succ[c][d] = d2;
  }
  return r;
}

// Lower bound on finishing units [e, U) with fresh devices (not in `used`): memory cannot be
// reused, so the bytes still to place go to the free devices cheapest per byte first (a
// fractional knapsack), and every further device costs at least the cheapest hop. A device
// takes at most its budget, and under a stage cap at most the bytes it runs within the cap.
struct MemoryBound {
  std::vector<std::vector<int>> by_rate;  // [e]: devices by ascending ms per byte on units >= e
  std::vector<std::vector<int>> by_room;  // [e]: devices by descending room
  std::vector<std::vector<double>> rate;  // [e][d]
  std::vector<std::vector<double>> room;  // [e][d]: bytes device d can take of units >= e
  std::vector<double> bytes_left;         // [e]: least bytes units >= e can occupy
  double min_hop = kInf, min_ret = kInf;
  const Tables& t;

  explicit MemoryBound(const Tables& tt) : t(tt) {
    const Problem& p = t.p;
    rate.assign(t.U + 1, std::vector<double>(t.D, kInf));
    room.assign(t.U + 1, std::vector<double>(t.D, 0));
    by_rate.resize(t.U + 1);
    by_room.resize(t.U + 1);
    bytes_left.assign(t.U + 1, 0);
    for (int e = t.U - 1; e >= 0; --e) {
      double least = kInf;
      for (int d = 0; d < t.D; ++d) {
        const double m = p.MemBytes(d, e);
        least = std::min(least, m);
        rate[e][d] = std::min(rate[e + 1][d], m > 0 ? p.comp_ms[d][e] / m : kInf);
      }
      bytes_left[e] = bytes_left[e + 1] + least;
    }
    for (int e = 0; e <= t.U; ++e) {
      for (int d = 0; d < t.D; ++d) {
        const double r = rate[e][d];
        room[e][d] = r > 0 && r < kInf ? std::min(p.budget_bytes[d], t.cap / r) : p.budget_bytes[d];
      }
      by_rate[e].resize(t.D);
      std::iota(by_rate[e].begin(), by_rate[e].end(), 0);
      by_room[e] = by_rate[e];
      std::sort(by_rate[e].begin(), by_rate[e].end(),
                [&](int a, int b) { return rate[e][a] < rate[e][b]; });
      std::sort(by_room[e].begin(), by_room[e].end(),
                [&](int a, int b) { return room[e][a] > room[e][b]; });
    }
    for (int a = 0; a < t.D; ++a) {
      if (a == p.source) continue;
      min_ret = std::min(min_ret, t.Ret(a));
      for (int b = 0; b < t.D; ++b)
        for (int u = 0; b != a && b != p.source && u + 1 < t.U; ++u)
          min_hop = std::min(min_hop, t.Hop(u, a, b));
    }
  }
  // Cost after the hop into the first fresh device at cut e (kInf: the free memory is short).
  double Tail(int e, uint64_t used) const {
    double need = bytes_left[e], ms = 0;
    for (int d : by_rate[e]) {
      if (Has(used, d) || need <= 0) continue;
      const double take = std::min(need, room[e][d]);
      ms += take * (rate[e][d] == kInf ? 0 : rate[e][d]);
      need -= take;
    }
    if (need > 0) return kInf;
    int devices = 0;  // the fewest fresh devices with room enough
    need = bytes_left[e];
    for (int d : by_room[e])
      if (!Has(used, d) && need > 0) need -= room[e][d], ++devices;
    return ms + (devices - 1) * min_hop + min_ret;
  }
};

// The three admissible estimates of the cost still to come; A* takes the largest.
struct Bounds {
  Relaxed plain;               // prices 0
  Relaxed priced;              // Lagrangian prices (empty H: none)
  std::vector<double> charge;  // [d]: price[d] * budget[d]
  double total_charge = 0;
  MemoryBound memory;

  explicit Bounds(const Tables& t)
      : plain(RelaxedCostToGo(t, std::vector<double>(t.D, 0))), memory(t) {}
  // Device d2 starts at cut e; `charged` sums the charges of the devices used before it. The
  // priced bound: any real completion uses d2 and fresh devices, each within its budget, so
  // its cost is at least its priced cost less their charges.
  double Estimate(int e, int d2, double charged, double tail) const {
    double h = std::max(plain.H[e][d2], tail);
    if (!priced.H.empty()) h = std::max(h, priced.H[e][d2] - (total_charge - charged));
    return h;
  }
};

// Maximises the Lagrangian bound over memory prices by subgradient steps (Polyak's rule with
// `upper`, a known plan's cost). Keeps the best prices in b.
void PriceMemory(const Tables& t, Bounds& b, double upper, int iters) {
  const Problem& p = t.p;
  std::vector<double> price(t.D, 0), g(t.D);
  double best = b.plain.H[0][p.source], theta = 1;
  int stale = 0;
  Relaxed r = b.plain;
  for (int k = 0; k < iters && theta > 1e-3 && best < upper * (1 - 1e-9); ++k) {
    // Memory the cheapest relaxed run puts on each device, against its budget.
    std::fill(g.begin(), g.end(), 0.0);
    for (int c = 0, d = p.source; c < t.U;) {
      const int e = r.end[c][d];
      g[d] += t.Mem(d, c, e);
      if (e == t.U) break;
      d = r.succ[e][d], c = e;
    }
    double norm = 0;
    for (int d = 0; d < t.D; ++d) {
      g[d] -= p.budget_bytes[d];
      if (price[d] == 0 && g[d] < 0) g[d] = 0;
      norm += g[d] * g[d];
    }
    if (norm == 0) break;  // the relaxed run respects every budget: the bound cannot rise
    double bound = r.H[0][p.source];
    for (int d = 0; d < t.D; ++d) bound -= price[d] * p.budget_bytes[d];
    const double step = theta * ((upper < kInf ? upper : 1.1 * std::abs(bound) + 1) - bound) / norm;
    for (int d = 0; d < t.D; ++d) price[d] = std::max(0.0, price[d] + step * g[d]);
    r = RelaxedCostToGo(t, price);
    if (r.H[0][p.source] == kInf) break;
    bound = r.H[0][p.source];
    for (int d = 0; d < t.D; ++d) bound -= price[d] * p.budget_bytes[d];
    if (bound > best) {
      best = bound, stale = 0;
      b.priced = r;
      b.charge.resize(t.D);
      b.total_charge = 0;
      for (int d = 0; d < t.D; ++d)
        b.charge[d] = price[d] * p.budget_bytes[d], b.total_charge += b.charge[d];
    } else if (++stale == 4) {
      theta /= 2, stale = 0;
    }
  }
}

struct LatNode {
  double g;
  int c, d;  // device d runs units from c on (c == U: a finished plan)
  uint64_t used;
  int parent;
  double charged;  // summed Lagrangian charges of `used`
};

std::vector<Stage> Unwind(const std::vector<LatNode>& nodes, int goal) {
  std::vector<Stage> st;
  for (int i = goal; nodes[i].parent >= 0; i = nodes[i].parent) {
    const LatNode& prev = nodes[nodes[i].parent];
    st.push_back({prev.d, prev.c, nodes[i].c});
  }
  std::reverse(st.begin(), st.end());
  return st;
}

// Children of a node: every end of its range, then every next device; emit(child, f = g + h).
template <typename Emit>
void Expand(const Tables& t, const Bounds& b, const LatNode& n, Emit emit) {
  for (int e = n.c + 1; e <= t.emax[n.d][n.c]; ++e) {
    const double ge = n.g + t.Comp(n.d, n.c, e);
    if (e == t.U) {
      if (t.Ret(n.d) < kInf)
        emit(LatNode{ge + t.Ret(n.d), e, -1, n.used, -1, n.charged}, ge + t.Ret(n.d));
      continue;
    }
    const double tail = b.memory.Tail(e, n.used);
    if (tail == kInf) continue;
    for (int d2 = 0; d2 < t.D; ++d2) {
      if (!t.MayAdd(n.used, n.d, d2) || b.plain.H[e][d2] == kInf) continue;
      const double g2 = ge + t.Hop(e - 1, n.d, d2);
      if (g2 == kInf) continue;
      const double charge = b.charge.empty() ? 0 : b.charge[d2];
      emit(LatNode{g2, e, d2, n.used | (1ull << d2), -1, n.charged + charge},
           g2 + b.Estimate(e, d2, n.charged, tail));
    }
  }
}

struct KeyHash {
  size_t operator()(const std::pair<uint64_t, int>& k) const {
    return std::hash<uint64_t>()(k.first * 0x9E3779B97F4A7C15ull ^ uint64_t(k.second));
  }
};

// Keeps the `width` best partial plans by g + h at each step: a quick plan for an upper bound,
// and the fallback when the exact search hits its limit.
std::vector<Stage> LatencyBeam(const Tables& t, const Bounds& b, int width, uint64_t* states) {
  const int src = t.p.source;
  std::vector<LatNode> nodes = {{0, 0, src, 1ull << src, -1, b.charge.empty() ? 0 : b.charge[src]}};
  std::vector<int> level = {0};
  int best_goal = -1;
  while (!level.empty()) {
    std::unordered_map<std::pair<uint64_t, int>, std::pair<double, int>, KeyHash>
        kids;  // -> f, node
    for (int i : level) {
      const LatNode n = nodes[i];  // a copy: emitting children grows `nodes`
      Expand(t, b, n, [&](LatNode k, double f) {
        k.parent = i;
        ++*states;
        if (k.c == t.U) {
          if (best_goal < 0 || k.g < nodes[best_goal].g)
            best_goal = int(nodes.size()), nodes.push_back(k);
          return;
        }
        const auto key = std::make_pair(k.used, k.c * 64 + k.d);
        auto it = kids.find(key);
        if (it != kids.end() && it->second.first <= f) return;
        kids[key] = {f, int(nodes.size())};
        nodes.push_back(k);
      });
    }
    std::vector<std::pair<double, int>> ranked;
    for (const auto& kv : kids) ranked.push_back(kv.second);
    std::sort(ranked.begin(), ranked.end());
    if (int(ranked.size()) > width) ranked.resize(width);
    level.clear();
    for (const auto& r : ranked) level.push_back(r.second);
  }
  return best_goal < 0 ? std::vector<Stage>{} : Unwind(nodes, best_goal);
}

// The latency search; with a finite cap it looks only at plans whose every stage fits the cap.
Solution LatencySearch(const Problem& p, const SolveOptions& o, double cap) {
  const auto t0 = Clock::now();
  const Tables t(p, cap);
  Bounds b(t);
  Solution s;
  s.method = "A* over (unit, device, used devices), exact";
  if (b.plain.H[0][p.source] == kInf) {
    s.solve_ms = MsSince(t0);
    return s;
  }
  // A quick plan first: it prunes the search, and prices memory for the stronger bound.
  std::vector<Stage> incumbent = LatencyBeam(t, b, 8, &s.states);
  double upper = incumbent.empty() ? kInf : Evaluate(p, incumbent).step_ms;
  PriceMemory(t, b, upper, 60);
  // The priced bound ranks partial plans better: look for a better quick plan with it.
  if (std::vector<Stage> again = LatencyBeam(t, b, 16, &s.states);
      !again.empty() && Evaluate(p, again).step_ms < upper)
    incumbent = again, upper = Evaluate(p, again).step_ms;

  const int src = p.source;
  std::vector<LatNode> nodes = {{0, 0, src, 1ull << src, -1, b.charge.empty() ? 0 : b.charge[src]}};
  using Item = std::tuple<double, double, int>;  // f, -g (deeper first on ties), node
  std::priority_queue<Item, std::vector<Item>, std::greater<>> open;
  open.push({b.plain.H[0][src], 0, 0});
  std::unordered_map<std::pair<uint64_t, int>, double, KeyHash> best_g;
  int goal = -1;  // the best finished plan the search found (it beats the incumbent)
  // The wider beam after an unproven stop takes a few times the quick beams' time: keep it
  // inside the limit as well.
  const double search_ms =
      o.time_limit_ms > 0 ? std::max(0.0, o.time_limit_ms - 4 * MsSince(t0)) : kInf;
  bool out_of_time = false;
  for (uint64_t iter = 0; !open.empty() && nodes.size() < o.max_states; ++iter) {
    if ((iter & 1023) == 0 && MsSince(t0) > search_ms) {
      out_of_time = true;
      break;
    }
    const auto [f, neg_g, top] = open.top();
    const auto i = top;     // a plain variable: clang before 16 cannot capture a structured binding
    if (f >= upper) break;  // nothing left can beat the best plan known: it is optimal
    open.pop();
    const LatNode n = nodes[i];
    if (auto it = best_g.find({n.used, n.c * 64 + n.d}); it != best_g.end() && -neg_g > it->second)
      continue;  // a cheaper copy of this state came later
    Expand(t, b, n, [&](LatNode k, double fk) {
      if (fk >= upper) return;
      k.parent = i;
      if (k.c == t.U) {  // a finished plan, the best so far (fk < upper)
        upper = fk, goal = int(nodes.size());
        nodes.push_back(k);
        return;
      }
      auto [it, fresh] = best_g.try_emplace({k.used, k.c * 64 + k.d}, k.g);
      if (!fresh && it->second <= k.g) return;
      it->second = k.g;
      open.push({fk, -k.g, int(nodes.size())});
      nodes.push_back(k);
    });
  }
  s.states += nodes.size();
  std::vector<Stage> plan = goal >= 0 ? Unwind(nodes, goal) : incumbent;
  bool from_search = goal >= 0;  // else a beam's plan
  const bool proven = open.empty() || std::get<0>(open.top()) >= upper;
  if (!proven) {  // out of budget: a wider beam may do better than the quick plan
    std::vector<Stage> wide = LatencyBeam(t, b, o.beam_width, &s.states);
    if (!wide.empty() && (plan.empty() || Evaluate(p, wide).step_ms < Evaluate(p, plan).step_ms))
      plan = wide, from_search = false;
  }
  if (plan.empty()) {  // proven: nothing fits; or unproven and no plan found
    s.solve_ms = MsSince(t0);
    s.exact = proven;
    if (!proven) s.lower_bound = std::get<0>(open.top());
    return s;
  }
  Solution out = Finish(p, Objective::kLatency, plan, t0,
                        proven ? s.method
                               : std::string(from_search ? "A* best plan" : "beam search") +
                                     (out_of_time ? " (A* stopped at its time limit)"
                                                  : " (A* stopped at its state limit)"));
  out.exact = proven;
  out.states = s.states;
  if (!proven) out.lower_bound = std::min(std::get<0>(open.top()), out.value);
  return out;
}

}  // namespace

namespace planner {

Solution CappedLatency(const Problem& p, const SolveOptions& o, double cap) {
  return LatencySearch(p, o, cap);
}

Solution PreferLowLatency(const Problem& p, Solution thr, const SolveOptions& o) {
  if (!thr.feasible) return thr;
  const auto t0 = Clock::now();
  const double period = thr.value;
  // A secondary goal, so a smaller search budget; under a tight cap plans get long and the
  // search hard, and then the beam plan serves.
  SolveOptions small = o;
  small.max_states = std::min<uint64_t>(o.max_states, 50000);
  const Solution lat = LatencySearch(p, small, period * (1 + 1e-12));
  if (lat.feasible && Evaluate(p, lat.stages).bottleneck_ms <= period * (1 + 1e-9) &&
      lat.value < Evaluate(p, thr.stages).step_ms) {
    thr.stages = lat.stages;
    thr.value = std::min(period, Evaluate(p, lat.stages).bottleneck_ms);
  }
  thr.method +=
      lat.exact ? "; ties broken by least latency (exact)" : "; ties broken by latency (beam)";
  thr.states += lat.states;
  thr.solve_ms += MsSince(t0);
  return thr;
}

}  // namespace planner

Solution SolveLatency(const Problem& p, const SolveOptions& o) {
  return LatencySearch(p, o, kInf);
}

Solution Solve(const Problem& p, Objective obj, const SolveOptions& o) {
  return obj == Objective::kLatency ? SolveLatency(p, o) : SolveThroughput(p, o);
}

}  // namespace es::shard
