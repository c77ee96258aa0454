// Zero-config clusters (`--cluster auto`, `edgeshard cluster status`): find workers with the
// authenticated beacon (shard_beacon.h), ask each for its memory budget and its profile for the
// model, measure every link, and return the same Cluster a cluster.yaml gives, so the planner and
// the coordinator use it unchanged. Design in docs/distributed.md, "Discovery".
#pragma once
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "edgeshard.pb.h"
#include "shard/shard_auth.h"
#include "shard/shard_beacon.h"
#include "shard/shard_cluster.h"
#include "shard/shard_dist_frontend.h"
#include "shard/shard_profile.h"

namespace es::shard {

class WorkerClient;

// The profile of `model_path` (whose SHA-256 is `model_sha`) on this device: read from
// `cache_dir`/profiles/<sha>-<device key>.json when an earlier run measured it, else measured
// and saved there. The device key hashes the host name, the CPU and the thread count. `*source`
// is "cached" or "measured". The budget is not cached (memory changes): the caller sets it.
Profile CachedProfile(const std::string& model_path, const std::string& model_sha,
                      const std::string& cache_dir, const MeasureOptions& o, std::string* source);
// The options discovery measures with: fewer samples and context lengths than `edgeshard
// profile`, so a worker's first discovery takes seconds, not minutes.
MeasureOptions QuickMeasureOptions(int threads);

// Times round trips (the median of `pings` small Echo calls) and one bulk transfer of
// `bulk_bytes` to `to` (bandwidth: bits over the transfer time less one RTT, the best of two).
LinkSpec MeasureLinkTo(WorkerClient& to, int pings, uint64_t bulk_bytes);
// The worker's handlers of Echo and MeasureLink (after their proofs were checked); requests out
// of bounds get INVALID_ARGUMENT.
grpc::Status ServeEcho(const edgeshard::rpc::EchoRequest& req, edgeshard::rpc::EchoReply* reply);
grpc::Status ServeMeasureLink(const edgeshard::rpc::MeasureLinkRequest& req,
                              const Security& security, edgeshard::rpc::MeasureLinkReply* reply);

struct DiscoveryOptions {
  DiscoveryEndpoint endpoint;
  std::chrono::milliseconds window{3000};  // --discover-seconds
  int expect = 0;                          // --discover-workers: stop waiting once found
  std::string source_name = "source";
  uint64_t source_memory_bytes = 0;  // the source's budget (0: MemAvailable)
  int source_gpu = -1;               // the source's GPU as a device of its own (-1: none)
  int source_threads = 0;            // threads the source's profile is measured with (0: all)
  std::string cache_dir;             // the source's profile cache (default: DefaultCacheDir())
  int pings = 5;                     // per link
  uint64_t bulk_bytes = 2 << 20;     // per link
  // Deadline of a worker's first answer with its profile (it may measure it first).
  std::chrono::milliseconds profile_deadline{300000};
  std::function<void(const std::string&)> log;  // what was found, ignored, measured
};

struct DiscoveredDevice {
  std::string name, address;  // address "" for the source
  int threads = 0;
  uint64_t memory_budget_bytes = 0;
  std::string profile_source;  // measured, cached, file, source's (...), none
  std::string model_sha256;    // of the worker's own --model ("" if none)
  std::string gpu_of, gpu;     // a GPU a worker offers: its host's name, the driver's name
};

struct Discovery {
  Cluster cluster;                        // profiles filled only when a model was given
  std::vector<DiscoveredDevice> devices;  // as cluster.devices, the source first
};

// Finds the workers, gathers their budgets and profiles and measures every link. With
// `model_path` (the source's model) every device gets a profile for it: a worker that has the
// same model measures its own; one that has another model or none is given the source's profile
// (the planner then assumes it is as fast as the source; the log says so). `model_sha`: the
// model's SHA-256 if the caller has it (else it is computed). Throws es::Error when no worker is
// found.
Discovery Discover(const std::string& model_path, const Security& security,
                   const DiscoveryOptions& o, const std::string& model_sha = "");
inline Cluster DiscoverCluster(const std::string& model_path, const Security& security,
                               const DiscoveryOptions& o, const std::string& model_sha = "") {
  return Discover(model_path, security, o, model_sha).cluster;
}

// The discovery options of `--cluster auto` and `cluster status` (the log goes to stderr).
// Throws es::Error on a bad --source-memory.
DiscoveryOptions DiscoveryFromCli(const ClusterCliOptions& c, int threads);

// The tables of `edgeshard cluster status`: devices, then links.
std::string DiscoveryTable(const Discovery& d);

}  // namespace es::shard
