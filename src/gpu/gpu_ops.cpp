// Dispatches of the block programs: push constants in each shader's order, grids sized to the
// rows.
#include "gpu/gpu_ops.h"

#include <algorithm>
#include <string>

#include "edgeshard/error.h"
#include "gpu/gpu_shaders.h"

namespace es::gpu {

void RecordRmsNorm(Sequence& seq, Rows x, Rows y, const Buffer& w, int64_t rows, int64_t dim,
                   float eps) {
  if (rows <= 0) return;
  struct {
    uint32_t rows, dim, x_off, x_stride, y_off, y_stride, rows_per_y;
    float eps;
  } p{PushU32(rows, "rows"),
      PushU32(dim, "dim"),
      PushU32(x.offset, "offset"),
      PushU32(x.stride, "stride"),
      PushU32(y.offset, "offset"),
      PushU32(y.stride, "stride"),
      kGroupsX,
      eps};
  seq.Dispatch(Program::kRmsNorm, {{x.buffer}, {y.buffer}, {&w}}, &p, sizeof(p),
               std::min<uint32_t>(p.rows, kGroupsX), DivUp(p.rows, kGroupsX));
}

namespace {
void RecordElementwise(Sequence& seq, const Buffer& x, size_t x_off, const Buffer& y, size_t y_off,
                       int64_t n, int64_t period, uint32_t mode) {
  if (n <= 0) return;
  const uint32_t groups = DivUp(static_cast<uint64_t>(n), 256);
  struct {
    uint32_t n, period, x_off, y_off, groups_x, mode;
  } p{PushU32(n, "n"),
      PushU32(period, "period"),
      PushU32(x_off, "offset"),
      PushU32(y_off, "offset"),
      kGroupsX,
      mode};
  seq.Dispatch(Program::kAdd, {{&x}, {&y}}, &p, sizeof(p), std::min(groups, kGroupsX),
               DivUp(groups, kGroupsX));
}
}  // namespace

void RecordAdd(Sequence& seq, const Buffer& x, size_t x_off, const Buffer& y, size_t y_off,
               int64_t n, int64_t period) {
  RecordElementwise(seq, x, x_off, y, y_off, n, period, 0);
}

void RecordScale(Sequence& seq, const Buffer& x, size_t x_off, const Buffer& y, size_t y_off,
                 int64_t n, int64_t period) {
  RecordElementwise(seq, x, x_off, y, y_off, n, period, 1);
}

void RecordRope(Sequence& seq, Rows x, int64_t rows, int64_t heads, int64_t head_dim, int64_t n_rot,
                bool neox, const Buffer& table) {
  if (rows <= 0 || n_rot <= 0) return;
  if (n_rot % 2 != 0 || n_rot > head_dim)
    throw Error("GPU RoPE: rotated dims must be even and at most the head size");
  struct {
    uint32_t rows, heads, head_dim, n_rot, x_off, x_stride, neox;
  } p{PushU32(rows, "rows"),   PushU32(heads, "heads"),     PushU32(head_dim, "head_dim"),
      PushU32(n_rot, "n_rot"), PushU32(x.offset, "offset"), PushU32(x.stride, "stride"),
      neox ? 1u : 0u};
  seq.Dispatch(Program::kRope, {{x.buffer}, {&table}}, &p, sizeof(p),
               DivUp(static_cast<uint64_t>(n_rot / 2), 64), p.heads, p.rows);
}

void RecordKvStore(Sequence& seq, Rows x, int64_t rows, int64_t kv_dim, const Buffer& cache,
                   bool f16, int64_t ring, const Buffer& positions, size_t pos_off) {
  if (rows <= 0) return;
  if (f16 && kv_dim % 2 != 0) throw Error("GPU KV store: an f16 cache needs an even row width");
  struct {
    uint32_t rows, kv_dim, x_off, x_stride, f16, ring, pos_off;
  } p{PushU32(rows, "rows"),
      PushU32(kv_dim, "kv_dim"),
      PushU32(x.offset, "offset"),
      PushU32(x.stride, "stride"),
      f16 ? 1u : 0u,
      PushU32(ring, "ring"),
      PushU32(pos_off, "offset")};
  const uint64_t per_row = f16 ? static_cast<uint64_t>(kv_dim / 2) : static_cast<uint64_t>(kv_dim);
  seq.Dispatch(Program::kKvStore, {{x.buffer}, {&cache}, {&positions}}, &p, sizeof(p),
               DivUp(per_row, 64), p.rows);
}

void RecordAttention(Sequence& seq, Rows q, Rows out, int64_t rows, const AttentionParams& a,
                     const Buffer& k, const Buffer& v, const Buffer& positions, size_t pos_off) {
  if (rows <= 0) return;
  if (a.head_dim > 256 || a.n_head_kv <= 0 || a.n_head % a.n_head_kv != 0)
    throw Error("GPU attention: head size over 256 or query heads not a multiple of KV heads");
  struct {
    uint32_t n_head, n_head_kv, head_dim, q_stride, kv_dim;
    uint32_t q_off, o_off, o_stride;
    uint32_t k_f16, v_f16;
    uint32_t window, ring;
    float scale, softcap;
    uint32_t has_sinks;
    uint32_t pos_off;
  } p{PushU32(a.n_head, "heads"),
      PushU32(a.n_head_kv, "KV heads"),
      PushU32(a.head_dim, "head_dim"),
      PushU32(q.stride, "stride"),
      PushU32(a.kv_dim, "kv_dim"),
      PushU32(q.offset, "offset"),
      PushU32(out.offset, "offset"),
      PushU32(out.stride, "stride"),
      a.k_f16 ? 1u : 0u,
      a.v_f16 ? 1u : 0u,
      PushU32(a.window, "window"),
      PushU32(a.ring, "ring"),
      a.scale,
      a.softcap,
      a.sinks ? 1u : 0u,
      PushU32(pos_off, "offset")};
  seq.Dispatch(Program::kAttention, {{q.buffer}, {&k}, {&v}, {out.buffer}, {&positions}, {a.sinks}},
               &p, sizeof(p), p.n_head, PushU32(rows, "rows"));
}

void RecordGatedActivation(Sequence& seq, Activation act, const Buffer& gate, size_t gate_off,
                           const Buffer& up, size_t up_off, int64_t n) {
  if (n <= 0) return;
  const uint32_t groups = DivUp(static_cast<uint64_t>(n), 256);
  struct {
    uint32_t n, kind, groups_x, g_off, u_off;
  } p{PushU32(n, "n"), static_cast<uint32_t>(act), kGroupsX, PushU32(gate_off, "offset"),
      PushU32(up_off, "offset")};
  seq.Dispatch(Program::kActivation, {{&gate}, {&up}}, &p, sizeof(p), std::min(groups, kGroupsX),
               DivUp(groups, kGroupsX));
}

}  // namespace es::gpu
