// The `--cluster` options of `edgeshard run|chat|bench` (CLI11, included by the front ends only).
#pragma once
#include <CLI/CLI.hpp>

#include "shard/shard_dist_frontend.h"

namespace es::shard {

enum class ClusterCommand { kRun, kChat, kBench, kServe };

// Where discovery beacons travel (workers and sources must agree).
inline void AddDiscoveryEndpointOptions(CLI::App* app, std::string& group, int& port,
                                        const std::string& option_group = "") {
  auto* a = app->add_option("--discovery-addr", group,
                            "IPv4 multicast group (or broadcast address) of the discovery "
                            "beacons (default 239.255.70.70)");
  auto* p = app->add_option("--discovery-port", port, "UDP port of the discovery beacons (7071)")
                ->check(CLI::Range(1, 65535));
  if (!option_group.empty()) a->group(option_group), p->group(option_group);
}

// The source's side of `--cluster auto` (run|chat|bench, cluster status).
inline void AddDiscoverOptions(CLI::App* app, ClusterCliOptions& o, const std::string& g) {
  AddDiscoveryEndpointOptions(app, o.discovery_group, o.discovery_port, g);
  app->add_option("--discover-seconds", o.discover_seconds,
                  "--cluster auto: how long to look for workers (default 3)")
      ->check(CLI::Range(0.1, 600.0))
      ->group(g);
  app->add_option("--discover-workers", o.discover_workers,
                  "--cluster auto: stop looking once this many workers are found")
      ->check(CLI::Range(1, 63))
      ->group(g);
  app->add_option("--source-memory", o.source_memory,
                  "--cluster auto: memory this machine offers, e.g. '4 GiB' (default: "
                  "MemAvailable)")
      ->group(g);
  app->add_option("--source-gpu", o.source_gpu,
                  "--cluster auto: offer this machine's GPU (vulkan0, ...) to the planner as a "
                  "device of its own")
      ->group(g);
}

inline void AddClusterOptions(CLI::App* app, ClusterCliOptions& o, ClusterCommand cmd) {
  const char* g = "Distributed (--cluster)";
  app->add_option("--cluster", o.cluster,
                  "cluster.yaml, or 'auto' (discover the workers that hold the token): run "
                  "across these devices' workers")
      ->check(CLI::ExistingFile | CLI::IsMember({"auto"}))
      ->group(g);
  AddDiscoverOptions(app, o, g);
  if (cmd == ClusterCommand::kServe)
    app->add_option("--objective", o.objective,
                    "load (default: plan for the number of requests being served, replanning as "
                    "it changes), latency (sequential) or throughput (pipeline at --parallel)")
        ->check(CLI::IsMember({"load", "latency", "throughput"}))
        ->group(g);
  else
    app->add_option("--objective", o.objective, "plan for latency (sequential) or throughput")
        ->check(CLI::IsMember({"latency", "throughput"}))
        ->group(g);
  app->add_option("--token-file", o.token_file, "file with the cluster's shared token")
      ->check(CLI::ExistingFile)
      ->group(g);
  app->add_option("--tls-ca", o.tls_ca, "CA certificate that signed the workers' certificates")
      ->check(CLI::ExistingFile)
      ->group(g);
  app->add_option("--tls-cert", o.tls_cert, "this coordinator's TLS certificate")
      ->check(CLI::ExistingFile)
      ->group(g);
  app->add_option("--tls-key", o.tls_key, "key of --tls-cert")->check(CLI::ExistingFile)->group(g);
  app->add_option("--wire", o.wire,
                  "activations between stages: f32 (default, exact) or f16 (half the bytes, lossy)")
      ->check(CLI::IsMember({"f16", "f32"}))
      ->group(g);
  app->add_option("--placement", o.placement,
                  "rules.yaml: place layers by these rules instead of the planner")
      ->check(CLI::ExistingFile)
      ->group(g);
  app->add_option("--baseline", o.baseline,
                  "use a planner baseline instead of the optimum (Even, Edge-Solo, "
                  "Cloud-Edge-Even, Cloud-Edge-Opt, Memory-proportional)")
      ->group(g);
  if (cmd == ClusterCommand::kRun)
    app->add_flag("-v,--verbose", o.verbose, "print the plan and per-stage costs")->group(g);
  if (cmd == ClusterCommand::kServe) {
    app->add_option("--micro-batch", o.micro_batch,
                    "sequences per pipeline step (0: chosen for the requests being served)")
        ->check(CLI::Range(0, 4096))
        ->group(g);
    app->add_option("--load-hold", o.load_hold_s,
                    "--objective load: seconds the number of requests must hold before the plan "
                    "is made for it (default 1)")
        ->check(CLI::Range(0.0, 3600.0))
        ->group(g);
    app->add_option("--in-flight", o.in_flight,
                    "pipeline steps travelling at once (0: chosen for the requests being served)")
        ->check(CLI::Range(0, 4096))
        ->group(g);
  }
  if (cmd == ClusterCommand::kBench) {
    app->add_flag("-v,--verbose", o.verbose, "print the plan and faults")->group(g);
    app->add_option("--sequences", o.sequences,
                    "pipeline test: sequences in flight (default: 2 per stage)")
        ->check(CLI::Range(1, 4096))
        ->group(g);
    app->add_option("--micro-batch", o.micro_batch, "pipeline test: sequences per step")
        ->check(CLI::Range(1, 4096))
        ->group(g);
  }
}

}  // namespace es::shard
