// cluster.yaml: the devices that may take part, how they are linked, and which one is the source.
// Format in docs/planner.md; every validation error names the file and line at fault.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shard/shard_profile.h"
#include "tensor/tensor_types.h"

namespace es::shard {

constexpr int kMaxDevices = 64;  // device sets are 64-bit masks in the planner

struct LinkSpec {
  double bandwidth_mbps = 0;
  double rtt_ms = 0;
};

struct DeviceSpec {
  std::string name, address;
  std::string profile_path;         // resolved against the cluster file's folder
  double time_scale = 1;            // multiplies the profile's times (a slower device: > 1)
  uint64_t memory_bytes = 0;        // 0: the profile's memory_budget_bytes
  std::optional<TensorType> quant;  // run this device's shard with matrices in this type
  int line = 0;                     // where the device is declared
  // A host's GPU (`gpu_of: HOST`): a device of its own to the planner, run by its host's worker
  // (or by the source) on Vulkan device vulkan<gpu>; its stage and its host's are consecutive.
  int gpu_of = -1;  // index of the host device; -1: not a GPU
  int gpu = 0;
  // The GPU's link to its host (`host_link: pcie | unified | {bandwidth_mbps, rtt_ms}`); unset:
  // from the profile (unified memory or PCIe, and its measured crossing time).
  std::optional<LinkSpec> host_link;
  std::string host_link_kind;  // "pcie", "unified", "given"
};

// Default prices of a GPU's link to its host when the cluster file does not give them: PCIe 3.0
// x16 as edge boxes and desktop cards have it (~8 GB/s in practice), and unified memory, where
// the hidden state is not copied at all (only the device's synchronisation is paid, which the
// profile's crossing time measures).
inline constexpr LinkSpec kPcieLink{64000, 0.02};
inline constexpr LinkSpec kUnifiedLink{1e6, 0.01};

struct Cluster {
  std::string file;
  std::vector<DeviceSpec> devices;
  int source = 0;
  std::optional<LinkSpec> default_link;
  std::map<std::pair<int, int>, LinkSpec> links;  // key: (lower index, higher index)
  std::vector<Profile> profiles;                  // per device, filled by LoadCluster

  int Find(const std::string& name) const;  // -1 if absent
  // The device whose worker runs d: a GPU's host, else d itself.
  int Host(int d) const { return devices[d].gpu_of >= 0 ? devices[d].gpu_of : d; }
  // Between a GPU and its host: the host link. Otherwise the link between their hosts (a GPU
  // reaches the network through its host).
  LinkSpec Link(int a, int b) const;
  // Budget: the device's memory setting, else its profile's.
  uint64_t MemoryBudget(int d) const;
};

// Parses and validates the YAML text; does not read profiles. `file` names the text in errors
// and anchors relative profile paths.
Cluster ParseCluster(const std::string& text, const std::string& file);
// Reads `path` and every profile it names (profiles must have timings).
Cluster LoadCluster(const std::string& path);

// "14 GiB", "512MB", "1.5 GB", "1048576" (bytes). GB = 1e9, GiB = 2^30.
std::optional<uint64_t> ParseByteSize(const std::string& s);

}  // namespace es::shard
