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
};

struct Cluster {
  std::string file;
  std::vector<DeviceSpec> devices;
  int source = 0;
  std::optional<LinkSpec> default_link;
  std::map<std::pair<int, int>, LinkSpec> links;  // key: (lower index, higher index)
  std::vector<Profile> profiles;                  // per device, filled by LoadCluster

  int Find(const std::string& name) const;  // -1 if absent
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
