// Shared by test_distributed.cpp and test_distributed_faults.cpp: real `edgeshard worker`
// processes on loopback, throwaway token/profile/cluster files, and the single-device reference.
#pragma once
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "edgeshard/edgeshard.h"
#include "gguf/gguf_file.h"
#include "shard/shard_auth.h"
#include "shard/shard_coordinator.h"
#include "shard/shard_model_units.h"
#include "shard/shard_profile.h"
#include "test_util.h"

namespace es::test {

// A directory under /tmp removed at the end of the test.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/es_dist_XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string File(const std::string& name, const std::string& text) const {
    const std::string p = path + "/" + name;
    std::ofstream(p, std::ios::binary) << text;
    chmod(p.c_str(), 0600);
    return p;
  }
};

// Starts `edgeshard worker ARGS` with its stdout on `out_fd` and its stderr appended to `log`.
inline pid_t ForkWorker(const std::vector<std::string>& args, int out_fd, const std::string& log) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  dup2(out_fd, STDOUT_FILENO);
  const int err = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  dup2(err, STDERR_FILENO);
  std::vector<std::string> a = {BinaryPath(), "worker"};
  a.insert(a.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : a) argv.push_back(s.data());
  argv.push_back(nullptr);
  execv(argv[0], argv.data());
  _exit(127);
}

// One `edgeshard worker` process. Its stderr goes to a file the test can read.
class WorkerProcess {
 public:
  // `port` 0 picks a free port (read back from the worker's first line of output).
  WorkerProcess(const std::string& name, const std::vector<std::string>& args,
                const std::string& log_dir, int port = 0)
      : name_(name), log_(log_dir + "/" + name + ".log") {
    Start(args, port);
  }
  ~WorkerProcess() { Stop(); }
  void Start(const std::vector<std::string>& args, int port) {
    args_ = args;
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    std::vector<std::string> a = {"--listen", "127.0.0.1:" + std::to_string(port), "--name", name_,
                                  "-q"};
    a.insert(a.end(), args.begin(), args.end());
    pid_ = ForkWorker(a, out[1], log_);
    close(out[1]);
    // "edgeshard worker: listening on 127.0.0.1:PORT"
    std::string line;
    char c;
    while (read(out[0], &c, 1) == 1 && c != '\n') line += c;
    close(out[0]);
    const size_t colon = line.rfind(':');
    port_ = colon == std::string::npos ? 0 : std::atoi(line.c_str() + colon + 1);
    if (port_ == 0) ADD_FAILURE() << "worker " << name_ << " did not start: " << Log();
  }
  void Restart() {
    Stop();
    Start(args_, port_);
  }
  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGCONT);
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  const std::string& name() const { return name_; }
  std::string Log() const { return ReadFile(log_); }

 private:
  std::string name_, log_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// A profile for `model` with made-up timings (1 ms per MiB of weights): the tests steer the
// planner with memory budgets, not speed.
inline std::string WriteProfile(const TempDir& dir, const std::string& model) {
  auto f = gguf::File::Open(model);
  shard::Profile p;
  p.device = "test";
  p.threads = 1;
  p.prompt_batch = 64;
  p.model = shard::UnitsFromGguf(*f);
  for (const auto& u : p.model.units) {
    shard::UnitTiming t;
    const double ms = double(u.weight_bytes) / (1 << 20);
    t.prompt_ms_per_token = ms / 8;
    t.decode = {{16, ms}, {1024, ms * 1.5}};
    p.timing.push_back(t);
  }
  const std::string path =
      dir.path + "/profile-" + std::to_string(std::hash<std::string>()(model)) + ".json";
  shard::SaveProfile(p, path);
  return path;
}

// Memory a unit needs with a KV cache of n_ctx positions (as the planner counts it).
inline uint64_t UnitBytes(const shard::UnitInfo& u, int n_ctx) {
  return u.weight_bytes + u.kv_bytes_per_token * uint64_t(n_ctx);
}

struct DeviceLine {
  std::string name, address;
  uint64_t memory;
};

inline std::string ClusterYaml(const std::string& profile, const std::vector<DeviceLine>& devs) {
  std::string y =
      "source: " + devs[0].name + "\ndefault_link: {bandwidth_mbps: 1000, rtt_ms: 0.2}\ndevices:\n";
  for (const auto& d : devs) {
    y += "  - {name: " + d.name + ", profile: " + profile + ", memory: " + std::to_string(d.memory);
    if (!d.address.empty()) y += ", address: \"" + d.address + "\"";
    y += "}\n";
  }
  return y;
}

// Budgets that leave the planner one choice of devices: the source holds only the embedding and
// the blocks are split into `k` contiguous groups, each on its own worker (the last with the
// head). Each budget has a little slack, less than any unit needs.
inline std::vector<uint64_t> SplitBudgets(const shard::ModelUnits& m, int n_ctx, int k) {
  const int U = int(m.units.size());
  uint64_t smallest = UINT64_MAX;
  for (const auto& u : m.units) smallest = std::min(smallest, UnitBytes(u, n_ctx));
  const uint64_t slack = smallest / (2 * (k + 1));
  std::vector<uint64_t> b = {UnitBytes(m.units[0], n_ctx) + slack};
  // units 1 .. U-1 (blocks and head) over k workers, by count
  const int rest = U - 1;
  int u = 1;
  for (int w = 0; w < k; ++w) {
    const int n = rest / k + (w < rest % k ? 1 : 0);
    uint64_t sum = 0;
    for (int i = 0; i < n; ++i, ++u) sum += UnitBytes(m.units[u], n_ctx);
    b.push_back(sum + slack);
  }
  return b;
}

// Greedy continuation on one device, the reference for every distributed run.
struct Reference {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<float> logits;  // after the prompt
};
inline Reference SingleDevice(const std::string& model, const std::vector<int32_t>& prompt,
                              int n_ctx, int max_tokens, const std::string& cache_type_k = "f16",
                              const std::string& cache_type_v = "f16") {
  auto m = Model::Load({.path = model, .progress = {}});
  ContextParams cp;
  cp.n_ctx = n_ctx;
  cp.n_threads = 1;
  cp.cache_type_k = cache_type_k;
  cp.cache_type_v = cache_type_v;
  Context ctx(m, cp);
  Reference r;
  ctx.Eval(prompt);
  r.logits = ctx.last_logits();
  ctx.Truncate(0);
  GenerateParams g;
  g.max_tokens = max_tokens;
  g.sampling.temperature = 0;
  auto res = ctx.Generate(prompt, g, {});
  r.tokens = res.tokens;
  r.text = res.text;
  return r;
}

// Options of a coordinator for `cluster` with one compute thread and no output (`log` gets the
// coordinator's events).
inline shard::CoordinatorOptions QuietOptions(const std::string& cluster,
                                              const std::string& token_file, int n_ctx,
                                              std::function<void(const std::string&)> log = {}) {
  shard::CoordinatorOptions o;
  o.cluster_path = cluster;
  o.security = shard::Security::Load(token_file, "", "", "");
  o.n_ctx = n_ctx;
  o.n_threads = 1;
  o.quiet = true;
  o.log = log ? std::move(log) : [](const std::string&) {};
  return o;
}

inline GenerateParams Greedy(int n) {
  GenerateParams g;
  g.max_tokens = n;
  g.sampling.temperature = 0;
  return g;
}

}  // namespace es::test
