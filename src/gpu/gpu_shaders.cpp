// The embedded SPIR-V modules by program (the table is generated at build time).
#include "gpu/gpu_shaders.h"

#include <string>

#include "edgeshard/error.h"

namespace es::gpu {

extern const ProgramCode kEmbeddedPrograms[];
extern const size_t kEmbeddedProgramCount;

namespace {

// Module file names (CMakeLists.txt compiles one per name). A switch, so that a program added to
// the enum without a name fails to compile (-Wswitch).
const char* NameOf(Program p) {
  switch (p) {
    case Program::kMatMulF32:
      return "matmul_f32";
    case Program::kMatMulF16:
      return "matmul_f16";
    case Program::kMatMulBF16:
      return "matmul_bf16";
    case Program::kMatMulQ8_0:
      return "matmul_q8_0";
    case Program::kMatMulQ4_0:
      return "matmul_q4_0";
    case Program::kMatMulQ4_K:
      return "matmul_q4_k";
    case Program::kMatMulQ6_K:
      return "matmul_q6_k";
    case Program::kMatMulQ4_1:
      return "matmul_q4_1";
    case Program::kMatMulQ5_0:
      return "matmul_q5_0";
    case Program::kMatMulQ5_1:
      return "matmul_q5_1";
    case Program::kMatMulIQ4_NL:
      return "matmul_iq4_nl";
    case Program::kMatMulIQ4_XS:
      return "matmul_iq4_xs";
    case Program::kMatMulMXFP4:
      return "matmul_mxfp4";
    case Program::kMatMulQ2_K:
      return "matmul_q2_k";
    case Program::kMatMulQ3_K:
      return "matmul_q3_k";
    case Program::kMatMulQ5_K:
      return "matmul_q5_k";
    case Program::kRmsNorm:
      return "rmsnorm";
    case Program::kAdd:
      return "add";
    case Program::kRope:
      return "rope";
    case Program::kKvStore:
      return "kvstore";
    case Program::kActivation:
      return "act";
    case Program::kAttention:
      return "attention";
    case Program::kQuantize:
      return "quantize";
    case Program::kProbe:
      return "probe";
    case Program::kArith:
      return "arith";
    case Program::kCount:
      break;
  }
  throw Error("GPU program " + std::to_string(static_cast<int>(p)) + " has no module");
}

}  // namespace

const ProgramCode& CodeOf(Program p, DeviceOptions::Math build) {
  const char* suffix = build == DeviceOptions::Math::kF64     ? "_f64"
                       : build == DeviceOptions::Math::kMixed ? "_mixed"
                                                              : "";
  const std::string name = std::string(NameOf(p)) + suffix;
  for (size_t i = 0; i < kEmbeddedProgramCount; ++i)
    if (name == kEmbeddedPrograms[i].name) return kEmbeddedPrograms[i];
  throw Error("GPU program " + name + " is not embedded in this build");
}

uint32_t PushU32(int64_t v, const char* what) {
  if (v < 0 || v > static_cast<int64_t>(UINT32_MAX))
    throw Error(std::string("GPU dispatch: ") + what + " out of the 32-bit range the shaders take");
  return static_cast<uint32_t>(v);
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
    case TensorType::kQ4_1:
      *p = Program::kMatMulQ4_1;
      return true;
    case TensorType::kQ5_0:
      *p = Program::kMatMulQ5_0;
      return true;
    case TensorType::kQ5_1:
      *p = Program::kMatMulQ5_1;
      return true;
    case TensorType::kIQ4_NL:
      *p = Program::kMatMulIQ4_NL;
      return true;
    case TensorType::kIQ4_XS:
      *p = Program::kMatMulIQ4_XS;
      return true;
    case TensorType::kMXFP4:
      *p = Program::kMatMulMXFP4;
      return true;
    case TensorType::kQ2_K:
      *p = Program::kMatMulQ2_K;
      return true;
    case TensorType::kQ3_K:
      *p = Program::kMatMulQ3_K;
      return true;
    case TensorType::kQ5_K:
      *p = Program::kMatMulQ5_K;
      return true;
    default:
      return false;
  }
}

}  // namespace es::gpu
