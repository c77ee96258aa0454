// Options and helpers shared by the subcommands that load a model.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "edgeshard/edgeshard.h"

namespace es::cli {

// --no-mmap and --mlock, as llama.cpp's, and where the blocks run: -ngl/--gpu-layers N|all and
// --device vulkanN|cpu.
struct MemoryOptions {
  bool no_mmap = false;
  bool mlock = false;
  std::string gpu_layers = "0";
  std::string device;
  // -ngl as a count (all: INT_MAX) and the Vulkan device index; throws UsageError for bad values.
  int GpuLayers() const;
  int GpuDevice() const;
  // A UsageError for --gpu-layers with --cluster `cluster` (the workers take --gpu-layers).
  void CheckLocal(const std::string& cluster) const;
};
void AddMemoryOptions(CLI::App* app, MemoryOptions& o);

struct ModelOptions {
  std::string model;
  MemoryOptions memory;
  int threads = 0;
  int ctx = 0;
  int batch = 256;
  std::string cache_type_k = "f16", cache_type_v = "f16";
};

// -m, -t, -c, -b, -ctk/--cache-type-k, -ctv/--cache-type-v, --kv-type (both), --no-mmap,
// --mlock.
void AddModelOptions(CLI::App* app, ModelOptions& o, bool with_ctx = true);
// Loads with a progress bar on stderr (only if it is a terminal and loading takes > 1 s).
std::shared_ptr<Model> LoadModel(const std::string& path, const MemoryOptions& mem,
                                 double* load_ms = nullptr);
// "edgeshard COMMAND: memory: ..." on stderr: what the model and context keep resident, with a
// warning when the file is larger than the memory this process may use (cli_memory.h).
void ReportMemory(const char* command, const Model& model, const Context& ctx);
ContextParams MakeContextParams(const ModelOptions& o);

// -n, --temp, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n, --frequency-penalty,
// --presence-penalty, --seed, --stop, --ignore-eos.
void AddSamplingOptions(CLI::App* app, GenerateParams& g);

// -ctk/--cache-type-k, -ctv/--cache-type-v and --kv-type (sets both).
void AddCacheTypeOptions(CLI::App* app, std::string& k, std::string& v);
// --context-shift / --no-context-shift (default: on) and --keep N.
void AddContextShiftOptions(CLI::App* app, bool& shift, int& keep);
// A context beyond the model's training context runs (with the file's RoPE scaling), as in
// llama.cpp, but quality may drop: says so on stderr.
void WarnBeyondTraining(const char* command, int n_ctx, int n_ctx_train);

std::string HumanBytes(double bytes);
// "4.0 MiB", or with other types than F16 "2.1 MiB (K q8_0, V q8_0)".
std::string KvCacheText(size_t bytes, const ModelOptions& o);

// --chat-template NAME|TEXT and --chat-template-file FILE (they exclude each other).
struct ChatTemplateOptions {
  std::string text;
  std::string file;
};
void AddChatTemplateOptions(CLI::App* app, ChatTemplateOptions& o);
// The template they give ("" for the model's own); reads the file. Throws es::Error.
std::string ChatTemplateText(const ChatTemplateOptions& o);

}  // namespace es::cli
