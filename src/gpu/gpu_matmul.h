// Weight matrices in device memory and matmuls over them (gpu/shaders/matmul.comp).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "gpu/gpu_device.h"
#include "kernels/kernels.h"
#include "tensor/tensor_types.h"

namespace es::gpu {

// A row-major weight matrix on the device, in as many buffers as the device's storage buffer
// range asks (a part per range of rows).
struct GpuMatrix {
  struct Part {
    std::shared_ptr<Buffer> buffer;
    int64_t row0 = 0, rows = 0;
  };
  std::vector<Part> parts;
  TensorType type = TensorType::kF32;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
  size_t bytes() const { return row_bytes * static_cast<size_t>(rows); }
};

// Whether the backend computes weights of type t (and matrices of `cols` columns: multiples of 4).
bool CanMatMul(TensorType t, int64_t cols);
// Copies a row-major matrix to the device, in parts of at most max_part_bytes (0: the device's
// storage buffer range). Throws es::Error naming the type when the backend cannot compute with
// it.
GpuMatrix UploadMatrix(Device& dev, const kernels::Matrix& m, size_t max_part_bytes = 0);
// What llama.cpp's CPU matmul does to the activations before it multiplies them with weights of
// a type: nothing (F32), rounding to f16 or bf16, or quantizing to Q8_0 (Q8_0, Q4_0, Q5_0,
// IQ4_NL, MXFP4), Q8_1 (Q4_1, Q5_1) or Q8_K (the 256-element types). RecordRoundActs applies it,
// so that the GPU multiplies the same numbers.
enum class ActRounding : uint32_t {
  kNone = 0,
  kF16 = 1,
  kBF16 = 2,
  kQ8_0 = 3,
  kQ8_K = 4,
  kQ8_1 = 5
};
ActRounding ActRoundingFor(TensorType weights);
// y rows = x rows (rows of `cols` floats) after `r`; y and x may not overlap. Rounded values stay
// floats; quantized rows are packed as matmul.comp reads them (at most `cols` words a row).
void RecordRoundActs(Sequence& seq, ActRounding r, const Buffer& x, size_t x_off, int64_t ldx,
                     int64_t rows, int64_t cols, const Buffer& y, size_t y_off, int64_t ldy);
// Records y[b * ldy + r] = sum_k W[r][k] x[b * ldx + k] for b < batch, r < rows, in the CPU
// build's float order: x holds floats or RecordRoundActs' rows for w's type, y floats; offsets and
// strides in 32-bit words.
void RecordMatMul(Sequence& seq, const GpuMatrix& w, const Buffer& x, size_t x_off, int64_t ldx,
                  int64_t batch, const Buffer& y, size_t y_off, int64_t ldy);

}  // namespace es::gpu
