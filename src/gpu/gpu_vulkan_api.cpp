// Loading Vulkan at run time: dlopen the loader, create one instance for the process.
#include "gpu/gpu_vulkan_api.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "edgeshard/error.h"

namespace es::gpu::vk {
namespace {

struct Loaded {
  Instance inst;
  bool ok = false;
  std::string why;
};

Loaded Load() {
  Loaded out;
  void* lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) lib = dlopen("libvulkan.so", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    out.why =
        "no Vulkan loader (libvulkan.so.1) on this system; install libvulkan1 and a driver "
        "(mesa-vulkan-drivers, or the GPU vendor's)";
    return out;
  }
  auto get_instance_proc =
      reinterpret_cast<PFN_vkGetInstanceProcAddr>(dlsym(lib, "vkGetInstanceProcAddr"));
  if (!get_instance_proc) {
    out.why = "the Vulkan loader has no vkGetInstanceProcAddr";
    return out;
  }
  auto create_instance =
      reinterpret_cast<PFN_vkCreateInstance>(get_instance_proc(VK_NULL_HANDLE, "vkCreateInstance"));
  if (!create_instance) {
    out.why = "the Vulkan loader has no vkCreateInstance";
    return out;
  }
  VkApplicationInfo app{};
  app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO;
  app.pApplicationName = "edgeshard";
  app.pEngineName = "edgeshard";
  app.apiVersion = VK_API_VERSION_1_1;
  VkInstanceCreateInfo ci{};
  ci.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
  ci.pApplicationInfo = &app;
  const VkResult r = create_instance(&ci, nullptr, &out.inst.instance);
  if (r != VK_SUCCESS) {
    out.why = std::string("no Vulkan driver answered (vkCreateInstance: ") + ResultName(r) +
              "); install one (mesa-vulkan-drivers, or the GPU vendor's)";
    return out;
  }
#define ES_VK_LOAD(name)                                                                        \
  out.inst.fn.name = reinterpret_cast<PFN_##name>(get_instance_proc(out.inst.instance, #name)); \
  if (!out.inst.fn.name) {                                                                      \
    out.why = "the Vulkan driver lacks " #name;                                                 \
    return out;                                                                                 \
  }
  ES_VK_INSTANCE_FUNCTIONS(ES_VK_LOAD)
  ES_VK_DEVICE_FUNCTIONS(ES_VK_LOAD)
#undef ES_VK_LOAD
  out.ok = true;
  return out;
}

}  // namespace

const Instance* GetInstance(std::string* why) {
  // Never destroyed: devices may outlive static destructors' order, and the process ends anyway.
  static Loaded* loaded = new Loaded(Load());
  if (!loaded->ok) {
    if (why) *why = loaded->why;
    return nullptr;
  }
  return &loaded->inst;
}

const char* ResultName(VkResult r) {
  switch (r) {
    case VK_SUCCESS:
      return "VK_SUCCESS";
    case VK_NOT_READY:
      return "VK_NOT_READY";
    case VK_TIMEOUT:
      return "VK_TIMEOUT";
    case VK_INCOMPLETE:
      return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY:
      return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
      return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED:
      return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST:
      return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED:
      return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT:
      return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT:
      return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT:
      return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER:
      return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS:
      return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_OUT_OF_POOL_MEMORY:
      return "VK_ERROR_OUT_OF_POOL_MEMORY";
    default:
      return "VkResult error";
  }
}

void Check(VkResult r, const char* what) {
  if (r != VK_SUCCESS) throw Error(std::string("Vulkan: ") + what + ": " + ResultName(r));
}

}  // namespace es::gpu::vk
