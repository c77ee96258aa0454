// Vulkan devices: enumeration, memory, pipelines and recorded dispatch sequences.
#include "gpu/gpu_device.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "edgeshard/error.h"
#include "gpu/gpu_shaders.h"
#include "gpu/gpu_vulkan_api.h"

namespace es::gpu {
namespace {

using vk::Check;

// Every Buffer gets this much more than asked: shaders read unaligned 32-bit words as two whole
// words, the second of which may lie past the last byte.
constexpr size_t kPadBytes = 16;
constexpr VkBufferUsageFlags kStorageUsage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                                             VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                             VK_BUFFER_USAGE_TRANSFER_DST_BIT;
// Descriptor sets per pool of a sequence (a block's dispatches take a few dozen).
constexpr uint32_t kSetsPerPool = 256;

const char* KindName(VkPhysicalDeviceType t) {
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
      return "discrete GPU";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
      return "integrated GPU";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
      return "virtual GPU";
    case VK_PHYSICAL_DEVICE_TYPE_CPU:
      return "CPU (software)";
    default:
      return "other";
  }
}

std::vector<VkPhysicalDevice> PhysicalDevices(const vk::Instance& in) {
  uint32_t n = 0;
  Check(in.fn.vkEnumeratePhysicalDevices(in.instance, &n, nullptr), "vkEnumeratePhysicalDevices");
  std::vector<VkPhysicalDevice> devs(n);
  if (n)
    Check(in.fn.vkEnumeratePhysicalDevices(in.instance, &n, devs.data()),
          "vkEnumeratePhysicalDevices");
  devs.resize(n);
  return devs;
}

// One of `names` (the enum's values but the default, in order) from environment variable `var`.
template <typename E>
E FromEnv(const char* var, std::initializer_list<const char*> names) {
  const char* e = std::getenv(var);
  if (!e || !*e) return E::kDefault;
  int i = 1;
  std::string all;
  for (const char* n : names) {
    if (std::string(e) == n) return static_cast<E>(i);
    all += (all.empty() ? "" : " or ") + std::string(n);
    ++i;
  }
  throw Error(std::string(var) + "=" + e + ": say " + all + " (or unset it)");
}

// How the programs run: options, else the environment, else by the device (DeviceOptions).
// Doubles are cheap on CPUs and on GPUs are kept to the few operations per row that need them;
// CPUs also run matmul.comp faster with a row per invocation, GPUs need its chains spread.
void Configure(DeviceInfo& d, bool is_cpu, const DeviceOptions& o) {
  using Math = DeviceOptions::Math;
  using MatMul = DeviceOptions::MatMul;
  Math math = o.math;
  if (math == Math::kDefault)
    math = FromEnv<Math>("EDGESHARD_VULKAN_MATH", {"native", "f64", "mixed"});
  if (math != Math::kDefault && math != Math::kNative && !d.shader_f64)
    throw Error("vulkan" + std::to_string(d.index) + " (" + d.name +
                ") has no doubles in shaders: it can only run the native builds");
  if (math == Math::kDefault)
    math = !d.shader_f64 ? Math::kNative : is_cpu || !d.fused_fma ? Math::kF64 : Math::kMixed;
  d.math = math;
  MatMul mm = o.matmul;
  if (mm == MatMul::kDefault) mm = FromEnv<MatMul>("EDGESHARD_VULKAN_MATMUL", {"rows", "chains"});
  d.matmul_row_each = mm == MatMul::kDefault ? is_cpu : mm == MatMul::kRowEach;
}

DeviceInfo Describe(const vk::Instance& in, VkPhysicalDevice pd, int index) {
  VkPhysicalDeviceProperties props{};
  in.fn.vkGetPhysicalDeviceProperties(pd, &props);
  VkPhysicalDeviceMemoryProperties mem{};
  in.fn.vkGetPhysicalDeviceMemoryProperties(pd, &mem);
  DeviceInfo d;
  d.index = index;
  d.name = props.deviceName;
  d.kind = KindName(props.deviceType);
  VkPhysicalDeviceFeatures features{};
  in.fn.vkGetPhysicalDeviceFeatures(pd, &features);
  // Which build of the programs the device runs depends on doubles (and, once it is open, on
  // whether its fma is fused: Device::Open probes it).
  d.shader_f64 = features.shaderFloat64 == VK_TRUE;
  Configure(d, props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU, {});
  for (uint32_t h = 0; h < mem.memoryHeapCount; ++h)
    if (mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
      d.memory_bytes = std::max<uint64_t>(d.memory_bytes, mem.memoryHeaps[h].size);
  constexpr VkMemoryPropertyFlags kUnified = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT |
                                             VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                             VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  for (uint32_t t = 0; t < mem.memoryTypeCount; ++t) {
    const VkMemoryType& mt = mem.memoryTypes[t];
    // A small host-visible window of a discrete card (resizable BAR off) is not unified memory.
    if ((mt.propertyFlags & kUnified) == kUnified &&
        mem.memoryHeaps[mt.heapIndex].size >= d.memory_bytes)
      d.unified_memory = true;
  }
  d.max_buffer_range = props.limits.maxStorageBufferRange;
  return d;
}

// The first memory type among `allowed` (a VkMemoryRequirements mask) with all of `want`.
int FindMemoryType(const VkPhysicalDeviceMemoryProperties& mem, uint32_t allowed,
                   VkMemoryPropertyFlags want) {
  for (uint32_t t = 0; t < mem.memoryTypeCount; ++t)
    if ((allowed & (1u << t)) && (mem.memoryTypes[t].propertyFlags & want) == want)
      return static_cast<int>(t);
  return -1;
}

template <class T>
T Handle(uint64_t h) {
  return reinterpret_cast<T>(static_cast<uintptr_t>(h));
}
template <class T>
uint64_t Raw(T h) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(h));
}

}  // namespace

std::vector<DeviceInfo> ListDevices(std::string* why) {
  const vk::Instance* in = vk::GetInstance(why);
  if (!in) return {};
  std::vector<DeviceInfo> out;
  const auto devs = PhysicalDevices(*in);
  for (size_t i = 0; i < devs.size(); ++i)
    out.push_back(Describe(*in, devs[i], static_cast<int>(i)));
  if (out.empty() && why) *why = "the Vulkan driver offers no device";
  return out;
}

int ParseDeviceName(const std::string& name) {
  const std::string prefix = "vulkan";
  if (name.rfind(prefix, 0) == 0 && name.size() > prefix.size() &&
      name.size() <= prefix.size() + 3 &&
      std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                  [](char c) { return c >= '0' && c <= '9'; }))
    return std::stoi(name.substr(prefix.size()));
  throw Error("device '" + name + "': expected cpu or vulkanN (N from `edgeshard --list-devices`)");
}

struct Device::Impl {
  const vk::Instance* in = nullptr;
  const vk::Functions* fn = nullptr;
  VkPhysicalDevice pd = VK_NULL_HANDLE;
  VkPhysicalDeviceMemoryProperties mem{};
  VkDevice dev = VK_NULL_HANDLE;
  VkQueue queue = VK_NULL_HANDLE;
  uint32_t queue_family = 0;
  VkCommandPool cmd_pool = VK_NULL_HANDLE;
  VkFence fence = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout = VK_NULL_HANDLE;
  VkPipelineLayout layout = VK_NULL_HANDLE;
  std::array<VkPipeline, static_cast<size_t>(Program::kCount)> pipelines{};
  int device_type = -1;              // memory type of buffers
  int host_type = -1;                // memory type of staging buffers
  bool mapped = false;               // buffers are host-visible (unified memory)
  const DeviceInfo* info = nullptr;  // the device's: which build and matmul layout to make
  uint32_t shared_bytes = 16384;     // maxComputeSharedMemorySize
  std::shared_ptr<Buffer> dummy;     // bound to bindings a program does not use

  // A primary command buffer of the pool, begun.
  VkCommandBuffer BeginCommands(VkCommandBufferUsageFlags flags) {
    VkCommandBufferAllocateInfo ai{};
    ai.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO;
    ai.commandPool = cmd_pool;
    ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    VkCommandBuffer cb = VK_NULL_HANDLE;
    Check(fn->vkAllocateCommandBuffers(dev, &ai, &cb), "vkAllocateCommandBuffers");
    VkCommandBufferBeginInfo bi{};
    bi.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
    bi.flags = flags;
    Check(fn->vkBeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer");
    return cb;
  }

  void MemoryBarrier(VkCommandBuffer cb, VkPipelineStageFlags src_stage, VkAccessFlags src,
                     VkPipelineStageFlags dst_stage, VkAccessFlags dst) {
    VkMemoryBarrier mb{};
    mb.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
    mb.srcAccessMask = src;
    mb.dstAccessMask = dst;
    fn->vkCmdPipelineBarrier(cb, src_stage, dst_stage, 0, 1, &mb, 0, nullptr, 0, nullptr);
  }

  // A buffer of `bytes` in memory type `type`, mapped when `map`; false when the memory is
  // exhausted (the buffer is then released).
  bool CreateBuffer(Buffer& b, size_t bytes, VkBufferUsageFlags usage, int type, bool map) {
    VkBufferCreateInfo ci{};
    ci.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
    ci.size = bytes;
    ci.usage = usage;
    VkBuffer buf = VK_NULL_HANDLE;
    Check(fn->vkCreateBuffer(dev, &ci, nullptr, &buf), "vkCreateBuffer");
    VkMemoryRequirements req{};
    fn->vkGetBufferMemoryRequirements(dev, buf, &req);
    VkMemoryAllocateInfo ai{};
    ai.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO;
    ai.allocationSize = req.size;
    ai.memoryTypeIndex = static_cast<uint32_t>(type);
    VkDeviceMemory mem = VK_NULL_HANDLE;
    if (fn->vkAllocateMemory(dev, &ai, nullptr, &mem) != VK_SUCCESS) {
      fn->vkDestroyBuffer(dev, buf, nullptr);
      return false;
    }
    b.buffer_ = Raw(buf);
    b.memory_ = Raw(mem);
    Check(fn->vkBindBufferMemory(dev, buf, mem, 0), "vkBindBufferMemory");
    if (map) Check(fn->vkMapMemory(dev, mem, 0, VK_WHOLE_SIZE, 0, &b.mapped_), "vkMapMemory");
    return true;
  }

  VkPipeline PipelineFor(Program p) {
    VkPipeline& pl = pipelines[static_cast<size_t>(p)];
    if (pl != VK_NULL_HANDLE) return pl;
    // The probe asks about the device's own fma; arith is integer arithmetic in every build.
    const bool native = p == Program::kProbe || p == Program::kArith;
    const ProgramCode& code = CodeOf(p, native ? DeviceOptions::Math::kNative : info->math);
    VkShaderModuleCreateInfo sm{};
    sm.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO;
    sm.codeSize = code.count * sizeof(uint32_t);
    sm.pCode = code.words;
    VkShaderModule module = VK_NULL_HANDLE;
    Check(fn->vkCreateShaderModule(dev, &sm, nullptr, &module), code.name);
    VkComputePipelineCreateInfo ci{};
    ci.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO;
    ci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
    ci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    ci.stage.module = module;
    ci.stage.pName = "main";
    // attention.comp keeps up to constant 0 scores in shared memory: what the device holds beside
    // its other 2 KiB (from 3584 keys on 16 KiB devices), at most 8192.
    const uint32_t cached =
        std::min<uint32_t>(8192, (std::max<uint32_t>(shared_bytes, 16384) - 2048) / 4);
    const VkSpecializationMapEntry entry{0, 0, sizeof(uint32_t)};
    const VkSpecializationInfo spec{1, &entry, sizeof(cached), &cached};
    if (p == Program::kAttention) ci.stage.pSpecializationInfo = &spec;
    const VkBool32 row_each = info->matmul_row_each ? VK_TRUE : VK_FALSE;
    const VkSpecializationInfo matmul_spec{1, &entry, sizeof(row_each), &row_each};
    if (IsMatMul(p)) ci.stage.pSpecializationInfo = &matmul_spec;
    ci.layout = layout;
    const VkResult r = fn->vkCreateComputePipelines(dev, VK_NULL_HANDLE, 1, &ci, nullptr, &pl);
    fn->vkDestroyShaderModule(dev, module, nullptr);
    Check(r, code.name);
    return pl;
  }
};

Device::Device() : impl_(std::make_unique<Impl>()) {}

std::unique_ptr<Device> Device::Open(int index, const DeviceOptions& options) {
  std::string why;
  const vk::Instance* in = vk::GetInstance(&why);
  if (!in) throw Error("vulkan" + std::to_string(index) + ": " + why);
  const auto devs = PhysicalDevices(*in);
  if (index < 0 || static_cast<size_t>(index) >= devs.size())
    throw Error("vulkan" + std::to_string(index) + ": no such device (this system has " +
                std::to_string(devs.size()) + "; see `edgeshard --list-devices`)");
  std::unique_ptr<Device> d(new Device());
  Impl& m = *d->impl_;
  m.in = in;
  m.info = &d->info_;
  m.fn = &in->fn;
  m.pd = devs[static_cast<size_t>(index)];
  d->info_ = Describe(*in, m.pd, index);
  VkPhysicalDeviceProperties props{};
  in->fn.vkGetPhysicalDeviceProperties(m.pd, &props);
  d->align_ = std::max<size_t>(16, props.limits.minStorageBufferOffsetAlignment);
  m.shared_bytes = props.limits.maxComputeSharedMemorySize;
  in->fn.vkGetPhysicalDeviceMemoryProperties(m.pd, &m.mem);

  uint32_t nq = 0;
  in->fn.vkGetPhysicalDeviceQueueFamilyProperties(m.pd, &nq, nullptr);
  std::vector<VkQueueFamilyProperties> qf(nq);
  in->fn.vkGetPhysicalDeviceQueueFamilyProperties(m.pd, &nq, qf.data());
  bool found = false;
  for (uint32_t q = 0; q < nq && !found; ++q)
    if (qf[q].queueFlags & VK_QUEUE_COMPUTE_BIT) m.queue_family = q, found = true;
  if (!found)
    throw Error("vulkan" + std::to_string(index) + " (" + d->info_.name + ") has no compute queue");

  const float priority = 1.0f;
  VkDeviceQueueCreateInfo qci{};
  qci.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO;
  qci.queueFamilyIndex = m.queue_family;
  qci.queueCount = 1;
  qci.pQueuePriorities = &priority;
  VkPhysicalDeviceFeatures want{};
  want.shaderFloat64 = d->info_.shader_f64 ? VK_TRUE : VK_FALSE;
  VkDeviceCreateInfo dci{};
  dci.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO;
  dci.pEnabledFeatures = &want;
  dci.queueCreateInfoCount = 1;
  dci.pQueueCreateInfos = &qci;
  Check(m.fn->vkCreateDevice(m.pd, &dci, nullptr, &m.dev), "vkCreateDevice");
  m.fn->vkGetDeviceQueue(m.dev, m.queue_family, 0, &m.queue);

  VkCommandPoolCreateInfo pci{};
  pci.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO;
  pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
  pci.queueFamilyIndex = m.queue_family;
  Check(m.fn->vkCreateCommandPool(m.dev, &pci, nullptr, &m.cmd_pool), "vkCreateCommandPool");
  VkFenceCreateInfo fci{};
  fci.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO;
  Check(m.fn->vkCreateFence(m.dev, &fci, nullptr, &m.fence), "vkCreateFence");

  std::array<VkDescriptorSetLayoutBinding, kMaxBindings> b{};
  for (int i = 0; i < kMaxBindings; ++i) {
    b[static_cast<size_t>(i)].binding = static_cast<uint32_t>(i);
    b[static_cast<size_t>(i)].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
    b[static_cast<size_t>(i)].descriptorCount = 1;
    b[static_cast<size_t>(i)].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
  }
  VkDescriptorSetLayoutCreateInfo lci{};
  lci.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO;
  lci.bindingCount = kMaxBindings;
  lci.pBindings = b.data();
  Check(m.fn->vkCreateDescriptorSetLayout(m.dev, &lci, nullptr, &m.set_layout),
        "vkCreateDescriptorSetLayout");
  VkPushConstantRange push{};
  push.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
  push.size = 128;
  VkPipelineLayoutCreateInfo plci{};
  plci.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO;
  plci.setLayoutCount = 1;
  plci.pSetLayouts = &m.set_layout;
  plci.pushConstantRangeCount = 1;
  plci.pPushConstantRanges = &push;
  Check(m.fn->vkCreatePipelineLayout(m.dev, &plci, nullptr, &m.layout), "vkCreatePipelineLayout");

  // Buffers: device-local memory the CPU can map where there is such (unified memory, software
  // drivers, resizable BAR), else device-local memory filled through a staging buffer.
  VkBufferCreateInfo probe{};
  probe.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
  probe.size = 4096;
  probe.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  VkBuffer pb = VK_NULL_HANDLE;
  Check(m.fn->vkCreateBuffer(m.dev, &probe, nullptr, &pb), "vkCreateBuffer");
  VkMemoryRequirements req{};
  m.fn->vkGetBufferMemoryRequirements(m.dev, pb, &req);
  m.fn->vkDestroyBuffer(m.dev, pb, nullptr);
  constexpr VkMemoryPropertyFlags kHost =
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  if (d->info_.unified_memory)
    m.device_type =
        FindMemoryType(m.mem, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | kHost);
  m.mapped = m.device_type >= 0;
  if (!m.mapped)
    m.device_type = FindMemoryType(m.mem, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  m.host_type = FindMemoryType(m.mem, req.memoryTypeBits, kHost);
  if (m.device_type < 0 || m.host_type < 0)
    throw Error("vulkan" + std::to_string(index) + " (" + d->info_.name +
                ") offers no memory type for storage buffers");
  m.dummy = d->Alloc(16);
  // Whether fma() rounds once: (1 + 2^-12)^2 - (1 + 2^-11) is 2^-24 fused and 0 rounded twice.
  {
    auto out = d->Alloc(sizeof(float));
    const float a = 1.0f + 0x1p-12f, push[3] = {a, a, -(1.0f + 0x1p-11f)};
    auto seq = d->Record();
    seq->Dispatch(Program::kProbe, {{out.get(), 0, 0}}, push, sizeof(push), 1);
    seq->Finish();
    d->Run(*seq);
    float r = 0;
    d->Download(*out, 0, &r, sizeof(r));
    d->info_.fused_fma = r == 0x1p-24f;
  }
  // The options (and the probe) decide the build and the layout; pipelines are made after this.
  Configure(d->info_, props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU, options);
  return d;
}

Device::~Device() {
  Impl& m = *impl_;
  if (m.dev == VK_NULL_HANDLE) return;
  m.dummy.reset();
  staging_.reset();
  for (VkPipeline p : m.pipelines)
    if (p != VK_NULL_HANDLE) m.fn->vkDestroyPipeline(m.dev, p, nullptr);
  m.fn->vkDestroyPipelineLayout(m.dev, m.layout, nullptr);
  m.fn->vkDestroyDescriptorSetLayout(m.dev, m.set_layout, nullptr);
  m.fn->vkDestroyFence(m.dev, m.fence, nullptr);
  m.fn->vkDestroyCommandPool(m.dev, m.cmd_pool, nullptr);
  m.fn->vkDestroyDevice(m.dev, nullptr);
}

std::shared_ptr<Buffer> Device::Alloc(size_t bytes) {
  Impl& m = *impl_;
  std::shared_ptr<Buffer> b(new Buffer());
  b->bytes_ = bytes;
  if (!m.CreateBuffer(*b, bytes + kPadBytes, kStorageUsage, m.device_type, m.mapped))
    throw Error("vulkan" + std::to_string(info_.index) + " (" + info_.name + "): cannot allocate " +
                std::to_string(bytes >> 20) + " MiB of device memory; offload fewer layers");
  b->dev_ = this;
  return b;
}

Buffer::Buffer() {
  static std::atomic<uint64_t> next{1};
  serial_ = next.fetch_add(1);
}

Buffer::~Buffer() {
  if (dev_) dev_->FreeBuffer(*this);
}

void Device::FreeBuffer(Buffer& b) {
  Impl& m = *impl_;
  if (b.mapped_) m.fn->vkUnmapMemory(m.dev, Handle<VkDeviceMemory>(b.memory_));
  m.fn->vkDestroyBuffer(m.dev, Handle<VkBuffer>(b.buffer_), nullptr);
  m.fn->vkFreeMemory(m.dev, Handle<VkDeviceMemory>(b.memory_), nullptr);
}

Buffer& Device::Staging(size_t bytes) {
  Impl& m = *impl_;
  if (staging_ && staging_->bytes_ >= bytes) return *staging_;
  staging_.reset();
  auto b = std::unique_ptr<Buffer>(new Buffer());
  b->bytes_ = std::max<size_t>(bytes, 16u << 20);
  if (!m.CreateBuffer(*b, b->bytes_, kStorageUsage, m.host_type, true))
    throw Error("vulkan" + std::to_string(info_.index) + ": cannot allocate a staging buffer");
  b->dev_ = this;
  staging_ = std::move(b);
  return *staging_;
}

void Device::CopyBuffer(const Buffer& src, size_t src_off, const Buffer& dst, size_t dst_off,
                        size_t bytes) {
  Impl& m = *impl_;
  VkCommandBuffer cb = m.BeginCommands(VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT);
  VkBufferCopy region{src_off, dst_off, bytes};
  m.fn->vkCmdCopyBuffer(cb, Handle<VkBuffer>(src.buffer_), Handle<VkBuffer>(dst.buffer_), 1,
                        &region);
  m.fn->vkEndCommandBuffer(cb);
  VkSubmitInfo si{};
  si.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cb;
  Check(m.fn->vkQueueSubmit(m.queue, 1, &si, m.fence), "vkQueueSubmit");
  Check(m.fn->vkWaitForFences(m.dev, 1, &m.fence, VK_TRUE, UINT64_MAX), "vkWaitForFences");
  m.fn->vkResetFences(m.dev, 1, &m.fence);
  m.fn->vkFreeCommandBuffers(m.dev, m.cmd_pool, 1, &cb);
}

void Device::Upload(Buffer& dst, size_t offset, const void* src, size_t bytes) {
  if (offset + bytes > dst.bytes_) throw Error("GPU upload past the end of its buffer");
  if (dst.mapped_) {
    std::memcpy(static_cast<uint8_t*>(dst.mapped_) + offset, src, bytes);
    return;
  }
  constexpr size_t kChunk = 64u << 20;
  for (size_t done = 0; done < bytes; done += kChunk) {
    const size_t n = std::min(kChunk, bytes - done);
    Buffer& st = Staging(n);
    std::memcpy(st.mapped_, static_cast<const uint8_t*>(src) + done, n);
    CopyBuffer(st, 0, dst, offset + done, n);
  }
}

void Device::Download(const Buffer& src, size_t offset, void* dst, size_t bytes) {
  if (offset + bytes > src.bytes_) throw Error("GPU download past the end of its buffer");
  if (src.mapped_) {
    std::memcpy(dst, static_cast<const uint8_t*>(src.mapped_) + offset, bytes);
    return;
  }
  constexpr size_t kChunk = 64u << 20;
  for (size_t done = 0; done < bytes; done += kChunk) {
    const size_t n = std::min(kChunk, bytes - done);
    Buffer& st = Staging(n);
    CopyBuffer(src, offset + done, st, 0, n);
    std::memcpy(static_cast<uint8_t*>(dst) + done, st.mapped_, n);
  }
}

std::unique_ptr<Sequence> Device::Record() {
  return std::unique_ptr<Sequence>(new Sequence(this));
}

void Device::Run(const Sequence& seq) {
  if (!seq.finished_) throw Error("GPU sequence run before Finish()");
  Impl& m = *impl_;
  VkCommandBuffer cb = Handle<VkCommandBuffer>(seq.cmd_);
  VkSubmitInfo si{};
  si.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cb;
  Check(m.fn->vkQueueSubmit(m.queue, 1, &si, m.fence), "vkQueueSubmit");
  const VkResult r = m.fn->vkWaitForFences(m.dev, 1, &m.fence, VK_TRUE, UINT64_MAX);
  m.fn->vkResetFences(m.dev, 1, &m.fence);
  if (r != VK_SUCCESS)
    throw Error("vulkan" + std::to_string(info_.index) + " (" + info_.name +
                "): the GPU stopped answering (" + vk::ResultName(r) + ")");
}

Sequence::Sequence(Device* dev) : dev_(dev) {
  Device::Impl& m = *dev->impl_;
  const VkCommandBuffer cb = m.BeginCommands(0);
  cmd_ = Raw(cb);
  // Uploads (host writes, staging copies) made before a run are visible to its dispatches.
  m.MemoryBarrier(cb, VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                  VK_ACCESS_HOST_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                  VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                  VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
}

Sequence::~Sequence() {
  Device::Impl& m = *dev_->impl_;
  VkCommandBuffer cb = Handle<VkCommandBuffer>(cmd_);
  m.fn->vkFreeCommandBuffers(m.dev, m.cmd_pool, 1, &cb);
  for (uint64_t p : pools_)
    m.fn->vkDestroyDescriptorPool(m.dev, Handle<VkDescriptorPool>(p), nullptr);
}

void Sequence::Dispatch(Program program, std::initializer_list<Binding> bindings, const void* push,
                        size_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz) {
  if (finished_) throw Error("GPU sequence: dispatch after Finish()");
  if (bindings.size() > static_cast<size_t>(kMaxBindings) || push_bytes > 128)
    throw Error("GPU sequence: too many bindings or push constants");
  Device::Impl& m = *dev_->impl_;
  const VkPipeline pipeline = m.PipelineFor(program);
  if (sets_left_ == 0) {
    VkDescriptorPoolSize size{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, kSetsPerPool * kMaxBindings};
    VkDescriptorPoolCreateInfo pci{};
    pci.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO;
    pci.maxSets = kSetsPerPool;
    pci.poolSizeCount = 1;
    pci.pPoolSizes = &size;
    VkDescriptorPool pool = VK_NULL_HANDLE;
    Check(m.fn->vkCreateDescriptorPool(m.dev, &pci, nullptr, &pool), "vkCreateDescriptorPool");
    pools_.push_back(Raw(pool));
    pool_ = Raw(pool);
    sets_left_ = kSetsPerPool;
  }
  VkDescriptorSetAllocateInfo ai{};
  ai.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO;
  ai.descriptorPool = Handle<VkDescriptorPool>(pool_);
  ai.descriptorSetCount = 1;
  ai.pSetLayouts = &m.set_layout;
  VkDescriptorSet set = VK_NULL_HANDLE;
  Check(m.fn->vkAllocateDescriptorSets(m.dev, &ai, &set), "vkAllocateDescriptorSets");
  --sets_left_;
  std::array<VkDescriptorBufferInfo, kMaxBindings> info{};
  std::array<VkWriteDescriptorSet, kMaxBindings> w{};
  size_t i = 0;
  for (const Binding& b : bindings) {
    if (b.buffer && b.offset % dev_->align_ != 0)
      throw Error("GPU sequence: a binding's offset is not a multiple of the device's alignment");
    const Buffer* buf = b.buffer ? b.buffer : m.dummy.get();
    info[i].buffer = Handle<VkBuffer>(buf->buffer_);
    info[i].offset = b.buffer ? b.offset : 0;
    // The padding past the end is readable too (see kPadBytes).
    const size_t left = buf->bytes_ + kPadBytes - info[i].offset;
    const size_t range = b.buffer && b.bytes ? std::min(b.bytes + kPadBytes, left) : left;
    if (range > dev_->info_.max_buffer_range)
      throw Error("GPU sequence: a binding of " + std::to_string(range >> 20) +
                  " MiB exceeds the device's storage buffer range of " +
                  std::to_string(dev_->info_.max_buffer_range >> 20) + " MiB");
    info[i].range = range;
    ++i;
  }
  for (; i < static_cast<size_t>(kMaxBindings); ++i) {
    info[i].buffer = Handle<VkBuffer>(m.dummy->buffer_);
    info[i].range = m.dummy->bytes_ + kPadBytes;
  }
  for (size_t j = 0; j < static_cast<size_t>(kMaxBindings); ++j) {
    w[j].sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET;
    w[j].dstSet = set;
    w[j].dstBinding = static_cast<uint32_t>(j);
    w[j].descriptorCount = 1;
    w[j].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
    w[j].pBufferInfo = &info[j];
  }
  m.fn->vkUpdateDescriptorSets(m.dev, kMaxBindings, w.data(), 0, nullptr);
  VkCommandBuffer cb = Handle<VkCommandBuffer>(cmd_);
  m.fn->vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline);
  m.fn->vkCmdBindDescriptorSets(cb, VK_PIPELINE_BIND_POINT_COMPUTE, m.layout, 0, 1, &set, 0,
                                nullptr);
  if (push_bytes)
    m.fn->vkCmdPushConstants(cb, m.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                             static_cast<uint32_t>(push_bytes), push);
  m.fn->vkCmdDispatch(cb, gx, gy, gz);
  dirty_ = true;
}

void Sequence::Barrier() {
  if (!dirty_) return;
  dev_->impl_->MemoryBarrier(Handle<VkCommandBuffer>(cmd_), VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                             VK_ACCESS_SHADER_WRITE_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                             VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
  dirty_ = false;
}

void Sequence::Finish() {
  if (finished_) return;
  Device::Impl& m = *dev_->impl_;
  // Results must be visible to the host (Download, mapped reads) once the fence signals.
  m.MemoryBarrier(Handle<VkCommandBuffer>(cmd_), VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                  VK_ACCESS_SHADER_WRITE_BIT,
                  VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                  VK_ACCESS_HOST_READ_BIT | VK_ACCESS_TRANSFER_READ_BIT);
  Check(m.fn->vkEndCommandBuffer(Handle<VkCommandBuffer>(cmd_)), "vkEndCommandBuffer");
  finished_ = true;
}

const DeviceInfo& Sequence::info() const {
  return dev_->info();
}

}  // namespace es::gpu
