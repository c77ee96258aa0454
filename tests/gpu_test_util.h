// The Vulkan device the GPU tests run on: EDGESHARD_TEST_VULKAN_DEVICE (default vulkan0). No device
// is a failure, not a skip: CI has lavapipe (scripts/setup installs it).
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "gpu/gpu_device.h"

namespace es::test {

inline std::unique_ptr<gpu::Device> OpenTestDevice(const gpu::DeviceOptions& options = {}) {
  std::string why;
  if (gpu::ListDevices(&why).empty()) {
    ADD_FAILURE() << "no Vulkan device: " << why << " (scripts/setup installs lavapipe)";
    return nullptr;
  }
  const char* env = std::getenv("EDGESHARD_TEST_VULKAN_DEVICE");
  return gpu::Device::Open(gpu::ParseDeviceName(env && *env ? env : "vulkan0"), options);
}

// matmul.comp's two layouts, each tested on the device: bit for bit in both.
inline gpu::DeviceOptions WithLayout(gpu::DeviceOptions::MatMul layout) {
  gpu::DeviceOptions o;
  o.matmul = layout;
  return o;
}
constexpr gpu::DeviceOptions::MatMul kLayouts[] = {gpu::DeviceOptions::MatMul::kRowEach,
                                                   gpu::DeviceOptions::MatMul::kChains};
inline const char* LayoutName(gpu::DeviceOptions::MatMul layout) {
  return layout == gpu::DeviceOptions::MatMul::kRowEach ? "rows" : "chains";
}

}  // namespace es::test
