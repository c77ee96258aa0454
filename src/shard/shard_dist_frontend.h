// `edgeshard run|chat|bench --cluster`: the front ends over the coordinator. Output matches the
// single-device commands (text on stdout, timings on stderr); --verbose adds the plan and the
// measured against planned cost of every stage.
#pragma once
#include <string>
#include <vector>

#include "edgeshard/edgeshard.h"

namespace es::shard {

struct ClusterCliOptions {
  std::string cluster;
  std::string objective = "latency";
  std::string token_file, tls_ca, tls_cert, tls_key;
  std::string wire = "f32";
  std::string placement, baseline;  // instead of the planner's choice (comparisons)
  bool verbose = false;
  int sequences = 0;  // bench pipeline test (0: two per stage)
  int micro_batch = 1;
  int in_flight = 0;       // serve: steps travelling at once (0: chosen for the load)
  double load_hold_s = 1;  // serve --objective load: how long a load must hold to be planned for
  // --cluster auto: discovery (docs/distributed.md, "Discovery")
  std::string discovery_group = "239.255.70.70";
  int discovery_port = 7071;
  double discover_seconds = 3;
  int discover_workers = 0;   // stop listening once this many are found
  std::string source_memory;  // the source's budget ("" : MemAvailable)
  std::string source_gpu;     // a GPU of the source offered as a device of its own ("": none)
};

struct ClusterModelArgs {
  std::string model;
  int threads = 0, ctx = 0, batch = 256;
  std::string cache_type_k = "f16", cache_type_v = "f16";
};

struct CoordinatorOptions;
// The coordinator's options from the command line's (reads the token file and certificates).
CoordinatorOptions CoordinatorOptionsFor(const ClusterCliOptions& c, const ClusterModelArgs& m);

int ClusterRun(const ClusterCliOptions& c, const ClusterModelArgs& m, const GenerateParams& gen,
               const std::string& prompt, bool no_bos);
int ClusterChat(const ClusterCliOptions& c, const ClusterModelArgs& m, const GenerateParams& gen,
                const std::string& system, const std::string& chat_template, bool verbose);
int ClusterBench(const ClusterCliOptions& c, const std::string& model, int n_prompt, int n_gen,
                 int threads, int reps, int batch, bool json);

}  // namespace es::shard
