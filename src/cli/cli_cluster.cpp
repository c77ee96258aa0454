// `edgeshard cluster status`: discover the workers that hold the cluster token, print what was
// found (devices, budgets, profiles, measured links) and, with -m, the plan `--cluster auto`
// would use.
#include <cstdio>
#include <cstdlib>

#include "cli/cli_command.h"
#include "cli/cli_plan.h"
#include "shard/shard_discovery.h"
#include "shard/shard_dist_cli.h"

namespace es::cli {
namespace {

struct StatusOptions {
  shard::ClusterCliOptions c;  // token, discovery options
  PlanOptions plan;
  int threads = 0;
};

int Status(StatusOptions& o) {
  std::string token_file = o.c.token_file;
  if (token_file.empty())
    if (const char* e = std::getenv("EDGESHARD_TOKEN_FILE"); e && *e) token_file = e;
  if (token_file.empty())
    throw UsageError(
        "cluster status needs the cluster's token: --token-file FILE (or "
        "EDGESHARD_TOKEN_FILE)");
  const shard::Security security =
      shard::Security::Load(token_file, o.c.tls_ca, o.c.tls_cert, o.c.tls_key);
  const shard::DiscoveryOptions d = shard::DiscoveryFromCli(o.c, o.threads);
  const shard::Discovery found = shard::Discover(o.plan.model, security, d);
  std::printf("Discovered %zu worker(s) on %s:%d\n\n%s", found.devices.size() - 1,
              d.endpoint.group.c_str(), d.endpoint.port, shard::DiscoveryTable(found).c_str());
  if (o.plan.model.empty()) return kExitOk;
  std::printf("\n");
  std::fflush(stdout);
  o.plan.cluster = "the discovered cluster";
  return Plan(o.plan, found.cluster);
}

const bool registered = RegisterCommand("cluster", [](CLI::App& app) {
  auto o = std::make_shared<StatusOptions>();
  auto* cmd = app.add_subcommand("cluster", "zero-config clusters: what discovery finds");
  cmd->require_subcommand(1);
  auto* st = cmd->add_subcommand(
      "status", "discover the workers that hold the token; print them, their links and the plan");
  st->add_option("--token-file", o->c.token_file, "file with the cluster's shared token")
      ->check(CLI::ExistingFile);
  st->add_option("--tls-ca", o->c.tls_ca, "CA certificate that signed the workers' certificates")
      ->check(CLI::ExistingFile);
  st->add_option("--tls-cert", o->c.tls_cert, "this machine's TLS certificate")
      ->check(CLI::ExistingFile);
  st->add_option("--tls-key", o->c.tls_key, "key of --tls-cert")->check(CLI::ExistingFile);
  shard::AddDiscoverOptions(st, o->c, "Discovery");
  st->add_option("-m,--model", o->plan.model, "plan this model (GGUF) on what was found")
      ->check(CLI::ExistingFile);
  st->add_option("-t,--threads", o->threads, "threads this machine's profile is measured with")
      ->check(CLI::Range(1, 1024));
  st->add_option("--objective", o->plan.objective, "latency (sequential) or throughput")
      ->check(CLI::IsMember({"latency", "throughput"}));
  st->add_option("--ctx", o->plan.ctx, "context length the plan is made for")
      ->check(CLI::Range(1, 1 << 24));
  st->add_option("--svg", o->plan.svg, "draw the plan into this SVG file");
  return [o, st]() {
    if (!st->parsed()) throw UsageError("cluster: give a subcommand (status)");
    if (o->c.tls_cert.empty() != o->c.tls_key.empty())
      throw UsageError("--tls-cert and --tls-key go together");
    return Status(*o);
  };
});

}  // namespace
}  // namespace es::cli
