// Streaming reads for the memory-bandwidth meter (`bench --memory-bandwidth`): the widest vector
// loads this CPU has, four independent accumulators so no add chain limits the loads, as the
// decode kernels read their weights.
#include "kernels/kernels_hwy.h"
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kernels_membw.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/kernels.h"

HWY_BEFORE_NAMESPACE();
namespace es::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

uint64_t ReadSumImpl(const uint64_t* p, size_t n, size_t prefetch_bytes) {
  const hn::ScalableTag<uint64_t> d;
  const size_t N = hn::Lanes(d);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  const size_t ahead = prefetch_bytes / sizeof(uint64_t);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    if (ahead && i + ahead < n) __builtin_prefetch(p + i + ahead);
    a0 = hn::Add(a0, hn::LoadU(d, p + i));
    a1 = hn::Add(a1, hn::LoadU(d, p + i + N));
    a2 = hn::Add(a2, hn::LoadU(d, p + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(d, p + i + 3 * N));
  }
  uint64_t s = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace es::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace es::kernels {
HWY_EXPORT(ReadSumImpl);

uint64_t ReadSum(const uint64_t* p, size_t n, size_t prefetch_bytes) {
  return HWY_DYNAMIC_DISPATCH(ReadSumImpl)(p, n, prefetch_bytes);
}
}  // namespace es::kernels
#endif
