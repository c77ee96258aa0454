// `edgeshard worker`: serve a shard of a model to a coordinator (`run|chat|bench --cluster`).
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include "cli/cli_command.h"
#include "cli/cli_common.h"
#include "gpu/gpu_device.h"
#include "shard/shard_cluster.h"
#include "shard/shard_dist_cli.h"
#include "shard/shard_worker.h"

namespace es::cli {
namespace {

struct WorkerCliOptions {
  shard::WorkerOptions w;
  std::string token_file, tls_ca, tls_cert, tls_key, memory, gpu;
  shard::DiscoveryEndpoint discovery;
  double announce_seconds = 5;
  bool no_announce = false;
  MemoryOptions mem;
};

// Set by the signal thread: start-up (hashing a large model) checks it, serving waits for it.
std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};
std::mutex g_mu;
std::condition_variable g_cv;

const char* SignalName(int sig) {
  return sig == SIGINT ? "SIGINT" : "SIGTERM";
}

int Worker(WorkerCliOptions& o) {
  // Signals are taken by one thread only (not by gRPC's or the compute threads), and from the
  // start, so that SIGINT/SIGTERM also stop a worker that is still hashing its model.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    sigwait(&set, &sig);
    {
      std::lock_guard<std::mutex> lock(g_mu);
      g_signal = sig;
      g_stop = true;
    }
    g_cv.notify_all();
  }).detach();  // it lives as long as the process
  const std::string name = o.w.name.empty() ? o.w.listen : o.w.name;
  o.w.stop = &g_stop;
  std::unique_ptr<shard::WorkerServer> server;
  try {
    o.w.security = shard::Security::Load(o.token_file, o.tls_ca, o.tls_cert, o.tls_key);
    server = std::make_unique<shard::WorkerServer>(o.w);
  } catch (const shard::Stopped& e) {
    // 128 + the signal's number, as a shell reports a process that a signal ended.
    shard::LogLine(
        name, std::string("stopping on ") + SignalName(g_signal) + " during start-up: " + e.what());
    return 128 + g_signal;
  }
  // Tests and scripts read this line to learn the port (with --listen HOST:0).
  std::printf("edgeshard worker: listening on %s\n", server->address().c_str());
  std::fflush(stdout);
  {
    std::unique_lock<std::mutex> lock(g_mu);
    g_cv.wait(lock, [] { return g_stop.load(); });
  }
  shard::LogLine(o.w.name.empty() ? server->address() : o.w.name,
                 std::string("stopping on ") + SignalName(g_signal));
  server->Shutdown();
  return kExitOk;
}

const bool registered = RegisterCommand("worker", [](CLI::App& app) {
  auto o = std::make_shared<WorkerCliOptions>();
  auto* cmd = app.add_subcommand(
      "worker", "serve layers of a model to a coordinator (run|chat|bench --cluster)");
  cmd->add_option("--listen", o->w.listen,
                  "HOST:PORT to listen on (default 127.0.0.1:0, loopback and any free port; "
                  "other machines reach it only at an address you name, e.g. 0.0.0.0:7070)");
  cmd->add_option("-m,--model", o->w.model_path,
                  "local copy of the model, a regular file (checked by its hash)")
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
  cmd->add_option("--memory", o->memory,
                  "memory offered to shards, e.g. '6 GiB' (default: MemAvailable when asked)");
  shard::AddDiscoveryEndpointOptions(cmd, o->discovery.group, o->discovery.port);
  cmd->add_option("--announce-interval", o->announce_seconds,
                  "seconds between announcements on the discovery group (0: only answer a "
                  "source's authenticated probes)")
      ->check(CLI::Range(0.0, 3600.0));
  cmd->add_flag("--profile-at-start", o->w.profile_at_start,
                "measure the profile of -m now (or read it from the cache) rather than when a "
                "source's discovery first asks for it");
  cmd->add_flag("--no-announce", o->no_announce,
                "not discoverable (`--cluster auto`): no beacon at all");
  cmd->add_flag("-q,--quiet", o->w.quiet, "no progress bars");
  AddMemoryOptions(cmd, o->mem);
  cmd->add_option("--gpu", o->gpu,
                  "offer this GPU (vulkan0, ...) to discovery as a device of its own: the planner "
                  "gives it a range of its own, measured on it");
  return [o]() {
    if (o->tls_cert.empty() != o->tls_key.empty())
      throw UsageError("--tls-cert and --tls-key go together");
    if (!o->tls_ca.empty() && o->tls_cert.empty())
      throw UsageError("--tls-ca needs --tls-cert and --tls-key (the worker's own certificate)");
    if (!o->memory.empty()) {
      const auto m = shard::ParseByteSize(o->memory);
      if (!m || *m == 0)
        throw UsageError("--memory '" + o->memory + "' is not a size such as '6 GiB' or '512MB'");
      o->w.memory_budget = *m;
    }
    if (!o->no_announce) {
      try {
        shard::CheckEndpoint(o->discovery);
      } catch (const Error& e) {
        throw UsageError(e.what());
      }
      o->w.announce = o->discovery;
    }
    o->w.announce_interval = std::chrono::milliseconds(int64_t(o->announce_seconds * 1000));
    o->w.gpu_layers = o->mem.GpuLayers();
    o->w.gpu_device = o->mem.GpuDevice();
    if (!o->gpu.empty()) {
      try {
        o->w.offer_gpu = gpu::ParseDeviceName(o->gpu);
      } catch (const Error& e) {
        throw UsageError(std::string("--gpu: ") + e.what());
      }
      gpu::FindDevice(o->w.offer_gpu);  // refused now rather than at the first discovery
    }
    o->w.use_mmap = !o->mem.no_mmap;
    o->w.mlock = o->mem.mlock;
    return Worker(*o);
  };
});

}  // namespace
}  // namespace es::cli
