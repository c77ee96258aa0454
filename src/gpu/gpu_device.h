// A Vulkan compute device: its memory (buffers), its compute programs (the shaders of
// gpu/shaders/, compiled to SPIR-V at build time and embedded), and sequences of dispatches
// recorded once and submitted as often as needed. The GPU counterpart of kernels/: the model's
// blocks are composed from these the same way they are from the CPU kernels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "edgeshard/error.h"

namespace es::gpu {

// How a device's programs are run (shaders/exact.glsl): by default devices that are CPUs
// (lavapipe) take the f64 builds and one invocation per matmul row; GPUs with doubles the mixed
// builds (the f64 ones but the hardware's fma, where a probe finds it fused; else f64), GPUs
// without the native ones, and one invocation per float chain. EDGESHARD_VULKAN_MATH=
// native|f64|mixed and EDGESHARD_VULKAN_MATMUL=rows|chains override that (to run a software driver
// as a GPU is run, for instance), and these options override both.
struct DeviceOptions {
  enum class Math { kDefault, kNative, kF64, kMixed } math = Math::kDefault;
  enum class MatMul { kDefault, kRowEach, kChains } matmul = MatMul::kDefault;
};

struct DeviceInfo {
  int index = 0;                  // what --device vulkanN names
  std::string name;               // as the driver reports it
  std::string kind;               // "discrete GPU", "integrated GPU", "CPU (software)", ...
  uint64_t memory_bytes = 0;      // the largest device-local heap
  bool unified_memory = false;    // device-local memory the CPU can map (iGPUs, software drivers)
  uint64_t max_buffer_range = 0;  // the largest range one dispatch can bind
  bool shader_f64 = false;        // the device offers doubles in shaders (shaderFloat64)
  bool fused_fma = false;         // its fma() rounds once (probed when it is opened)
  // How the programs run (DeviceOptions): which build, and matmul.comp's layout (one invocation
  // per weight row, or per chain).
  DeviceOptions::Math math = DeviceOptions::Math::kNative;
  bool matmul_row_each = false;
  // Whether the build rounds fma, division, sqrt and the CPU's double sums as the CPU does (the
  // f64 builds; the mixed ones where fma is fused), so that results equal the CPU's bit for bit.
  bool rounds_as_cpu() const {
    return math == DeviceOptions::Math::kF64 || (math == DeviceOptions::Math::kMixed && fused_fma);
  }
};

// The devices the Vulkan driver offers, in driver order. Empty when there is no loader, driver
// or device; `why` then says which and what to install.
std::vector<DeviceInfo> ListDevices(std::string* why = nullptr);
// Device vulkan<index>; throws es::Error saying there is no such device and why.
inline DeviceInfo FindDevice(int index) {
  std::string why;
  const auto devs = ListDevices(&why);
  if (index < 0 || static_cast<size_t>(index) >= devs.size())
    throw Error("vulkan" + std::to_string(index) + ": no such device (" +
                (why.empty() ? "this system has " + std::to_string(devs.size()) : why) +
                "; see `edgeshard --list-devices`)");
  return devs[static_cast<size_t>(index)];
}
// Parses "vulkan0", "vulkan1", ... (the --device syntax) into an index; throws es::Error naming
// the accepted forms otherwise.
int ParseDeviceName(const std::string& name);

class Device;

// Device memory usable as a storage buffer. Owned by shared_ptr so recorded sequences keep
// what they bind alive.
class Buffer {
 public:
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  size_t bytes() const { return bytes_; }
  // Unique in the process: recorded sequences are looked up by the buffers they bind, whose
  // addresses a later allocation may reuse.
  uint64_t serial() const { return serial_; }

 private:
  friend class Device;
  friend class Sequence;
  Buffer();
  uint64_t serial_;
  Device* dev_ = nullptr;
  size_t bytes_ = 0;
  uint64_t buffer_ = 0;     // VkBuffer
  uint64_t memory_ = 0;     // VkDeviceMemory
  void* mapped_ = nullptr;  // unified memory: the CPU's view, written and read directly
};

// A slice of a buffer bound to one binding of a dispatch. `offset` must be a multiple of
// Device::binding_alignment(); bytes 0 means to the end of the buffer.
struct Binding {
  const Buffer* buffer = nullptr;
  size_t offset = 0;
  size_t bytes = 0;
};

// The compute programs the backend has, one per embedded SPIR-V module (see gpu_shaders.h).
enum class Program : int;

// Dispatches recorded once (Record), then submitted with Device::Run as often as needed.
class Sequence {
 public:
  ~Sequence();
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;
  // One dispatch of `program` over groups (x, y, z), with its storage buffers in binding order
  // and its push constants (at most 128 bytes).
  void Dispatch(Program program, std::initializer_list<Binding> bindings, const void* push,
                size_t push_bytes, uint32_t gx, uint32_t gy = 1, uint32_t gz = 1);
  // Makes every earlier dispatch's writes visible to later dispatches.
  void Barrier();
  // Ends recording; Device::Run needs a finished sequence.
  void Finish();
  const DeviceInfo& info() const;

 private:
  friend class Device;
  explicit Sequence(Device* dev);
  Device* dev_;
  uint64_t cmd_ = 0;   // VkCommandBuffer
  uint64_t pool_ = 0;  // VkDescriptorPool, grown as dispatches need sets
  std::vector<uint64_t> pools_;
  uint32_t sets_left_ = 0;
  bool finished_ = false;
  bool dirty_ = false;  // a dispatch since the last barrier
};

class Device {
 public:
  // Opens device `index` of ListDevices(). Throws es::Error when there is none or it cannot
  // compute.
  static std::unique_ptr<Device> Open(int index, const DeviceOptions& options = {});
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const DeviceInfo& info() const { return info_; }
  size_t binding_alignment() const { return align_; }

  // A storage buffer of `bytes` (plus a few bytes of padding: shaders read whole 32-bit words,
  // and unaligned ones as two).
  std::shared_ptr<Buffer> Alloc(size_t bytes);
  void Upload(Buffer& dst, size_t offset, const void* src, size_t bytes);
  void Download(const Buffer& src, size_t offset, void* dst, size_t bytes);

  std::unique_ptr<Sequence> Record();
  // Submits a finished sequence and waits for it.
  void Run(const Sequence& seq);

 private:
  friend class Sequence;
  friend class Buffer;
  struct Impl;
  Device();
  // A host-visible staging buffer of at least `bytes`, for devices whose memory the CPU cannot
  // map.
  Buffer& Staging(size_t bytes);
  void CopyBuffer(const Buffer& src, size_t src_off, const Buffer& dst, size_t dst_off,
                  size_t bytes);
  void FreeBuffer(Buffer& b);
  std::unique_ptr<Impl> impl_;
  DeviceInfo info_;
  size_t align_ = 256;
  std::unique_ptr<Buffer> staging_;
};

}  // namespace es::gpu
