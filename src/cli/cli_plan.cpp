// `edgeshard plan`: choose devices and layer ranges for a cluster (EdgeShard planner).
#include "cli/cli_plan.h"

#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/cli_command.h"
#include "cli/cli_common.h"
#include "model/model_llama.h"
#include "shard/shard_placement.h"
#include "shard/shard_planner.h"
#include "shard/shard_profile.h"
#include "shard/shard_svg.h"

namespace es::cli {
namespace {

using namespace es::shard;
using nlohmann::json;

std::string Gib(double b) {
  return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
}

// What the user reads off a plan: the objective in its own unit, plus both times.
struct Scored {
  std::string name, note;
  std::vector<Stage> stages;
  Evaluation ev;
  double value = 0;  // ms per token (latency) or tokens/s (throughput)
};

double Value(Objective obj, const Evaluation& e) {
  // Latency: a step yields one token per sequence. Throughput: one token per pipeline period.
  return obj == Objective::kLatency ? e.step_ms : 1000.0 / e.bottleneck_ms;
}

Scored Score(const Problem& p, Objective obj, std::string name, std::vector<Stage> st) {
  Scored s{std::move(name), "", std::move(st), {}, 0};
  if (!s.stages.empty()) s.ev = Evaluate(p, s.stages), s.value = Value(obj, s.ev);
  return s;
}

std::string Range(const Problem& p, const Stage& s) {
  return s.last - s.first == 1 ? p.units[s.first] : p.units[s.first] + ".." + p.units[s.last - 1];
}

json StagesJson(const Problem& p, const Scored& s) {
  json a = json::array();
  for (size_t i = 0; i < s.stages.size(); ++i) {
    const Stage& x = s.stages[i];
    const int next = i + 1 < s.stages.size() ? s.stages[i + 1].device : p.source;
    a.push_back({{"device", p.devices[x.device]},
                 {"first_unit", x.first},
                 {"last_unit", x.last},
                 {"units", Range(p, x)},
                 {"compute_ms", s.ev.comp_ms[i]},
                 {"send_to", p.devices[next]},
                 {"send_ms", s.ev.link_ms[i]},
                 {"weight_bytes", s.ev.weight_bytes[i]},
                 {"kv_bytes", s.ev.kv_bytes[i]},
                 {"budget_bytes", p.budget_bytes[x.device]},
                 {"over_bytes", s.ev.over_bytes[i]}});
  }
  return a;
}

json ScoredJson(const Problem& p, Objective obj, int batch, const Scored& s) {
  json j = {{"name", s.name}, {"applicable", !s.stages.empty()}};
  if (s.stages.empty()) {
    j["note"] = s.note;
    return j;
  }
  j["fits"] = s.ev.fits();
  j["missing_bytes"] = s.ev.missing_bytes;
  j["step_ms"] = s.ev.step_ms;
  j["bottleneck_ms"] = s.ev.bottleneck_ms;
  if (obj == Objective::kLatency) {
    j["ms_per_token"] = s.ev.step_ms;
    j["tokens_per_s"] = 1000.0 * batch / s.ev.step_ms;
  } else {
    j["tokens_per_s"] = s.value;
    j["sequences_to_fill_pipeline"] = int(std::ceil(s.ev.step_ms / s.ev.bottleneck_ms - 1e-9));
    j["tokens_per_s_with_batch"] =
        1000.0 * std::min(1.0 / s.ev.bottleneck_ms, batch / s.ev.step_ms);
  }
  j["stages"] = StagesJson(p, s);
  return j;
}

void PrintStages(const Problem& p, const Scored& s) {
  std::printf(
      "| stage | device | units | count | compute ms | send ms | weights | KV cache | memory / "
      "budget |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < s.stages.size(); ++i) {
    const Stage& x = s.stages[i];
    const int next = i + 1 < s.stages.size() ? s.stages[i + 1].device : p.source;
    const std::string send = s.ev.link_ms[i] == 0
                                 ? "-"
                                 : fmt::format("{:.2f} -> {}{}", s.ev.link_ms[i], p.devices[next],
                                               i + 1 == s.stages.size() ? " (token id)" : "");
    std::printf("| %zu | %s%s | %s | %d | %.2f | %s | %s | %s | %s / %s%s |\n", i + 1,
                p.devices[x.device].c_str(), x.device == p.source ? " (source)" : "",
                Range(p, x).c_str(), x.last - x.first, s.ev.comp_ms[i], send.c_str(),
                Gib(s.ev.weight_bytes[i]).c_str(), Gib(s.ev.kv_bytes[i]).c_str(),
                Gib(s.ev.weight_bytes[i] + s.ev.kv_bytes[i]).c_str(),
                Gib(p.budget_bytes[x.device]).c_str(), s.ev.over_bytes[i] > 0 ? " OVER" : "");
  }
}

std::string Headline(Objective obj, int batch, const Evaluation& e) {
  if (obj == Objective::kLatency)
    return fmt::format("{:.2f} ms/token ({:.2f} tokens/s{})", e.step_ms, 1000.0 * batch / e.step_ms,
                       batch > 1 ? fmt::format(" over {} sequences", batch) : "");
  const int fill = int(std::ceil(e.step_ms / e.bottleneck_ms - 1e-9));
  return fmt::format(
      "{:.2f} tokens/s (slowest stage {:.2f} ms; one token takes {:.2f} ms, so {} sequences in "
      "flight fill the pipeline; with {}: {:.2f} tokens/s)",
      1000.0 / e.bottleneck_ms, e.bottleneck_ms, e.step_ms, fill, batch,
      1000.0 * std::min(1.0 / e.bottleneck_ms, batch / e.step_ms));
}

}  // namespace

int Plan(const PlanOptions& o, const Cluster& cluster) {
  const Objective obj = o.objective == "latency" ? Objective::kLatency : Objective::kThroughput;
  ModelUnits units =
      o.model.empty() ? cluster.profiles[cluster.source].model : LoadModelUnits(o.model);
  SetKvTypes(units, {es::model::ParseKvType(o.cache_type_k, "--cache-type-k"),
                     es::model::ParseKvType(o.cache_type_v, "--cache-type-v")});
  const Problem p = BuildProblem(cluster, units, {obj, o.ctx, o.batch});
  const Solution sol = Solve(p, obj, o.solve);
  if (!sol.feasible) throw Error(ExplainInfeasible(p));
  const Scored best = Score(p, obj, "Optimum", sol.stages);
  std::vector<Scored> base;
  for (const Baseline& b : Baselines(p, obj)) {
    base.push_back(Score(p, obj, b.name, b.stages));
    base.back().note = b.note;
  }
  std::optional<Scored> manual;
  if (!o.placement.empty())
    manual = Score(p, obj, "Placement rules", LoadPlacement(o.placement, p));
  if (!o.svg.empty()) {
    std::ofstream f(o.svg, std::ios::binary);
    f << PlanSvg(p, sol.stages,
                 fmt::format("{}, {} objective, context {}: {} devices, {:.2f} {}", units.name,
                             o.objective, o.ctx, best.stages.size(), best.value,
                             obj == Objective::kLatency ? "ms/token" : "tokens/s"));
    if (!f) throw Error(o.svg + ": cannot write the picture");
  }

  const char* unit = obj == Objective::kLatency ? "ms/token" : "tokens/s";
  auto versus = [&](const Scored& s) {  // > 0: worse than the optimum
    return obj == Objective::kLatency ? s.value / best.value - 1 : best.value / s.value - 1;
  };
  if (o.json) {
    json j = {{"objective", o.objective},
              {"ctx", o.ctx},
              {"batch", o.batch},
              {"model", {{"name", units.name}, {"units", p.n_units()}}},
              {"source", p.devices[p.source]},
              {"solver",
               {{"method", sol.method},
                {"exact", sol.exact},
                {"lower_bound_ms", sol.lower_bound},
                {"states", sol.states},
                {"solve_ms", sol.solve_ms}}},
              {"plan", ScoredJson(p, obj, o.batch, best)}};
    j["baselines"] = json::array();
    for (const auto& b : base) {
      j["baselines"].push_back(ScoredJson(p, obj, o.batch, b));
      if (!b.stages.empty()) j["baselines"].back()["vs_optimum"] = versus(b);
    }
    if (manual) {
      j["placement"] = ScoredJson(p, obj, o.batch, *manual);
      j["placement"]["vs_optimum"] = versus(*manual);
    }
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  std::printf(
      "Plan for %s (%d layer units) on %s: %s objective, context %d, batch %d, source %s\n\n",
      units.name.c_str(), p.n_units(), o.cluster.c_str(), o.objective.c_str(), o.ctx, o.batch,
      p.devices[p.source].c_str());
  std::printf("Optimum: %s\n", Headline(obj, o.batch, best.ev).c_str());
  std::printf("Solver: %s; %s, %llu states, %.1f ms\n\n", sol.method.c_str(),
              sol.exact ? "proven optimal"
                        : fmt::format("not proven: optimum >= {:.3f} ms", sol.lower_bound).c_str(),
              static_cast<unsigned long long>(sol.states), sol.solve_ms);
  PrintStages(p, best);
  std::printf(
      "\nBaselines (same cost model):\n\n| plan | devices | %s | slower than the optimum | memory "
      "|\n|---|---|---|---|---|\n",
      unit);
  std::vector<const Scored*> rows;
  for (const auto& b : base) rows.push_back(&b);
  if (manual) rows.push_back(&*manual);
  for (const Scored* s : rows) {
    if (s->stages.empty()) {
      std::printf("| %s | - | - | - | not applicable: %s |\n", s->name.c_str(), s->note.c_str());
      continue;
    }
    std::string devs;
    for (const Stage& x : s->stages)
      devs += (devs.empty() ? "" : ", ") +
              fmt::format("{} [{}]", p.devices[x.device], x.last - x.first);
    std::string mem = "fits";
    if (!s->ev.fits()) {
      mem = "INFEASIBLE: " + Gib(s->ev.missing_bytes) + " missing (";
      for (size_t i = 0, k = 0; i < s->stages.size(); ++i)
        if (s->ev.over_bytes[i] > 0)
          mem +=
              (k++ ? ", " : "") + p.devices[s->stages[i].device] + " " + Gib(s->ev.over_bytes[i]);
      mem += ")";
    }
    std::printf("| %s | %s | %.2f | %+.1f%% | %s |\n", s->name.c_str(), devs.c_str(), s->value,
                100 * versus(*s), mem.c_str());
  }
  if (manual) {
    std::printf("\nPlacement rules %s: %s\n\n", o.placement.c_str(),
                Headline(obj, o.batch, manual->ev).c_str());
    PrintStages(p, *manual);
  }
  return kExitOk;
}

namespace {

const bool registered = RegisterCommand("plan", [](CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  auto* cmd =
      app.add_subcommand("plan", "choose devices and layer ranges for a cluster (EdgeShard)");
  cmd->add_option("--cluster", o->cluster, "cluster.yaml: devices, links, source")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("-m,--model", o->model,
                  "model: a GGUF file or a units/profile JSON (default: the source's profile)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--objective", o->objective, "latency (sequential) or throughput (pipeline)")
      ->check(CLI::IsMember({"latency", "throughput"}));
  cmd->add_option("--ctx", o->ctx, "context length the token is generated at (KV cache size)")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--batch", o->batch, "concurrent sequences")->check(CLI::Range(1, 1 << 16));
  es::cli::AddCacheTypeOptions(cmd, o->cache_type_k, o->cache_type_v);
  cmd->add_flag("--json", o->json, "print JSON");
  cmd->add_option("--svg", o->svg, "draw the plan into this SVG file");
  cmd->add_option("--placement", o->placement, "rules.yaml: manual placement to compare")
      ->check(CLI::ExistingFile);
  cmd->add_option("--max-states", o->solve.max_states,
                  "latency search: nodes before it stops proving optimality");
  cmd->add_option("--time-limit-ms", o->solve.time_limit_ms,
                  "latency search: milliseconds before it stops proving optimality and returns its "
                  "best plan with the lower bound (0: no limit)")
      ->check(CLI::Range(0.0, 1e9));
  cmd->add_option("--exact-max-devices", o->solve.exact_max_devices,
                  "throughput: exact DP up to this many devices, beam search above")
      ->check(CLI::Range(1, 20));
  cmd->add_option("--beam-width", o->solve.beam_width, "states kept per step by the heuristics")
      ->check(CLI::Range(1, 1 << 20));
  return [o]() { return Plan(*o, LoadCluster(o->cluster)); };
});

}  // namespace
}  // namespace es::cli
