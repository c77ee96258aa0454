// Matmuls on the device: weight upload and the dispatches of matmul.comp.
#include "gpu/gpu_matmul.h"

#include <algorithm>
#include <string>

#include "edgeshard/error.h"
#include "gpu/gpu_shaders.h"

namespace es::gpu {
namespace {

// matmul.comp's push constants, in its order.
struct MatMulParams {
  uint32_t rows, cols, batch;
  uint32_t ldx, ldy;
  uint32_t x_off, y_off;
  uint32_t row_bytes, w_off;
  uint32_t groups_x;
};
constexpr uint32_t kMaxGroupsZ = 65535;  // the least maxComputeWorkGroupCount[2] Vulkan allows

// matmul.comp's kChains, type by type: the float chains the CPU's order keeps per weight row
// (vector lanes, and a chain of minimums for some types). A workgroup of 64 runs the chains of
// 64 / kChains rows.
uint32_t ChainsPerRow(TensorType t) {
  switch (t) {
    case TensorType::kQ4_0:
    case TensorType::kIQ4_XS:
      return 1;
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
      return 2;
    case TensorType::kQ8_0:
    case TensorType::kQ5_0:
    case TensorType::kIQ4_NL:
    case TensorType::kMXFP4:
    case TensorType::kQ6_K:
      return 8;
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
      return 9;
    case TensorType::kQ2_K:
      return 17;
    default:  // F32, F16, BF16, Q3_K: 16 lanes
      return 16;
  }
}

}  // namespace

bool CanMatMul(TensorType t, int64_t cols) {
  Program p;
  return MatMulProgram(t, &p) && cols % 4 == 0;
}

GpuMatrix UploadMatrix(Device& dev, const kernels::Matrix& m, size_t max_part_bytes) {
  if (!CanMatMul(m.type, m.cols))
    throw Error(std::string("the Vulkan backend has no matmul for ") + TypeName(m.type) +
                " weights of " + std::to_string(m.cols) + " columns");
  if (m.interleave != 0)
    throw Error("GPU upload of an interleaved matrix (it takes row-major ones)");
  GpuMatrix g;
  g.type = m.type;
  g.rows = m.rows;
  g.cols = m.cols;
  g.row_bytes = m.row_bytes;
  // Each part must fit one binding; keep a margin for the buffer's padding.
  uint64_t range = dev.info().max_buffer_range - 64;
  if (max_part_bytes) range = std::min<uint64_t>(range, max_part_bytes);
  if (m.row_bytes > range)
    throw Error("GPU upload: one weight row exceeds the device's buffer range");
  const int64_t rows_per_part =
      std::min<int64_t>(m.rows, static_cast<int64_t>(range / m.row_bytes));
  for (int64_t r0 = 0; r0 < m.rows; r0 += rows_per_part) {
    GpuMatrix::Part part;
    part.row0 = r0;
    part.rows = std::min(rows_per_part, m.rows - r0);
    const size_t bytes = m.row_bytes * static_cast<size_t>(part.rows);
    part.buffer = dev.Alloc(bytes);
    dev.Upload(*part.buffer, 0, static_cast<const uint8_t*>(m.data) + m.row_bytes * r0, bytes);
    g.parts.push_back(std::move(part));
  }
  return g;
}

void RecordMatMul(Sequence& seq, const GpuMatrix& w, const Buffer& x, size_t x_off, int64_t ldx,
                  int64_t batch, const Buffer& y, size_t y_off, int64_t ldy) {
  if (batch <= 0) return;
  Program prog;
  if (!MatMulProgram(w.type, &prog)) throw Error("GPU matmul: unsupported weight type");
  for (const GpuMatrix::Part& part : w.parts) {
    MatMulParams p{};
    p.rows = PushU32(part.rows, "rows");
    p.cols = PushU32(w.cols, "columns");
    p.batch = PushU32(batch, "batch");
    p.ldx = PushU32(ldx, "x stride");
    p.ldy = PushU32(ldy, "y stride");
    p.x_off = PushU32(static_cast<int64_t>(x_off), "x offset");
    p.y_off = PushU32(static_cast<int64_t>(y_off) + part.row0, "y offset");
    p.row_bytes = PushU32(static_cast<int64_t>(w.row_bytes), "row bytes");
    p.w_off = 0;
    const uint32_t groups =
        DivUp(p.rows, seq.info().matmul_row_each ? 64 : 64 / ChainsPerRow(w.type));
    p.groups_x = std::min<uint32_t>(groups, kGroupsX);
    // One activation row per z: a longer batch is dispatched in pieces.
    for (uint32_t b0 = 0; b0 < p.batch; b0 += kMaxGroupsZ) {
      MatMulParams q = p;
      q.batch = std::min(p.batch - b0, kMaxGroupsZ);
      q.x_off = PushU32(static_cast<int64_t>(x_off) + static_cast<int64_t>(b0) * ldx, "x offset");
      q.y_off = PushU32(static_cast<int64_t>(p.y_off) + static_cast<int64_t>(b0) * ldy, "y offset");
      seq.Dispatch(prog, {{part.buffer.get(), 0, 0}, {&x, 0, 0}, {&y, 0, 0}}, &q, sizeof(q),
                   p.groups_x, DivUp(groups, p.groups_x), q.batch);
    }
  }
}

ActRounding ActRoundingFor(TensorType weights) {
  switch (weights) {
    case TensorType::kF16:
      return ActRounding::kF16;
    case TensorType::kBF16:
      return ActRounding::kBF16;
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
      return ActRounding::kQ8_1;
    case TensorType::kQ8_0:
    case TensorType::kQ4_0:
    case TensorType::kQ5_0:
    case TensorType::kIQ4_NL:
    case TensorType::kMXFP4:
      return ActRounding::kQ8_0;
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K:
    case TensorType::kIQ4_XS:
      return ActRounding::kQ8_K;
    default:
      return ActRounding::kNone;
  }
}

void RecordRoundActs(Sequence& seq, ActRounding r, const Buffer& x, size_t x_off, int64_t ldx,
                     int64_t rows, int64_t cols, const Buffer& y, size_t y_off, int64_t ldy) {
  if (rows <= 0 || r == ActRounding::kNone) return;
  const int64_t block = r == ActRounding::kQ8_K                              ? 256
                        : r == ActRounding::kQ8_0 || r == ActRounding::kQ8_1 ? 32
                                                                             : 1;
  if (cols % block != 0)
    throw Error("GPU activations: " + std::to_string(cols) + " columns are not whole blocks");
  struct {
    uint32_t rows, cols, x_off, ldx, y_off, ldy, mode;
  } p{PushU32(rows, "rows"),
      PushU32(cols, "columns"),
      PushU32(static_cast<int64_t>(x_off), "offset"),
      PushU32(ldx, "stride"),
      PushU32(static_cast<int64_t>(y_off), "offset"),
      PushU32(ldy, "stride"),
      static_cast<uint32_t>(r)};
  // One invocation per block (Q8_*), or a grid-stride loop over the row (f16, bf16).
  const uint64_t items =
      block > 1 ? static_cast<uint64_t>(cols / block) : static_cast<uint64_t>(cols);
  const auto groups = static_cast<uint32_t>(block > 1 ? DivUp(items, 64)
                                                      : std::min<uint64_t>(DivUp(items, 64), 4096));
  seq.Dispatch(Program::kQuantize, {{&x, 0, 0}, {&y, 0, 0}}, &p, sizeof(p), groups, p.rows);
}

}  // namespace es::gpu
