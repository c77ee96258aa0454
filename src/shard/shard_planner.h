// The EdgeShard planner: which devices take part and which contiguous range of layer units each
// holds, chosen for sequential latency or pipelined throughput (formulation in docs/planner.md).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "shard/shard_cluster.h"
#include "shard/shard_model_units.h"

namespace es::shard {

enum class Objective { kLatency, kThroughput };

// Planner input: costs already evaluated at the context length and batch being planned for.
struct Problem {
  std::vector<std::string> units, devices;
  int source = 0;                                 // holds unit 0 (the embedding)
  std::vector<std::vector<double>> comp_ms;       // [device][unit]: one step through the unit
  std::vector<std::vector<double>> weight_bytes;  // [device][unit]
  std::vector<std::vector<double>> kv_bytes;      // [device][unit]: KV cache for ctx x batch
  std::vector<double> budget_bytes;               // [device]
  std::vector<double> out_bytes;  // [unit]: bytes sent after it per step; the last unit's go
                                  // back to the source (sampled token ids)
  std::vector<std::vector<double>> bw_mbps, rtt_ms;  // [a][b]
  // [device]: the device whose worker runs it (a GPU's host, else itself; empty: each its own).
  // One worker runs one contiguous range, so the stages of a host and its GPU are consecutive.
  std::vector<int> host;
  int Host(int d) const { return host.empty() ? d : host[size_t(d)]; }

  int n_units() const { return int(units.size()); }
  int n_devices() const { return int(devices.size()); }
  // Time to send what leaves `unit` from device a to device b: bits / bandwidth + RTT / 2.
  double HopMs(int unit, int a, int b) const;
  double MemBytes(int d, int u) const { return weight_bytes[d][u] + kv_bytes[d][u]; }
  void Validate() const;  // es::Error on inconsistent sizes or negative values
};

struct Stage {
  int device = 0;
  int first = 0, last = 0;  // units [first, last)
  bool operator==(const Stage&) const = default;
};

struct Evaluation {
  std::vector<double> comp_ms;                 // per stage
  std::vector<double> link_ms;                 // per stage: to the next stage; after the last
                                               // stage, token ids back to the source
  std::vector<double> weight_bytes, kv_bytes;  // per stage
  std::vector<double> over_bytes;              // per stage: memory beyond the device's budget
  double step_ms = 0;        // one step through every stage and back: the sequential latency
  double bottleneck_ms = 0;  // the slowest compute or link stage: the pipeline period
  double missing_bytes = 0;  // sum of over_bytes
  bool fits() const { return missing_bytes == 0; }
};

// Throws es::Error unless the stages cover all units contiguously, start on the source with
// unit 0, use each device at most once, and keep the stages of one host (its CPU and its GPU)
// consecutive.
void CheckStages(const Problem& p, const std::vector<Stage>& stages);
Evaluation Evaluate(const Problem& p, const std::vector<Stage>& stages);
double ObjectiveValue(Objective o, const Evaluation& e);

struct SolveOptions {
  uint64_t max_states =
      1'000'000;               // latency search: nodes generated before it stops proving (~100 MB)
  int exact_max_devices = 16;  // throughput: exact subset DP up to this many devices
  int beam_width = 64;         // heuristics: states kept per number of devices used
  // Latency search: wall-clock time after which it stops proving and returns its best plan with
  // the proven lower bound (0: no limit). Interactive planning of 64 devices x 80 layers must
  // answer within a second even where the proof would take longer.
  double time_limit_ms = 800;
};

struct Solution {
  bool feasible = false;
  std::vector<Stage> stages;
  double value = 0;        // ObjectiveValue of the plan
  bool exact = true;       // proven optimal
  double lower_bound = 0;  // proven lower bound on the optimum (== value when exact)
  uint64_t states = 0;     // search nodes or DP states touched
  double solve_ms = 0;
  std::string method;
};

// Exact: A* over (next unit, device, set of used devices) with the relaxed (unit, device) DP as
// its bound. Stops proving after max_states or time_limit_ms and then returns its best plan
// (or a wider beam search's) with the bound.
Solution SolveLatency(const Problem& p, const SolveOptions& o = {});
// Exact: bottleneck search with a DP over (set of used devices, last device) -> reachable cuts.
// Among plans with the best period it returns one of least latency (the latency search, capped).
Solution SolveThroughputExact(const Problem& p, const SolveOptions& o = {});
// Heuristic for many devices: the same search keeping `beam_width` states per set size.
Solution SolveThroughputBeam(const Problem& p, int beam_width, const SolveOptions& o = {});
// Exact up to exact_max_devices, beam search above.
Solution SolveThroughput(const Problem& p, const SolveOptions& o = {});
Solution Solve(const Problem& p, Objective obj, const SolveOptions& o = {});

// Serving n sequences as m micro-batches of k = ceil(n / m) (p's costs are one k-sequence step:
// BuildProblem with kLatency and batch k): a micro-batch is back after the plan's step_ms, and
// the slowest stage serves all m of them per round, so a round of n tokens takes CycleMs.
double CycleMs(const Evaluation& e, int m);
// Exact (where the capped latency searches it runs are): the plan of least CycleMs for m
// micro-batches. Minimises max(L(T), m T) over the candidate bottlenecks T, where L(T) is the
// least latency of plans whose every stage fits T (a monotone step function, so a binary search).
Solution SolveCycle(const Problem& p, int m, const SolveOptions& o = {});

struct Baseline {
  std::string name;
  std::string note;           // why it does not apply, when stages is empty
  std::vector<Stage> stages;  // empty: not applicable
};
// Edge-Solo, Even, Cloud-Edge-Even, Cloud-Edge-Opt, Memory-proportional.
std::vector<Baseline> Baselines(const Problem& p, Objective obj);

// Why no plan fits: memory needed against memory available.
std::string ExplainInfeasible(const Problem& p);

struct PlanSettings {
  Objective objective = Objective::kLatency;
  int ctx = 512;  // tokens in the KV cache when the planned token is generated
  int batch = 1;  // concurrent sequences: decoded together (latency) or as separate
                  // micro-batches through the pipeline (throughput)
};
// n_batch: rows per step, so a sliding-window block keeps window + n_batch - 1 positions.
Problem BuildProblem(const Cluster& c, const ModelUnits& m, const PlanSettings& s,
                     int n_batch = 256);

}  // namespace es::shard
