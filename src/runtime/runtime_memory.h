// The memory this process may use: /proc/meminfo figures and cgroup v2 limits.
#pragma once
#include <cstdint>
#include <string>

namespace es::runtime {

// A /proc/meminfo figure of this machine now, e.g. "MemTotal:" (bytes; 0 where it does not say).
uint64_t MemInfoBytes(const char* key);

// The memory limit of this process's cgroup and of its ancestors (a parent's limit binds its
// children too), the smallest: memory.max (cgroup v2 at /sys/fs/cgroup) or memory.limit_in_bytes
// (a v1 memory hierarchy at /sys/fs/cgroup/memory). 0 when none is set.
uint64_t CgroupMemoryMax();

struct MemoryLimit {
  uint64_t bytes = 0;  // 0: unknown
  std::string what;    // where the figure comes from, e.g. "the cgroup's memory limit"
};
// The smallest of MemAvailable, CgroupMemoryMax() and $EDGESHARD_MEMORY_LIMIT (bytes: to plan
// for a smaller machine, and for tests).
MemoryLimit ProcessMemoryLimit();

}  // namespace es::runtime
