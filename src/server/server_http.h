// The OpenAI-compatible HTTP server: POST /v1/chat/completions, POST /v1/completions,
// GET /v1/models, GET /health, GET /metrics, and llama-server's POST /tokenize, /detokenize,
// /apply-template and GET /props; with a cluster also GET /cluster (a live page) and
// /cluster.json. HTTP threads parse and tokenize requests, hand them
// to the scheduler and stream its output back; the scheduler thread alone touches the model.
// httplib stays inside the .cpp, so front ends need not be built with its definitions.
#pragma once
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "server/server_conn.h"
#include "server/server_scheduler.h"
#include "shard/shard_coordinator.h"

namespace es::server {

struct ServerOptions {
  std::string model_path;
  std::string model_id;       // reported by /v1/models and in responses; default: file name
  std::string chat_template;  // name or template text; default: the model's own
  std::string host = "127.0.0.1";
  int port = 8080;         // 0: any free port (Bind returns it)
  std::string api_key;     // when set, every endpoint but /health needs "Bearer KEY"
  SchedulerOptions sched;  // with a cluster: n_slots and max_queue apply, n_ctx etc. come below
  // Serve the model split across a cluster's workers (`serve --cluster`) instead of alone.
  std::optional<shard::CoordinatorOptions> cluster;
  int cluster_in_flight = 0;        // steps travelling at once (0: chosen for the load)
  int cluster_micro_batch = 0;      // sequences per step (0: chosen for the load)
  int cluster_load_hold_ms = 1000;  // how long a number of requests holds before it is planned for
  // Connection limits; conn.max_connections 0: enough for every slot and queued request, and at
  // least 256.
  ConnLimits conn{.max_connections = 0};
  size_t max_body = 4u << 20;  // larger request bodies get 413
  bool log_requests = false;   // one line per request on stderr
  bool use_mmap = true;        // false: --no-mmap
  bool mlock = false;          // --mlock
  int gpu_layers = 0;          // -ngl: the last blocks on Vulkan device gpu_device (> n_layer: all)
  int gpu_device = 0;
};

class HttpServer {
 public:
  // Loads the model and allocates every slot's KV cache. Throws es::Error on bad input.
  explicit HttpServer(const ServerOptions& o);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket; returns the port. Throws es::Error if it cannot.
  int Bind();
  // Serves until Stop() (from any thread); then ends all generations.
  void Run();
  void Stop();
  // One line about the model, slots and memory, for the start-up message.
  std::string Describe() const;
  int n_ctx() const;        // per slot
  int n_ctx_train() const;  // the model's training context
  // The model served alone (nullptr with a cluster), and its slots' KV caches and step buffers:
  // the start-up line's memory figures.
  const model::LlamaModel* local_model() const;
  size_t local_kv_bytes() const;
  size_t local_buffer_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace es::server
