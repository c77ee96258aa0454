// Q5_K, Q3_K, Q2_K and IQ4_XS: dequantization of hand-built blocks (the GGUF layouts), and
// llama.cpp agreement on a real model: `edgeshard quantize` of synth-llama-spm-256.f16 writes the
// very tensor bytes `llama-quantize --pure` wrote for the single-type formats, and `llama-quantize`
// for the mixes (Q5_K_M, Q5_K_S, Q4_K_S, Q3_K_S/M/L, and Q2_K, IQ4_XS as q2_k, iq4_xs)
// (hashes in tests/fixtures/ref, made by regenerate.sh), and the engine's perplexity on them is
// within 0.5% of llama-perplexity's. (Logit fidelity on the same files: test_fidelity, references
// synth-llama-spm-256.<type>.)
#include <gtest/gtest.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "model/model_quantize.h"
#include "tensor/tensor_quant.h"
#include "tensor/tensor_quant_internal.h"
#include "tensor/tensor_types.h"
#include "test_util.h"

namespace {

using es::TensorType;

std::vector<float> Dequantize(TensorType t, const void* src) {
  std::vector<float> out(256);
  es::DequantizeRowRef(t, src, out.data(), 256);
  return out;
}

// Q5_K: Q4_K's packed 6-bit scales and mins; sub-block j's low 4 bits in nibble plane j & 1 of
// qs[32 (j / 2) + l], its fifth bit at bit j of qh[l]; value d * sc * q - dmin * mn.
TEST(DequantizeKQuants, Q5_K) {
  // The scale packing is Q4_K's (tested by hand there; written by the quantizer whose bytes equal
  // llama.cpp's below).
  const uint8_t sc[8] = {1, 17, 33, 63, 5, 40, 63, 22};
  const uint8_t mn[8] = {0, 63, 7, 31, 48, 2, 19, 63};
  es::BlockQ5_K b{};
  b.d = es::F32ToF16(0.5f);
  b.dmin = es::F32ToF16(0.125f);
  es::quant::PackScaleMinK4(sc, mn, b.scales);
  int q[256];
  for (int e = 0; e < 256; ++e) {
    q[e] = (e * 11 + e / 32) % 32;
    const int j = e / 32, l = e % 32;
    b.qs[32 * (j / 2) + l] |= static_cast<uint8_t>((q[e] & 15) << (4 * (j % 2)));
    b.qh[l] |= static_cast<uint8_t>((q[e] >> 4) << j);
  }
  const auto y = Dequantize(TensorType::kQ5_K, &b);
  for (int e = 0; e < 256; ++e)
    EXPECT_EQ(y[e], 0.5f * sc[e / 32] * q[e] - 0.125f * mn[e / 32]) << e;
}

// Q3_K: element e = 128h + 32k + l keeps two bits at bit 2k of qs[32h + l] and a high bit (set:
// +4) at bit e / 32 of hmask[l]; 16 six-bit scales (stored + 32): low nibbles in bytes 0..7,
// top two bits of group j at bit 2 (j / 4) of byte 8 + j % 4; value d * (s - 32) * (q - 4).
TEST(DequantizeKQuants, Q3_K) {
  es::BlockQ3_K b{};
  b.d = es::F32ToF16(0.25f);
  int s[16];
  for (int j = 0; j < 16; ++j) {
    s[j] = (j * 23 + 5) % 64;
    b.scales[j % 8] |= static_cast<uint8_t>((s[j] & 15) << (j < 8 ? 0 : 4));
    b.scales[8 + j % 4] |= static_cast<uint8_t>((s[j] >> 4) << (2 * (j / 4)));
  }
  int q[256];
  for (int e = 0; e < 256; ++e) {
    q[e] = (e * 5 + e / 16) % 8;
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    b.qs[32 * h + l] |= static_cast<uint8_t>((q[e] & 3) << (2 * k));
    b.hmask[l] |= static_cast<uint8_t>((q[e] >> 2) << (e / 32));
  }
  const auto y = Dequantize(TensorType::kQ3_K, &b);
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], 0.25f * (s[e / 16] - 32) * (q[e] - 4)) << e;
}

// Q2_K: two bits as Q3_K's; per 16 elements a byte with the scale (low nibble) and min (high);
// value d * scale * q - dmin * min.
TEST(DequantizeKQuants, Q2_K) {
  es::BlockQ2_K b{};
  b.d = es::F32ToF16(0.5f);
  b.dmin = es::F32ToF16(0.0625f);
  for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<uint8_t>(j * 37 + 3);
  int q[256];
  for (int e = 0; e < 256; ++e) {
    q[e] = (e * 3 + e / 64) % 4;
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    b.qs[32 * h + l] |= static_cast<uint8_t>(q[e] << (2 * k));
  }
  const auto y = Dequantize(TensorType::kQ2_K, &b);
  for (int e = 0; e < 256; ++e) {
    const int sc = b.scales[e / 16];
    EXPECT_EQ(y[e], 0.5f * (sc & 15) * q[e] - 0.0625f * (sc >> 4)) << e;
  }
}

// IQ4_XS: group ib of 32 takes the low nibbles of qs[16ib ..] for its first 16 elements and the
// high nibbles for the rest, each an index into the IQ4_NL levels; its 6-bit scale (stored + 32)
// has the low 4 bits in nibble ib % 2 of scales_l[ib / 2], the top 2 at bit 2ib of scales_h.
TEST(DequantizeKQuants, IQ4_XS) {
  const int levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  es::BlockIQ4_XS b{};
  b.d = es::F32ToF16(0.125f);
  int s[8];
  for (int ib = 0; ib < 8; ++ib) {
    s[ib] = (ib * 29 + 7) % 64;
    b.scales_l[ib / 2] |= static_cast<uint8_t>((s[ib] & 15) << (4 * (ib % 2)));
    b.scales_h |= static_cast<uint16_t>((s[ib] >> 4) << (2 * ib));
  }
  int q[256];
  for (int e = 0; e < 256; ++e) {
    q[e] = (e * 7 + e / 32) % 16;
    const int ib = e / 32, j = e % 32;
    b.qs[16 * ib + j % 16] |= static_cast<uint8_t>(q[e] << (j < 16 ? 0 : 4));
  }
  const auto y = Dequantize(TensorType::kIQ4_XS, &b);
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], 0.125f * (s[e / 32] - 32) * levels[q[e]]) << e;
}

// llama.cpp's per-tensor rules for the K-quant mixes on a 32-layer model (llama_tensor_get_type):
// Q3_K_M: attn_v Q5_K in the first two layers, Q4_K after; ffn_down Q5_K in the first 32/16,
// Q4_K after; attn_output Q4_K. Q3_K_L: those three Q5_K. Q4_K_S: attn_v and ffn_down Q5_K in the
// first 4 (32/8) layers. Q2_K (4 query heads per KV head): attn_v Q4_K, ffn_down and attn_output
// Q3_K. IQ4_XS: attn_v Q5_K, ffn_down Q5_K in the first 4. Output Q6_K; everything else the base.
TEST(QuantizePlanKQuants, MixesFollowLlamaRules) {
  std::vector<es::model::TensorDesc> t;
  t.push_back({"token_embd.weight", {4096, 32000}, TensorType::kF16});
  t.push_back({"output.weight", {4096, 32000}, TensorType::kF16});
  for (int l = 0; l < 32; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (const char* n : {"attn_v", "attn_q", "attn_output", "ffn_down"})
      t.push_back({b + n + ".weight", {4096, 4096}, TensorType::kF16});
    t.push_back({b + "attn_k.weight", {4096, 1024}, TensorType::kF16});  // 4 query heads per KV
  }
  using K = TensorType;
  struct Case {
    const char* format;
    K base;
    K attn_v_first, attn_v_rest;
    int attn_v_first_n;
    K ffn_down_first, ffn_down_rest;
    int ffn_down_first_n;
    K attn_output;
  };
  for (const Case& c :
       {Case{"q3_k_m", K::kQ3_K, K::kQ5_K, K::kQ4_K, 2, K::kQ5_K, K::kQ4_K, 2, K::kQ4_K},
        Case{"q3_k_l", K::kQ3_K, K::kQ5_K, K::kQ5_K, 0, K::kQ5_K, K::kQ5_K, 0, K::kQ5_K},
        Case{"q3_k_s", K::kQ3_K, K::kQ3_K, K::kQ3_K, 0, K::kQ3_K, K::kQ3_K, 0, K::kQ3_K},
        Case{"q4_k_s", K::kQ4_K, K::kQ5_K, K::kQ4_K, 4, K::kQ5_K, K::kQ4_K, 4, K::kQ4_K},
        Case{"q5_k_s", K::kQ5_K, K::kQ5_K, K::kQ5_K, 0, K::kQ5_K, K::kQ5_K, 0, K::kQ5_K},
        Case{"q2_k", K::kQ2_K, K::kQ4_K, K::kQ4_K, 0, K::kQ3_K, K::kQ3_K, 0, K::kQ3_K},
        Case{"iq4_xs", K::kIQ4_XS, K::kQ5_K, K::kQ5_K, 0, K::kQ5_K, K::kIQ4_XS, 4, K::kIQ4_XS}}) {
    SCOPED_TRACE(c.format);
    const auto format = es::model::FindQuantFormat(c.format);
    ASSERT_TRUE(format);
    for (const auto& p : es::model::PlanTensorTypes(t, *format, 32)) {
      const int layer = p.name.rfind("blk.", 0) == 0 ? std::atoi(p.name.c_str() + 4) : -1;
      K want = c.base;
      if (p.name == "output.weight") want = K::kQ6_K;
      if (p.name.find("attn_v") != std::string::npos)
        want = layer < c.attn_v_first_n ? c.attn_v_first : c.attn_v_rest;
      if (p.name.find("ffn_down") != std::string::npos)
        want = layer < c.ffn_down_first_n ? c.ffn_down_first : c.ffn_down_rest;
      if (p.name.find("attn_output") != std::string::npos) want = c.attn_output;
      EXPECT_EQ(es::TypeName(p.dst), std::string(es::TypeName(want))) << p.name;
    }
  }
}

std::string FixturePath(const std::string& name) {
  return (std::filesystem::path(EDGESHARD_SOURCE_DIR "/tests") / "fixtures/ref" / name).string();
}

// The value after `key` in a fixture file of "key value" lines.
std::string FixtureValue(const std::string& file, const std::string& key) {
  const std::string text = es::test::ReadFile(FixturePath(file));
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("(^|\n)" + key + " ([^\n]+)"))) {
    ADD_FAILURE() << "no " << key << " in " << file;
    return "";
  }
  return m[2];
}

uint64_t Fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

class KQuantFiles : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() /
             ("es_kquant_" + std::to_string(getpid()) + "_" + GetParam() + ".gguf"))
                .string();
    const auto format = es::model::FindQuantFormat(GetParam());
    ASSERT_TRUE(format);
    es::model::QuantizeOptions o;
    o.threads = 2;
    es::model::QuantizeFile(es::test::ModelPath("synth-llama-spm-256.f16.gguf"), path_, *format, o);
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::string path_;
};

TEST_P(KQuantFiles, TensorBytesEqualLlamaQuantize) {
  auto f = es::gguf::File::Open(path_);
  const size_t n = f->file_size() - f->data_offset();
  char hex[32];
  std::snprintf(hex, sizeof(hex), "%zu %016" PRIx64, n, Fnv1a(f->base() + f->data_offset(), n));
  EXPECT_EQ(hex, FixtureValue("quantized-pure-hashes.txt",
                              std::string("synth-llama-spm-256.") + GetParam()));
}

TEST_P(KQuantFiles, PerplexityMatchesLlamaCpp) {
  const auto r =
      es::test::RunCli("perplexity -m '" + path_ + "' -f '" +
                       es::test::ModelPath("../data/gpl3-head12k.txt") + "' -c 128 --chunks 8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("Final estimate: PPL = ([0-9.]+)"))) << r.out;
  const double ours = std::stod(m[1]);
  const double ref = std::stod(FixtureValue(
      "perplexity-quantized.txt", std::string("synth-llama-spm-256.") + GetParam() + " PPL ="));
  std::printf("[ %-7s ] PPL %.4f, llama.cpp %.4f (%+.3f%%)\n", GetParam(), ours, ref,
              100 * (ours / ref - 1));
  EXPECT_NEAR(ours / ref, 1.0, 0.005);
}

INSTANTIATE_TEST_SUITE_P(SynthLlama, KQuantFiles,
                         ::testing::Values("q5_k", "q3_k", "iq4_xs-pure", "q2_k-pure", "q5_k_m",
                                           "q5_k_s", "q4_k_s", "q3_k_m", "q3_k_l", "q3_k_s", "q2_k",
                                           "iq4_xs", "mxfp4-pure", "mxfp4_moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
