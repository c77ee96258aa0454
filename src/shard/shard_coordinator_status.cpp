// The coordinator's state as data for the cluster page (GET /cluster.json): devices, links, the
// plan with its picture, measured costs per stage and the events so far.
#include "shard/shard_coordinator_impl.h"
#include "shard/shard_svg.h"

namespace es::shard {

nlohmann::json Coordinator::Status() const {
  using json = nlohmann::json;
  const Impl& m = *impl_;
  json devices = json::array();
  for (size_t d = 0; d < m.cluster.devices.size(); ++d) {
    const DeviceSpec& spec = m.cluster.devices[d];
    const auto& dev = *m.devs[m.cluster.Host(int(d))];  // a GPU is lost with its host
    bool in_plan = false;
    for (const Stage& s : m.stages) in_plan = in_plan || s.device == int(d);
    std::string lost_reason;
    if (dev.lost) {
      std::lock_guard<std::mutex> lock(m.mon_mu);
      lost_reason = dev.lost_reason;
    }
    devices.push_back(
        {{"name", spec.name},
         {"address", int(d) == m.cluster.source ? "(source)"
                     : spec.gpu_of >= 0         ? "(vulkan" + std::to_string(spec.gpu) + " of " +
                                              m.cluster.devices[spec.gpu_of].name + ")"
                                        : spec.address},
         {"source", int(d) == m.cluster.source},
         {"threads", d < m.cluster.profiles.size() ? m.cluster.profiles[d].threads : 0},
         {"cpu", d < m.cluster.profiles.size() ? m.cluster.profiles[d].cpu : ""},
         {"memory_bytes", m.cluster.MemoryBudget(int(d))},
         {"in_plan", in_plan},
         {"lost", dev.lost.load()},
         {"lost_reason", lost_reason}});
  }
  json links = json::array();
  for (size_t a = 0; a < m.cluster.devices.size(); ++a)
    for (size_t b = a + 1; b < m.cluster.devices.size(); ++b) {
      const LinkSpec l = m.cluster.Link(int(a), int(b));
      links.push_back({{"a", m.cluster.devices[a].name},
                       {"b", m.cluster.devices[b].name},
                       {"bandwidth_mbps", l.bandwidth_mbps},
                       {"rtt_ms", l.rtt_ms}});
    }
  const ClusterReport rep = Report();
  json stages = json::array();
  for (size_t i = 0; i < m.stages.size() && i < rep.stages.size(); ++i) {
    const StageReport& s = rep.stages[i];
    stages.push_back({{"device", s.device},
                      {"what", m.StageText(i)},
                      {"first_unit", s.first_unit},
                      {"last_unit", s.last_unit},
                      {"planned_compute_ms", s.planned_compute_ms},
                      {"planned_link_ms", s.planned_link_ms},
                      {"compute_ms", s.compute_ms},
                      {"link_ms", s.link_ms},
                      {"wire_bytes", s.wire_bytes}});
  }
  if (m.svg_epoch != m.epoch) {
    m.svg_epoch = m.epoch;
    m.svg.clear();
    try {
      if (!m.stages.empty()) m.svg = PlanSvg(m.MakeProblem(m.n_ctx), m.stages, "plan: " + m.method);
    } catch (const Error&) {
      m.svg.clear();
    }
  }
  const std::string svg = m.plan_error.empty() ? m.svg : std::string();
  return json{{"model", m.model_path},
              {"objective", rep.objective},
              {"plan_method", m.method},
              {"plan_error", m.plan_error},
              {"wire", m.o.wire_f32 ? "f32" : "f16"},
              {"devices", devices},
              {"links", links},
              {"stages", stages},
              {"planned_step_ms", rep.planned_step_ms},
              {"step_ms", rep.step_ms},
              {"decode_steps", rep.decode_steps},
              {"replans", rep.replans},
              {"events", rep.events},
              {"svg", svg}};
}

}  // namespace es::shard
