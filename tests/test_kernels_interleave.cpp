// Interleave16: the layout the AVX-512 VNNI (Q4_0, Q8_0, Q4_K, Q5_K, IQ4_XS) and AVX-512 (F16)
// kernels read, byte for byte, and MatMul over it bit-identical to the row-major original.
#include <gtest/gtest.h>

#include <cstring>
#include <initializer_list>
#include <random>
#include <type_traits>
#include <vector>

#include "edgeshard/error.h"
#include "kernels/kernels.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_types.h"
#include "test_util.h"

namespace {

using es::RowBytes;
using es::TensorType;
using es::test::Gaussian;
namespace k = es::kernels;

std::vector<uint8_t> Quantize(TensorType t, const float* x, int64_t n) {
  std::vector<uint8_t> out(RowBytes(t, n));
  es::QuantizeRowRef(t, x, out.data(), n);
  return out;
}

// `rows` random rows of `cols` elements quantized to `t`, row after row.
std::vector<uint8_t> QuantizedRows(TensorType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<uint8_t> w;
  for (int64_t r = 0; r < rows; ++r) {
    const auto wr = Gaussian(cols, seed + static_cast<uint32_t>(r), 0.02f);
    const auto q = Quantize(t, wr.data(), cols);
    w.insert(w.end(), q.begin(), q.end());
  }
  return w;
}

// MatMul of `batch` activation rows `x` over both layouts: bit-identical outputs.
void ExpectSameOutputs(const k::Matrix& plain, const k::Matrix& il, const std::vector<float>& x,
                       int64_t batch, int threads) {
  k::ThreadPool pool(threads);
  k::Scratch scratch;
  std::vector<float> y0(static_cast<size_t>(batch * plain.rows)), y1(y0.size());
  k::MatMul(plain, x.data(), plain.cols, batch, y0.data(), plain.rows, pool, scratch);
  k::MatMul(il, x.data(), plain.cols, batch, y1.data(), plain.rows, pool, scratch);
  for (size_t i = 0; i < y0.size(); ++i)
    ASSERT_EQ(std::memcmp(&y0[i], &y1[i], 4), 0)
        << "batch " << batch << ", threads " << threads << ", output " << i << ": " << y0[i]
        << " vs " << y1[i];
}

// Rows gathered back out of an interleaved copy (a tied head's embedding lookup) equal the
// original rows; and where the CPU's kernels read the layout, every MatMul output is
// bit-identical to the row-major original, for each batch and 1 and 2 threads. Elsewhere MatMul
// must refuse the layout, not misread it.
void ExpectSameAsRowMajor(const k::Matrix& plain, const k::Matrix& il,
                          std::initializer_list<int64_t> batches, uint32_t seed) {
  const int64_t rows = plain.rows, cols = plain.cols;
  EXPECT_EQ(il.interleave, 16);
  for (int64_t r : {int64_t{0}, int64_t{17}, rows - 1}) {
    std::vector<float> a(cols), b(cols);
    k::DequantizeMatrixRow(plain, r, a.data());
    k::DequantizeMatrixRow(il, r, b.data());
    ASSERT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * cols), 0) << "row " << r;
  }
  std::vector<float> row(cols);
  EXPECT_THROW(k::DequantizeMatrixRow(il, rows, row.data()), es::Error);
  if (!k::PrefersInterleaved(plain.type)) {
    std::vector<float> x(cols, 1.0f), y(rows);
    k::ThreadPool pool(1);
    k::Scratch scratch;
    EXPECT_THROW(k::MatMul(il, x.data(), cols, 1, y.data(), rows, pool, scratch), es::Error);
    return;
  }
  for (int64_t batch : batches) {
    const auto x = Gaussian(batch * cols, seed + static_cast<uint32_t>(batch), 1.0f);
    for (int threads : {1, 2}) ExpectSameOutputs(plain, il, x, batch, threads);
  }
}

// A row-major matrix over `w` and its interleaved copy (Interleave16).
struct InterleavedPair {
  k::Matrix plain, il;
  size_t rb;
  std::vector<uint8_t> buf;
  InterleavedPair(const std::vector<uint8_t>& w, TensorType t, int64_t rows, int64_t cols)
      : rb(RowBytes(t, cols)), buf(w.size()) {
    plain = k::Matrix{w.data(), t, rows, cols, rb};
    il = k::Interleave16(plain, buf.data());
  }
};

// `rows` rows of `cols` / 256 `Block`s, each set by fill(block, row, block index).
template <class Block, class Fill>
std::vector<uint8_t> FilledBlocks(int64_t rows, int64_t cols, Fill fill) {
  const int64_t per_row = cols / 256;
  std::vector<uint8_t> out(static_cast<size_t>(rows * per_row) * sizeof(Block));
  auto* blocks = reinterpret_cast<Block*>(out.data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < per_row; ++b) fill(blocks[r * per_row + b], r, b);
  return out;
}

// Q4_K or Q5_K blocks with the largest sums the interleaved kernel's int16 partials can meet
// (16 products of nibbles, or 8 of five-bit values): quants and six-bit scales and mins at their
// maximum in most blocks, random in the others; Q5_K rows whose fifth bits alone vary too.
template <class Block>
std::vector<uint8_t> KMinExtremes(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  return FilledBlocks<Block>(rows, cols, [&](Block& blk, int64_t r, int64_t b) {
    blk.d = es::F32ToF16(0.01f);
    blk.dmin = es::F32ToF16(0.002f);
    std::memset(blk.scales, (r + b) % 2 ? 0xFF : static_cast<int>(rng() & 0xFF),
                sizeof(blk.scales));
    std::memset(blk.qs, r % 3 ? 0xFF : static_cast<int>(rng() & 0xFF), sizeof(blk.qs));
    if constexpr (std::is_same_v<Block, es::BlockQ5_K>)
      for (uint8_t& h : blk.qh) h = r % 2 ? 0xFF : static_cast<uint8_t>(rng());
  });
}

// MatMul over `w` (rows x cols of type t, made to hold extreme values) and over its interleaved
// copy: bit-identical for activations of one sign (either) and of both, decode and a prompt.
void ExpectExtremesMatch(const std::vector<uint8_t>& w, TensorType t, int64_t rows, int64_t cols) {
  const InterleavedPair q(w, t, rows, cols);
  for (float sign : {1.0f, -1.0f}) {
    std::vector<float> x(static_cast<size_t>(3 * cols), sign);
    for (size_t i = cols; i < x.size(); ++i) x[i] = (i % 7 < 3 ? -1.0f : 1.0f) * (1 + i % 5);
    for (int64_t batch : {1, 3}) {
      SCOPED_TRACE(sign);
      ExpectSameOutputs(q.plain, q.il, x, batch, 1);
    }
  }
}

TEST(Kernels, InterleavedQ8_0IsBitIdenticalToRowMajor) {
  // 48 rows = 3 groups of 16; 800 columns = 25 blocks (an odd count); batch 1 (decode) and odd
  // and even prompt batches.
  const int64_t rows = 48, cols = 800;
  std::vector<uint8_t> w = QuantizedRows(TensorType::kQ8_0, rows, cols, 700);
  // One weight of -128 (a valid file value that our quantizer never writes) exercises the bias.
  w[2] = 0x80;
  const InterleavedPair p(w, TensorType::kQ8_0, rows, cols);
  const size_t rb = p.rb;
  const std::vector<uint8_t>& buf = p.buf;
  // Block 0: 16 scales, then vector 0 = quant bytes 0-3 of rows 0..15, vector 1 = bytes 4-7,
  // each quant stored as q + 128 (sign bit flipped).
  EXPECT_EQ(std::memcmp(buf.data() + 2, w.data() + rb, 2), 0);
  for (int e = 0; e < 4; ++e) {
    EXPECT_EQ(buf[32 + 4 + e], w[rb + 2 + e] ^ 0x80);
    EXPECT_EQ(buf[32 + 64 + e], w[2 + 4 + e] ^ 0x80);
  }
  ExpectSameAsRowMajor(p.plain, p.il, {1, 2, 3, 8, 33}, 750);
}

TEST(Kernels, InterleavedQ4_0IsBitIdenticalToRowMajor) {
  // 80 rows = 5 groups of 16; 2048 columns = 64 blocks (4 full steps); batch 1 (decode) and
  // prompt batches.
  const int64_t rows = 80, cols = 2048;
  const std::vector<uint8_t> w = QuantizedRows(TensorType::kQ4_0, rows, cols, 900);
  const InterleavedPair p(w, TensorType::kQ4_0, rows, cols);
  const size_t rb = p.rb;
  const std::vector<uint8_t>& buf = p.buf;
  // Per block index: the 16 rows' scales, then four 64-byte vectors of one dword per row. Row 1's
  // scale of block 0 is the second f16; block 1 follows the first 288-byte group block, its first
  // vector holding row 0's nibble bytes 0-3, then row 1's; the second vector bytes 4-7.
  EXPECT_EQ(std::memcmp(buf.data() + 2, w.data() + rb, 2), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 288 + 32, w.data() + 18 + 2, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 288 + 32 + 4, w.data() + rb + 18 + 2, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 288 + 32 + 64, w.data() + 18 + 2 + 4, 4), 0);
  ExpectSameAsRowMajor(p.plain, p.il, {1, 2, 5, 8, 17, 70}, 950);
  k::Matrix bad = p.il;
  bad.rows = 70;
  std::vector<float> x(cols, 1.0f), y(rows);
  k::ThreadPool pool(1);
  k::Scratch scratch;
  EXPECT_THROW(k::MatMul(bad, x.data(), cols, 1, y.data(), rows, pool, scratch), es::Error);
}

TEST(Kernels, InterleavedF16IsBitIdenticalToRowMajor) {
  // 48 rows = 3 groups of 16; 800 columns = 25 blocks of 32; batch 1 (decode), the 6-, 4- and
  // 1-column tiles, from 12 columns the F32 panel's tiles, and a batch past one 64-column block.
  const int64_t rows = 48, cols = 800;
  const std::vector<uint8_t> w = QuantizedRows(TensorType::kF16, rows, cols, 1100);
  const InterleavedPair p(w, TensorType::kF16, rows, cols);
  const size_t rb = p.rb;
  const std::vector<uint8_t>& buf = p.buf;
  // Block 0: row 0's 64 bytes, then row 1's; block 1 starts after the 1024-byte group block.
  EXPECT_EQ(std::memcmp(buf.data(), w.data(), 64), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 64, w.data() + rb, 64), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 1024 + 64 * 15, w.data() + 15 * rb + 64, 64), 0);
  // Prompt tiles that read the F32 panel and tiles that convert the weights themselves, whichever
  // this CPU would choose.
  for (const char* mode : {"panel", "direct"}) {
    SCOPED_TRACE(mode);
    k::SetF16PromptForTesting(mode);
    ExpectSameAsRowMajor(p.plain, p.il, {1, 2, 4, 6, 7, 13, 70}, 1150);
  }
  k::SetF16PromptForTesting("");
  EXPECT_THROW(k::SetF16PromptForTesting("fast"), es::Error);
  // Columns that are not whole 32-element blocks have no interleaved layout.
  const std::vector<uint8_t> odd = QuantizedRows(TensorType::kF16, 16, 48, 1200);
  const k::Matrix odd_plain{odd.data(), TensorType::kF16, 16, 48, RowBytes(TensorType::kF16, 48)};
  EXPECT_FALSE(k::CanInterleave(odd_plain));
  std::vector<uint8_t> odd_buf(odd.size());
  EXPECT_THROW(k::Interleave16(odd_plain, odd_buf.data()), es::Error);
}

TEST(Kernels, InterleavedQ4_KIsBitIdenticalToRowMajor) {
  // 48 rows = 3 groups of 16; 768 columns = 3 blocks of 256 (an odd count); batch 1 (decode), the
  // 8-, 4- and 1-column tiles and their mixes, and a batch past one 64-column block.
  const int64_t rows = 48, cols = 768;
  const std::vector<uint8_t> w = QuantizedRows(TensorType::kQ4_K, rows, cols, 1300);
  const InterleavedPair p(w, TensorType::kQ4_K, rows, cols);
  const size_t rb = p.rb;
  const std::vector<uint8_t>& buf = p.buf;
  // Block 0: vector 0 = bytes 0-3 (d, dmin) of rows 0..15, vectors 1-3 their scales, vector 4 the
  // first nibble bytes; block 1 starts after the 16 x 144-byte group block.
  EXPECT_EQ(std::memcmp(buf.data() + 4, w.data() + rb, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 64 + 4 * 15, w.data() + 15 * rb + 4, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 4 * 64 + 4, w.data() + rb + 16, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 2304 + 5 * 64, w.data() + 144 + 20, 4), 0);
  ExpectSameAsRowMajor(p.plain, p.il, {1, 2, 3, 4, 5, 8, 9, 13, 70}, 1350);

  if (!k::PrefersInterleaved(TensorType::kQ4_K)) return;  // MatMul refuses it (checked above)
  const auto big = KMinExtremes<es::BlockQ4_K>(rows, cols, 1400);
  ASSERT_EQ(big.size(), w.size());
  ExpectExtremesMatch(big, TensorType::kQ4_K, rows, cols);
}

TEST(Kernels, InterleavedQ5_KIsBitIdenticalToRowMajor) {
  // As Q4_K: 3 groups of 16 rows, 3 blocks of 256, every tile width.
  const int64_t rows = 48, cols = 768;
  const std::vector<uint8_t> w = QuantizedRows(TensorType::kQ5_K, rows, cols, 1700);
  const InterleavedPair p(w, TensorType::kQ5_K, rows, cols);
  const size_t rb = p.rb;
  const std::vector<uint8_t>& buf = p.buf;
  // Block 0: vector 0 = (d, dmin) of rows 0..15, vectors 1-3 their scales, 4-11 their fifth bits,
  // vector 12 the first nibble bytes; block 1 starts after the 16 x 176-byte group block.
  EXPECT_EQ(std::memcmp(buf.data() + 4, w.data() + rb, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 4 * 64 + 4 * 15, w.data() + 15 * rb + 16, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 12 * 64 + 4, w.data() + rb + 48, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 2816 + 13 * 64, w.data() + 176 + 52, 4), 0);
  ExpectSameAsRowMajor(p.plain, p.il, {1, 2, 3, 4, 5, 8, 9, 13, 70}, 1750);

  if (!k::PrefersInterleaved(TensorType::kQ5_K)) return;  // MatMul refuses it (checked above)
  const auto big = KMinExtremes<es::BlockQ5_K>(rows, cols, 1800);
  ASSERT_EQ(big.size(), w.size());
  ExpectExtremesMatch(big, TensorType::kQ5_K, rows, cols);
}

TEST(Kernels, InterleavedIQ4_XSIsBitIdenticalToRowMajor) {
  // As Q4_K: 3 groups of 16 rows, 3 blocks of 256, every tile width.
  const int64_t rows = 48, cols = 768;
  const std::vector<uint8_t> w = QuantizedRows(TensorType::kIQ4_XS, rows, cols, 1500);
  const InterleavedPair p(w, TensorType::kIQ4_XS, rows, cols);
  const size_t rb = p.rb;
  const std::vector<uint8_t>& buf = p.buf;
  // Block 0: vector 0 = (d, scales_h) of rows 0..15, vector 1 their scales_l, vector 2 the first
  // nibble bytes; block 1 starts after the 16 x 136-byte group block.
  EXPECT_EQ(std::memcmp(buf.data() + 4, w.data() + rb, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 64 + 4 * 15, w.data() + 15 * rb + 4, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 2 * 64 + 4, w.data() + rb + 8, 4), 0);
  EXPECT_EQ(std::memcmp(buf.data() + 2176 + 3 * 64, w.data() + 136 + 12, 4), 0);
  ExpectSameAsRowMajor(p.plain, p.il, {1, 2, 3, 4, 5, 8, 9, 13, 70}, 1550);

  if (!k::PrefersInterleaved(TensorType::kIQ4_XS)) return;  // MatMul refuses it (checked above)
  // The extreme levels (-127 and 113) and scales (-32 and 31) against activations of one sign.
  std::mt19937 rng(1600);
  const auto big =
      FilledBlocks<es::BlockIQ4_XS>(rows, cols, [&](es::BlockIQ4_XS& blk, int64_t r, int64_t b) {
        blk.d = es::F32ToF16(0.01f);
        blk.scales_h = (r + b) % 3 ? 0xFFFF : (r % 2 ? 0 : static_cast<uint16_t>(rng()));
        std::memset(blk.scales_l, (r + b) % 3 ? 0xFF : static_cast<int>(rng() & 0xFF),
                    sizeof(blk.scales_l));
        std::memset(blk.qs,
                    r % 4 == 0   ? 0x00
                    : r % 4 == 1 ? 0xFF
                                 : static_cast<int>(rng() & 0xFF),
                    sizeof(blk.qs));
      });
  ASSERT_EQ(big.size(), w.size());
  ExpectExtremesMatch(big, TensorType::kIQ4_XS, rows, cols);
}

}  // namespace
