// The worker of distributed inference (`edgeshard worker`): a gRPC server that loads a layer range
// of a model, holds the KV caches of the sequences passing through it, runs their steps and
// forwards the activations to the next stage, or, as the last stage, samples and returns token
// ids to the coordinator. Protocol in proto/edgeshard.proto, design in docs/distributed.md.
#pragma once
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "shard/shard_auth.h"
#include "shard/shard_beacon.h"

namespace es::shard {

struct WorkerOptions {
  std::string listen = "127.0.0.1:0";  // port 0: any free port (see WorkerServer::port)
  std::string model_path;              // local copy of the model (optional)
  int threads = 0;                     // 0: all cores
  std::string cache_dir;     // models streamed from the source; the only place the worker writes
  std::string name;          // in logs and Health (default: the listen address)
  std::string profile_path;  // reported in Health (a `plan` profile JSON)
  Security security;
  uint64_t memory_budget = 0;  // offered in Health (0: MemAvailable at the time of asking)
  // Discovery: announce this worker on the beacon's group (and answer probes) unless unset.
  std::optional<DiscoveryEndpoint> announce;
  std::chrono::milliseconds announce_interval{5000};
  // Measure (or read from the cache) the profile of model_path at start rather than when the
  // first discovery asks for it.
  bool profile_at_start = false;
  bool quiet = false;    // no progress bars
  bool use_mmap = true;  // false (--no-mmap): read the model into memory
  bool mlock = false;    // --mlock: lock the shard's weights in memory
  // --gpu-layers: the last gpu_layers blocks of each shard (all when >= its size) run on Vulkan
  // device gpu_device, with their KV caches.
  int gpu_layers = 0;
  int gpu_device = 0;
  // --gpu vulkanN: offered to discovery as a device of its own (measured with its own profile);
  // a plan that gives it a range runs that range there. -1: none.
  int offer_gpu = -1;
  // Set (e.g. by a signal) to abandon start-up: the constructor then throws Stopped promptly,
  // also while it hashes a large model.
  const std::atomic<bool>* stop = nullptr;
};

// The default cache directory: $XDG_CACHE_HOME/edgeshard, else $HOME/.cache/edgeshard.
std::string DefaultCacheDir();

class WorkerServer {
 public:
  // Starts serving (throws es::Error if the address cannot be bound or a file is bad).
  explicit WorkerServer(const WorkerOptions& options);
  ~WorkerServer();
  int port() const;
  std::string address() const;  // host:port actually bound
  void Wait();                  // until Shutdown
  void Shutdown();

 private:
  void StartBeacon(const WorkerOptions& o);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace es::shard
