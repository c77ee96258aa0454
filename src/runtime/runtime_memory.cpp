#include "runtime/runtime_memory.h"

#include <cstdlib>
#include <fstream>

namespace es::runtime {

uint64_t MemInfoBytes(const char* key) {
  std::ifstream f("/proc/meminfo");
  std::string k, rest;
  uint64_t kib = 0;
  while (f >> k >> kib) {
    std::getline(f, rest);  // " kB", or nothing for counts such as HugePages_Total
    if (k == key) return kib * 1024;
  }
  return 0;
}

uint64_t CgroupMemoryMax() {
  // /proc/self/cgroup: "0::/path" for cgroup v2 (limit in memory.max, "max" for none), and
  // "N:memory:/path" where the memory controller is on a v1 hierarchy (memory.limit_in_bytes,
  // about 2^63 for none).
  std::ifstream f("/proc/self/cgroup");
  uint64_t best = 0;
  for (std::string line; std::getline(f, line);) {
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = "," + line.substr(a + 1, b - a - 1) + ",";
    std::string path = line.substr(b + 1), root, file;
    if (controllers == ",,") {
      root = "/sys/fs/cgroup", file = "/memory.max";
    } else if (controllers.find(",memory,") != std::string::npos) {
      root = "/sys/fs/cgroup/memory", file = "/memory.limit_in_bytes";
    } else {
      continue;
    }
    if (path.empty() || path[0] != '/') continue;
    for (;;) {
      std::ifstream m(root + (path == "/" ? "" : path) + file);
      std::string v;
      if (m >> v && v != "max") {
        const uint64_t n = std::strtoull(v.c_str(), nullptr, 10);
        if (n > 0 && n < (uint64_t{1} << 62) && (best == 0 || n < best)) best = n;
      }
      if (path == "/") break;
      const size_t slash = path.rfind('/');
      path = slash == 0 ? "/" : path.substr(0, slash);
    }
  }
  return best;
}

MemoryLimit ProcessMemoryLimit() {
  MemoryLimit l;
  auto take = [&l](uint64_t b, const char* what) {
    if (b > 0 && (l.bytes == 0 || b < l.bytes)) l = {b, what};
  };
  take(MemInfoBytes("MemAvailable:"), "MemAvailable");
  take(CgroupMemoryMax(), "the cgroup's memory limit");
  if (const char* e = std::getenv("EDGESHARD_MEMORY_LIMIT"))
    take(std::strtoull(e, nullptr, 10), "EDGESHARD_MEMORY_LIMIT");
  return l;
}

}  // namespace es::runtime
