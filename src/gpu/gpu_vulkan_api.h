// The Vulkan entry points the GPU backend calls, loaded at run time from the system's loader
// (libvulkan.so.1) instead of linked: the engine then starts on machines without a Vulkan loader
// or driver and says so once, rather than failing to start.
#pragma once
#define VK_NO_PROTOTYPES
#include <vulkan/vulkan_core.h>

#include <string>

namespace es::gpu::vk {

// X(name) for every function below; instance-level ones come from vkGetInstanceProcAddr, the
// device-level ones too (one instance, one or two devices: the trampoline costs nothing here).
#define ES_VK_INSTANCE_FUNCTIONS(X)      \
  X(vkDestroyInstance)                   \
  X(vkEnumeratePhysicalDevices)          \
  X(vkGetPhysicalDeviceProperties)       \
  X(vkGetPhysicalDeviceFeatures)         \
  X(vkGetPhysicalDeviceMemoryProperties) \
  X(vkGetPhysicalDeviceQueueFamilyProperties)
#define ES_VK_DEVICE_FUNCTIONS(X)  \
  X(vkCreateDevice)                \
  X(vkDestroyDevice)               \
  X(vkGetDeviceQueue)              \
  X(vkCreateBuffer)                \
  X(vkDestroyBuffer)               \
  X(vkGetBufferMemoryRequirements) \
  X(vkAllocateMemory)              \
  X(vkFreeMemory)                  \
  X(vkBindBufferMemory)            \
  X(vkMapMemory)                   \
  X(vkUnmapMemory)                 \
  X(vkCreateShaderModule)          \
  X(vkDestroyShaderModule)         \
  X(vkCreateDescriptorSetLayout)   \
  X(vkDestroyDescriptorSetLayout)  \
  X(vkCreatePipelineLayout)        \
  X(vkDestroyPipelineLayout)       \
  X(vkCreateComputePipelines)      \
  X(vkDestroyPipeline)             \
  X(vkCreateDescriptorPool)        \
  X(vkDestroyDescriptorPool)       \
  X(vkAllocateDescriptorSets)      \
  X(vkUpdateDescriptorSets)        \
  X(vkCreateCommandPool)           \
  X(vkDestroyCommandPool)          \
  X(vkAllocateCommandBuffers)      \
  X(vkFreeCommandBuffers)          \
  X(vkBeginCommandBuffer)          \
  X(vkEndCommandBuffer)            \
  X(vkCmdBindPipeline)             \
  X(vkCmdBindDescriptorSets)       \
  X(vkCmdPushConstants)            \
  X(vkCmdDispatch)                 \
  X(vkCmdPipelineBarrier)          \
  X(vkCmdCopyBuffer)               \
  X(vkQueueSubmit)                 \
  X(vkCreateFence)                 \
  X(vkDestroyFence)                \
  X(vkWaitForFences)               \
  X(vkResetFences)

struct Functions {
#define ES_VK_MEMBER(name) PFN_##name name = nullptr;
  ES_VK_INSTANCE_FUNCTIONS(ES_VK_MEMBER)
  ES_VK_DEVICE_FUNCTIONS(ES_VK_MEMBER)
#undef ES_VK_MEMBER
};

// The process's Vulkan instance and its functions, created on first use. nullptr when there is
// no loader, no driver or no instance; `why` then says which (for the one message users see).
struct Instance {
  VkInstance instance = VK_NULL_HANDLE;
  Functions fn;
};
const Instance* GetInstance(std::string* why = nullptr);

// "VK_ERROR_OUT_OF_DEVICE_MEMORY" etc., for error messages.
const char* ResultName(VkResult r);
// Throws es::Error "<what>: <result name>" unless r is VK_SUCCESS.
void Check(VkResult r, const char* what);

}  // namespace es::gpu::vk
