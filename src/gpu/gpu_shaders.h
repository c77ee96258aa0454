// The compute programs of the GPU backend: GLSL in gpu/shaders/, compiled by glslc at build time
// (one SPIR-V module per program and weight type) and embedded in the library by
// cmake/embed_spirv.cmake.
#pragma once
#include <cstddef>
#include <cstdint>

#include "gpu/gpu_device.h"
#include "tensor/tensor_types.h"

namespace es::gpu {

// Every program takes the same pipeline layout: storage buffers at bindings 0..kMaxBindings-1
// (those it does not use are bound to a dummy) and up to 128 bytes of push constants.
constexpr int kMaxBindings = 6;

enum class Program : int {
  kMatMulF32,
  kMatMulF16,
  kMatMulBF16,
  kMatMulQ8_0,
  kMatMulQ4_0,
  kMatMulQ4_1,
  kMatMulQ5_0,
  kMatMulQ5_1,
  kMatMulIQ4_NL,
  kMatMulIQ4_XS,
  kMatMulMXFP4,
  kMatMulQ2_K,
  kMatMulQ3_K,
  kMatMulQ4_K,
  kMatMulQ5_K,
  kMatMulQ6_K,
  kRmsNorm,
  kAdd,
  kRope,
  kKvStore,
  kActivation,
  kAttention,
  kQuantize,
  kProbe,
  kArith,  // softfloat.glsl's operations, for tests
  kCount
};

struct ProgramCode {
  const char* name;  // the SPIR-V module's file name without .spv, e.g. "matmul_q4_0"
  const uint32_t* words;
  size_t count;
};
// The build of a program (shaders/exact.glsl): native, f64 or mixed (DeviceInfo::math).
const ProgramCode& CodeOf(Program p, DeviceOptions::Math build);

// Push constants and grids: a value as the shaders' uint (es::Error naming `what` when it does not
// fit), the groups along x before a grid takes a second dimension (maxComputeWorkGroupCount is at
// least 65535), and a rounded-up division for group counts.
uint32_t PushU32(int64_t v, const char* what);
constexpr uint32_t kGroupsX = 32768;
constexpr uint32_t DivUp(uint64_t a, uint64_t b) {
  return static_cast<uint32_t>((a + b - 1) / b);
}

// Whether p is one of the matmul programs (the enum's first).
constexpr bool IsMatMul(Program p) {
  return static_cast<int>(p) <= static_cast<int>(Program::kMatMulQ6_K);
}
// The matmul program for weights of type t; false when the backend has none for it.
bool MatMulProgram(TensorType t, Program* p);

}  // namespace es::gpu
