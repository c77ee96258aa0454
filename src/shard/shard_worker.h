// The worker of distributed inference (`edgeshard worker`): a gRPC server that loads a layer range
// of a model, holds the KV caches of the sequences passing through it, runs their steps and
// forwards the activations to the next stage, or, as the last stage, samples and returns token
// ids to the coordinator. Protocol in proto/edgeshard.proto, design in docs/distributed.md.
#pragma once
#include <atomic>
#include <memory>
#include <string>

#include "shard/shard_auth.h"

namespace es::shard {

struct WorkerOptions {
  std::string listen = "127.0.0.1:0";  // port 0: any free port (see WorkerServer::port)
  std::string model_path;              // local copy of the model (optional)
  int threads = 0;                     // 0: all cores
  std::string cache_dir;     // models streamed from the source; the only place the worker writes
  std::string name;          // in logs and Health (default: the listen address)
  std::string profile_path;  // reported in Health (a `plan` profile JSON)
  Security security;
  bool quiet = false;  // no progress bars
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
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace es::shard
