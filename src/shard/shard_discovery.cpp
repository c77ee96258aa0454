#include "shard/shard_discovery.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <future>
#include <memory>
#include <optional>
#include <thread>

#include "gpu/gpu_device.h"
#include "shard/shard_coordinator.h"
#include "shard/shard_rpc.h"
#include "shard/shard_worker.h"

namespace es::shard {

namespace rpc = edgeshard::rpc;

Discovery Discover(const std::string& model_path, const Security& security,
                   const DiscoveryOptions& o, const std::string& model_sha) {
  auto log = [&](const std::string& m) {
    if (o.log) o.log(m);
  };
  DiscoverOptions d;
  d.endpoint = o.endpoint;
  d.window = o.window;
  d.expect = o.expect;
  d.name = o.source_name;
  d.log = o.log;
  std::vector<FoundWorker> found = DiscoverWorkers(security.token, d);
  // In name order, so tables and plans do not depend on which answer came first.
  std::sort(found.begin(), found.end(),
            [](const FoundWorker& a, const FoundWorker& b) { return a.name < b.name; });

  Discovery out;
  Cluster& c = out.cluster;
  c.file = "discovered cluster";
  c.source = 0;
  DiscoveredDevice src;
  src.name = o.source_name;
  src.threads = o.source_threads > 0 ? o.source_threads
                                     : int(std::max(1u, std::thread::hardware_concurrency()));
  src.memory_budget_bytes = o.source_memory_bytes ? o.source_memory_bytes : MemAvailable();
  out.devices.push_back(src);

  // Every worker proves the token over gRPC too (the beacon only says where to look). Workers
  // may measure their profiles first, all at once (each on its own device), while the source
  // hashes and profiles the model.
  rpc::HealthRequest want;
  want.set_want_profile(!model_path.empty());
  std::vector<std::unique_ptr<WorkerClient>> all;
  std::vector<std::future<rpc::HealthReply>> answers;
  for (const FoundWorker& f : found) {
    std::string name = f.name;
    if (name == o.source_name) name += "-worker";
    all.push_back(std::make_unique<WorkerClient>(name, f.address, security));
    answers.push_back(std::async(std::launch::async, [&client = *all.back(), &o, want] {
      return client.Health(o.profile_deadline, want);
    }));
  }
  std::string sha = model_sha, how;
  std::optional<Profile> mine;
  if (!model_path.empty()) {
    if (sha.empty()) sha = Sha256File(model_path);
    mine = CachedProfile(model_path, sha, o.cache_dir.empty() ? DefaultCacheDir() : o.cache_dir,
                         QuickMeasureOptions(src.threads), &how);
    out.devices[0].profile_source = how;
    out.devices[0].model_sha256 = sha;
  }
  std::vector<std::unique_ptr<WorkerClient>> clients;
  std::vector<rpc::HealthReply> health;
  for (size_t i = 0; i < all.size(); ++i) {
    try {
      health.push_back(answers[i].get());
    } catch (const Error& e) {
      log(std::string("leaving out ") + e.what());
      continue;
    }
    const rpc::HealthReply& h = health.back();
    DiscoveredDevice dev;
    dev.name = all[i]->name();
    dev.address = all[i]->address();
    dev.threads = h.threads();
    dev.memory_budget_bytes =
        h.memory_budget_bytes() ? h.memory_budget_bytes() : h.memory_available_bytes();
    // "-": not asked for (no model given); "none": asked for, but the worker has no model.
    dev.profile_source = !h.profile_source().empty() ? h.profile_source()
                         : model_path.empty()        ? "-"
                                                     : "none";
    dev.model_sha256 = h.local_model_sha256();
    out.devices.push_back(dev);
    clients.push_back(std::move(all[i]));
  }
  if (clients.empty())
    throw Error(fmt::format(
        "discovery found no worker in {:.1f} s on {}:{} (are workers running with the same "
        "--token-file and --discovery-port, and does multicast reach them?)",
        o.window.count() / 1000.0, o.endpoint.group, o.endpoint.port));
  if (int(out.devices.size()) > kMaxDevices)
    throw Error(fmt::format("discovery found {} devices, at most {} are supported",
                            out.devices.size(), kMaxDevices));

  for (const DiscoveredDevice& dev : out.devices) {
    DeviceSpec s;
    s.name = dev.name;
    s.address = dev.address;
    s.memory_bytes = dev.memory_budget_bytes;
    c.devices.push_back(s);
  }

  // Profiles for the model: the source's own, and each worker's where it has the same model.
  if (mine) {
    c.devices[0].profile_path = "the source's profile (" + how + ")";
    c.profiles.push_back(*mine);
    for (size_t i = 0; i < health.size(); ++i) {
      DiscoveredDevice& dev = out.devices[i + 1];
      if (dev.model_sha256 == sha && !health[i].profile_json().empty()) {
        try {
          c.profiles.push_back(
              ParseProfile(health[i].profile_json(), dev.name + "'s profile", true));
          c.devices[i + 1].profile_path = dev.name + "'s profile (" + dev.profile_source + ")";
          continue;
        } catch (const Error& e) {
          log(std::string("ignoring ") + e.what());
        }
      }
      // The worker has not got this model (it is sent at load time): assume the source's speed.
      log("worker '" + dev.name + "' has " +
          (dev.model_sha256.empty() ? "no model" : "another model") +
          ": planning with the source's profile for it");
      dev.profile_source = "source's (" + std::string(dev.model_sha256.empty() ? "no" : "other") +
                           " model on the worker)";
      c.devices[i + 1].profile_path = "the source's profile";
      c.profiles.push_back(*mine);
    }
  }

  // A GPU of device `h` as a device of its own, `<host>-gpu`, after the hosts (without `prof`
  // when no model was given).
  auto add_gpu = [&](int h, int index, const std::string& gpu_name, uint64_t memory,
                     const std::optional<Profile>& prof, std::string profile_source,
                     std::string profile_path) {
    if (int(out.devices.size()) >= kMaxDevices) {
      log("leaving out " + out.devices[h].name + "'s GPU: at most " + std::to_string(kMaxDevices) +
          " devices");
      return;
    }
    DiscoveredDevice dev;
    dev.name = out.devices[h].name + "-gpu";
    dev.gpu_of = out.devices[h].name;
    dev.gpu = gpu_name;
    dev.memory_budget_bytes = memory;
    dev.profile_source = prof ? std::move(profile_source) : "-";
    dev.model_sha256 = out.devices[h].model_sha256;
    DeviceSpec s;
    s.name = dev.name;
    s.gpu_of = h;
    s.gpu = index;
    s.memory_bytes = memory;
    if (prof) {
      s.profile_path = std::move(profile_path);
      c.profiles.push_back(*prof);
    }
    out.devices.push_back(dev);
    c.devices.push_back(s);
  };

  // The source's own GPU (--source-gpu), measured here like the source's CPU.
  if (o.source_gpu >= 0) {
    const gpu::DeviceInfo g = gpu::FindDevice(o.source_gpu);
    std::optional<Profile> gp;
    std::string gpu_how;
    if (mine) {
      MeasureOptions mo = QuickMeasureOptions(src.threads);
      mo.gpu_device = o.source_gpu;
      gp = CachedProfile(model_path, sha, o.cache_dir.empty() ? DefaultCacheDir() : o.cache_dir, mo,
                         &gpu_how);
    }
    add_gpu(0, o.source_gpu, "vulkan" + std::to_string(g.index) + " (" + g.name + ")",
            g.memory_bytes, gp, gpu_how, "the source's GPU profile (" + gpu_how + ")");
  }

  // GPUs the workers offer (`worker --gpu`), with the profile each worker measured on its GPU
  // (none: the worker lacks the model, or its GPU cannot run it; then the GPU stays out).
  for (size_t i = 0; i < health.size(); ++i) {
    const rpc::HealthReply& h = health[i];
    if (h.gpu_name().empty()) continue;
    const DiscoveredDevice& host = out.devices[i + 1];
    std::optional<Profile> gp;
    if (mine && host.model_sha256 == sha && !h.gpu_profile_json().empty()) {
      try {
        gp = ParseProfile(h.gpu_profile_json(), host.name + "'s GPU profile", true);
      } catch (const Error& e) {
        log(std::string("ignoring ") + e.what());
      }
    }
    if (mine && !gp) {
      log("worker '" + host.name + "' offers " + h.gpu_name() +
          " but has no profile of this model on it: leaving the GPU out");
      continue;
    }
    log(fmt::format("{} offers {} ({} of memory{})", host.name, h.gpu_name(),
                    FormatBytes(double(h.gpu_memory_bytes())),
                    h.gpu_unified_memory() ? ", shared with its CPU" : ""));
    add_gpu(int(i) + 1, h.gpu_index(), h.gpu_name(), h.gpu_memory_bytes(), gp, host.profile_source,
            host.name + "'s GPU profile");
  }

  // Links: the source to every worker, and every pair of workers (measured by the first).
  for (size_t a = 0; a < clients.size(); ++a) {
    try {
      c.links[{0, int(a) + 1}] = MeasureLinkTo(*clients[a], o.pings, o.bulk_bytes);
    } catch (const Error& e) {
      throw Error("measuring the link to " + clients[a]->Who() + ": " + e.what());
    }
    for (size_t b = a + 1; b < clients.size(); ++b) {
      rpc::MeasureLinkRequest req;
      req.set_address(clients[b]->address());
      req.set_name(clients[b]->name());
      req.set_pings(o.pings);
      req.set_bulk_bytes(o.bulk_bytes);
      const rpc::MeasureLinkReply r = clients[a]->MeasureLink(req, std::chrono::minutes(2));
      c.links[{int(a) + 1, int(b) + 1}] = {r.bandwidth_mbps(), r.rtt_ms()};
    }
  }
  for (const auto& [k, l] : c.links)
    log(fmt::format("link {} - {}: {:.0f} Mbit/s, RTT {:.3f} ms", c.devices[k.first].name,
                    c.devices[k.second].name, l.bandwidth_mbps, l.rtt_ms));
  return out;
}

DiscoveryOptions DiscoveryFromCli(const ClusterCliOptions& c, int threads) {
  DiscoveryOptions d;
  d.endpoint = {c.discovery_group, c.discovery_port};
  d.window = std::chrono::milliseconds(int64_t(c.discover_seconds * 1000));
  d.expect = c.discover_workers;
  d.source_threads = threads;
  if (!c.source_gpu.empty()) d.source_gpu = gpu::ParseDeviceName(c.source_gpu);
  if (!c.source_memory.empty()) {
    const auto b = ParseByteSize(c.source_memory);
    if (!b || *b == 0)
      throw Error("--source-memory '" + c.source_memory +
                  "' is not a size such as '4 GiB' or '512MB'");
    d.source_memory_bytes = *b;
  }
  d.log = [](const std::string& s) { std::fprintf(stderr, "discovery: %s\n", s.c_str()); };
  return d;
}

std::string DiscoveryTable(const Discovery& d) {
  std::string t =
      "| device | address | threads | memory budget | profile |\n|---|---|---|---|---|\n";
  for (const DiscoveredDevice& dev : d.devices)
    t += fmt::format("| {} | {} | {} | {} | {} |\n", dev.name,
                     !dev.gpu_of.empty()   ? dev.gpu + " of " + dev.gpu_of
                     : dev.address.empty() ? "(this machine, source)"
                                           : dev.address,
                     dev.threads, FormatBytes(double(dev.memory_budget_bytes)),
                     dev.profile_source.empty() ? "-" : dev.profile_source);
  t += "\n| link | bandwidth Mbit/s | RTT ms |\n|---|---|---|\n";
  for (const auto& [k, l] : d.cluster.links)
    t += fmt::format("| {} - {} | {:.1f} | {:.3f} |\n", d.cluster.devices[k.first].name,
                     d.cluster.devices[k.second].name, l.bandwidth_mbps, l.rtt_ms);
  return t;
}

}  // namespace es::shard
