// `edgeshard bench`: prompt-processing and generation speed, medians over repetitions.
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <thread>

#include "cli/cli_command.h"
#include "cli/cli_common.h"
#include "kernels/kernels.h"
#include "shard/shard_dist_cli.h"

namespace es::cli {
namespace {

struct BenchOptions {
  std::string model;
  MemoryOptions memory;
  int n_prompt = 512;
  int n_gen = 128;
  std::vector<int> threads = {0};
  int reps = 5;
  int batch = 512;
  bool json = false;
  bool membw = false;
  std::string cache_type_k = "f16", cache_type_v = "f16";
  shard::ClusterCliOptions cluster;  // --cluster: sequential and pipelined over workers
};

// Read bandwidth of this machine, the roofline decode is judged against: the best rate any of
// several ways of reading a 1 GiB buffer (far larger than the caches) reaches with `threads`
// threads, each the best of 5 passes. A meter that reads slower than decode streams its weights
// is no roofline, so it tries what the kernels do and more: widest vector loads with independent
// accumulators (kernels::ReadSum), contiguous slices per thread or interleaved 256 KiB blocks,
// with and without software prefetch, a plain scalar loop, and 2 MiB transparent huge pages
// (the engine's weights use them) against 4 KiB pages.
struct BandwidthPattern {
  std::string name;
  double bytes_per_s = 0;
};

std::vector<BandwidthPattern> MeasureReadBandwidth(int threads) {
  const size_t bytes = size_t{1} << 30;
  struct Unmap {
    size_t n;
    void operator()(void* p) const { munmap(p, n); }
  };
  std::vector<BandwidthPattern> out;
  for (const bool huge : {true, false}) {
    void* raw = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw Error("--memory-bandwidth: cannot map a 1 GiB buffer");
    std::unique_ptr<void, Unmap> mem(raw, Unmap{bytes});
    madvise(raw, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    std::span<uint64_t> buf(static_cast<uint64_t*>(raw), bytes / 8);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = i;
    // kind: 0 SIMD slices, 1 SIMD slices + prefetch, 2 SIMD interleaved blocks, 3 scalar slices
    const char* names[] = {"vector slices", "vector slices + prefetch", "vector interleaved",
                           "scalar slices"};
    for (int kind = 0; kind < 4; ++kind) {
      if (!huge && kind != 0) continue;  // 4 KiB pages: one pattern shows what they cost
      double best = 0;
      for (int pass = 0; pass < 5; ++pass) {
        std::vector<uint64_t> sums(threads);
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t)
          ts.emplace_back([&, t] {
            const size_t n = buf.size();
            uint64_t sum = 0;
            if (kind == 2) {
              const size_t block = (256 << 10) / 8;
              for (size_t b = size_t(t) * block; b < n; b += size_t(threads) * block)
                sum += kernels::ReadSum(buf.data() + b, std::min(block, n - b), 0);
            } else {
              const size_t b = n * t / threads, e = n * (t + 1) / threads;
              if (kind == 3) {
                uint64_t a[8] = {};
                for (size_t i = b; i + 8 <= e; i += 8)
                  for (int k = 0; k < 8; ++k) a[k] += buf[i + k];
                sum = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
              } else {
                sum = kernels::ReadSum(buf.data() + b, e - b, kind == 1 ? 1024 : 0);
              }
            }
            sums[t] = sum;
          });
        for (auto& th : ts) th.join();
        const double sec =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, bytes / sec);
        if (sums[0] == 42) std::fprintf(stderr, " ");  // keeps the sums alive
      }
      out.push_back({std::string(names[kind]) + (huge ? ", 2 MiB pages" : ", 4 KiB pages"), best});
    }
  }
  return out;
}

size_t PeakRssBytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;
}

struct Stats {
  double median, min, max, stddev;
};

Stats Summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  double mean = 0;
  for (double x : v) mean += x;
  mean /= n;
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  return {med, v.front(), v.back(), n > 1 ? std::sqrt(var / (n - 1)) : 0.0};
}

int Bench(const BenchOptions& o) {
  if (o.membw) {
    nlohmann::json rows = nlohmann::json::array();
    for (int t : o.threads) {
      const int n = t > 0 ? t : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
      const auto patterns = MeasureReadBandwidth(n);
      double bw = 0;
      std::string best;
      nlohmann::json each = nlohmann::json::object();
      for (const auto& p : patterns) {
        each[p.name] = p.bytes_per_s;
        if (p.bytes_per_s > bw) bw = p.bytes_per_s, best = p.name;
      }
      if (o.json) {
        rows.push_back(
            {{"threads", n}, {"read_bytes_per_s", bw}, {"best", best}, {"patterns", each}});
      } else {
        std::printf("memory read bandwidth, %d threads: %.2f GB/s (best: %s; 1 GiB, best of 5)\n",
                    n, bw / 1e9, best.c_str());
        for (const auto& p : patterns)
          std::printf("  %-40s %6.2f GB/s\n", p.name.c_str(), p.bytes_per_s / 1e9);
      }
    }
    if (o.json) std::printf("%s\n", rows.dump(2).c_str());
    return kExitOk;
  }
  if (o.model.empty()) throw UsageError("-m MODEL is required (or --memory-bandwidth)");
  o.memory.CheckLocal(o.cluster.cluster);
  if (!o.cluster.cluster.empty() && (o.cache_type_k != "f16" || o.cache_type_v != "f16"))
    throw UsageError(
        "bench --cluster measures with F16 KV caches; -ctk/-ctv are for one device "
        "here (run and chat --cluster take them)");
  if (!o.cluster.cluster.empty())
    return shard::ClusterBench(o.cluster, o.model, o.n_prompt, o.n_gen, o.threads[0], o.reps,
                               o.batch, o.json);
  auto model = LoadModel(o.model, o.memory);
  const auto info = model->Info();
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> tok(0, info.n_vocab - 1);
  nlohmann::json results = nlohmann::json::array();
  if (!o.json) {
    std::printf("| model | type | size | threads | test | t/s (median) | min | max | stddev |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
  }
  using Clock = std::chrono::steady_clock;
  for (int t : o.threads) {
    ContextParams cp;
    cp.n_threads = t;
    cp.n_ctx = std::min(info.n_ctx_train, std::max(o.n_prompt, o.n_gen) + 1);
    cp.n_batch = o.batch;
    cp.cache_type_k = o.cache_type_k;
    cp.cache_type_v = o.cache_type_v;
    Context ctx(model, cp);
    if (t == o.threads.front()) ReportMemory("bench", *model, ctx);
    auto run = [&](const char* kind, int n, bool prompt) {
      if (n <= 0) return;
      std::vector<double> tps;
      for (int r = -1; r < o.reps; ++r) {  // r == -1 is an untimed warm-up
        ctx.Truncate(0);
        std::vector<int32_t> toks(n);
        for (auto& x : toks) x = tok(rng);
        const auto t0 = Clock::now();
        if (prompt) {
          ctx.Eval(toks);
        } else {
          for (int i = 0; i < n; ++i) ctx.Eval({toks[i]});
        }
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (r >= 0) tps.push_back(n / s);
      }
      const Stats st = Summarize(tps);
      const std::string test = std::string(kind) + std::to_string(n);
      if (o.json) {
        results.push_back({{"model", o.model},
                           {"type", info.weight_type},
                           {"size_bytes", info.file_bytes},
                           {"threads", ctx.n_threads()},
                           {"test", test},
                           {"n_tokens", n},
                           {"reps", o.reps},
                           {"tokens_per_s", tps},
                           {"median", st.median},
                           {"min", st.min},
                           {"max", st.max},
                           {"stddev", st.stddev},
                           {"weight_bytes", info.weight_bytes},
                           {"weight_bytes_per_token", info.weight_bytes_per_token},
                           {"expert_bytes", info.expert_bytes},
                           {"expert_bytes_per_token", info.expert_bytes_per_token},
                           {"kv_bytes", ctx.kv_bytes()},
                           {"peak_rss_bytes", PeakRssBytes()}});
      } else {
        std::printf("| %s | %s | %s | %d | %s | %.2f | %.2f | %.2f | %.2f |\n", info.name.c_str(),
                    info.weight_type.c_str(),
                    HumanBytes(static_cast<double>(info.file_bytes)).c_str(), ctx.n_threads(),
                    test.c_str(), st.median, st.min, st.max, st.stddev);
        std::fflush(stdout);
      }
    };
    run("pp", o.n_prompt, true);
    run("tg", o.n_gen, false);
  }
  if (o.json) std::printf("%s\n", results.dump(2).c_str());
  return kExitOk;
}

const bool registered = RegisterCommand("bench", [](CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand("bench", "measure prompt processing and generation speed");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->check(CLI::ExistingFile);
  cmd->add_flag("--memory-bandwidth", o->membw,
                "measure this machine's memory read bandwidth instead");
  cmd->add_option("-p,--n-prompt", o->n_prompt, "prompt tokens (pp test; 0 skips)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("-n,--n-gen", o->n_gen, "generated tokens (tg test; 0 skips)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("-t,--threads", o->threads, "thread counts, comma separated")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024));
  cmd->add_option("-r,--repetitions", o->reps, "timed repetitions per test")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("-b,--batch", o->batch, "prompt tokens per forward pass")
      ->check(CLI::Range(1, 65536));
  AddCacheTypeOptions(cmd, o->cache_type_k, o->cache_type_v);
  AddMemoryOptions(cmd, o->memory);
  cmd->add_flag("--json", o->json, "print results as JSON");
  shard::AddClusterOptions(cmd, o->cluster, shard::ClusterCommand::kBench);
  return [o]() { return Bench(*o); };
});

}  // namespace
}  // namespace es::cli
