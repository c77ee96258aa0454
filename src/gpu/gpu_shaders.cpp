// The embedded SPIR-V modules by program (the table is generated at build time).
#include "gpu/gpu_shaders.h"

#include <array>
#include <cstring>
#include <string>

#include "edgeshard/error.h"

namespace es::gpu {

extern const ProgramCode kEmbeddedPrograms[];
extern const size_t kEmbeddedProgramCount;

namespace {

// Module file names, in Program order (CMakeLists.txt compiles one per name).
constexpr std::array<const char*, static_cast<size_t>(Program::kCount)> kNames = {
    "matmul_f32",  "matmul_f16",  "matmul_bf16", "matmul_q8_0",
    "matmul_q4_0", "matmul_q4_k", "matmul_q6_k",
};

}  // namespace

const ProgramCode& CodeOf(Program p) {
  const char* name = kNames.at(static_cast<size_t>(p));
  for (size_t i = 0; i < kEmbeddedProgramCount; ++i)
    if (std::strcmp(kEmbeddedPrograms[i].name, name) == 0) return kEmbeddedPrograms[i];
  throw Error(std::string("GPU program ") + name + " is not embedded in this build");
}

bool MatMulProgram(TensorType t, Program* p) {
  switch (t) {
    case TensorType::kF32:
      *p = Program::kMatMulF32;
      return true;
    case TensorType::kF16:
      *p = Program::kMatMulF16;
      return true;
    case TensorType::kBF16:
      *p = Program::kMatMulBF16;
      return true;
    case TensorType::kQ8_0:
      *p = Program::kMatMulQ8_0;
      return true;
    case TensorType::kQ4_0:
      *p = Program::kMatMulQ4_0;
      return true;
    case TensorType::kQ4_K:
      *p = Program::kMatMulQ4_K;
      return true;
    case TensorType::kQ6_K:
      *p = Program::kMatMulQ6_K;
      return true;
    default:
      return false;
  }
}

}  // namespace es::gpu
