// `edgeshard serve`: an OpenAI-compatible HTTP server with continuous batching.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <iterator>
#include <thread>
#include <utility>

#include "cli/cli_command.h"
#include "cli/cli_common.h"
#include "cli/cli_memory.h"
#include "server/server_http.h"
#include "shard/shard_coordinator.h"
#include "shard/shard_dist_cli.h"

namespace es::cli {
namespace {

struct ServeOptions {
  ModelOptions model;
  server::ServerOptions server;
  double head_timeout_s = 10, body_timeout_s = 60, idle_timeout_s = 5, write_timeout_s = 10;
  ChatTemplateOptions tmpl;
  // A server's load changes: plan for the requests being served unless told otherwise, and
  // let their number decide the steps in flight and the micro-batch.
  shard::ClusterCliOptions cluster = [] {
    shard::ClusterCliOptions c;
    c.objective = "load";
    c.micro_batch = 0;
    return c;
  }();
};

bool IsLoopbackHost(const std::string& h) {
  return h == "localhost" || h == "::1" || h == "[::1]" || h.rfind("127.", 0) == 0;
}

int Serve(ServeOptions o) {
  auto& s = o.server;
  s.model_path = o.model.model;
  s.chat_template = ChatTemplateText(o.tmpl);
  s.sched.n_ctx = o.model.ctx;
  s.sched.n_threads = o.model.threads;
  s.sched.n_batch = o.model.batch;
  s.use_mmap = !o.model.memory.no_mmap;
  s.mlock = o.model.memory.mlock;
  o.model.memory.CheckLocal(o.cluster.cluster);
  s.gpu_layers = o.model.memory.GpuLayers();
  s.gpu_device = o.model.memory.GpuDevice();
  s.sched.kv_type = {model::ParseKvType(o.model.cache_type_k, "--cache-type-k"),
                     model::ParseKvType(o.model.cache_type_v, "--cache-type-v")};
  auto ms = [](double sec) { return static_cast<int>(sec * 1000 + 0.5); };
  s.conn.head_timeout_ms = ms(o.head_timeout_s);
  s.conn.body_timeout_ms = ms(o.body_timeout_s);
  s.conn.idle_timeout_ms = ms(o.idle_timeout_s);
  s.conn.write_timeout_ms = ms(o.write_timeout_s);
  if (!o.cluster.cluster.empty()) {
    if (s.sched.step_delay_ms > 0)
      throw Error("--test-step-delay-ms does not apply to --cluster (the workers set the pace)");
    shard::ClusterModelArgs m{.model = o.model.model,
                              .threads = o.model.threads,
                              .ctx = o.model.ctx,
                              .batch = o.model.batch,
                              .cache_type_k = o.model.cache_type_k,
                              .cache_type_v = o.model.cache_type_v};
    s.cluster = shard::CoordinatorOptionsFor(o.cluster, m);
    s.cluster->quiet = true;
    s.cluster_in_flight = o.cluster.in_flight;
    s.cluster_micro_batch = o.cluster.micro_batch;
    s.cluster_load_hold_ms = static_cast<int>(o.cluster.load_hold_s * 1000 + 0.5);
  }
  if (!IsLoopbackHost(s.host) && s.api_key.empty())
    std::fprintf(stderr,
                 "edgeshard serve: warning: listening on %s without --api-key: anyone who can "
                 "reach this port can use the model (set --api-key or $EDGESHARD_API_KEY)\n",
                 s.host.c_str());

  // SIGINT/SIGTERM go to one thread that stops the server cleanly; block them before any other
  // thread exists so that none of those receives them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  server::HttpServer srv(s);
  const int port = srv.Bind();
  std::fprintf(stderr, "edgeshard serve: %s\n", srv.Describe().c_str());
  if (const model::LlamaModel* m = srv.local_model())
    ReportMemory("serve", ResidentFigures{.file_bytes = m->file().file_size(),
                                          .weight_bytes = m->weight_bytes(),
                                          .expert_bytes = m->ExpertTensorBytes(),
                                          .expert_bytes_per_token = m->ExpertBytesPerToken(),
                                          .kv_bytes = srv.local_kv_bytes(),
                                          .buffer_bytes = srv.local_buffer_bytes(),
                                          .weights_in_memory = !s.use_mmap || s.mlock});
  WarnBeyondTraining("serve", srv.n_ctx(), srv.n_ctx_train());
  std::fprintf(stderr, "edgeshard serve: listening on http://%s:%d\n", s.host.c_str(), port);
  std::fflush(stderr);
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    srv.Stop();
  });
  srv.Run();
  srv.Stop();
  // Wakes the waiter if the server ended on its own.
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  std::fprintf(stderr, "edgeshard serve: stopped\n");
  return kExitOk;
}

const bool registered = RegisterCommand("serve", [](CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  AddModelOptions(cmd, o->model);
  auto& s = o->server;
  cmd->add_option("--host", s.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", s.port, "port to listen on (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--parallel,--np", s.sched.n_slots,
                  "sequences decoded together, each with its own KV cache of -c tokens")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--queue", s.sched.max_queue, "requests that may wait for a slot; more get 503")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  cmd->add_option("--api-key", s.api_key,
                  "require 'Authorization: Bearer KEY' (also $EDGESHARD_API_KEY)")
      ->envname("EDGESHARD_API_KEY");
  AddChatTemplateOptions(cmd, o->tmpl);
  cmd->add_option("--alias", s.model_id, "model id reported by the API (default: the file name)");
  cmd->add_option("--max-body", s.max_body, "largest request body in bytes")
      ->check(CLI::Range(size_t{1024}, size_t{1} << 30))
      ->capture_default_str();
  cmd->add_option("--http-threads,--max-connections", s.conn.max_connections,
                  "connections served at once, a thread each, started as needed; more wait "
                  "(default: the larger of 256 and parallel + queue + 8)")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--max-conns-per-client", s.conn.max_per_client,
                  "connections one client address may hold at once; more are answered 429")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  const struct {
    const char* name;
    double* seconds;
    const char* what;
  } timeouts[] = {{"--http-head-timeout", &o->head_timeout_s,
                   "seconds a client has to send a request's line and headers"},
                  {"--http-body-timeout", &o->body_timeout_s,
                   "seconds a client has to send a request's body, after its headers"},
                  {"--http-idle-timeout", &o->idle_timeout_s,
                   "seconds a kept-alive connection may wait for its next request"},
                  {"--http-write-timeout", &o->write_timeout_s,
                   "seconds a client may take no response bytes before it is dropped"}};
  for (const auto& t : timeouts)
    cmd->add_option(t.name, *t.seconds, t.what)
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
  cmd->add_flag("-v,--verbose", s.log_requests, "log every request on stderr");
  AddContextShiftOptions(cmd, s.sched.context_shift, s.sched.n_keep);
  shard::AddClusterOptions(cmd, o->cluster, shard::ClusterCommand::kServe);
  // Makes tiny models slow enough for overload and disconnect tests to be deterministic.
  cmd->add_option("--test-step-delay-ms", s.sched.step_delay_ms,
                  "sleep after each batched step (testing aid)")
      ->check(CLI::Range(0, 10000))
      ->group("");
  return [o]() { return Serve(*o); };
});

}  // namespace
}  // namespace es::cli
