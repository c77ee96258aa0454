// SIMD kernels of attention over the KV cache: dot products of a query with key rows and weighted
// sums of value rows (F16 and F32 caches), in the float order of llama.cpp's CPU build (Highway,
// dispatched per CPU at run time). Quantized caches: kernels_matmul.cpp.
#include "kernels/kernels_hwy.h"
// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kernels_attention.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// clang-format on
#include <vector>

#include "hwy/highway.h"
#include "kernels/kernels.h"
#include "tensor/tensor_types.h"

HWY_BEFORE_NAMESPACE();
namespace es::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// F16 dot product in the order of llama.cpp's AVX-512 build: for n % 16 == 0, lane l of 16
// accumulates elements 16c + l with fma over c in order, then the 16 lanes are halved pairwise
// (a[i] + a[i + 8], then + 4, + 2, + 1). Short rows of other lengths: float products summed in
// double. Longer rows of other lengths keep a plain vector order.
float DotF16Impl(const f16_t* a, const f16_t* b, int64_t n) {
  const hn::CappedTag<float, 16> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const auto* ha = reinterpret_cast<const hwy::float16_t*>(a);
  const auto* hb = reinterpret_cast<const hwy::float16_t*>(b);
  const size_t L = hn::Lanes(df);
  if (n % 16 == 0 && 16 % L == 0 && L >= 4) {
    // K = 16 / L <= 4 vectors, named rather than an array: SVE's vectors cannot form arrays.
    const size_t K = 16 / L;
    auto acc0 = hn::Zero(df), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    const auto fma = [&](int64_t i, size_t k, hn::Vec<decltype(df)> acc) {
      return hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dh, ha + i + k * L)),
                        hn::PromoteTo(df, hn::LoadU(dh, hb + i + k * L)), acc);
    };
    for (int64_t i = 0; i < n; i += 16) {
      acc0 = fma(i, 0, acc0);
      if (K > 1) acc1 = fma(i, 1, acc1);
      if (K > 2) acc2 = fma(i, 2, acc2), acc3 = fma(i, 3, acc3);
    }
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    // One vector; Highway's lane sum is _mm512_reduce_add_ps, which halves in this order.
    return hn::GetLane(hn::SumOfLanes(df, acc0));
#endif
    float l[16];
    hn::StoreU(acc0, df, l);
    if (K > 1) hn::StoreU(acc1, df, l + L);
    if (K > 2) hn::StoreU(acc2, df, l + 2 * L), hn::StoreU(acc3, df, l + 3 * L);
    for (int w = 8; w >= 1; w /= 2)
      for (int i = 0; i < w; ++i) l[i] = l[i] + l[i + w];
    return l[0];
  }
  if (n < 64) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(F16ToF32(a[i]) * F16ToF32(b[i]));
    return static_cast<float>(s);
  }
  const hn::ScalableTag<float> dv;
  const hn::Rebind<hwy::float16_t, decltype(dv)> dvh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(dv));
  auto acc0 = hn::Zero(dv);
  int64_t i = 0;
  for (; i + N <= n; i += N)
    acc0 = hn::MulAdd(hn::PromoteTo(dv, hn::LoadU(dvh, ha + i)),
                      hn::PromoteTo(dv, hn::LoadU(dvh, hb + i)), acc0);
  float s = hn::GetLane(hn::SumOfLanes(dv, acc0));
  for (; i < n; ++i) s += F16ToF32(a[i]) * F16ToF32(b[i]);
  return s;
}

float DotF32Impl(const float* a, const float* b, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), acc1);
  }
  for (; i + N <= n; i += N) acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; i < n; ++i) s = std::fma(a[i], b[i], s);  // fused, as the vector part and the GPU
  return s;
}

void AxpyF16Impl(float a, const f16_t* x, float* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto* hx = reinterpret_cast<const hwy::float16_t*>(x);
  const auto va = hn::Set(df, a);
  int64_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::MulAdd(va, hn::PromoteTo(df, hn::LoadU(dh, hx + i)), hn::LoadU(df, y + i)), df,
               y + i);
  for (; i < n; ++i) y[i] += a * F16ToF32(x[i]);
}

void AxpyF32Impl(float a, const float* x, float* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto va = hn::Set(df, a);
  int64_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::MulAdd(va, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  for (; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

// ---------------------------------------------------------------------------------------------
// Attention rows.

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
// DotF16Impl of 16 keys at once (dim a multiple of 16), for a prompt's many queries that each
// meet hundreds of keys: the query's vectors are shared, and the 16 chains' lane sums are reduced
// together by a transposed tree whose every add is one of _mm512_reduce_add_ps's (lanes i and
// i + 8, then i + 4, i + 2, i + 1), so each result is bit-identical to DotF16Impl's. Chain c holds
// key 4 (c % 4) + c / 4: the tree's output lane 4t + u is chain 4u + t, so lane l is key l.
// Returns the keys done (a multiple of 16).
int64_t DotF16Keys16(const f16_t* q, const f16_t* k, int64_t stride, int64_t n_rows, int64_t dim,
                     float scale, float* out) {
  const hn::Full512<float> df;
  const hn::Full256<hwy::float16_t> dh;
  const auto* hq = reinterpret_cast<const hwy::float16_t*>(q);
  int64_t j = 0;
  for (; j + 16 <= n_rows; j += 16) {
    const hwy::float16_t* key[16];
    for (int c = 0; c < 16; ++c)
      key[c] = reinterpret_cast<const hwy::float16_t*>(k + (j + 4 * (c % 4) + c / 4) * stride);
    hn::Vec<decltype(df)> acc[16];
    for (int c = 0; c < 16; ++c) acc[c] = hn::Zero(df);
    for (int64_t i = 0; i < dim; i += 16) {
      const auto qv = hn::PromoteTo(df, hn::LoadU(dh, hq + i));
      for (int c = 0; c < 16; ++c)
        acc[c] = hn::MulAdd(qv, hn::PromoteTo(df, hn::LoadU(dh, key[c] + i)), acc[c]);
    }
    __m512 l1[8], l2[4], l3[2];
    for (int m = 0; m < 8; ++m)  // lanes i + 8: [chain 2m | chain 2m + 1], 8 lanes each
      l1[m] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2 * m].raw, acc[2 * m + 1].raw, 0x44),
                            _mm512_shuffle_f32x4(acc[2 * m].raw, acc[2 * m + 1].raw, 0xEE));
    for (int m = 0; m < 4; ++m)  // i + 4: 128-bit quarter t is chain 4m + t
      l2[m] = _mm512_add_ps(_mm512_shuffle_f32x4(l1[2 * m], l1[2 * m + 1], 0x88),
                            _mm512_shuffle_f32x4(l1[2 * m], l1[2 * m + 1], 0xDD));
    for (int m = 0; m < 2; ++m)  // i + 2
      l3[m] = _mm512_add_ps(_mm512_shuffle_ps(l2[2 * m], l2[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm512_shuffle_ps(l2[2 * m], l2[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 sums =  // i + 1
        _mm512_add_ps(_mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                      _mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_storeu_ps(out + j, _mm512_mul_ps(sums, _mm512_set1_ps(scale)));
  }
  return j;
}
#endif

template <bool kF16, class T>
void DotRowsImpl(const T* q, const T* k, int64_t stride, int64_t n_rows, int64_t dim, float scale,
                 float* out) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t full = dim / N * N;
  auto load = [&](const T* p) HWY_ATTR {
    if constexpr (kF16) {
      return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p)));
    } else {
      return hn::LoadU(df, p);
    }
  };
  auto one = [](T v) -> float {
    if constexpr (kF16) {
      return F16ToF32(v);
    } else {
      return v;
    }
  };
  int64_t j = 0;
  if constexpr (kF16) {  // the order of DotF16
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    if (dim % 16 == 0) j = DotF16Keys16(q, k, stride, n_rows, dim, scale, out);
#endif
    for (; j < n_rows; ++j) out[j] = DotF16Impl(q, k + j * stride, dim) * scale;
  }
  // Two keys at a time for independent FMA chains.
  for (; j + 2 <= n_rows; j += 2) {
    const T* k0 = k + j * stride;
    const T* k1 = k0 + stride;
    auto a0 = hn::Zero(df), a1 = hn::Zero(df);
    for (int64_t i = 0; i < full; i += N) {
      const auto qv = load(q + i);
      a0 = hn::MulAdd(qv, load(k0 + i), a0);
      a1 = hn::MulAdd(qv, load(k1 + i), a1);
    }
    float s0 = hn::GetLane(hn::SumOfLanes(df, a0)), s1 = hn::GetLane(hn::SumOfLanes(df, a1));
    for (int64_t i = full; i < dim; ++i) {
      s0 = std::fma(one(q[i]), one(k0[i]), s0);
      s1 = std::fma(one(q[i]), one(k1[i]), s1);
    }
    out[j] = s0 * scale;
    out[j + 1] = s1 * scale;
  }
  for (; j < n_rows; ++j) {
    const T* k0 = k + j * stride;
    auto a0 = hn::Zero(df);
    for (int64_t i = 0; i < full; i += N) a0 = hn::MulAdd(load(q + i), load(k0 + i), a0);
    float s0 = hn::GetLane(hn::SumOfLanes(df, a0));
    for (int64_t i = full; i < dim; ++i) s0 = std::fma(one(q[i]), one(k0[i]), s0);
    out[j] = s0 * scale;
  }
}

void DotF16RowsImpl(const f16_t* q, const f16_t* k, int64_t stride, int64_t n_rows, int64_t dim,
                    float scale, float* out) {
  DotRowsImpl<true>(q, k, stride, n_rows, dim, scale, out);
}
void DotF32RowsImpl(const float* q, const float* k, int64_t stride, int64_t n_rows, int64_t dim,
                    float scale, float* out) {
  DotRowsImpl<false>(q, k, stride, n_rows, dim, scale, out);
}

// out += sum_j p[j] * v_j, four output vectors held in registers while all rows stream by.
template <bool kF16, class T>
void WeightedSumImpl(const float* p, const T* v, int64_t stride, int64_t n_rows, int64_t dim,
                     float* out) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto load = [&](const T* ptr) HWY_ATTR {
    if constexpr (kF16) {
      return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(ptr)));
    } else {
      return hn::LoadU(df, ptr);
    }
  };
  auto one = [](T x) -> float {
    if constexpr (kF16) {
      return F16ToF32(x);
    } else {
      return x;
    }
  };
  // F16 caches: the weights rounded to f16 once, by the vector conversions (bit-exact with
  // F32ToF16 and F16ToF32; the scalar ones per key took a tenth of a prompt's attention).
  const float* w = p;
  if constexpr (kF16) {
    if (n_rows <= 0) return;
    static thread_local std::vector<f16_t> w16;
    static thread_local std::vector<float> rounded;
    w16.resize(static_cast<size_t>(n_rows));
    rounded.resize(static_cast<size_t>(n_rows));
    ConvertF32ToF16(p, w16.data(), n_rows);
    ConvertF16ToF32(w16.data(), rounded.data(), n_rows);
    w = rounded.data();
  }
  int64_t i = 0;
  for (; i + 4 * N <= dim; i += 4 * N) {
    auto o0 = hn::LoadU(df, out + i), o1 = hn::LoadU(df, out + i + N);
    auto o2 = hn::LoadU(df, out + i + 2 * N), o3 = hn::LoadU(df, out + i + 3 * N);
    for (int64_t j = 0; j < n_rows; ++j) {
      const T* row = v + j * stride + i;
      const auto pw = hn::Set(df, w[j]);
      o0 = hn::MulAdd(pw, load(row), o0);
      o1 = hn::MulAdd(pw, load(row + N), o1);
      o2 = hn::MulAdd(pw, load(row + 2 * N), o2);
      o3 = hn::MulAdd(pw, load(row + 3 * N), o3);
    }
    hn::StoreU(o0, df, out + i);
    hn::StoreU(o1, df, out + i + N);
    hn::StoreU(o2, df, out + i + 2 * N);
    hn::StoreU(o3, df, out + i + 3 * N);
  }
  for (; i + N <= dim; i += N) {
    auto o0 = hn::LoadU(df, out + i);
    for (int64_t j = 0; j < n_rows; ++j)
      o0 = hn::MulAdd(hn::Set(df, w[j]), load(v + j * stride + i), o0);
    hn::StoreU(o0, df, out + i);
  }
  for (; i < dim; ++i) {
    float o = out[i];
    for (int64_t j = 0; j < n_rows; ++j) o = std::fma(w[j], one(v[j * stride + i]), o);
    out[i] = o;
  }
}

void WeightedSumF16RowsImpl(const float* p, const f16_t* v, int64_t stride, int64_t n_rows,
                            int64_t dim, float* out) {
  WeightedSumImpl<true>(p, v, stride, n_rows, dim, out);
}
void WeightedSumF32RowsImpl(const float* p, const float* v, int64_t stride, int64_t n_rows,
                            int64_t dim, float* out) {
  WeightedSumImpl<false>(p, v, stride, n_rows, dim, out);
}

}  // namespace es::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace es::kernels {
HWY_EXPORT(DotF16Impl);
HWY_EXPORT(DotF32Impl);
HWY_EXPORT(AxpyF16Impl);
HWY_EXPORT(AxpyF32Impl);
HWY_EXPORT(DotF16RowsImpl);
HWY_EXPORT(DotF32RowsImpl);
HWY_EXPORT(WeightedSumF16RowsImpl);
HWY_EXPORT(WeightedSumF32RowsImpl);

void DotF16Rows(const f16_t* q, const f16_t* k, int64_t stride, int64_t n_rows, int64_t dim,
                float scale, float* out) {
  HWY_DYNAMIC_DISPATCH(DotF16RowsImpl)(q, k, stride, n_rows, dim, scale, out);
}
void DotF32Rows(const float* q, const float* k, int64_t stride, int64_t n_rows, int64_t dim,
                float scale, float* out) {
  HWY_DYNAMIC_DISPATCH(DotF32RowsImpl)(q, k, stride, n_rows, dim, scale, out);
}
void WeightedSumF16Rows(const float* p, const f16_t* v, int64_t stride, int64_t n_rows, int64_t dim,
                        float* out) {
  HWY_DYNAMIC_DISPATCH(WeightedSumF16RowsImpl)(p, v, stride, n_rows, dim, out);
}
void WeightedSumF32Rows(const float* p, const float* v, int64_t stride, int64_t n_rows, int64_t dim,
                        float* out) {
  HWY_DYNAMIC_DISPATCH(WeightedSumF32RowsImpl)(p, v, stride, n_rows, dim, out);
}
float DotF16(const f16_t* a, const f16_t* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotF16Impl)(a, b, n);
}
float DotF32(const float* a, const float* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotF32Impl)(a, b, n);
}
void AxpyF16(float a, const f16_t* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AxpyF16Impl)(a, x, y, n);
}
void AxpyF32(float a, const float* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AxpyF32Impl)(a, x, y, n);
}
}  // namespace es::kernels
#endif
