#include "cli/cli_common.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>

#include "cli/cli_command.h"
#include "cli/cli_memory.h"
#include "edgeshard/error.h"
#include "gpu/gpu_device.h"
#include "model/model_llama.h"

namespace es::cli {

void AddModelOptions(CLI::App* app, ModelOptions& o, bool with_ctx) {
  app->add_option("-m,--model", o.model, "GGUF model file")->required()->check(CLI::ExistingFile);
  app->add_option("-t,--threads", o.threads, "worker threads (default: all cores)")
      ->check(CLI::Range(1, 1024));
  if (with_ctx) {
    app->add_option("-c,--ctx", o.ctx, "context length in tokens (default: min(model, 4096))")
        ->check(CLI::Range(1, 1 << 24));
    app->add_option("-b,--batch", o.batch, "prompt tokens per forward pass")
        ->check(CLI::Range(1, 65536));
    AddCacheTypeOptions(app, o.cache_type_k, o.cache_type_v);
  }
  AddMemoryOptions(app, o.memory);
}

void AddMemoryOptions(CLI::App* app, MemoryOptions& o) {
  app->add_flag("--no-mmap", o.no_mmap,
                "read the whole model into memory instead of mapping the file (experts too: a "
                "file larger than memory then cannot run)");
  app->add_flag("--mlock", o.mlock,
                "lock the model's weights in memory so that they are never paged out (needs "
                "RLIMIT_MEMLOCK of the model's size, e.g. `ulimit -l unlimited`)");
  app->add_option("--gpu-layers", o.gpu_layers,
                  "(-ngl) run the last N blocks (or all) on the GPU, with their KV cache (Vulkan; "
                  "`edgeshard --list-devices`)")
      ->default_str("0");
  app->add_option("--device", o.device,
                  "where --gpu-layers go: vulkan0 (the default), vulkan1, ...; cpu ignores them");
}

int MemoryOptions::GpuLayers() const {
  if (device == "cpu") return 0;
  if (gpu_layers == "all") return std::numeric_limits<int>::max();  // >= any n_layer
  try {
    size_t used = 0;
    const int n = std::stoi(gpu_layers, &used);
    if (used == gpu_layers.size() && n >= 0) return n;
  } catch (const std::exception&) {
  }
  throw UsageError("--gpu-layers '" + gpu_layers + "': expected a number of blocks or all");
}

void MemoryOptions::CheckLocal(const std::string& cluster) const {
  if (!cluster.empty() && GpuLayers() != 0)
    throw UsageError("--gpu-layers with --cluster: give the workers --gpu-layers instead");
}

int MemoryOptions::GpuDevice() const {
  if (device.empty() || device == "cpu") return 0;
  try {
    return gpu::ParseDeviceName(device);
  } catch (const Error& e) {
    throw UsageError(std::string("--device: ") + e.what());
  }
}

void ReportMemory(const char* command, const Model& model, const Context& ctx) {
  const auto i = model.Info();
  ReportMemory(command, ResidentFigures{.file_bytes = i.file_bytes,
                                        .weight_bytes = i.weight_bytes,
                                        .expert_bytes = i.expert_bytes,
                                        .expert_bytes_per_token = i.expert_bytes_per_token,
                                        .kv_bytes = ctx.kv_bytes(),
                                        .buffer_bytes = ctx.buffer_bytes(),
                                        .weights_in_memory = i.weights_in_memory});
}

void AddCacheTypeOptions(CLI::App* app, std::string& k, std::string& v) {
  const auto types = CLI::IsMember({"f16", "f32", "q8_0", "q4_0"});
  // -ctk/-ctv as llama.cpp spells them are rewritten to these by main().
  app->add_option("--cache-type-k", k, "KV cache type for keys (-ctk): f16, f32, q8_0, q4_0")
      ->check(types);
  app->add_option("--cache-type-v", v, "KV cache type for values (-ctv): f16, f32, q8_0, q4_0")
      ->check(types);
  app->add_option_function<std::string>(
         "--kv-type", [&k, &v](const std::string& t) { k = v = t; },
         "KV cache type for keys and values")
      ->check(types);
}

void AddContextShiftOptions(CLI::App* app, bool& shift, int& keep) {
  shift = true;
  app->add_flag("--context-shift,!--no-context-shift", shift,
                "when the context is full, drop the older half after --keep tokens and go on "
                "(default: on)");
  app->add_option("--keep", keep,
                  "tokens kept at the start by a context shift, besides a BOS (-1: the prompt)")
      ->check(CLI::Range(-1, 1 << 24));
}

void WarnBeyondTraining(const char* command, int n_ctx, int n_ctx_train) {
  if (n_ctx <= n_ctx_train) return;
  std::fprintf(stderr,
               "edgeshard %s: warning: the context of %d tokens is longer than the model was "
               "trained on (%d); the file's RoPE scaling applies, but quality may degrade\n",
               command, n_ctx, n_ctx_train);
}

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

std::string KvCacheText(size_t bytes, const ModelOptions& o) {
  return HumanBytes(static_cast<double>(bytes)) +
         model::KvTypesNote({model::ParseKvType(o.cache_type_k, "--cache-type-k"),
                             model::ParseKvType(o.cache_type_v, "--cache-type-v")});
}

std::shared_ptr<Model> LoadModel(const std::string& path, const MemoryOptions& mem,
                                 double* load_ms) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const bool tty = isatty(STDERR_FILENO);
  bool drew = false;
  LoadParams lp;
  lp.path = path;
  lp.use_mmap = !mem.no_mmap;
  lp.use_mlock = mem.mlock;
  lp.gpu_layers = mem.GpuLayers();
  lp.gpu_device = mem.GpuDevice();
  lp.progress = [&](size_t done, size_t total) {
    if (!tty || total == 0) return;
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (secs < 1.0 && done < total) return;  // fast loads stay quiet
    if (!drew && done >= total) return;
    drew = true;
    const int width = 40;
    const int fill = static_cast<int>(width * static_cast<double>(done) / total);
    std::fprintf(stderr, "\rloading [%.*s%*s] %3d%% %s", fill,
                 "========================================", width - fill, "",
                 static_cast<int>(100.0 * done / total),
                 HumanBytes(static_cast<double>(total)).c_str());
    if (done >= total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
  auto m = Model::Load(lp);
  if (load_ms) *load_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const ModelInfo info = m->Info();
  if (!info.gpu_placement.empty()) {
    // Where each range of blocks runs, the GPU as its driver names it.
    std::string cpu = info.gpu_first > 0
                          ? "blocks 0-" + std::to_string(info.gpu_first - 1) + " on the CPU, "
                          : "";
    std::fprintf(stderr, "edgeshard: %s%s\n", cpu.c_str(), info.gpu_placement.c_str());
  }
  return m;
}

ContextParams MakeContextParams(const ModelOptions& o) {
  ContextParams p;
  p.n_ctx = o.ctx;
  p.n_threads = o.threads;
  p.n_batch = o.batch;
  p.cache_type_k = o.cache_type_k;
  p.cache_type_v = o.cache_type_v;
  return p;
}

void AddSamplingOptions(CLI::App* app, GenerateParams& g) {
  auto& s = g.sampling;
  app->add_option("-n,--n-predict", g.max_tokens,
                  "tokens to generate (-1: until end of text or context)")
      ->check(CLI::Range(-1, 1 << 30));
  app->add_option("--temp", s.temperature, "temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0));
  app->add_option("--top-k", s.top_k, "top-k (0: off)")->check(CLI::Range(0, 1 << 30));
  app->add_option("--top-p", s.top_p, "top-p (1: off)")->check(CLI::Range(0.0, 1.0));
  app->add_option("--min-p", s.min_p, "min-p (0: off)")->check(CLI::Range(0.0, 1.0));
  app->add_option("--repeat-penalty", s.repeat_penalty, "repetition penalty (1: off)")
      ->check(CLI::Range(0.0, 10.0));
  app->add_option("--repeat-last-n", s.penalty_last_n, "tokens the penalties look back on")
      ->check(CLI::Range(0, 1 << 20));
  app->add_option("--frequency-penalty", s.frequency_penalty, "frequency penalty")
      ->check(CLI::Range(-2.0, 2.0));
  app->add_option("--presence-penalty", s.presence_penalty, "presence penalty")
      ->check(CLI::Range(-2.0, 2.0));
  app->add_option("-s,--seed", s.seed, "random seed (default: random)");
  app->add_option("--stop", g.stop, "stop string (repeatable); never printed");
  app->add_flag("--ignore-eos", g.ignore_eos, "keep generating past end-of-text tokens");
}

void AddChatTemplateOptions(CLI::App* app, ChatTemplateOptions& o) {
  auto* text = app->add_option("--chat-template", o.text,
                               "built-in template name (chatml, llama2, llama3, mistral, zephyr, "
                               "...) or Jinja template text; default: the model's (chatml if it "
                               "has none)");
  app->add_option("--chat-template-file", o.file, "read the Jinja chat template from this file")
      ->excludes(text);
}

std::string ChatTemplateText(const ChatTemplateOptions& o) {
  if (o.file.empty()) return o.text;
  std::ifstream f(o.file, std::ios::binary);
  if (!f) throw Error(o.file + ": cannot read the chat template file");
  std::string text{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  if (text.empty()) throw Error(o.file + ": the chat template file is empty");
  return text;
}

}  // namespace es::cli
