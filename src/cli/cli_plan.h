// `edgeshard plan`'s report, shared with `edgeshard cluster status -m` (a discovered cluster).
#pragma once
#include <string>

#include "shard/shard_cluster.h"
#include "shard/shard_planner.h"

namespace es::cli {

struct PlanOptions {
  std::string cluster;  // the cluster file, or words naming where the cluster came from
  std::string model, objective = "latency", svg, placement;
  int ctx = 512, batch = 1;
  std::string cache_type_k = "f16", cache_type_v = "f16";
  bool json = false;
  shard::SolveOptions solve;
};

// Prints the plan for `cluster` (its profiles loaded) with the baselines; returns the exit code.
int Plan(const PlanOptions& o, const shard::Cluster& cluster);

}  // namespace es::cli
