// Kernel front end: the thread pool and the MatMul driver (argument checks, activation
// conversion, splitting weight rows across threads). SIMD work lives in kernels_*.cpp.
#include "kernels/kernels.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "edgeshard/error.h"
#include "kernels/kernels_internal.h"
#include "tensor/tensor_quant.h"

namespace es::kernels {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spin this long before sleeping: long enough to bridge the short single-threaded ops between
// two MatMuls in a forward pass, short enough not to burn a core while idle.
constexpr auto kSpinFor = std::chrono::microseconds(200);

// Waits until `a` differs from `old`: spin first, then block in the kernel. `sleepers` counts
// blocked waiters so that the notifier can skip the wake-up syscall when nobody sleeps.
template <class T>
T WaitChange(const std::atomic<T>& a, T old, std::atomic<int>& sleepers) {
  T v;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    if ((v = a.load(std::memory_order_acquire)) != old) return v;
    CpuRelax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() - start > kSpinFor) break;
  }
  sleepers.fetch_add(1, std::memory_order_seq_cst);
  while ((v = a.load(std::memory_order_seq_cst)) == old) a.wait(old, std::memory_order_seq_cst);
  sleepers.fetch_sub(1, std::memory_order_relaxed);
  return v;
}

}  // namespace

struct ThreadPool::Impl {
  int n = 1;
  std::vector<std::thread> workers;
  const std::function<void(int)>* fn = nullptr;
  std::atomic<uint64_t> generation{0};
  std::atomic<int> pending{0};
  std::atomic<int> worker_sleepers{0};
  std::atomic<int> caller_sleepers{0};
  std::atomic<bool> stop{false};
  std::mutex error_mu;
  std::exception_ptr error;

  void RecordError() {
    std::lock_guard<std::mutex> lock(error_mu);
    if (!error) error = std::current_exception();
  }

  void WorkerLoop(int index) {
    uint64_t seen = 0;
    for (;;) {
      seen = WaitChange(generation, seen, worker_sleepers);
      if (stop.load(std::memory_order_acquire)) return;
      try {
        (*fn)(index);
      } catch (...) {
        RecordError();
      }
      if (pending.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
          caller_sleepers.load(std::memory_order_seq_cst) > 0)
        pending.notify_all();
    }
  }

  void Wake() {
    generation.fetch_add(1, std::memory_order_seq_cst);
    if (worker_sleepers.load(std::memory_order_seq_cst) > 0) generation.notify_all();
  }
};

ThreadPool::ThreadPool(int n_threads) : impl_(std::make_unique<Impl>()) {
  if (n_threads < 1 || n_threads > 1024)
    throw Error("ThreadPool: thread count " + std::to_string(n_threads) +
                " must be between 1 and 1024");
  impl_->n = n_threads;
  impl_->workers.reserve(static_cast<size_t>(n_threads - 1));
  for (int i = 1; i < n_threads; ++i)
    impl_->workers.emplace_back([this, i] { impl_->WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  impl_->stop.store(true, std::memory_order_release);
  impl_->Wake();
  for (auto& t : impl_->workers) t.join();
}

int ThreadPool::size() const {
  return impl_->n;
}

void ThreadPool::Run(const std::function<void(int)>& fn) {
  Impl& p = *impl_;
  if (p.n == 1) {
    fn(0);
    return;
  }
  p.fn = &fn;
  p.pending.store(p.n - 1, std::memory_order_relaxed);
  p.Wake();
  try {
    fn(0);
  } catch (...) {
    p.RecordError();
  }
  for (int left = p.pending.load(std::memory_order_acquire); left != 0;
       left = p.pending.load(std::memory_order_acquire))
    WaitChange(p.pending, left, p.caller_sleepers);
  p.fn = nullptr;
  if (p.error) {
    std::exception_ptr e;
    {
      std::lock_guard<std::mutex> lock(p.error_mu);
      std::swap(e, p.error);
    }
    std::rethrow_exception(e);
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                             int chunks_per_thread) {
  if (n <= 0) return;
  // Chunks of about an eighth of a thread's share, taken in order from a shared counter rather
  // than one fixed range per thread: a core slowed by another tenant, a host preemption or a
  // smaller core (big.LITTLE) then takes fewer chunks instead of holding the others at the end.
  // The closure captures one pointer so that std::function keeps it inline (no allocation).
  struct Job {
    int64_t n, chunk;
    std::atomic<int64_t> next;
    const std::function<void(int64_t, int64_t, int)>* fn;
  } job{n,
        std::max<int64_t>(1, n / (std::max(1, chunks_per_thread) * int64_t{size()})),
        {size()},
        &fn};
  Run([&job](int i) {
    // Thread i starts at chunk i, so the counter is only contended once the first round is done.
    for (int64_t c = i;; c = job.next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t b = c * job.chunk;
      if (b >= job.n) break;
      (*job.fn)(b, std::min(job.n, b + job.chunk), i);
    }
  });
}

void MatMul(const Matrix& w, const float* x, int64_t ldx, int64_t batch, float* y, int64_t ldy,
            ThreadPool& pool, Scratch& scratch) {
  VecDotType(w.type);  // throws for types without a kernel
  const int be = Traits(w.type).block_elems;
  if (w.rows < 0 || w.cols <= 0 || w.cols % be != 0)
    throw Error(std::string("MatMul: ") + TypeName(w.type) + " matrix of " +
                std::to_string(w.rows) + "x" + std::to_string(w.cols) +
                " needs a positive column count that is a multiple of " + std::to_string(be));
  if (w.row_bytes != RowBytes(w.type, w.cols))
    throw Error("MatMul: row_bytes " + std::to_string(w.row_bytes) + " does not match " +
                std::to_string(w.cols) + " " + TypeName(w.type) + " elements");
  if (batch < 0 || (batch > 1 && ldx < w.cols) || (batch > 1 && ldy < w.rows))
    throw Error("MatMul: batch " + std::to_string(batch) + " with strides ldx " +
                std::to_string(ldx) + ", ldy " + std::to_string(ldy) + " is inconsistent with a " +
                std::to_string(w.rows) + "x" + std::to_string(w.cols) + " matrix");
  if (batch == 0 || w.rows == 0) return;
  if (!w.data || !x || !y) throw Error("MatMul: null weight, input or output pointer");
  if (w.interleave && (w.interleave != 16 || w.rows % 16 != 0 || !PrefersInterleaved(w.type)))
    throw Error(
        "MatMul: an interleaved matrix needs rows in groups of 16 and CPU kernels that read "
        "that layout for its type (Q4_0/Q8_0: AVX-512 VNNI; F16: AVX-512)");

  const TensorType act_type = detail::ActTypeFor(w);
  const size_t stride = detail::ActRowBytes(act_type, w.cols);
  auto* raw = static_cast<uint8_t*>(scratch.Get(stride * static_cast<size_t>(batch) + 64));
  auto* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + 63) & ~uintptr_t{63});
  const detail::Acts acts{base, stride, act_type};

  // Small problems are not worth waking the pool.
  const double work =
      static_cast<double>(w.rows) * static_cast<double>(w.cols) * static_cast<double>(batch);
  const int threads = work < 65536.0 ? 1 : pool.size();

  // Closures capture a single pointer so that std::function stores them inline: no allocation
  // per call once the scratch has grown.
  struct Job {
    const Matrix* w;
    const float* x;
    int64_t ldx, batch;
    float* y;
    int64_t ldy;
    detail::Acts acts;
    uint8_t* base;
    int64_t unit, units;
  } job{&w, x, ldx, batch, y, ldy, acts, base, 0, 0};

  if (threads > 1 && batch >= 2 * threads) {
    const std::function<void(int64_t, int64_t, int)> convert = [&job](int64_t b0, int64_t b1, int) {
      detail::ConvertActs(job.acts.type, job.x, job.ldx, job.w->cols, b0, b1, job.base,
                          job.acts.stride);
    };
    pool.ParallelFor(batch, convert);
  } else {
    detail::ConvertActs(act_type, x, ldx, w.cols, 0, batch, base, stride);
  }

  if (threads == 1) {
    detail::MatMulRows(w, acts, batch, 0, w.rows, y, ldy);
    return;
  }
  // Row ranges in units that every row-tile height (2, 3, 4, 6) divides so that no range ends on
  // a partial tile; 16: the decode tile height and the interleaved row group.
  job.unit = batch == 1 || w.interleave ? 16 : 12;
  job.units = (w.rows + job.unit - 1) / job.unit;
  const std::function<void(int64_t, int64_t, int)> rows = [&job](int64_t u0, int64_t u1, int) {
    const int64_t n = job.w->rows;
    detail::MatMulRows(*job.w, job.acts, job.batch, std::min(n, u0 * job.unit),
                       std::min(n, u1 * job.unit), job.y, job.ldy);
  };
  // Decode: two chunks per thread. Each chunk starts a new stream whose first group of rows
  // waits on memory (the kernels prefetch a group ahead within a range), and ranges of an MoE
  // expert are short: 8 chunks per thread measured 15-30% slower at 2 threads (Zen 5, expert
  // matrices of 1408 x 2048).
  pool.ParallelFor(job.units, rows, batch == 1 ? 2 : 8);
}

size_t QueryBytes(TensorType k_type, int64_t dim) {
  return detail::ActRowBytes(k_type, dim);
}

void ConvertQuery(TensorType k_type, const float* q, int64_t dim, void* out) {
  detail::ConvertActs(k_type, q, dim, dim, 0, 1, static_cast<uint8_t*>(out),
                      QueryBytes(k_type, dim));
}

void DotQuantRows(TensorType k_type, const void* q, const void* k, size_t stride, int64_t n_rows,
                  int64_t dim, float scale, float* out) {
  if (n_rows <= 0) return;
  const Matrix w{k, k_type, n_rows, dim, stride, 0};
  const detail::Acts acts{static_cast<const uint8_t*>(q), QueryBytes(k_type, dim), k_type};
  detail::MatMulRows(w, acts, 1, 0, n_rows, out, 1);
  for (int64_t j = 0; j < n_rows; ++j) out[j] *= scale;
}

void WeightedSumQuantRows(TensorType v_type, const float* p, const void* v, size_t stride,
                          int64_t n_rows, int64_t dim, float* out) {
  // Dequantized a piece of a row at a time: heads up to 256 wide fit one piece.
  constexpr int64_t kPiece = 256;
  alignas(64) float row[kPiece];
  const auto* base = static_cast<const uint8_t*>(v);
  for (int64_t d0 = 0; d0 < dim; d0 += kPiece) {
    const int64_t m = std::min(kPiece, dim - d0);
    const size_t off = RowBytes(v_type, d0);
    for (int64_t j = 0; j < n_rows; ++j) {
      DequantizeRow(v_type, base + static_cast<size_t>(j) * stride + off, row, m);
      AxpyF32(p[j], row, out + d0, m);
    }
  }
}

}  // namespace es::kernels
