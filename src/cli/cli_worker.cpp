// `edgeshard worker`: serve a shard of a model to a coordinator (`run|chat|bench --cluster`).
#include <pthread.h>
#include <signal.h>

#include <cstdio>

#include "cli/cli_command.h"
#include "shard/shard_worker.h"

namespace es::cli {
namespace {

struct WorkerCliOptions {
  shard::WorkerOptions w;
  std::string token_file, tls_ca, tls_cert, tls_key;
};

int Worker(WorkerCliOptions& o) {
  o.w.security = shard::Security::Load(o.token_file, o.tls_ca, o.tls_cert, o.tls_key);
  // Signals are taken by this thread only (sigwait below), not by gRPC's or the compute threads.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  shard::WorkerServer server(o.w);
  // Tests and scripts read this line to learn the port (with --listen HOST:0).
  std::printf("edgeshard worker: listening on %s\n", server.address().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  shard::LogLine(o.w.name.empty() ? server.address() : o.w.name,
                 std::string("stopping on ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
  server.Shutdown();
  return kExitOk;
}

const bool registered = RegisterCommand("worker", [](CLI::App& app) {
  auto o = std::make_shared<WorkerCliOptions>();
  auto* cmd = app.add_subcommand(
      "worker", "serve layers of a model to a coordinator (run|chat|bench --cluster)");
  cmd->add_option("--listen", o->w.listen,
                  "HOST:PORT to listen on (default 127.0.0.1:0, loopback and any free port; "
                  "other machines reach it only at an address you name, e.g. 0.0.0.0:7070)");
  cmd->add_option("-m,--model", o->w.model_path, "local copy of the model (checked by its hash)")
      ->check(CLI::ExistingFile);
  cmd->add_option("-t,--threads", o->w.threads, "compute threads (default: all cores)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--token-file", o->token_file, "file with the cluster's shared token")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-cert", o->tls_cert, "TLS certificate (PEM)")->check(CLI::ExistingFile);
  cmd->add_option("--tls-key", o->tls_key, "key of --tls-cert (PEM)")->check(CLI::ExistingFile);
  cmd->add_option("--tls-ca", o->tls_ca,
                  "CA (PEM) that must have signed the coordinator's and the other workers' "
                  "certificates (mutual TLS)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--cache-dir", o->w.cache_dir,
                  "where models sent by the coordinator are kept; the only place the worker "
                  "writes (default: ~/.cache/edgeshard)");
  cmd->add_option("--name", o->w.name, "name in logs (default: the listen address)");
  cmd->add_option("--profile", o->w.profile_path, "profile JSON reported to the coordinator")
      ->check(CLI::ExistingFile);
  cmd->add_flag("-q,--quiet", o->w.quiet, "no progress bars");
  return [o]() {
    if (o->tls_cert.empty() != o->tls_key.empty())
      throw UsageError("--tls-cert and --tls-key go together");
    if (!o->tls_ca.empty() && o->tls_cert.empty())
      throw UsageError("--tls-ca needs --tls-cert and --tls-key (the worker's own certificate)");
    return Worker(*o);
  };
});

}  // namespace
}  // namespace es::cli
