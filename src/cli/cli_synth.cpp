// `edgeshard synth`: writes a model with random weights at a known model's shapes and a real
// vocabulary, for tests and benchmarks (see model/model_synth.h).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <optional>

#include "cli/cli_command.h"
#include "cli/cli_common.h"
#include "model/model_synth.h"

namespace es::cli {
namespace {

struct SynthArgs {
  std::string preset, type = "f16", vocab, out, name;
  uint64_t seed = 42;
  int threads = 0;
  bool list = false;
};

std::string Count(uint64_t n) {
  char buf[32];
  if (n >= 1000000000ull)
    std::snprintf(buf, sizeof buf, "%.2fB", static_cast<double>(n) / 1e9);
  else
    std::snprintf(buf, sizeof buf, "%.1fM", static_cast<double>(n) / 1e6);
  return buf;
}

int ListPresets(const SynthArgs& a) {
  std::optional<int> vocab_size;
  if (!a.vocab.empty()) {
    auto v = gguf::File::Open(a.vocab);
    vocab_size = static_cast<int>(v->GetStringArray("tokenizer.ggml.tokens").size());
  }
  std::printf("%-16s %-8s %6s %5s %9s %6s %6s %7s %8s  %s\n", "preset", "arch", "layers", "dim",
              "heads/kv", "ffn", "ctx", "vocab", "params", "about");
  for (const auto& p : model::SynthPresets()) {
    if (p.hidden) continue;
    const int nv = vocab_size.value_or(p.ref_vocab);
    char heads[24];
    std::snprintf(heads, sizeof heads, "%d/%d", p.n_head, p.n_head_kv);
    std::printf("%-16s %-8s %6d %5d %9s %6d %6d %7d %8s  %s\n", p.name, p.arch, p.n_layer, p.n_embd,
                heads, p.n_ff, p.n_ctx, nv, Count(model::SynthParamCount(p, nv)).c_str(),
                p.description);
    std::string sizes = "    sizes:";
    for (const auto& f : model::QuantFormats())
      sizes += std::string(" ") + f.name + " " +
               HumanBytes(static_cast<double>(model::SynthDataBytes(p, nv, f)));
    std::printf("%s\n", sizes.c_str());
  }
  if (!vocab_size)
    std::printf(
        "(vocabulary sizes are the real models'; --vocab FILE lists them with that vocabulary)\n");
  return kExitOk;
}

int Synth(const SynthArgs& a) {
  if (a.list) return ListPresets(a);
  if (a.preset.empty() || a.vocab.empty() || a.out.empty())
    throw UsageError("--preset, --vocab and -o are required (or --list)");
  const auto preset = model::FindSynthPreset(a.preset);
  if (!preset)
    throw UsageError("unknown preset '" + a.preset +
                     "', expected one of: " + model::SynthPresetNames());
  const auto format = model::FindQuantFormat(a.type);
  if (!format)
    throw UsageError("unknown type '" + a.type +
                     "', expected one of: " + model::QuantFormatNames());
  const auto t0 = std::chrono::steady_clock::now();
  const bool tty = isatty(STDERR_FILENO);
  bool drew = false;
  auto last = t0;
  model::SynthOptions o;
  o.seed = a.seed;
  o.name = a.name;
  o.threads = a.threads;
  o.warn = [](const std::string& msg) {
    std::fprintf(stderr, "edgeshard synth: fallback: %s\n", msg.c_str());
  };
  o.progress = [&](uint64_t done, uint64_t total, const std::string& name) {
    const auto now = std::chrono::steady_clock::now();
    if (!tty || total == 0 || (drew && done < total && now - last < std::chrono::milliseconds(100)))
      return;
    last = now;
    drew = true;
    const int width = 30;
    const int fill =
        static_cast<int>(width * static_cast<double>(done) / static_cast<double>(total));
    std::fprintf(stderr, "\rwriting [%.*s%*s] %3d%% %-40.40s", fill,
                 "==============================", width - fill, "",
                 static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)),
                 name.c_str());
    std::fflush(stderr);
  };
  model::SynthResult r;
  try {
    r = model::SynthesizeModel(*preset, a.vocab, a.out, *format, o);
  } catch (...) {
    if (drew) std::fprintf(stderr, "\n");
    throw;
  }
  if (drew) std::fprintf(stderr, "\n");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s: %s %s, %s parameters, vocab %d, seed %llu, %s in %.1f s\n", a.out.c_str(),
              preset->name, format->name, Count(r.n_params).c_str(), r.n_vocab,
              static_cast<unsigned long long>(a.seed),
              HumanBytes(static_cast<double>(r.file_bytes)).c_str(), secs);
  return kExitOk;
}

const bool registered = RegisterCommand("synth", [](CLI::App& app) {
  auto a = std::make_shared<SynthArgs>();
  auto* cmd = app.add_subcommand("synth", "write a random-weight model at a real model's shapes");
  cmd->add_option("--preset", a->preset, "model shape: " + model::SynthPresetNames());
  cmd->add_option("--type", a->type, "weight type (as for quantize): " + model::QuantFormatNames())
      ->capture_default_str();
  cmd->add_option("--vocab", a->vocab, "GGUF file whose tokenizer.* metadata is copied")
      ->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", a->out, "output GGUF file");
  cmd->add_option("--name", a->name, "general.name (default: the preset name)");
  cmd->add_option("--seed", a->seed, "random seed")->capture_default_str();
  cmd->add_option("-t,--threads", a->threads, "worker threads (default: all cores)")
      ->check(CLI::Range(1, 1024));
  cmd->add_flag("--list", a->list, "list the presets with parameter counts and sizes per type");
  return [a]() { return Synth(*a); };
});

}  // namespace
}  // namespace es::cli
