// The throughput searches: the exact bottleneck search over candidate periods and the beam search
// for clusters too large for it.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "shard/shard_planner.h"
#include "shard/shard_planner_search.h"

namespace es::shard {
namespace {

using namespace planner;

// ---- throughput ----------------------------------------------------------------------------

// Cut positions 0..U as bits in `W` 64-bit words.
struct Bits {
  static bool Test(const uint64_t* b, int i) { return (b[i >> 6] >> (i & 63)) & 1; }
  static void Set(uint64_t* b, int i) { b[i >> 6] |= 1ull << (i & 63); }
  static bool Any(const uint64_t* b, int w) {
    for (int i = 0; i < w; ++i)
      if (b[i]) return true;
    return false;
  }
  static int Highest(const uint64_t* b, int w) {
    for (int i = w - 1; i >= 0; --i)
      if (b[i]) return i * 64 + 63 - __builtin_clzll(b[i]);
    return -1;
  }
};

// Feasibility of "every stage at most T": device d starting at c may end anywhere in
// (c, end_max[d][c]], and a cut at e may go from d to d2 if that link takes at most T.
struct Bottleneck {
  const Tables& t;
  int W;
  double T = 0;
  std::vector<std::vector<int>> end_max;  // [d][c]
  std::vector<uint64_t> link_ok;          // [(d * D + d2) * W]: allowed cuts
  std::vector<char> ret_ok;               // [d]

  explicit Bottleneck(const Tables& tt) : t(tt), W(tt.U / 64 + 1) {}

  void SetThreshold(double thr) {
    T = thr;
    end_max.assign(t.D, std::vector<int>(t.U, 0));
    for (int d = 0; d < t.D; ++d) {
      int e = 0;
      for (int c = 0; c < t.U; ++c) {  // end_max is non-decreasing in c
        e = std::max(e, c);
        while (e < t.emax[d][c] && t.Comp(d, c, e + 1) <= T) ++e;
        end_max[d][c] = std::min(e, t.emax[d][c]);
      }
    }
    link_ok.assign(size_t(t.D) * t.D * W, 0);
    for (int d = 0; d < t.D; ++d)
      for (int d2 = 0; d2 < t.D; ++d2)
        for (int e = 1; e < t.U && d2 != d; ++e)
          if (t.p.HopMs(e - 1, d, d2) <= T) Bits::Set(&link_ok[(size_t(d) * t.D + d2) * W], e);
    ret_ok.assign(t.D, 0);
    for (int d = 0; d < t.D; ++d) ret_ok[d] = t.Ret(d) <= T;
  }
  // Ends reachable by d from the start cuts in r: the union of (c, end_max[d][c]].
  void Ends(const uint64_t* r, int d, uint64_t* e) const {
    std::fill(e, e + W, 0);
    int filled = 0;
    for (int w = 0; w < W; ++w)
      for (uint64_t bits = r[w]; bits; bits &= bits - 1) {
        const int c = w * 64 + __builtin_ctzll(bits);
        for (int x = std::max(filled, c) + 1; x <= end_max[d][c]; ++x) Bits::Set(e, x);
        filled = std::max(filled, end_max[d][c]);
      }
  }
  const uint64_t* Link(int d, int d2) const { return &link_ok[(size_t(d) * t.D + d2) * W]; }
  bool Done(const uint64_t* ends, int d) const { return Bits::Test(ends, t.U) && ret_ok[d]; }

  // Walks back from a finished (used, d): `lookup(used, d)` gives the start cuts of d.
  template <typename Lookup>
  std::vector<Stage> Unwind(uint64_t used, int d, Lookup lookup) const {
    std::vector<Stage> st;
    std::vector<uint64_t> ends(W);
    int end = t.U;
    while (true) {
      const uint64_t* r = lookup(used, d);
      int start = -1;
      for (int c = 0; c < end && start < 0; ++c)
        if (Bits::Test(r, c) && end_max[d][c] >= end) start = c;
      if (start < 0) throw std::logic_error("planner: broken throughput back-track");
      st.push_back({d, start, end});
      if (start == 0) break;
      const uint64_t prev_used = used & ~(1ull << d);
      int prev = -1;
      for (int d0 = 0; d0 < t.D && prev < 0; ++d0) {
        const uint64_t* r0 = Has(prev_used, d0) ? lookup(prev_used, d0) : nullptr;
        if (!r0 || !t.MayAdd(prev_used, d0, d) || !Bits::Test(Link(d0, d), start)) continue;
        Ends(r0, d0, ends.data());
        if (Bits::Test(ends.data(), start)) prev = d0;
      }
      if (prev < 0) throw std::logic_error("planner: broken throughput back-track");
      used = prev_used, d = prev, end = start;
    }
    std::reverse(st.begin(), st.end());
    return st;
  }

  // Relaxation (devices may repeat): reach[c][d] = d can start at c. Polynomial; a lower bound.
  bool RelaxedFeasible() const {
    std::vector<std::vector<char>> reach(t.U, std::vector<char>(t.D, 0));
    reach[0][t.p.source] = 1;
    for (int c = 0; c < t.U; ++c)
      for (int d = 0; d < t.D; ++d) {
        if (!reach[c][d]) continue;
        for (int e = c + 1; e <= end_max[d][c]; ++e) {
          if (e == t.U) {
            if (ret_ok[d]) return true;
            continue;
          }
          for (int d2 = 0; d2 < t.D; ++d2)
            if (d2 != t.p.source && Bits::Test(Link(d, d2), e)) reach[e][d2] = 1;
        }
      }
    return false;
  }
};

// Every stage time a plan can have: its bottleneck is one of these.
std::vector<double> Candidates(const Tables& t) {
  std::vector<double> v;
  for (int d = 0; d < t.D; ++d) {
    for (int c = 0; c < t.U; ++c)
      for (int e = c + 1; e <= t.emax[d][c]; ++e) v.push_back(t.Comp(d, c, e));
    v.push_back(t.Ret(d));
    for (int d2 = 0; d2 < t.D; ++d2)
      for (int e = 1; e < t.U && d2 != d; ++e) v.push_back(t.p.HopMs(e - 1, d, d2));
  }
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

// Smallest candidate index in [lo, hi] where ok(T) holds, assuming ok(cand[hi]); -1 if !ok(hi).
template <typename Ok>
int SmallestFeasible(const std::vector<double>& cand, int lo, int hi, Ok ok) {
  if (hi < 0 || !ok(cand[hi])) return -1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (ok(cand[mid]))
      hi = mid;
    else
      lo = mid + 1;
  }
  return hi;
}

// Common frame of both throughput solvers: `search(T)` returns a plan or {}.
template <typename Search>
Solution SolveBottleneck(const Problem& p, const Tables& t, Bottleneck& b,
                         const std::string& method, bool exact, Search search) {
  const auto t0 = Clock::now();
  Solution s;
  s.method = method;
  const std::vector<double> cand = Candidates(t);
  const int n = int(cand.size());
  // Two bounds. Memory: within period T a device holds at most min(budget, T / its least ms
  // per byte) of units 1.., and only devices reachable from the source over links of at most
  // T can take part; together they must hold every unit. Links: the relaxation in which
  // devices may repeat.
  std::vector<double> rate(t.D, kInf);
  double need = 0;
  for (int u = 1; u < t.U; ++u) {
    double least = kInf;
    for (int d = 0; d < t.D; ++d) {
      const double m = p.MemBytes(d, u);
      least = std::min(least, m);
      if (m > 0) rate[d] = std::min(rate[d], p.comp_ms[d][u] / m);
    }
    need += least;
  }
  std::vector<std::vector<double>> fastest_hop(t.D, std::vector<double>(t.D, kInf));
  for (int a = 0; a < t.D; ++a)
    for (int b2 = 0; b2 < t.D; ++b2)
      for (int u = 0; u + 1 < t.U && a != b2; ++u)
        fastest_hop[a][b2] = std::min(fastest_hop[a][b2], p.HopMs(u, a, b2));
  const int lb_mem = SmallestFeasible(cand, 0, n - 1, [&](double T) {
    std::vector<char> seen(t.D, 0);
    std::vector<int> todo = {p.source};
    seen[p.source] = 1;
    double room = 0;
    while (!todo.empty()) {
      const int d = todo.back();
      todo.pop_back();
      room += rate[d] > 0 && rate[d] < kInf ? std::min(p.budget_bytes[d], T / rate[d])
                                            : p.budget_bytes[d];
      for (int x = 0; x < t.D; ++x)
        if (!seen[x] && fastest_hop[d][x] <= T) seen[x] = 1, todo.push_back(x);
    }
    return room >= need;
  });
  const int lb = SmallestFeasible(cand, std::max(lb_mem, 0), n - 1, [&](double T) {
    b.SetThreshold(T);
    return b.RelaxedFeasible();
  });
  if (lb < 0) {
    s.solve_ms = MsSince(t0);
    return s;
  }
  // The relaxation needs no more than the real problem, so start at its bound. The last
  // successful probe is the one at the answer, so `best` ends up holding its plan.
  std::vector<Stage> best;
  const int k = SmallestFeasible(cand, lb, n - 1, [&](double T) {
    b.SetThreshold(T);
    std::vector<Stage> st = search(T, &s.states);
    if (!st.empty()) best = st;
    return !st.empty();
  });
  if (k < 0) {
    s.solve_ms = MsSince(t0);
    return s;
  }
  Solution out = Finish(p, Objective::kThroughput, best, t0, method);
  // A heuristic plan that meets the lower bound is optimal too.
  out.exact = exact || out.value <= cand[lb];
  out.lower_bound = out.exact ? out.value : cand[lb];
  out.states = s.states;
  return out;
}

}  // namespace

Solution SolveThroughputExact(const Problem& p, const SolveOptions& o) {
  const Tables t(p);
  if (t.D > 20) throw Error("exact throughput planning is limited to 20 devices");
  Bottleneck b(t);
  const int W = b.W, D = t.D;
  const size_t n_sets = size_t(1) << D;
  std::vector<uint64_t> reach;
  std::vector<uint64_t> ends(W), tmp(W);
  auto at = [&](uint64_t used, int d) { return &reach[(used * D + d) * W]; };
  // reach(used, d): the cuts where d can start, having used exactly `used` (d included).
  auto search = [&](double, uint64_t* states) -> std::vector<Stage> {
    reach.assign(n_sets * D * W, 0);
    const uint64_t src = 1ull << p.source;
    Bits::Set(at(src, p.source), 0);
    for (uint64_t used = 0; used < n_sets; ++used) {
      if (!(used & src)) continue;
      for (int d = 0; d < D; ++d) {
        if (!Has(used, d) || !Bits::Any(at(used, d), W)) continue;
        ++*states;
        b.Ends(at(used, d), d, ends.data());
        if (b.Done(ends.data(), d)) return b.Unwind(used, d, at);
        for (int d2 = 0; d2 < D; ++d2) {
          if (!t.MayAdd(used, d, d2)) continue;
          const uint64_t* l = b.Link(d, d2);
          uint64_t* r2 = at(used | (1ull << d2), d2);
          for (int w = 0; w < W; ++w) r2[w] |= ends[w] & l[w];
        }
      }
    }
    return {};
  };
  return PreferLowLatency(
      p,
      SolveBottleneck(p, t, b, "bottleneck DP over (used devices, last device), exact", true,
                      search),
      o);
}

Solution SolveThroughputBeam(const Problem& p, int beam_width, const SolveOptions& o) {
  const Tables t(p);
  Bottleneck b(t);
  const int W = b.W, D = t.D;
  struct State {
    uint64_t used;
    int d;
    std::vector<uint64_t> r;
  };
  std::vector<std::vector<State>> levels;
  std::vector<std::map<std::pair<uint64_t, int>, int>> index;
  auto lookup = [&](uint64_t used, int d) -> const uint64_t* {
    const size_t k = size_t(__builtin_popcountll(used)) - 1;
    if (k >= index.size()) return nullptr;
    auto it = index[k].find({used, d});
    return it == index[k].end() ? nullptr : levels[k][it->second].r.data();
  };
  auto search = [&](double, uint64_t* states) -> std::vector<Stage> {
    levels.assign(1, {State{1ull << p.source, p.source, std::vector<uint64_t>(W, 0)}});
    Bits::Set(levels[0][0].r.data(), 0);
    index.assign(1, {{{1ull << p.source, p.source}, 0}});
    std::vector<uint64_t> ends(W);
    while (true) {
      std::map<std::pair<uint64_t, int>, int> kid_index;
      std::vector<State> kids;
      for (const State& s : levels.back()) {
        ++*states;
        b.Ends(s.r.data(), s.d, ends.data());
        if (b.Done(ends.data(), s.d)) return b.Unwind(s.used, s.d, lookup);
        for (int d2 = 0; d2 < D; ++d2) {
          if (!t.MayAdd(s.used, s.d, d2)) continue;
          const uint64_t* l = b.Link(s.d, d2);
          std::vector<uint64_t> r(W);
          for (int w = 0; w < W; ++w) r[w] = ends[w] & l[w];
          if (!Bits::Any(r.data(), W)) continue;
          const auto key = std::make_pair(s.used | (1ull << d2), d2);
          auto [it, fresh] = kid_index.try_emplace(key, int(kids.size()));
          if (fresh)
            kids.push_back({key.first, d2, r});
          else
            for (int w = 0; w < W; ++w) kids[it->second].r[w] |= r[w];
        }
      }
      if (kids.empty()) return {};
      // Keep the states that got furthest; ties: the one whose device was cheapest so far.
      std::vector<int> order(kids.size());
      std::iota(order.begin(), order.end(), 0);
      std::vector<int> far(kids.size());
      for (size_t i = 0; i < kids.size(); ++i) far[i] = Bits::Highest(kids[i].r.data(), W);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return far[x] > far[y]; });
      if (int(order.size()) > beam_width) order.resize(beam_width);
      std::vector<State> kept;
      std::map<std::pair<uint64_t, int>, int> kept_index;
      for (int i : order) {
        kept_index[{kids[i].used, kids[i].d}] = int(kept.size());
        kept.push_back(std::move(kids[i]));
      }
      levels.push_back(std::move(kept));
      index.push_back(std::move(kept_index));
    }
  };
  return PreferLowLatency(
      p,
      SolveBottleneck(p, t, b,
                      fmt::format("bottleneck beam search (width {}), heuristic", beam_width),
                      false, search),
      o);
}

double CycleMs(const Evaluation& e, int m) {
  return std::max(e.step_ms, std::max(1, m) * e.bottleneck_ms);
}

Solution SolveCycle(const Problem& p, int m, const SolveOptions& o) {
  const auto t0 = Clock::now();
  m = std::max(1, m);
  const Tables t(p);
  const std::vector<double> cand = Candidates(t);
  // L(T) only grows as T shrinks and m T only shrinks: the first T with L(T) <= m T bounds the
  // optimum from above (m T), and below it every round is latency-bound, best at the T just
  // under it. So the optimum is one of those two plans.
  Solution s;
  s.method =
      fmt::format("least round time for {} micro-batch(es): bottleneck candidates x capped A*", m);
  std::vector<Solution> probes(cand.size());
  std::vector<char> done(cand.size(), 0);
  auto probe = [&](int i) -> const Solution& {
    if (!done[i]) {
      probes[i] = CappedLatency(p, o, cand[i] * (1 + 1e-12));
      done[i] = 1;
      s.states += probes[i].states;
      s.exact = s.exact && probes[i].exact;
    }
    return probes[i];
  };
  auto latency_bound = [&](int i) { return probe(i).feasible && probe(i).value <= m * cand[i]; };
  const int n = int(cand.size());
  int lo = 0, hi = n;  // first index where latency_bound holds (n: none)
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (latency_bound(mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  std::vector<Stage> best;
  double best_v = kInf;
  for (int i : {lo - 1, lo}) {  // lo == n: none is round-bound, lo - 1 is the latency optimum
    if (i < 0 || i >= n || !probe(i).feasible) continue;
    const double v = CycleMs(Evaluate(p, probe(i).stages), m);
    if (v < best_v) best_v = v, best = probe(i).stages;
  }
  if (best.empty()) {
    s.solve_ms = MsSince(t0);
    return s;
  }
  Solution out = Finish(p, Objective::kLatency, best, t0, s.method + (s.exact ? ", exact" : ""));
  out.value = out.lower_bound = best_v;
  out.exact = s.exact;
  out.states = s.states;
  return out;
}

Solution SolveThroughput(const Problem& p, const SolveOptions& o) {
  if (p.n_devices() <= o.exact_max_devices) return SolveThroughputExact(p, o);
  Solution s = SolveThroughputBeam(p, o.beam_width, o);
  if (s.feasible) return s;
  // The beam may miss every plan where one exists: any plan that fits beats "none fits".
  Solution any = SolveLatency(p, o);
  if (!any.feasible) return s;
  any.value = Evaluate(p, any.stages).bottleneck_ms;
  any.exact = false;
  any.lower_bound = 0;
  any.method = "the latency plan (the throughput beam search found none)";
  return any;
}

}  // namespace es::shard
