// Device profiles: what one device measured for one model, per layer unit. Stored as JSON
// (schema in docs/planner.md); a file without timings describes only a model's units.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/runtime_memory.h"
#include "shard/shard_model_units.h"

namespace es::shard {

struct DecodePoint {
  int ctx = 0;    // tokens already in the KV cache
  double ms = 0;  // time of one decode step through the unit at that context
};

struct UnitTiming {
  double prompt_ms_per_token = 0;  // prompt processing at the profile's prompt_batch
  // What each further row adds to a decode step of a few rows (a micro-batch of sequences):
  // measured with kMicroBatchRows rows. Far above prompt_ms_per_token on a CPU, where a big
  // batch amortises what a few rows cannot. 0: not measured (older profiles): the prompt rate.
  double row_ms = 0;
  double RowMs() const { return row_ms > 0 ? row_ms : prompt_ms_per_token; }
  std::vector<DecodePoint> decode;  // ascending ctx
  // Decode time at `ctx`: linear between the measured points, linear beyond them (never < 0).
  double DecodeMs(int ctx) const;
};

struct Profile {
  std::string device;  // device name, informational
  std::string cpu;
  int threads = 0;
  uint64_t memory_budget_bytes = 0;  // 0: unknown (the cluster must give one)
  // A GPU's profile (`edgeshard profile --device vulkanN`): the GPU as its driver names it,
  // whether its memory is the host's (an iGPU, a Jetson), and what one crossing of the hidden
  // state to the GPU and back costs (taken out of the blocks' decode times: a range of blocks
  // crosses once, and the planner prices it as the link to the host). "": a CPU's profile.
  std::string gpu;
  bool unified_memory = false;
  double crossing_ms = 0;
  int prompt_batch = 0;
  ModelUnits model;
  std::vector<UnitTiming> timing;  // one per unit; empty in a units-only file
  bool has_timing() const { return !timing.empty(); }
};

constexpr const char* kProfileSchema = "edgeshard-profile/1";
constexpr int kMicroBatchRows = 4;  // rows of the step that row_ms is measured with

// Parses and validates; `what` (a file name) prefixes every error, with the JSON path at fault.
Profile ParseProfile(const std::string& text, const std::string& what, bool require_timing);
Profile LoadProfile(const std::string& path, bool require_timing);
std::string ProfileToJson(const Profile& p);
void SaveProfile(const Profile& p, const std::string& path);

// A model's units from a GGUF file or from a JSON profile / units file.
ModelUnits LoadModelUnits(const std::string& path);

using runtime::MemInfoBytes;
// MemAvailable of this machine now (bytes; 0 where /proc/meminfo does not say).
inline uint64_t MemAvailable() {
  return MemInfoBytes("MemAvailable:");
}

struct MeasureOptions {
  int threads = 0;                     // 0: all cores
  std::vector<int> ctx = {512, 2048};  // decode context lengths (capped below the model's)
  int prompt_batch = 512;              // prompt tokens per forward pass (capped likewise)
  int reps = 7;                        // samples per figure; the median is kept
  uint64_t memory_budget_bytes = 0;    // 0: MemAvailable of this machine
  std::string device;                  // name; default: the host name
  int gpu_device = -1;                 // >= 0: measure on Vulkan device vulkanN (every block and
                                       // the head there), budget its memory
  std::function<void(const std::string&)> progress;  // one line per measured phase
};

// Runs every layer unit of the model on this machine through the engine (embedding lookup,
// each block alone, norm + head) and times it: prompt processing per token at prompt_batch and
// one decode step at each context length, with the KV cache filled to that length.
Profile MeasureProfile(const std::string& model_path, const MeasureOptions& o);

}  // namespace es::shard
