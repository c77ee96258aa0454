// Planner scale: solve time by device count on synthetic clusters (not a Google Benchmark: each
// instance is solved once, the table goes to stdout). Usage:
//   bench_planner [--layers 80] [--devices 4,8,16,32,64] [--seeds 5] [--kind typed|jitter|edge|all]
//                 [--objective latency|throughput|both] [--gap WIDTH]
// --gap WIDTH: instead of timing, compare the throughput beam search of that width with the
// exact DP on the same instances (devices <= 16).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "shard/shard_planner.h"

using namespace es::shard;

namespace {

// Device kinds: ms per block and memory in blocks (a 70B-class model at 4 bits: 80 blocks).
struct Kind {
  const char* name;
  double ms_per_block;
  double mem_blocks;
};
const Kind kKinds[] = {{"phone", 9.0, 8},   {"orin-nx", 3.0, 14}, {"agx-orin", 2.6, 29},
                       {"laptop", 2.0, 20}, {"rtx3090", 0.4, 22}, {"server", 0.25, 70}};

// Devices spread over four sites: 1 Gbps and 1 ms RTT inside a site, 100 Mbps and 10 ms between.
// Cluster classes: 0 typed (devices of one kind are interchangeable), 1 jittered (every device
// gets its own speed and memory), 2 edge-only (jittered, no GPU or server: plans need many
// devices).
Problem Synthetic(int devices, int blocks, int cls, uint32_t seed) {
  const bool jitter = cls > 0;
  const int n_kinds = cls == 2 ? 4 : 6;
  std::mt19937 rng(seed);
  auto uni = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); };
  const double block_bytes = 0.45 * (1 << 30), kv = 0.01 * block_bytes;
  Problem p;
  const int U = blocks + 2;
  for (int u = 0; u < U; ++u) {
    p.units.push_back(u == 0       ? "token_embd"
                      : u == U - 1 ? "output"
                                   : "blk." + std::to_string(u - 1));
    p.out_bytes.push_back(u == U - 1 ? 4 : 8192 * 4);
  }
  std::vector<int> site(devices);
  for (int d = 0; d < devices; ++d) {
    const Kind& k = kKinds[d == 0 ? 1 : rng() % n_kinds];  // the source is an Orin NX
    site[d] = d == 0 ? 0 : rng() % 4;
    const double s = jitter ? uni(0.95, 1.05) : 1, m = jitter ? uni(0.9, 1.1) : 1;
    p.devices.push_back(std::string(k.name) + "-" + std::to_string(d));
    std::vector<double> c(U), w(U), kvb(U, 0);
    for (int u = 0; u < U; ++u) {
      const bool edge = u == 0 || u == U - 1;
      w[u] = edge ? 0.55 * block_bytes : block_bytes;
      c[u] = u == 0 ? 0.01 : k.ms_per_block * s * (edge ? 0.55 : 1);
      if (!edge) kvb[u] = kv;
    }
    p.comp_ms.push_back(c);
    p.weight_bytes.push_back(w);
    p.kv_bytes.push_back(kvb);
    p.budget_bytes.push_back(k.mem_blocks * m * block_bytes);
  }
  p.bw_mbps.assign(devices, std::vector<double>(devices, 0));
  p.rtt_ms.assign(devices, std::vector<double>(devices, 0));
  for (int a = 0; a < devices; ++a)
    for (int b = 0; b < devices; ++b)
      if (a != b) {
        const bool same = site[a] == site[b];
        p.bw_mbps[a][b] = same ? 1000 : 100;
        p.rtt_ms[a][b] = same ? 1 : 10;
      }
  p.source = 0;
  return p;
}

const char* kClass[] = {"typed", "jitter", "edge"};

std::vector<int> ParseList(const char* s) {
  std::vector<int> v;
  for (const char* q = s; *q;) {
    v.push_back(std::atoi(q));
    while (*q && *q != ',') ++q;
    if (*q) ++q;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int layers = 80, seeds = 5;
  std::vector<int> devs = {4, 8, 12, 16, 32, 64};
  std::string kind = "all", objective = "both";
  int gap_width = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--layers"))
      layers = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--devices"))
      devs = ParseList(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--seeds"))
      seeds = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--kind"))
      kind = argv[i + 1];
    else if (!std::strcmp(argv[i], "--objective"))
      objective = argv[i + 1];
    else if (!std::strcmp(argv[i], "--gap"))
      gap_width = std::atoi(argv[i + 1]);
  }
  if (gap_width > 0) {
    std::printf(
        "| devices | blocks | clusters | beam width | instances | same as exact | mean gap | max "
        "gap |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (int jit = 0; jit < 3; ++jit)
      for (int D : devs) {
        double sum = 0, worst = 0;
        int same = 0, n = 0;
        for (int s = 0; s < seeds; ++s) {
          const Problem p = Synthetic(D, layers, jit, 7000 * D + s);
          const Solution e = SolveThroughputExact(p), b = SolveThroughputBeam(p, gap_width);
          if (!e.feasible) continue;
          const double gap = b.feasible ? b.value / e.value - 1 : 1e9;
          sum += gap, worst = std::max(worst, gap), ++n, same += gap < 1e-9;
        }
        std::printf("| %d | %d | %s | %d | %d | %d | %.2f%% | %.2f%% |\n", D, layers, kClass[jit],
                    gap_width, n, same, n ? 100 * sum / n : 0.0, 100 * worst);
        std::fflush(stdout);
      }
    return 0;
  }
  std::printf(
      "| objective | devices | blocks | clusters | solver | proven optimal | median ms | max ms | "
      "max states | "
      "max gap to bound |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const char* obj : {"latency", "throughput"}) {
    if (objective != "both" && objective != obj) continue;
    for (int jit = 0; jit < 3; ++jit) {
      if (kind != "all" && kind != kClass[jit]) continue;
      for (int D : devs) {
        std::vector<double> ms;
        uint64_t states = 0;
        int proven = 0;
        double gap = 0;
        std::string method;
        for (int s = 0; s < seeds; ++s) {
          const Problem p = Synthetic(D, layers, jit, 1000 * D + s);
          const Solution r = obj[0] == 'l' ? SolveLatency(p) : SolveThroughput(p);
          ms.push_back(r.solve_ms);
          states = std::max(states, r.states);
          proven += r.exact;
          if (r.feasible) gap = std::max(gap, r.value / r.lower_bound - 1);
          method = r.method.substr(0, r.method.find(' '));
        }
        std::sort(ms.begin(), ms.end());
        std::printf("| %s | %d | %d | %s | %s | %d/%d | %.1f | %.1f | %llu | %.2f%% |\n", obj, D,
                    layers, kClass[jit], method.c_str(), proven, seeds, ms[ms.size() / 2],
                    ms.back(), static_cast<unsigned long long>(states), 100 * gap);
        std::fflush(stdout);
      }
    }
  }
}
