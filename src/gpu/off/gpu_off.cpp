// A build without the Vulkan backend (EDGESHARD_VULKAN=OFF): no devices, and a reason.
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gpu/gpu_device.h"

namespace es::gpu {

std::vector<DeviceInfo> ListDevices(std::string* why) {
  if (why) *why = "this build has no GPU backend (configured with -DEDGESHARD_VULKAN=OFF)";
  return {};
}

int ParseDeviceName(const std::string& name) {
  throw Error("device '" + name + "': this build has no GPU backend (-DEDGESHARD_VULKAN=OFF)");
}

}  // namespace es::gpu
