// What a loaded model keeps resident: the start-up lines of the commands that load a model say
// it, and warn when the file is larger than the memory the process may use (a mixture of
// experts still runs then, paging in the experts its tokens choose).
#pragma once
#include <cstdint>
#include <string>

#include "runtime/runtime_memory.h"

namespace es::cli {

struct ResidentFigures {
  uint64_t file_bytes = 0;
  uint64_t weight_bytes = 0;            // every tensor
  uint64_t expert_bytes = 0;            // of which experts (0: dense)
  uint64_t expert_bytes_per_token = 0;  // what a decode step reads of them
  uint64_t kv_bytes = 0, buffer_bytes = 0;
  bool weights_in_memory = false;  // --no-mmap or --mlock: experts are resident too
};
// "memory: 1.2 GiB resident (weights 1.0 GiB, KV cache 64.0 MiB, buffers 12.0 MiB); experts
// 10.3 GiB stay in the file mapping, 120.0 MiB read per token"
std::string MemoryText(const ResidentFigures& f);
// Prints "edgeshard COMMAND: memory: ..." on stderr, and a warning when the file is larger than
// `limit` (or what is resident is).
void ReportMemory(const char* command, const ResidentFigures& f, const runtime::MemoryLimit& limit);
inline void ReportMemory(const char* command, const ResidentFigures& f) {
  ReportMemory(command, f, runtime::ProcessMemoryLimit());
}

}  // namespace es::cli
