// The planner's problem model and its yardsticks: validation and evaluation of a stage list,
// the baseline splits the search is compared with, infeasibility explained, and the Problem
// built from a cluster and a model. The searches themselves are in shard_planner.cpp.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "shard/shard_planner.h"

namespace es::shard {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
bool Has(uint64_t set, int d) {
  return (set >> d) & 1;
}

}  // namespace
// ---- problem and evaluation ----------------------------------------------------------------

double Problem::HopMs(int unit, int a, int b) const {
  if (a == b) return 0;
  return out_bytes[unit] * 8.0 / (bw_mbps[a][b] * 1e6) * 1e3 + rtt_ms[a][b] / 2;
}

void Problem::Validate() const {
  const size_t U = units.size(), D = devices.size();
  auto fail = [](const std::string& m) { throw Error("planner input: " + m); };
  if (U < 1 || D < 1) fail("needs at least one unit and one device");
  if (D > size_t(kMaxDevices)) fail("more than " + std::to_string(kMaxDevices) + " devices");
  if (source < 0 || size_t(source) >= D) fail("source index out of range");
  auto matrix = [&](const std::vector<std::vector<double>>& m, size_t cols, const char* name) {
    if (m.size() != D) fail(std::string(name) + ": expected one row per device");
    for (const auto& row : m) {
      if (row.size() != cols) fail(std::string(name) + ": row of the wrong length");
      for (double x : row)
        if (!(x >= 0) || !std::isfinite(x))
          fail(std::string(name) + ": values must be finite and >= 0");
    }
  };
  matrix(comp_ms, U, "comp_ms");
  matrix(weight_bytes, U, "weight_bytes");
  matrix(kv_bytes, U, "kv_bytes");
  matrix(rtt_ms, D, "rtt_ms");
  matrix(bw_mbps, D, "bw_mbps");
  for (size_t a = 0; a < D; ++a)
    for (size_t b = 0; b < D; ++b)
      if (a != b && !(bw_mbps[a][b] > 0))
        fail("bandwidth between '" + devices[a] + "' and '" + devices[b] + "' is 0");
  if (budget_bytes.size() != D || out_bytes.size() != U) fail("budget_bytes / out_bytes size");
  if (!host.empty()) {
    if (host.size() != D) fail("host: expected one entry per device");
    for (size_t d = 0; d < D; ++d)
      if (host[d] < 0 || size_t(host[d]) >= D || host[size_t(host[d])] != host[d])
        fail("host: device '" + devices[d] + "' names a host that is not its own host");
  }
}

void CheckStages(const Problem& p, const std::vector<Stage>& st) {
  if (st.empty()) throw Error("plan has no stages");
  if (st[0].device != p.source || st[0].first != 0)
    throw Error("plan must start on the source '" + p.devices[p.source] + "' with unit 0 (" +
                p.units[0] + ")");
  uint64_t used = 0;
  for (size_t i = 0; i < st.size(); ++i) {
    const Stage& s = st[i];
    if (s.device < 0 || s.device >= p.n_devices()) throw Error("plan names an unknown device");
    const std::string dev = "'" + p.devices[s.device] + "'";
    if (s.first >= s.last) throw Error("plan gives device " + dev + " an empty range");
    if (i > 0 && s.first != st[i - 1].last)
      throw Error("plan is not contiguous at device " + dev +
                  ": each stage must start where the previous ends");
    if (Has(used, s.device))
      throw Error("device " + dev + " holds two ranges; each device holds one contiguous range");
    // One worker runs a host's CPU and GPU stages as one range.
    const int h = p.Host(s.device);
    if (i > 0 && h != p.Host(st[i - 1].device))
      for (size_t j = 0; j + 1 < i; ++j)
        if (p.Host(st[j].device) == h)
          throw Error("device " + dev + " and '" + p.devices[st[j].device] +
                      "' share a host but their stages are apart; a host's CPU and GPU hold "
                      "consecutive ranges");
    used |= 1ull << s.device;
  }
  if (st.back().last != p.n_units())
    throw Error("plan ends at unit " + std::to_string(st.back().last) + ", expected all " +
                std::to_string(p.n_units()) + " units");
}

Evaluation Evaluate(const Problem& p, const std::vector<Stage>& st) {
  CheckStages(p, st);
  Evaluation ev;
  for (size_t i = 0; i < st.size(); ++i) {
    const Stage& s = st[i];
    double c = 0, w = 0, kv = 0;
    for (int u = s.first; u < s.last; ++u)
      c += p.comp_ms[s.device][u], w += p.weight_bytes[s.device][u], kv += p.kv_bytes[s.device][u];
    const int next = i + 1 < st.size() ? st[i + 1].device : p.source;
    const double link = p.HopMs(s.last - 1, s.device, next);
    const double over = w + kv <= p.budget_bytes[s.device] ? 0 : w + kv - p.budget_bytes[s.device];
    ev.comp_ms.push_back(c);
    ev.link_ms.push_back(link);
    ev.weight_bytes.push_back(w);
    ev.kv_bytes.push_back(kv);
    ev.over_bytes.push_back(over);
    ev.step_ms += c + link;
    ev.bottleneck_ms = std::max({ev.bottleneck_ms, c, link});
    ev.missing_bytes += over;
  }
  return ev;
}

double ObjectiveValue(Objective o, const Evaluation& e) {
  return o == Objective::kLatency ? e.step_ms : e.bottleneck_ms;
}

// ---- baselines -----------------------------------------------------------------------------

namespace {

// Blocks (the units between the embedding and the head) split over `order` in proportion to
// `weight` (largest remainders first); the embedding joins the first device, the head the last.
// Devices that get nothing are left out.
std::vector<Stage> Proportional(const Problem& p, const std::vector<int>& order,
                                const std::vector<double>& weight) {
  const int U = p.n_units(), blocks = std::max(0, U - 2), n = int(order.size());
  const double total = std::accumulate(weight.begin(), weight.end(), 0.0);
  std::vector<int> count(n, 0);
  std::vector<std::pair<double, int>> rem;
  int given = 0;
  for (int i = 0; i < n; ++i) {
    const double share = total > 0 ? blocks * weight[i] / total : double(blocks) / n;
    count[i] = int(std::floor(share));
    given += count[i];
    rem.push_back({-(share - count[i]), i});
  }
  std::sort(rem.begin(), rem.end());
  for (int k = 0; given < blocks; ++k, ++given) ++count[rem[k % n].second];
  std::vector<Stage> st;
  int u = 0;
  for (int i = 0; i < n; ++i) {
    int len = count[i] + (i == 0 ? 1 : 0) + (i == n - 1 ? U - 1 - blocks : 0);
    if (U == 1) len = i == 0 ? 1 : 0;
    if (len > 0) st.push_back({order[i], u, u + len}), u += len;
  }
  if (u < U) st.back().last = U;  // unreachable unless U < 2; keeps the cover complete
  return st;
}

}  // namespace

std::vector<Baseline> Baselines(const Problem& p, Objective obj) {
  const int U = p.n_units(), D = p.n_devices(), src = p.source;
  std::vector<Baseline> out;
  out.push_back({"Edge-Solo", "", {{src, 0, U}}});
  // Every device, the source first, each host followed by its GPU (one worker runs both).
  std::vector<int> all;
  auto add_host = [&](int h) {
    all.push_back(h);
    for (int g = 0; g < D; ++g)
      if (g != h && p.Host(g) == h) all.push_back(g);
  };
  add_host(src);
  for (int d = 0; d < D; ++d)
    if (d != src && p.Host(d) == d) add_host(d);
  out.push_back({"Even", "", Proportional(p, all, std::vector<double>(D, 1.0))});
  // The "cloud": the device that runs every unit fastest, other than the source.
  int fast = -1;
  double fast_ms = kInf;
  for (int d = 0; d < D; ++d) {
    const double ms = std::accumulate(p.comp_ms[d].begin(), p.comp_ms[d].end(), 0.0);
    if (d != src && ms < fast_ms) fast = d, fast_ms = ms;
  }
  if (fast < 0) {
    out.push_back({"Cloud-Edge-Even", "needs a second device", {}});
    out.push_back({"Cloud-Edge-Opt", "needs a second device", {}});
  } else {
    out.push_back({"Cloud-Edge-Even", "", Proportional(p, {src, fast}, {1.0, 1.0})});
    // Every cut between the two; the best that fits, else the one missing least memory.
    std::vector<Stage> best;
    double best_key[2] = {kInf, kInf};
    for (int k = 1; k < U; ++k) {
      const std::vector<Stage> st = {{src, 0, k}, {fast, k, U}};
      const Evaluation e = Evaluate(p, st);
      const double key[2] = {e.missing_bytes, ObjectiveValue(obj, e)};
      if (std::lexicographical_compare(key, key + 2, best_key, best_key + 2))
        best = st, best_key[0] = key[0], best_key[1] = key[1];
    }
    if (best.empty())
      out.push_back({"Cloud-Edge-Opt", "the model has a single unit", {}});
    else
      out.push_back({"Cloud-Edge-Opt", "", best});
  }
  std::vector<double> mem;
  for (int d : all) mem.push_back(p.budget_bytes[d]);
  out.push_back({"Memory-proportional", "", Proportional(p, all, mem)});
  return out;
}

std::string ExplainInfeasible(const Problem& p) {
  // What the model needs on the source's encoding, against every budget together.
  double need = 0, weights = 0, have = 0, largest_unit = 0, largest_budget = 0;
  int largest_u = 0;
  for (int u = 0; u < p.n_units(); ++u) {
    need += p.MemBytes(p.source, u), weights += p.weight_bytes[p.source][u];
    double smallest = kInf;
    for (int d = 0; d < p.n_devices(); ++d) smallest = std::min(smallest, p.MemBytes(d, u));
    if (smallest > largest_unit) largest_unit = smallest, largest_u = u;
  }
  for (double b : p.budget_bytes) have += b, largest_budget = std::max(largest_budget, b);
  auto gib = [](double b) { return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024)); };
  std::string msg = fmt::format(
      "no plan fits in memory: the model needs {} (weights {} + KV cache {}), the {} device(s) "
      "offer {} together",
      gib(need), gib(weights), gib(need - weights), p.n_devices(), gib(have));
  if (need > have) return msg + fmt::format("; {} missing", gib(need - have));
  if (largest_unit > largest_budget)
    return msg + fmt::format("; unit '{}' alone needs {} but the largest budget is {}",
                             p.units[largest_u], gib(largest_unit), gib(largest_budget));
  return msg +
         "; the total would suffice, but units cannot be split and each device holds one "
         "contiguous range, so no assignment fits";
}

Problem BuildProblem(const Cluster& c, const ModelUnits& m, const PlanSettings& s, int n_batch) {
  if (s.ctx < 1) throw Error("context length must be at least 1");
  if (s.batch < 1) throw Error("batch must be at least 1");
  if (c.profiles.size() != c.devices.size()) throw Error(c.file + ": profiles were not loaded");
  const int U = int(m.units.size()), D = int(c.devices.size());
  const bool lat = s.objective == Objective::kLatency;
  Problem p;
  p.source = c.source;
  for (int d = 0; d < int(c.devices.size()); ++d) p.host.push_back(c.Host(d));
  for (const auto& u : m.units) {
    p.units.push_back(u.name);
    // Latency: all sequences step together; throughput: each is its own micro-batch.
    p.out_bytes.push_back(double(u.out_bytes_per_token) * (lat ? s.batch : 1));
  }
  for (int d = 0; d < D; ++d) {
    const DeviceSpec& dev = c.devices[d];
    const Profile& prof = c.profiles[d];
    const std::string where =
        c.file + ":" + std::to_string(dev.line) + ": device '" + dev.name + "': ";
    p.devices.push_back(dev.name);
    if (int(prof.model.units.size()) != U)
      throw Error(where + "its profile " + dev.profile_path + " was measured on '" +
                  prof.model.name + "' with " + std::to_string(prof.model.units.size()) +
                  " layer units, the model '" + m.name + "' has " + std::to_string(U));
    std::vector<double> comp, wb, kv;
    for (int u = 0; u < U; ++u) {
      const UnitInfo& unit = m.units[u];
      if (prof.model.units[u].name != unit.name)
        throw Error(where + "profile unit " + std::to_string(u) + " is '" +
                    prof.model.units[u].name + "', the model's is '" + unit.name + "'");
      if (dev.quant && unit.matrix_bytes > 0 && unit.matrix_elems == 0)
        throw Error(where + "quant needs matrix_elems for unit '" + unit.name +
                    "', which the model description lacks");
      const double bytes =
          dev.quant ? double(unit.WeightBytesAs(*dev.quant)) : double(unit.weight_bytes);
      const UnitTiming& tm = prof.timing[u];
      double ms = tm.DecodeMs(s.ctx) + (lat ? (s.batch - 1) * tm.RowMs() : 0.0);
      // A decode step reads its active bytes once (all of a dense unit, the chosen experts'
      // share of a mixture-of-experts block): scale by what this device's step reads instead.
      // Memory (wb) holds every expert.
      const UnitInfo& prof_unit = prof.model.units[u];
      double measured = double(prof_unit.active_bytes);
      // A profile from before units carried active bytes says all: the model's share of it.
      if (measured == double(prof_unit.weight_bytes) && unit.active_bytes < unit.weight_bytes &&
          unit.weight_bytes > 0)
        measured *= double(unit.active_bytes) / double(unit.weight_bytes);
      const double active =
          dev.quant ? double(unit.ActiveBytesAs(*dev.quant)) : double(unit.active_bytes);
      if (measured > 0) ms *= active / measured;
      comp.push_back(ms * dev.time_scale);
      wb.push_back(bytes);
      // As the workers' caches: a sliding-window block keeps a ring of its window plus a batch.
      const double rows =
          unit.kv_window > 0
              ? std::min<double>(s.ctx, double(unit.kv_window) + std::max(1, n_batch) - 1)
              : s.ctx;
      kv.push_back(double(unit.kv_bytes_per_token) * rows * s.batch);
    }
    p.comp_ms.push_back(comp);
    p.weight_bytes.push_back(wb);
    p.kv_bytes.push_back(kv);
    p.budget_bytes.push_back(double(c.MemoryBudget(d)));
  }
  p.bw_mbps.assign(D, std::vector<double>(D, 0));
  p.rtt_ms.assign(D, std::vector<double>(D, 0));
  for (int a = 0; a < D; ++a)
    for (int b = 0; b < D; ++b)
      if (a != b) {
        const LinkSpec l = c.Link(a, b);
        p.bw_mbps[a][b] = l.bandwidth_mbps;
        p.rtt_ms[a][b] = l.rtt_ms;
      }
  p.Validate();
  return p;
}

}  // namespace es::shard
