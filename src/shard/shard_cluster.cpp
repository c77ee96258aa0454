#include "shard/shard_cluster.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "gpu/gpu_device.h"

namespace es::shard {
namespace {

// Errors carry "file:line: "; yaml-cpp counts lines from 0.
struct Ctx {
  std::string file;
  [[noreturn]] void Fail(const YAML::Node& n, const std::string& msg) const {
    throw Error(file + ":" + std::to_string(n.Mark().line + 1) + ": " + msg);
  }
  void CheckKeys(const YAML::Node& map, const std::set<std::string>& allowed,
                 const std::string& where) const {
    if (!map.IsMap()) Fail(map, where + ": expected a mapping");
    for (const auto& kv : map) {
      const std::string key = kv.first.Scalar();
      if (!allowed.count(key)) {
        std::string list;
        for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        Fail(kv.first, where + ": unknown key '" + key + "' (expected one of: " + list + ")");
      }
    }
  }
  std::string Str(const YAML::Node& n, const std::string& what) const {
    if (!n.IsScalar()) Fail(n, what + ": expected a string");
    return n.Scalar();
  }
  double Positive(const YAML::Node& n, const std::string& what, bool allow_zero = false) const {
    double v = 0;
    try {
      if (!n.IsScalar()) throw YAML::Exception(n.Mark(), "");
      v = n.as<double>();
    } catch (const YAML::Exception&) {
      Fail(n, what + ": expected a number, got '" + (n.IsScalar() ? n.Scalar() : "(not a scalar)") +
                  "'");
    }
    if (!std::isfinite(v) || v < 0 || (!allow_zero && v == 0))
      Fail(n,
           what + ": expected a number " + (allow_zero ? ">= 0" : "> 0") + ", got " + n.Scalar());
    return v;
  }
  LinkSpec Link(const YAML::Node& n, const std::string& what, const std::optional<LinkSpec>& dflt,
                const std::set<std::string>& extra_keys = {}) const {
    std::set<std::string> keys = {"bandwidth_mbps", "rtt_ms"};
    keys.insert(extra_keys.begin(), extra_keys.end());
    CheckKeys(n, keys, what);
    LinkSpec l;
    for (const char* k : {"bandwidth_mbps", "rtt_ms"}) {
      double* dst = k[0] == 'b' ? &l.bandwidth_mbps : &l.rtt_ms;
      if (n[k])
        *dst = Positive(n[k], what + ": " + k, k[0] == 'r');
      else if (dflt)
        *dst = k[0] == 'b' ? dflt->bandwidth_mbps : dflt->rtt_ms;
      else
        Fail(n, what + ": missing '" + k + "' (and no default_link to take it from)");
    }
    return l;
  }
};

}  // namespace

std::optional<uint64_t> ParseByteSize(const std::string& s) {
  static const std::regex re(R"(\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]i?B|B)?\s*)", std::regex::icase);
  std::smatch m;
  if (!std::regex_match(s, m, re)) return std::nullopt;
  const double v = std::stod(m[1]);
  std::string unit = m[2];
  for (auto& c : unit) c = char(std::toupper(c));
  double mul = 1;
  if (!unit.empty() && unit != "B") {
    const int power = std::string("KMGT").find(unit[0]) + 1;
    mul = std::pow(unit.size() == 3 ? 1024.0 : 1000.0, power);
  }
  const double bytes = v * mul;
  if (!(bytes < 1.8e19)) return std::nullopt;
  return uint64_t(std::llround(bytes));
}

int Cluster::Find(const std::string& name) const {
  for (size_t i = 0; i < devices.size(); ++i)
    if (devices[i].name == name) return int(i);
  return -1;
}

LinkSpec Cluster::Link(int a, int b) const {
  const int ha = Host(a), hb = Host(b);
  if (ha == hb && a != b) {  // a GPU and its host
    const size_t g = size_t(devices[a].gpu_of >= 0 ? a : b);
    if (devices[g].host_link) return *devices[g].host_link;
    if (g >= profiles.size()) return kPcieLink;  // profiles not loaded (ParseCluster alone)
    LinkSpec l = profiles[g].unified_memory ? kUnifiedLink : kPcieLink;
    l.rtt_ms = std::max(l.rtt_ms, profiles[g].crossing_ms);
    return l;
  }
  a = ha, b = hb;
  auto it = links.find({std::min(a, b), std::max(a, b)});
  if (it != links.end()) return it->second;
  if (!default_link)
    throw Error(file + ": no link between '" + devices[a].name + "' and '" + devices[b].name +
                "' and no default_link");
  return *default_link;
}

uint64_t Cluster::MemoryBudget(int d) const {
  if (devices[d].memory_bytes) return devices[d].memory_bytes;
  return size_t(d) < profiles.size() ? profiles[d].memory_budget_bytes : 0;
}

Cluster ParseCluster(const std::string& text, const std::string& file) {
  const Ctx cx{file};
  YAML::Node loaded;  // read only through `root`: a non-const operator[] would add keys
  try {
    loaded = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(file + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
  }
  const YAML::Node& root = loaded;
  if (!root.IsMap()) throw Error(file + ":1: expected a mapping with 'devices', 'source', 'links'");
  cx.CheckKeys(root, {"devices", "source", "links", "default_link"}, "cluster");
  Cluster c;
  c.file = file;
  if (root["default_link"])
    c.default_link = cx.Link(root["default_link"], "default_link", std::nullopt);

  const YAML::Node devs = root["devices"];
  if (!devs) throw Error(file + ":1: missing 'devices' (a list of devices)");
  if (!devs.IsSequence() || devs.size() == 0) cx.Fail(devs, "devices: expected a non-empty list");
  if (devs.size() > size_t(kMaxDevices))
    cx.Fail(devs, "devices: " + std::to_string(devs.size()) + " devices, at most " +
                      std::to_string(kMaxDevices) + " are supported");
  const std::filesystem::path base = std::filesystem::path(file).parent_path();
  static const std::regex name_re("[A-Za-z0-9_.-]+");
  std::vector<std::pair<int, YAML::Node>> likes;   // resolved once all names are known
  std::vector<std::pair<int, YAML::Node>> gpu_of;  // likewise
  for (const auto& d : devs) {
    DeviceSpec s;
    s.line = d.Mark().line + 1;
    cx.CheckKeys(d,
                 {"name", "address", "profile", "like", "time_scale", "memory", "quant", "gpu_of",
                  "gpu", "host_link"},
                 "device");
    if (!d["name"]) cx.Fail(d, "device: missing 'name'");
    s.name = cx.Str(d["name"], "device name");
    if (!std::regex_match(s.name, name_re))
      cx.Fail(d["name"], "device name '" + s.name + "': use letters, digits, '_', '.', '-'");
    if (c.Find(s.name) >= 0)
      cx.Fail(d["name"], "device '" + s.name + "' is declared twice (first on line " +
                             std::to_string(c.devices[c.Find(s.name)].line) + ")");
    const std::string where = "device '" + s.name + "'";
    if (d["address"]) s.address = cx.Str(d["address"], where + ": address");
    if (bool(d["profile"]) == bool(d["like"]))
      cx.Fail(
          d, where + ": give exactly one of 'profile' (a profile file) or 'like' (another device)");
    if (d["profile"]) {
      const std::filesystem::path p = cx.Str(d["profile"], where + ": profile");
      s.profile_path = (p.is_absolute() || base.empty() ? p : base / p).string();
    } else {
      likes.push_back({int(c.devices.size()), d["like"]});
    }
    if (d["time_scale"]) s.time_scale = cx.Positive(d["time_scale"], where + ": time_scale");
    if (d["memory"]) {
      const auto m = ParseByteSize(cx.Str(d["memory"], where + ": memory"));
      if (!m || *m == 0)
        cx.Fail(d["memory"], where + ": memory '" + d["memory"].Scalar() +
                                 "' is not a size such as '14 GiB', '512MB' or a byte count");
      s.memory_bytes = *m;
    }
    if (d["quant"]) {
      const std::string q = cx.Str(d["quant"], where + ": quant");
      s.quant = ParseTypeName(q);
      if (!s.quant || !Traits(*s.quant).supported)
        cx.Fail(d["quant"], where + ": quant '" + q +
                                "' is not a supported tensor type (e.g. f16, q8_0, q4_0)");
    }
    if (d["gpu"] || d["host_link"]) {
      if (!d["gpu_of"])
        cx.Fail(d, where + ": 'gpu' and 'host_link' describe a GPU; name its host with 'gpu_of'");
    }
    if (d["gpu"]) {
      try {
        s.gpu = gpu::ParseDeviceName(cx.Str(d["gpu"], where + ": gpu"));
      } catch (const Error& e) {
        cx.Fail(d["gpu"], where + ": gpu: " + e.what());
      }
    }
    if (const YAML::Node hl = d["host_link"]) {
      if (hl.IsScalar() && (hl.Scalar() == "pcie" || hl.Scalar() == "unified")) {
        s.host_link = hl.Scalar() == "pcie" ? kPcieLink : kUnifiedLink;
        s.host_link_kind = hl.Scalar();
      } else if (hl.IsMap()) {
        s.host_link = cx.Link(hl, where + ": host_link", std::nullopt);
        s.host_link_kind = "given";
      } else {
        cx.Fail(hl, where + ": host_link: expected pcie, unified or {bandwidth_mbps, rtt_ms}");
      }
    }
    c.devices.push_back(s);
    if (d["gpu_of"]) gpu_of.push_back({int(c.devices.size()) - 1, d["gpu_of"]});
  }
  for (const auto& [idx, node] : gpu_of) {
    DeviceSpec& g = c.devices[idx];
    const std::string host = cx.Str(node, "device '" + g.name + "': gpu_of");
    const int h = c.Find(host);
    if (h < 0) cx.Fail(node, "device '" + g.name + "': gpu_of: no device named '" + host + "'");
    if (h == idx) cx.Fail(node, "device '" + g.name + "': gpu_of: a device is not its own GPU");
    if (c.devices[h].gpu_of >= 0 || !node.IsScalar())
      cx.Fail(node, "device '" + g.name + "': gpu_of: '" + host + "' is itself a GPU");
    for (const auto& [other, n2] : gpu_of)
      if (other < idx && c.devices[other].gpu_of == h)
        cx.Fail(node, "device '" + g.name + "': '" + host + "' already has a GPU ('" +
                          c.devices[other].name +
                          "'); a worker runs one GPU: start a second worker for another");
    if (!g.address.empty())
      cx.Fail(node, "device '" + g.name + "': a GPU has no address of its own (its host's " +
                        "worker runs it); remove 'address'");
    g.gpu_of = h;
  }
  for (const auto& [idx, node] : likes) {
    const std::string other = cx.Str(node, "like");
    const int o = c.Find(other);
    if (o < 0)
      cx.Fail(node, "device '" + c.devices[idx].name + "': like: no device named '" + other + "'");
    if (c.devices[o].profile_path.empty())
      cx.Fail(node, "device '" + c.devices[idx].name + "': like: '" + other +
                        "' has no 'profile' of its own (point at a device with one)");
    c.devices[idx].profile_path = c.devices[o].profile_path;
  }

  if (!root["source"])
    throw Error(file + ":1: missing 'source' (the device that holds the embedding)");
  const std::string src = cx.Str(root["source"], "source");
  c.source = c.Find(src);
  if (c.source < 0) cx.Fail(root["source"], "source: no device named '" + src + "'");
  if (c.devices[c.source].gpu_of >= 0)
    cx.Fail(root["source"], "source: '" + src + "' is a GPU; the source is its host '" +
                                c.devices[c.devices[c.source].gpu_of].name + "'");

  std::map<std::pair<int, int>, int> link_lines;
  if (const YAML::Node links = root["links"]) {
    if (!links.IsSequence()) cx.Fail(links, "links: expected a list");
    for (const auto& l : links) {
      const YAML::Node between = l.IsMap() ? l["between"] : YAML::Node();
      if (!between) cx.Fail(l, "link: missing 'between: [device, device]'");
      if (!between.IsSequence() || between.size() != 2)
        cx.Fail(between, "link: 'between' must list two devices");
      int ends[2];
      for (int k = 0; k < 2; ++k) {
        const std::string n = cx.Str(between[k], "link end");
        ends[k] = c.Find(n);
        if (ends[k] < 0) cx.Fail(between[k], "link: no device named '" + n + "'");
      }
      if (ends[0] == ends[1]) cx.Fail(between, "link: a device needs no link to itself");
      for (int k = 0; k < 2; ++k)
        if (c.devices[ends[k]].gpu_of >= 0)
          cx.Fail(between[k], "link: '" + c.devices[ends[k]].name +
                                  "' is a GPU: it reaches other devices through its host's "
                                  "links, and its host through 'host_link'");
      const auto key = std::make_pair(std::min(ends[0], ends[1]), std::max(ends[0], ends[1]));
      const int line = l.Mark().line + 1;
      if (link_lines.count(key))
        cx.Fail(l, "link between '" + c.devices[key.first].name + "' and '" +
                       c.devices[key.second].name + "' is given twice (first on line " +
                       std::to_string(link_lines[key]) + ")");
      link_lines[key] = line;
      c.links[key] = cx.Link(l, "link", c.default_link, {"between"});
    }
  }
  if (!c.default_link) {
    for (int a = 0; a < int(c.devices.size()); ++a)
      for (int b = a + 1; b < int(c.devices.size()); ++b)
        if (c.devices[a].gpu_of < 0 && c.devices[b].gpu_of < 0 && !c.links.count({a, b}))
          throw Error(file + ":1: no link between '" + c.devices[a].name + "' and '" +
                      c.devices[b].name + "': add it under 'links' or give a 'default_link'");
  }
  return c;
}

Cluster LoadCluster(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open cluster file");
  std::stringstream ss;
  ss << f.rdbuf();
  Cluster c = ParseCluster(ss.str(), path);
  std::map<std::string, Profile> cache;
  for (const auto& d : c.devices) {
    auto it = cache.find(d.profile_path);
    if (it == cache.end()) {
      try {
        it = cache.emplace(d.profile_path, LoadProfile(d.profile_path, true)).first;
      } catch (const Error& e) {
        throw Error(path + ":" + std::to_string(d.line) + ": device '" + d.name + "': " + e.what());
      }
    }
    c.profiles.push_back(it->second);
  }
  for (size_t d = 0; d < c.devices.size(); ++d) {
    const std::string where =
        path + ":" + std::to_string(c.devices[d].line) + ": device '" + c.devices[d].name + "': ";
    const bool is_gpu = c.devices[d].gpu_of >= 0, gpu_profile = !c.profiles[d].gpu.empty();
    if (is_gpu && !gpu_profile)
      throw Error(
          where + "its profile " + c.devices[d].profile_path +
          " was measured on a CPU; measure the GPU with `edgeshard profile --device vulkan" +
          std::to_string(c.devices[d].gpu) + "`");
    if (!is_gpu && gpu_profile)
      throw Error(where + "its profile " + c.devices[d].profile_path + " was measured on " +
                  c.profiles[d].gpu + "; declare the GPU as a device with 'gpu_of: HOST'");
  }
  for (size_t d = 0; d < c.devices.size(); ++d)
    if (c.MemoryBudget(int(d)) == 0)
      throw Error(path + ":" + std::to_string(c.devices[d].line) + ": device '" +
                  c.devices[d].name +
                  "': no memory budget (set 'memory', or profile with a budget)");
  return c;
}

}  // namespace es::shard
