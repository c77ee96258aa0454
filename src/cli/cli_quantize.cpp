// `edgeshard quantize IN OUT TYPE`: converts an F32/F16/BF16 model to another weight format
// with llama.cpp's per-tensor type rules (see model/model_quantize.h).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>

#include "cli/cli_command.h"
#include "cli/cli_common.h"
#include "model/model_quantize.h"

namespace es::cli {
namespace {

struct QuantizeArgs {
  std::string in, out, type;
  int threads = 0;
  bool allow_requantize = false;
};

// A progress bar on stderr, drawn only on a terminal and at most ten times a second.
class ProgressBar {
 public:
  explicit ProgressBar(const char* verb) : verb_(verb), tty_(isatty(STDERR_FILENO)) {}
  ~ProgressBar() {
    if (drew_) std::fprintf(stderr, "\n");
  }
  void Update(uint64_t done, uint64_t total, const std::string& what) {
    if (!tty_ || total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    if (drew_ && done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    drew_ = true;
    const int width = 30;
    const int fill =
        static_cast<int>(width * static_cast<double>(done) / static_cast<double>(total));
    std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %-40.40s", verb_, fill,
                 "==============================", width - fill, "",
                 static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)),
                 what.c_str());
    std::fflush(stderr);
  }

 private:
  const char* verb_;
  bool tty_;
  bool drew_ = false;
  std::chrono::steady_clock::time_point last_{};
};

std::string TypeCounts(const std::vector<model::TensorPlan>& plan) {
  std::map<std::string, int> n;
  for (const auto& p : plan) ++n[TypeName(p.dst)];
  std::string s;
  for (const auto& [name, count] : n)
    s += (s.empty() ? "" : ", ") + std::to_string(count) + " " + name;
  return s;
}

int Quantize(const QuantizeArgs& a) {
  const auto format = model::FindQuantFormat(a.type);
  if (!format)
    throw UsageError("unknown type '" + a.type +
                     "', expected one of: " + model::QuantFormatNames());
  const auto t0 = std::chrono::steady_clock::now();
  model::QuantizeResult r;
  {
    ProgressBar bar("quantizing");
    model::QuantizeOptions o;
    o.threads = a.threads;
    o.progress = [&](uint64_t done, uint64_t total, const std::string& name) {
      bar.Update(done, total, name);
    };
    o.allow_requantize = a.allow_requantize;
    o.warn = [](const std::string& msg) {
      const bool requant = msg.rfind("requantizing", 0) == 0;
      std::fprintf(stderr, "edgeshard quantize: %s: %s\n", requant ? "warning" : "fallback",
                   msg.c_str());
    };
    r = model::QuantizeFile(a.in, a.out, *format, o);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s: %s, %zu tensors (%s), %s -> %s in %.1f s\n", a.out.c_str(), format->name,
              r.plan.size(), TypeCounts(r.plan).c_str(),
              HumanBytes(static_cast<double>(r.input_bytes)).c_str(),
              HumanBytes(static_cast<double>(r.output_bytes)).c_str(), secs);
  if (r.n_fallback > 0)
    std::fprintf(stderr, "edgeshard quantize: %d tensor(s) used a fallback type\n", r.n_fallback);
  return kExitOk;
}

std::string FormatHelp() {
  std::string s = "TYPE is one of:\n";
  for (const auto& f : model::QuantFormats()) {
    char line[160];
    std::snprintf(line, sizeof line, "  %-16s %s\n", f.name, f.description);
    s += line;
  }
  s +=
      "1-D tensors (norms, biases) are copied unchanged. A row length a type cannot hold falls\n"
      "back as llama.cpp does - to Q5_0 (for Q4_K), Q5_1 (Q5_K), Q8_0 (Q6_K), IQ4_NL (Q2_K, Q3_K,\n"
      "IQ4_XS) or F16 - with a note on stderr.";
  return s;
}

const bool registered = RegisterCommand("quantize", [](CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  auto* cmd =
      app.add_subcommand("quantize", "convert an F32/F16/BF16 model to another weight type");
  cmd->add_option("input", a->in,
                  "input GGUF model (F32, F16 or BF16 weights; quantized with --allow-requantize)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("output", a->out, "output GGUF file")->required();
  cmd->add_option("type", a->type, "target type (see below)")->required();
  cmd->add_option("-t,--threads", a->threads, "worker threads (default: all cores)")
      ->check(CLI::Range(1, 1024));
  cmd->add_flag("--allow-requantize", a->allow_requantize,
                "accept a quantized input (dequantized and quantized again: quality drops)");
  cmd->footer(FormatHelp());
  return [a]() { return Quantize(*a); };
});

}  // namespace
}  // namespace es::cli
