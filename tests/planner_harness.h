// Shared by the planner's tests: random instances and a brute-force enumeration of every plan.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "shard/shard_planner.h"

namespace es::shard {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A random instance: costs, memory (tight enough that some instances are infeasible),
// asymmetric-free links, and sometimes interchangeable twin devices.
inline Problem RandomProblem(std::mt19937& rng, int D, int U) {
  auto uni = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); };
  auto integer = [&](int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); };
  Problem p;
  for (int u = 0; u < U; ++u)
    p.units.push_back("u" + std::to_string(u)), p.out_bytes.push_back(integer(1, 2000));
  p.source = integer(0, D - 1);
  double total = 0;
  std::vector<double> w(U), kv(U);
  for (int u = 0; u < U; ++u) w[u] = integer(1, 100), kv[u] = integer(0, 10), total += w[u] + kv[u];
  for (int d = 0; d < D; ++d) {
    p.devices.push_back("d" + std::to_string(d));
    std::vector<double> c(U);
    const double speed = uni(0.2, 5);
    for (int u = 0; u < U; ++u) c[u] = speed * uni(0.5, 1.5);
    p.comp_ms.push_back(c);
    p.weight_bytes.push_back(w);
    p.kv_bytes.push_back(kv);
    p.budget_bytes.push_back(std::round(total * uni(0.1, 0.9)));
  }
  p.bw_mbps.assign(D, std::vector<double>(D, 0));
  p.rtt_ms.assign(D, std::vector<double>(D, 0));
  for (int a = 0; a < D; ++a)
    for (int b = a + 1; b < D; ++b) {
      p.bw_mbps[a][b] = p.bw_mbps[b][a] = uni(0.5, 50);
      p.rtt_ms[a][b] = p.rtt_ms[b][a] = uni(0, 4);
    }
  // Twins: copy device a onto b (both not the source) so the symmetry pruning is exercised.
  if (D >= 3 && integer(0, 2) == 0) {
    int a = integer(0, D - 1), b = integer(0, D - 1);
    if (a != b && a != p.source && b != p.source) {
      p.comp_ms[b] = p.comp_ms[a], p.budget_bytes[b] = p.budget_bytes[a];
      for (int x = 0; x < D; ++x)
        if (x != a && x != b) {
          p.bw_mbps[b][x] = p.bw_mbps[x][b] = p.bw_mbps[a][x];
          p.rtt_ms[b][x] = p.rtt_ms[x][b] = p.rtt_ms[a][x];
        }
    }
  }
  return p;
}

// Every plan (distinct devices, source first, contiguous ranges), costed from scratch.
struct Brute {
  double latency = kInf, bottleneck = kInf;
  double latency_at_best_period = kInf;  // least latency among plans of the least bottleneck
  std::vector<std::pair<double, double>> plans;  // every plan that fits: bottleneck, latency
};
inline Brute BruteForce(const Problem& p) {
  Brute best;
  const int U = p.n_units(), D = p.n_devices();
  std::vector<std::pair<double, double>>& plans = best.plans;
  std::function<void(int, int, uint64_t, double, double)> rec = [&](int c, int d, uint64_t used,
                                                                    double sum, double worst) {
    double comp = 0, mem = 0;
    for (int e = c + 1; e <= U; ++e) {
      comp += p.comp_ms[d][e - 1];
      mem += p.weight_bytes[d][e - 1] + p.kv_bytes[d][e - 1];
      if (mem > p.budget_bytes[d]) return;
      if (e == U) {
        const double ret = d == p.source ? 0
                                         : p.out_bytes[U - 1] * 8 / (p.bw_mbps[d][p.source] * 1e3) +
                                               p.rtt_ms[d][p.source] / 2;
        plans.push_back({std::max({worst, comp, ret}), sum + comp + ret});
        best.latency = std::min(best.latency, sum + comp + ret);
        best.bottleneck = std::min(best.bottleneck, std::max({worst, comp, ret}));
        continue;
      }
      for (int d2 = 0; d2 < D; ++d2) {
        if ((used >> d2) & 1) continue;
        // A host's devices (its CPU and GPU) hold consecutive stages.
        bool apart = false;
        for (int x = 0; x < D; ++x)
          apart =
              apart || (((used >> x) & 1) && p.Host(x) == p.Host(d2) && p.Host(d) != p.Host(d2));
        if (apart) continue;
        const double hop = p.out_bytes[e - 1] * 8 / (p.bw_mbps[d][d2] * 1e3) + p.rtt_ms[d][d2] / 2;
        rec(e, d2, used | (1ull << d2), sum + comp + hop, std::max({worst, comp, hop}));
      }
    }
  };
  rec(0, p.source, 1ull << p.source, 0, 0);
  for (const auto& [period, latency] : plans)
    if (period <= best.bottleneck * (1 + 1e-12))
      best.latency_at_best_period = std::min(best.latency_at_best_period, latency);
  return best;
}

inline bool Near(double a, double b) {
  return std::abs(a - b) <= 1e-9 * std::max(1.0, std::abs(b));
}

// The plan is well formed, fits every budget and scores what the solver claims.
inline void ExpectValidPlan(const Problem& p, const Solution& s, Objective obj) {
  ASSERT_TRUE(s.feasible);
  ASSERT_NO_THROW(CheckStages(p, s.stages));
  for (const Stage& st : s.stages) {
    double mem = 0;
    for (int u = st.first; u < st.last; ++u)
      mem += p.weight_bytes[st.device][u] + p.kv_bytes[st.device][u];
    EXPECT_LE(mem, p.budget_bytes[st.device]) << p.devices[st.device];
  }
  EXPECT_EQ(s.stages[0].device, p.source);
  EXPECT_EQ(s.stages[0].first, 0);
  EXPECT_DOUBLE_EQ(s.value, ObjectiveValue(obj, Evaluate(p, s.stages)));
}

}  // namespace es::shard
