// `edgeshard --list-devices`: the devices this machine offers for --device, as llama.cpp's
// option of that name lists them.
#include <cstdio>
#include <string>
#include <thread>

#include "cli/cli_command.h"
#include "gpu/gpu_device.h"

namespace es::cli {

int ListDevices() {
  std::printf("cpu: %u threads\n", std::thread::hardware_concurrency());
  std::string why;
  const auto devs = gpu::ListDevices(&why);
  for (const auto& d : devs)
    std::printf("vulkan%d: %s (%s, %llu MiB%s)\n", d.index, d.name.c_str(), d.kind.c_str(),
                static_cast<unsigned long long>(d.memory_bytes >> 20),
                d.unified_memory ? ", unified memory" : "");
  if (devs.empty()) std::printf("no GPU: %s\n", why.c_str());
  return kExitOk;
}

}  // namespace es::cli
