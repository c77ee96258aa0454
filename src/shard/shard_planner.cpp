#include "shard/shard_planner.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <queue>
#include <unordered_map>

namespace es::shard {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
bool Has(uint64_t set, int d) {
  return (set >> d) & 1;
}

// Range sums, memory limits and device symmetry shared by the solvers.
struct Tables {
  const Problem& p;
  int U, D;
  std::vector<std::vector<double>> comp, mem;  // prefix sums [d][u + 1] (mem: weights + KV)
  std::vector<std::vector<int>>
      emax;                    // [d][c]: largest e with units [c, e) in d's memory (c: none)
  std::vector<int> prev_same;  // previous device interchangeable with this one, -1 if none
  double cap;                  // no stage (compute or link) may take longer than this

  explicit Tables(const Problem& pr, double stage_cap = kInf)
      : p(pr), U(pr.n_units()), D(pr.n_devices()), cap(stage_cap) {
    p.Validate();
    comp.assign(D, std::vector<double>(U + 1, 0));
    mem = comp;
    emax.assign(D, std::vector<int>(U, 0));
    for (int d = 0; d < D; ++d) {
      for (int u = 0; u < U; ++u)
        comp[d][u + 1] = comp[d][u] + p.comp_ms[d][u], mem[d][u + 1] = mem[d][u] + p.MemBytes(d, u);
      for (int c = 0; c < U; ++c) {
        // Summed in unit order with weights and KV apart, exactly as Evaluate does.
        double w = 0, kv = 0;
        int e = c;
        while (e < U && w + p.weight_bytes[d][e] + kv + p.kv_bytes[d][e] <= p.budget_bytes[d] &&
               comp[d][e + 1] - comp[d][c] <= cap)
          w += p.weight_bytes[d][e], kv += p.kv_bytes[d][e], ++e;
        emax[d][c] = e;
      }
    }
    // Interchangeable devices (same costs, memory and links) are used in index order only.
    prev_same.assign(D, -1);
    for (int b = 0; b < D; ++b) {
      for (int a = b - 1; a >= 0 && b != p.source; --a) {
        if (a == p.source) continue;
        bool same = p.comp_ms[a] == p.comp_ms[b] && p.weight_bytes[a] == p.weight_bytes[b] &&
                    p.kv_bytes[a] == p.kv_bytes[b] && p.budget_bytes[a] == p.budget_bytes[b];
        for (int x = 0; same && x < D; ++x)
          if (x != a && x != b)
            same = p.bw_mbps[a][x] == p.bw_mbps[b][x] && p.rtt_ms[a][x] == p.rtt_ms[b][x] &&
                   p.bw_mbps[x][a] == p.bw_mbps[x][b] && p.rtt_ms[x][a] == p.rtt_ms[x][b];
        if (same && p.bw_mbps[a][b] == p.bw_mbps[b][a] && p.rtt_ms[a][b] == p.rtt_ms[b][a]) {
          prev_same[b] = a;
          break;
        }
      }
    }
  }
  double Comp(int d, int a, int b) const { return comp[d][b] - comp[d][a]; }
  double Mem(int d, int a, int b) const { return mem[d][b] - mem[d][a]; }
  double Hop(int unit, int a, int b) const {
    const double h = p.HopMs(unit, a, b);
    return h <= cap ? h : kInf;
  }
  double Ret(int d) const { return d == p.source ? 0 : Hop(U - 1, d, p.source); }
  // May d be the next device after the devices in `used`? (one range each; source only first)
  bool MayAdd(uint64_t used, int d) const {
    return d != p.source && !Has(used, d) && (prev_same[d] < 0 || Has(used, prev_same[d]));
  }
};

Solution Finish(const Problem& p, Objective obj, std::vector<Stage> stages, Clock::time_point t0,
                std::string method) {
  Solution s;
  s.feasible = true;
  s.stages = std::move(stages);
  s.value = ObjectiveValue(obj, Evaluate(p, s.stages));
  s.lower_bound = s.value;
  s.method = std::move(method);
  s.solve_ms = MsSince(t0);
  return s;
}

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
      if (!t.MayAdd(n.used, d2) || b.plain.H[e][d2] == kInf) continue;
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
        if (!r0 || !Bits::Test(Link(d0, d), start)) continue;
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

// ---- problem and evaluation ----------------------------------------------------------------

double Problem::HopMs(int unit, int a, int b) const {
  if (a == b) return 0;
  return out_bytes[unit] * 8.0 / (bw_mbps[a][b] * 1e6) * 1e3 + rtt_ms[a][b] / 2;
}

void Problem::Validate() const {
  const size_t U = units.size(), D = devices.size();
  auto fail = [](const std::string& m) { throw Error("planner input: " + m); };
  if (U < 1 || D < 1) fail("needs at least one unit and one device");
  if (D > size_t(kMaxDevices)) fail("more than " + std::to_string(kMaxDevices) + " devices");
  if (source < 0 || size_t(source) >= D) fail("source index out of range");
  auto matrix = [&](const std::vector<std::vector<double>>& m, size_t cols, const char* name) {
    if (m.size() != D) fail(std::string(name) + ": expected one row per device");
    for (const auto& row : m) {
      if (row.size() != cols) fail(std::string(name) + ": row of the wrong length");
      for (double x : row)
        if (!(x >= 0) || !std::isfinite(x))
          fail(std::string(name) + ": values must be finite and >= 0");
    }
  };
  matrix(comp_ms, U, "comp_ms");
  matrix(weight_bytes, U, "weight_bytes");
  matrix(kv_bytes, U, "kv_bytes");
  matrix(rtt_ms, D, "rtt_ms");
  matrix(bw_mbps, D, "bw_mbps");
  for (size_t a = 0; a < D; ++a)
    for (size_t b = 0; b < D; ++b)
      if (a != b && !(bw_mbps[a][b] > 0))
        fail("bandwidth between '" + devices[a] + "' and '" + devices[b] + "' is 0");
  if (budget_bytes.size() != D || out_bytes.size() != U) fail("budget_bytes / out_bytes size");
}

void CheckStages(const Problem& p, const std::vector<Stage>& st) {
  if (st.empty()) throw Error("plan has no stages");
  if (st[0].device != p.source || st[0].first != 0)
    throw Error("plan must start on the source '" + p.devices[p.source] + "' with unit 0 (" +
                p.units[0] + ")");
  uint64_t used = 0;
  for (size_t i = 0; i < st.size(); ++i) {
    const Stage& s = st[i];
    if (s.device < 0 || s.device >= p.n_devices()) throw Error("plan names an unknown device");
    const std::string dev = "'" + p.devices[s.device] + "'";
    if (s.first >= s.last) throw Error("plan gives device " + dev + " an empty range");
    if (i > 0 && s.first != st[i - 1].last)
      throw Error("plan is not contiguous at device " + dev +
                  ": each stage must start where the previous ends");
    if (Has(used, s.device))
      throw Error("device " + dev + " holds two ranges; each device holds one contiguous range");
    used |= 1ull << s.device;
  }
  if (st.back().last != p.n_units())
    throw Error("plan ends at unit " + std::to_string(st.back().last) + ", expected all " +
                std::to_string(p.n_units()) + " units");
}

Evaluation Evaluate(const Problem& p, const std::vector<Stage>& st) {
  CheckStages(p, st);
  Evaluation ev;
  for (size_t i = 0; i < st.size(); ++i) {
    const Stage& s = st[i];
    double c = 0, w = 0, kv = 0;
    for (int u = s.first; u < s.last; ++u)
      c += p.comp_ms[s.device][u], w += p.weight_bytes[s.device][u], kv += p.kv_bytes[s.device][u];
    const int next = i + 1 < st.size() ? st[i + 1].device : p.source;
    const double link = p.HopMs(s.last - 1, s.device, next);
    const double over = w + kv <= p.budget_bytes[s.device] ? 0 : w + kv - p.budget_bytes[s.device];
    ev.comp_ms.push_back(c);
    ev.link_ms.push_back(link);
    ev.weight_bytes.push_back(w);
    ev.kv_bytes.push_back(kv);
    ev.over_bytes.push_back(over);
    ev.step_ms += c + link;
    ev.bottleneck_ms = std::max({ev.bottleneck_ms, c, link});
    ev.missing_bytes += over;
  }
  return ev;
}

double ObjectiveValue(Objective o, const Evaluation& e) {
  return o == Objective::kLatency ? e.step_ms : e.bottleneck_ms;
}

// ---- solvers -------------------------------------------------------------------------------

namespace {

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

// Many plans often share the best period (a slow link caps every stage alike): among those,
// take the one with the lowest latency.
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

}  // namespace

Solution SolveLatency(const Problem& p, const SolveOptions& o) {
  return LatencySearch(p, o, kInf);
}

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
          if (!t.MayAdd(used, d2)) continue;
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
          if (!t.MayAdd(s.used, d2)) continue;
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

Solution Solve(const Problem& p, Objective obj, const SolveOptions& o) {
  return obj == Objective::kLatency ? SolveLatency(p, o) : SolveThroughput(p, o);
}

// ---- baselines -----------------------------------------------------------------------------

namespace {

// Blocks (the units between the embedding and the head) split over `order` in proportion to
// `weight` (largest remainders first); the embedding joins the first device, the head the last.
// Devices that get nothing are left out.
std::vector<Stage> Proportional(const Problem& p, const std::vector<int>& order,
                                const std::vector<double>& weight) {
  const int U = p.n_units(), blocks = std::max(0, U - 2), n = int(order.size());
  const double total = std::accumulate(weight.begin(), weight.end(), 0.0);
  std::vector<int> count(n, 0);
  std::vector<std::pair<double, int>> rem;
  int given = 0;
  for (int i = 0; i < n; ++i) {
    const double share = total > 0 ? blocks * weight[i] / total : double(blocks) / n;
    count[i] = int(std::floor(share));
    given += count[i];
    rem.push_back({-(share - count[i]), i});
  }
  std::sort(rem.begin(), rem.end());
  for (int k = 0; given < blocks; ++k, ++given) ++count[rem[k % n].second];
  std::vector<Stage> st;
  int u = 0;
  for (int i = 0; i < n; ++i) {
    int len = count[i] + (i == 0 ? 1 : 0) + (i == n - 1 ? U - 1 - blocks : 0);
    if (U == 1) len = i == 0 ? 1 : 0;
    if (len > 0) st.push_back({order[i], u, u + len}), u += len;
  }
  if (u < U) st.back().last = U;  // unreachable unless U < 2; keeps the cover complete
  return st;
}

}  // namespace

std::vector<Baseline> Baselines(const Problem& p, Objective obj) {
  const int U = p.n_units(), D = p.n_devices(), src = p.source;
  std::vector<Baseline> out;
  out.push_back({"Edge-Solo", "", {{src, 0, U}}});
  std::vector<int> all = {src};
  for (int d = 0; d < D; ++d)
    if (d != src) all.push_back(d);
  out.push_back({"Even", "", Proportional(p, all, std::vector<double>(D, 1.0))});
  // The "cloud": the device that runs every unit fastest, other than the source.
  int fast = -1;
  double fast_ms = kInf;
  for (int d = 0; d < D; ++d) {
    const double ms = std::accumulate(p.comp_ms[d].begin(), p.comp_ms[d].end(), 0.0);
    if (d != src && ms < fast_ms) fast = d, fast_ms = ms;
  }
  if (fast < 0) {
    out.push_back({"Cloud-Edge-Even", "needs a second device", {}});
    out.push_back({"Cloud-Edge-Opt", "needs a second device", {}});
  } else {
    out.push_back({"Cloud-Edge-Even", "", Proportional(p, {src, fast}, {1.0, 1.0})});
    // Every cut between the two; the best that fits, else the one missing least memory.
    std::vector<Stage> best;
    double best_key[2] = {kInf, kInf};
    for (int k = 1; k < U; ++k) {
      const std::vector<Stage> st = {{src, 0, k}, {fast, k, U}};
      const Evaluation e = Evaluate(p, st);
      const double key[2] = {e.missing_bytes, ObjectiveValue(obj, e)};
      if (std::lexicographical_compare(key, key + 2, best_key, best_key + 2))
        best = st, best_key[0] = key[0], best_key[1] = key[1];
    }
    if (best.empty())
      out.push_back({"Cloud-Edge-Opt", "the model has a single unit", {}});
    else
      out.push_back({"Cloud-Edge-Opt", "", best});
  }
  std::vector<double> mem;
  for (int d : all) mem.push_back(p.budget_bytes[d]);
  out.push_back({"Memory-proportional", "", Proportional(p, all, mem)});
  return out;
}

std::string ExplainInfeasible(const Problem& p) {
  // What the model needs on the source's encoding, against every budget together.
  double need = 0, weights = 0, have = 0, largest_unit = 0, largest_budget = 0;
  int largest_u = 0;
  for (int u = 0; u < p.n_units(); ++u) {
    need += p.MemBytes(p.source, u), weights += p.weight_bytes[p.source][u];
    double smallest = kInf;
    for (int d = 0; d < p.n_devices(); ++d) smallest = std::min(smallest, p.MemBytes(d, u));
    if (smallest > largest_unit) largest_unit = smallest, largest_u = u;
  }
  for (double b : p.budget_bytes) have += b, largest_budget = std::max(largest_budget, b);
  auto gib = [](double b) { return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024)); };
  std::string msg = fmt::format(
      "no plan fits in memory: the model needs {} (weights {} + KV cache {}), the {} device(s) "
      "offer {} together",
      gib(need), gib(weights), gib(need - weights), p.n_devices(), gib(have));
  if (need > have) return msg + fmt::format("; {} missing", gib(need - have));
  if (largest_unit > largest_budget)
    return msg + fmt::format("; unit '{}' alone needs {} but the largest budget is {}",
                             p.units[largest_u], gib(largest_unit), gib(largest_budget));
  return msg +
         "; the total would suffice, but units cannot be split and each device holds one "
         "contiguous range, so no assignment fits";
}

Problem BuildProblem(const Cluster& c, const ModelUnits& m, const PlanSettings& s) {
  if (s.ctx < 1) throw Error("context length must be at least 1");
  if (s.batch < 1) throw Error("batch must be at least 1");
  if (c.profiles.size() != c.devices.size()) throw Error(c.file + ": profiles were not loaded");
  const int U = int(m.units.size()), D = int(c.devices.size());
  const bool lat = s.objective == Objective::kLatency;
  Problem p;
  p.source = c.source;
  for (const auto& u : m.units) {
    p.units.push_back(u.name);
    // Latency: all sequences step together; throughput: each is its own micro-batch.
    p.out_bytes.push_back(double(u.out_bytes_per_token) * (lat ? s.batch : 1));
  }
  for (int d = 0; d < D; ++d) {
    const DeviceSpec& dev = c.devices[d];
    const Profile& prof = c.profiles[d];
    const std::string where =
        c.file + ":" + std::to_string(dev.line) + ": device '" + dev.name + "': ";
    p.devices.push_back(dev.name);
    if (int(prof.model.units.size()) != U)
      throw Error(where + "its profile " + dev.profile_path + " was measured on '" +
                  prof.model.name + "' with " + std::to_string(prof.model.units.size()) +
                  " layer units, the model '" + m.name + "' has " + std::to_string(U));
    std::vector<double> comp, wb, kv;
    for (int u = 0; u < U; ++u) {
      const UnitInfo& unit = m.units[u];
      if (prof.model.units[u].name != unit.name)
        throw Error(where + "profile unit " + std::to_string(u) + " is '" +
                    prof.model.units[u].name + "', the model's is '" + unit.name + "'");
      if (dev.quant && unit.matrix_bytes > 0 && unit.matrix_elems == 0)
        throw Error(where + "quant needs matrix_elems for unit '" + unit.name +
                    "', which the model description lacks");
      const double bytes =
          dev.quant ? double(unit.WeightBytesAs(*dev.quant)) : double(unit.weight_bytes);
      const UnitTiming& tm = prof.timing[u];
      double ms = tm.DecodeMs(s.ctx) + (lat ? (s.batch - 1) * tm.prompt_ms_per_token : 0.0);
      // A decode step reads every weight once: scale by the bytes this device reads instead.
      const double measured = double(prof.model.units[u].weight_bytes);
      if (measured > 0) ms *= bytes / measured;
      comp.push_back(ms * dev.time_scale);
      wb.push_back(bytes);
      kv.push_back(double(unit.kv_bytes_per_token) * s.ctx * s.batch);
    }
    p.comp_ms.push_back(comp);
    p.weight_bytes.push_back(wb);
    p.kv_bytes.push_back(kv);
    p.budget_bytes.push_back(double(c.MemoryBudget(d)));
  }
  p.bw_mbps.assign(D, std::vector<double>(D, 0));
  p.rtt_ms.assign(D, std::vector<double>(D, 0));
  for (int a = 0; a < D; ++a)
    for (int b = 0; b < D; ++b)
      if (a != b) {
        const LinkSpec l = c.Link(a, b);
        p.bw_mbps[a][b] = l.bandwidth_mbps;
        p.rtt_ms[a][b] = l.rtt_ms;
      }
  p.Validate();
  return p;
}

}  // namespace es::shard
