// Shared by the planner's searches (shard_planner.cpp: latency; shard_planner_throughput.cpp:
// throughput): range sums, memory limits and device symmetry of a Problem, and how a search's
// stages become a Solution. Internal to src/shard.
#pragma once
#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "shard/shard_planner.h"

namespace es::shard::planner {

inline constexpr double kInf = std::numeric_limits<double>::infinity();
using Clock = std::chrono::steady_clock;
inline double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
inline bool Has(uint64_t set, int d) {
  return (set >> d) & 1;
}

// Range sums, memory limits and device symmetry shared by the solvers.
struct Tables {
  const Problem& p;
  int U, D;
  std::vector<std::vector<double>> comp, mem;  // prefix sums [d][u + 1] (mem: weights + KV)
  std::vector<std::vector<int>>
      emax;                        // [d][c]: largest e with units [c, e) in d's memory (c: none)
  std::vector<int> prev_same;      // previous device interchangeable with this one, -1 if none
  std::vector<uint64_t> host_set;  // [d]: the devices of d's host (d alone for most)
  double cap;                      // no stage (compute or link) may take longer than this

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
    host_set.assign(D, 0);
    for (int d = 0; d < D; ++d) host_set[p.Host(d)] |= 1ull << d;
    for (int d = 0; d < D; ++d) host_set[d] = host_set[p.Host(d)];
    // Interchangeable devices (same costs, memory and links) are used in index order only; not
    // devices that share a host with another (swapping one would split its host's stages).
    prev_same.assign(D, -1);
    for (int b = 0; b < D; ++b) {
      for (int a = b - 1; a >= 0 && b != p.source && __builtin_popcountll(host_set[b]) == 1; --a) {
        if (a == p.source || __builtin_popcountll(host_set[a]) != 1) continue;
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
  // May d follow `last` after the devices in `used`? (one range each; source only first; a
  // host's devices one after another)
  bool MayAdd(uint64_t used, int last, int d) const {
    return d != p.source && !Has(used, d) && (prev_same[d] < 0 || Has(used, prev_same[d])) &&
           ((used & host_set[d]) == 0 || Has(host_set[d], last));
  }
};

inline Solution Finish(const Problem& p, Objective obj, std::vector<Stage> stages,
                       Clock::time_point t0, std::string method) {
  Solution s;
  s.feasible = true;
  s.stages = std::move(stages);
  s.value = ObjectiveValue(obj, Evaluate(p, s.stages));
  s.lower_bound = s.value;
  s.method = std::move(method);
  s.solve_ms = MsSince(t0);
  return s;
}

// The latency search restricted to plans whose every stage (compute or link) takes at most cap.
Solution CappedLatency(const Problem& p, const SolveOptions& o, double cap);

// Many plans often share the best period (a slow link caps every stage alike): among those,
// take the one with the lowest latency.
Solution PreferLowLatency(const Problem& p, Solution thr, const SolveOptions& o);

}  // namespace es::shard::planner
