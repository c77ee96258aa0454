#include "cli/cli_memory.h"

#include <cstdio>

#include "cli/cli_common.h"

namespace es::cli {

std::string MemoryText(const ResidentFigures& f) {
  const uint64_t weights = f.weights_in_memory ? f.weight_bytes : f.weight_bytes - f.expert_bytes;
  std::string s = "memory: " + HumanBytes(double(weights + f.kv_bytes + f.buffer_bytes)) +
                  " resident (weights " + HumanBytes(double(weights)) + ", KV cache " +
                  HumanBytes(double(f.kv_bytes)) + ", buffers " +
                  HumanBytes(double(f.buffer_bytes)) + ")";
  if (f.expert_bytes > 0)
    s += std::string("; experts ") + HumanBytes(double(f.expert_bytes)) +
         (f.weights_in_memory ? " in memory" : " stay in the file mapping") + ", " +
         HumanBytes(double(f.expert_bytes_per_token)) + " read per token";
  return s;
}

void ReportMemory(const char* command, const ResidentFigures& f,
                  const runtime::MemoryLimit& limit) {
  std::fprintf(stderr, "edgeshard %s: %s\n", command, MemoryText(f).c_str());
  if (limit.bytes == 0 || f.file_bytes <= limit.bytes) return;
  const std::string sizes = "the model file (" + HumanBytes(double(f.file_bytes)) +
                            ") is larger than the memory this process may use (" +
                            HumanBytes(double(limit.bytes)) + ", " + limit.what + ")";
  const uint64_t weights = f.weights_in_memory ? f.weight_bytes : f.weight_bytes - f.expert_bytes;
  std::string what;
  if (weights + f.kv_bytes + f.buffer_bytes > limit.bytes)
    what = f.weights_in_memory
               ? "--no-mmap/--mlock keep all of it in memory, which will fail or swap: run "
                 "without them"
               : "even its resident part will not fit: expect heavy paging or an out-of-memory "
                 "kill (a smaller quantization or context helps)";
  else if (f.expert_bytes > 0)
    what =
        "experts are paged in from the file as tokens choose them, so decode speed depends "
        "on the disk and on how often the chosen experts are still cached";
  else
    what =
        "every token reads all weights, paging them in from the file: expect generation at "
        "the disk's speed";
  std::fprintf(stderr, "edgeshard %s: warning: %s; %s\n", command, sizes.c_str(), what.c_str());
}

}  // namespace es::cli
