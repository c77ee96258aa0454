// GGUF reader on the shared models and on corrupted files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "gguf_test_files.h"
#include "test_util.h"

namespace es::gguf {
namespace {

using namespace test_files;

// ---- the shared models ----

struct Expect {
  std::string file;
  size_t n_kv, n_tensors;
  std::string arch;
  int64_t block_count, embedding;
  size_t n_tokens;
  std::string tensor;  // one tensor to check ("" for vocab-only files)
  std::vector<int64_t> dims;
  TensorType type;
};

const std::vector<Expect>& Expected() {
  static const std::vector<Expect> e = {
      // Made by current llama.cpp's gguf-py (see ../shared/README.md).
      {"synth-qwen3.f16.gguf",
       24,
       35,
       "qwen3",
       3,
       96,
       151936,
       "token_embd.weight",
       {96, 151936},
       TensorType::kF16},
      {"synth-gemma3.f16.gguf",
       26,
       54,
       "gemma3",
       4,
       256,
       32000,
       "token_embd.weight",
       {256, 32000},
       TensorType::kF16},
      {"stories260K.gguf",
       19,
       48,
       "llama",
       5,
       64,
       512,
       "token_embd.weight",
       {64, 512},
       TensorType::kF32},
      {"llama-2-tiny-random.gguf",
       18,
       12,
       "llama",
       1,
       8,
       32000,
       "token_embd.weight",
       {8, 32000},
       TensorType::kF16},
      {"synth-llama-spm-256.f16.gguf",
       23,
       39,
       "llama",
       4,
       256,
       32000,
       "token_embd.weight",
       {256, 32000},
       TensorType::kF16},
      {"synth-llama-spm-256.q8_0.gguf",
       23,
       39,
       "llama",
       4,
       256,
       32000,
       "token_embd.weight",
       {256, 32000},
       TensorType::kQ8_0},
      {"synth-llama-spm-256.q4_0.gguf",
       23,
       39,
       "llama",
       4,
       256,
       32000,
       "token_embd.weight",
       {256, 32000},
       TensorType::kQ4_0},
      {"synth-llama-spm-256.q4_k_m.gguf",
       23,
       39,
       "llama",
       4,
       256,
       32000,
       "token_embd.weight",
       {256, 32000},
       TensorType::kQ4_K},
      {"synth-llama-spm-256.q6_k.gguf",
       23,
       39,
       "llama",
       4,
       256,
       32000,
       "output.weight",
       {256, 32000},
       TensorType::kQ6_K},
      {"synth-qwen2-gpt2-256.f16.gguf",
       20,
       38,
       "qwen2",
       3,
       256,
       50257,
       "token_embd.weight",
       {256, 50257},
       TensorType::kF16},
      {"synth-qwen2-gpt2-256.q8_0.gguf",
       20,
       38,
       "qwen2",
       3,
       256,
       50257,
       "token_embd.weight",
       {256, 50257},
       TensorType::kQ8_0},
      {"synth-qwen2-gpt2-256.q4_0.gguf",
       20,
       38,
       "qwen2",
       3,
       256,
       50257,
       "blk.2.ffn_up.weight",
       {256, 768},
       TensorType::kQ4_0},
      {"vocab/ggml-vocab-llama-spm.gguf", 22, 0, "llama", 32, 4096, 32000, "", {}, {}},
      {"vocab/ggml-vocab-gpt-2.gguf", 16, 0, "gpt2", 12, 768, 50257, "", {}, {}},
      {"vocab/ggml-vocab-deepseek-coder.gguf", 25, 0, "llama", 32, 4096, 32256, "", {}, {}},
      {"vocab/ggml-vocab-falcon.gguf", 18, 0, "falcon", 32, 4544, 65024, "", {}, {}},
      {"vocab/ggml-vocab-mpt.gguf", 17, 0, "mpt", 32, 4096, 50432, "", {}, {}},
  };
  return e;
}

TEST(GgufShared, EveryModelOpensWithItsKnownTables) {
  // Every .gguf in the shared folders is covered by the table (and opens).
  size_t found = 0;
  for (const char* sub : {"", "vocab"}) {
    for (const auto& ent : fs::directory_iterator(fs::path(es::test::ModelsDir()) / sub)) {
      if (ent.path().extension() != ".gguf") continue;
      ++found;
      const std::string rel = (fs::path(sub) / ent.path().filename()).string();
      bool listed = false;
      for (const auto& e : Expected()) listed |= e.file == rel;
      EXPECT_TRUE(listed) << rel << " is not in the expectation table";
      EXPECT_NO_THROW(File::Open(ent.path().string())) << rel;
    }
  }
  EXPECT_EQ(found, Expected().size());

  for (const auto& e : Expected()) {
    SCOPED_TRACE(e.file);
    const std::string path = es::test::ModelPath(e.file);
    std::unique_ptr<File> f;
    ASSERT_NO_THROW(f = File::Open(path));
    EXPECT_EQ(f->version(), 3u);
    EXPECT_EQ(f->metadata().size(), e.n_kv);
    EXPECT_EQ(f->metadata_keys().size(), e.n_kv);
    EXPECT_EQ(f->tensors().size(), e.n_tensors);
    EXPECT_EQ(f->alignment(), 32u);
    EXPECT_EQ(f->GetString("general.architecture"), e.arch);
    EXPECT_EQ(f->GetInt(e.arch + ".block_count"), e.block_count);
    EXPECT_EQ(f->GetInt(e.arch + ".embedding_length"), e.embedding);
    EXPECT_EQ(f->GetStringArray("tokenizer.ggml.tokens").size(), e.n_tokens);
    EXPECT_EQ(f->GetNumberArray("tokenizer.ggml.token_type").size(), e.n_tokens);
    if (e.n_tensors == 0) continue;
    EXPECT_EQ(f->data_offset() % 32, 0u);
    const TensorInfo& t = f->GetTensor(e.tensor);
    EXPECT_EQ(t.dims, e.dims);
    EXPECT_EQ(t.type, e.type);
    EXPECT_EQ(t.n_bytes, RowBytes(t.type, t.dims[0]) * static_cast<size_t>(t.Rows()));
    // Every tensor lies inside the file, aligned, without overlapping the next one.
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const auto& ti : f->tensors()) {
      EXPECT_EQ(ti.offset % 32, 0u) << ti.name;
      EXPECT_EQ(ti.data, f->base() + f->data_offset() + ti.offset) << ti.name;
      EXPECT_LE(f->data_offset() + ti.offset + ti.n_bytes, f->file_size()) << ti.name;
      spans.emplace_back(ti.offset, ti.offset + ti.n_bytes);
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) EXPECT_LE(spans[i - 1].second, spans[i].first);
  }
}

TEST(GgufShared, Stories260KDetails) {
  auto f = File::Open(es::test::ModelPath("stories260K.gguf"));
  EXPECT_EQ(f->data_offset(), 14176u);
  EXPECT_EQ(f->metadata_keys().front(), "tokenizer.ggml.tokens");  // file order, not sorted
  EXPECT_EQ(f->metadata_keys().back(), "llama.attention.layer_norm_rms_epsilon");
  EXPECT_EQ(f->GetInt("llama.attention.head_count"), 8);
  EXPECT_EQ(f->GetInt("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(f->GetInt("llama.feed_forward_length"), 172);
  EXPECT_EQ(f->GetInt("tokenizer.ggml.padding_token_id"), 4294967295);
  EXPECT_FLOAT_EQ(static_cast<float>(f->GetFloat("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_EQ(f->GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f->GetStringArray("tokenizer.ggml.tokens").String(1), "<s>");
  EXPECT_EQ(f->tensors().front().name, "token_embd.weight");
  const auto& norm = f->GetTensor("blk.4.ffn_norm.weight");
  EXPECT_EQ(norm.offset, 1170944u);
  EXPECT_EQ(norm.dims, (std::vector<int64_t>{64}));
  EXPECT_EQ(f->data_offset() + norm.offset + norm.n_bytes, f->file_size());
  EXPECT_THROW(f->GetTensor("no.such.tensor"), Error);
  EXPECT_THROW(f->GetString("llama.block_count"), Error);  // wrong kind
  EXPECT_THROW(f->GetInt("missing.key"), Error);
}

// ---- hand-made broken files ----

TEST(GgufCorrupt, BaseSpecIsValid) {
  TempDir tmp;
  for (uint32_t version : {1u, 2u, 3u}) {
    Spec s = BaseSpec();
    s.version = version;
    if (version == 1) {  // v1 counts and lengths are 32-bit
      s.kvs.clear();
      s.kvs.push_back(KvStr("general.architecture", "llama", 1));
    }
    const std::string p = tmp.Path("v" + std::to_string(version) + ".gguf");
    WriteBytes(p, Build(s));
    std::unique_ptr<File> f;
    ASSERT_NO_THROW(f = File::Open(p)) << version;
    EXPECT_EQ(f->version(), version);
    EXPECT_EQ(f->GetString("general.architecture"), "llama");
    ASSERT_EQ(f->tensors().size(), 2u);
    EXPECT_EQ(f->GetTensor("b").type, TensorType::kQ8_0);
    EXPECT_EQ(f->GetTensor("b").n_bytes, 3u * 34u);
    EXPECT_EQ(f->GetTensor("b").offset, 32u);
    if (version == 3) {
      EXPECT_EQ(f->GetNumberArray("tokenizer.ggml.scores").Numbers(),
                (std::vector<double>{0.5, -1, 2}));
      EXPECT_EQ(f->GetStringArray("tokenizer.ggml.tokens").Strings(),
                (std::vector<std::string>{"ab", "cd"}));
    }
  }
}

TEST(GgufCorrupt, MissingTinyOrDirectory) {
  TempDir tmp;
  EXPECT_OPEN_ERROR(tmp.Path("missing.gguf"), "cannot open");
  const std::string empty = tmp.Path("empty.gguf");
  WriteBytes(empty, {});
  EXPECT_OPEN_ERROR(empty, "too small");
  const std::string tiny = tmp.Path("tiny.gguf");
  WriteBytes(tiny, {'G', 'G', 'U', 'F'});
  EXPECT_OPEN_ERROR(tiny, "too small");
  const std::string dir = tmp.Path("dir.gguf");
  fs::create_directories(dir);
  EXPECT_OPEN_ERROR(dir, "directory");
}

struct Case {
  const char* name;
  void (*mutate)(Spec&);
  std::vector<const char*> expect;  // substrings of the message
};

void Mutate(Spec& s, const char* key, uint32_t type, std::vector<uint8_t> payload) {
  for (auto& kv : s.kvs)
    if (kv.key == key) {
      kv.type = type;
      kv.payload = std::move(payload);
      return;
    }
  s.kvs.push_back({key, type, std::move(payload)});
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> c = {
      {"bad_magic", [](Spec& s) { s.magic = 0x4C4D4747; }, {"bad magic", "GGUF"}},
      {"bad_version_4", [](Spec& s) { s.version = 4; }, {"version 4"}},
      {"bad_version_0", [](Spec& s) { s.version = 0; }, {"version 0"}},
      {"huge_tensor_count", [](Spec& s) { s.n_tensors = 1ull << 40; }, {"tensor count"}},
      {"huge_kv_count", [](Spec& s) { s.n_kv = ~0ull; }, {"metadata count"}},
      {"kv_count_too_high",  // the extra entry is read from the tensor table and fails there
       [](Spec& s) { s.n_kv = s.kvs.size() + 1; },
       {}},
      {"unknown_value_type",
       [](Spec& s) { s.kvs[1].type = 13; },
       {"metadata 'llama.block_count'", "unknown value type 13"}},
      {"unknown_array_elem_type",
       [](Spec& s) { s.kvs[3].payload[0] = 77; },
       {"metadata 'tokenizer.ggml.scores'", "element type 77"}},
      {"nested_array",
       [](Spec& s) { s.kvs[3].payload[0] = 9; },
       {"metadata 'tokenizer.ggml.scores'", "element type 9"}},
      {"huge_string_value",
       [](Spec& s) {
         Bytes p;
         p.StrLen(1ull << 50, "llama");
         Mutate(s, "general.architecture", 8, p.b);
       },
       {"metadata 'general.architecture'", "string length"}},
      {"string_value_past_end",
       [](Spec& s) {
         Bytes p;
         p.StrLen(1u << 25, "llama");
         Mutate(s, "general.architecture", 8, p.b);
       },
       {"metadata 'general.architecture'", "truncated"}},
      {"huge_array_length",
       [](Spec& s) {
         Bytes p;
         p.U32(6).U64(1ull << 60);
         Mutate(s, "tokenizer.ggml.scores", 9, p.b);
       },
       {"metadata 'tokenizer.ggml.scores'", "array length"}},
      {"array_past_end",
       [](Spec& s) {
         Bytes p;
         p.U32(6).U64(1u << 20);
         Mutate(s, "tokenizer.ggml.scores", 9, p.b);
       },
       {"metadata 'tokenizer.ggml.scores'", "array length"}},
      {"huge_string_array_length",
       [](Spec& s) {
         Bytes p;
         p.U32(8).U64(1ull << 31);
         Mutate(s, "tokenizer.ggml.tokens", 9, p.b);
       },
       {"metadata 'tokenizer.ggml.tokens'", "array length"}},
      {"string_array_element_too_long",
       [](Spec& s) {
         Bytes p;
         p.U32(8).U64(2).Str("ab").StrLen(1ull << 40, "cd");
         Mutate(s, "tokenizer.ggml.tokens", 9, p.b);
       },
       {"metadata 'tokenizer.ggml.tokens'", "string length"}},
      {"duplicate_key",
       [](Spec& s) { s.kvs.push_back(KvU32("llama.block_count", 3)); },
       {"metadata 'llama.block_count'", "duplicate"}},
      {"alignment_zero",
       [](Spec& s) { s.kvs.push_back(KvU32("general.alignment", 0)); },
       {"general.alignment", "power of two"}},
      {"alignment_not_power_of_two",
       [](Spec& s) { s.kvs.push_back(KvU32("general.alignment", 48)); },
       {"general.alignment", "48"}},
      {"alignment_too_large",
       [](Spec& s) { s.kvs.push_back(KvU32("general.alignment", 1u << 21)); },
       {"general.alignment"}},
      {"alignment_wrong_type",
       [](Spec& s) { s.kvs.push_back(KvStr("general.alignment", "32")); },
       {"general.alignment", "string"}},
      {"alignment_float",
       [](Spec& s) {
         Bytes p;
         p.Put(32.0f);
         s.kvs.push_back({"general.alignment", 6, p.b});
       },
       {"general.alignment", "float32"}},
      // Below 8 the kernels would read tensor elements misaligned (undefined behaviour).
      {"alignment_1",
       [](Spec& s) { s.kvs.push_back(KvU32("general.alignment", 1)); },
       {"general.alignment", "got 1", "from 8"}},
      {"alignment_2",
       [](Spec& s) { s.kvs.push_back(KvU32("general.alignment", 2)); },
       {"general.alignment", "got 2", "from 8"}},
      {"alignment_4",
       [](Spec& s) { s.kvs.push_back(KvU32("general.alignment", 4)); },
       {"general.alignment", "got 4", "from 8"}},
      {"key_over_limit",
       [](Spec& s) { s.kvs.push_back(KvU32(std::string(kMaxKeyBytes + 1, 'k'), 1)); },
       {"metadata entry #4", "key", "string length 65537, over the limit of 65536"}},
      {"string_value_over_limit",
       [](Spec& s) {
         Bytes p;
         p.StrLen(kMaxStringBytes + 1, "llama");
         Mutate(s, "general.architecture", 8, p.b);
       },
       {"metadata 'general.architecture'", "over the limit of 67108864"}},
      {"string_element_over_limit",
       [](Spec& s) {
         Bytes p;
         p.U32(8).U64(2).Str("ab").StrLen(kMaxStringBytes + 1, "cd");
         Mutate(s, "tokenizer.ggml.tokens", 9, p.b);
       },
       {"metadata 'tokenizer.ggml.tokens' element #1", "over the limit of 67108864"}},
      {"tensor_name_over_limit",
       [](Spec& s) { s.tensors[0].name = std::string(kMaxTensorNameBytes + 1, 't'); },
       {"tensor #0", "name", "over the limit of 256"}},
      {"tensor_count_over_limit",  // a file big enough for the count, so the limit is what fails
       [](Spec& s) {
         s.n_tensors = kMaxTensors + 1;
         s.data_bytes = 2 << 20;
       },
       {"tensor count 65537", "limit of 65536"}},
      {"metadata_count_over_limit",
       [](Spec& s) {
         s.n_kv = kMaxMetadataEntries + 1;
         s.data_bytes = 1 << 20;
       },
       {"metadata count 65537", "limit of 65536"}},
      {"n_dims_5",
       [](Spec& s) {
         s.tensors[0].dims = {4, 1, 1, 1, 2};
       },
       {"tensor 'a'", "5 dimensions"}},
      {"n_dims_0",
       [](Spec& s) {
         s.tensors[1].dims = {};
         s.tensors[1].n_dims = 0;
       },
       {"tensor 'b'", "0 dimensions"}},
      {"n_dims_huge",
       [](Spec& s) { s.tensors[0].n_dims = 0xFFFFFFFF; },
       {"tensor 'a'", "dimensions"}},
      {"dim_zero",
       [](Spec& s) {
         s.tensors[0].dims = {4, 0};
       },
       {"tensor 'a'", "dimension 1 is 0"}},
      {"dim_huge",
       [](Spec& s) {
         s.tensors[0].dims = {4, 1ull << 63};
       },
       {"tensor 'a'", "dimension 1"}},
      {"dims_product_overflows",
       [](Spec& s) {
         s.tensors[0].dims = {1ull << 40, 1ull << 30};
       },
       {"tensor 'a'", "overflows"}},
      {"byte_size_overflows",
       [](Spec& s) {
         s.tensors[0].dims = {1ull << 40, 1ull << 22};
       },
       {"tensor 'a'", "overflows"}},
      {"unknown_tensor_type",
       [](Spec& s) { s.tensors[1].type = 99; },
       {"tensor 'b'", "type id 99"}},
      {"removed_tensor_type", [](Spec& s) { s.tensors[1].type = 4; }, {"tensor 'b'", "type id 4"}},
      {"row_not_block_multiple",
       [](Spec& s) {
         s.tensors[1].dims = {33, 3};
       },
       {"tensor 'b'", "block size"}},
      {"offset_past_end",
       [](Spec& s) { s.tensors[1].offset = 1ull << 40; },
       {"tensor 'b'", "file ends"}},
      {"offset_max",
       [](Spec& s) { s.tensors[1].offset = ~0ull << 5; },
       {"tensor 'b'", "file ends"}},
      {"data_runs_past_end",
       [](Spec& s) { s.tensors[1].offset = 64; },
       {"tensor 'b'", "file ends"}},
      {"unaligned_offset",
       [](Spec& s) { s.tensors[1].offset = 40; },
       {"tensor 'b'", "not aligned"}},
      {"data_truncated", [](Spec& s) { s.data_bytes = 32 + 50; }, {"tensor 'b'", "truncated"}},
      {"no_data_section", [](Spec& s) { s.data_bytes = 0; }, {"tensor"}},
      {"duplicate_tensor",
       [](Spec& s) { s.tensors[1].name = s.tensors[0].name; },
       {"tensor 'a'", "duplicate tensor name"}},
      {"huge_tensor_name",
       [](Spec& s) { s.tensors[0].name_len = 1ull << 45; },
       {"tensor #0", "name", "string length"}},
      {"tensor_name_past_end",
       [](Spec& s) { s.tensors[1].name_len = 250; },
       {"tensor #1", "name", "truncated"}},
      {"tensor_count_too_high",  // the extra info is read from the zero padding
       [](Spec& s) { s.n_tensors = 3; },
       {"tensor '': has 0 dimensions"}},
  };
  return c;
}

TEST(GgufCorrupt, EachBrokenFieldIsNamed) {
  TempDir tmp;
  for (const auto& c : Cases()) {
    SCOPED_TRACE(c.name);
    Spec s = BaseSpec();
    c.mutate(s);
    const std::string p = tmp.Path(std::string(c.name) + ".gguf");
    WriteBytes(p, Build(s));
    const std::string msg = OpenError(p);
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    for (const char* part : c.expect)
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' missing in: " << msg;
  }
}

TEST(GgufCorrupt, HugeKeyLength) {
  TempDir tmp;
  Bytes b;
  b.U32(0x46554747).U32(3).U64(0).U64(1).U64(1ull << 62).U32(4).U32(1);
  const std::string p = tmp.Path("key.gguf");
  WriteBytes(p, b.b);
  EXPECT_OPEN_ERROR(p, "metadata entry #0", "key", "string length");
  Bytes c;
  c.U32(0x46554747).U32(3).U64(0).U64(1).U64(100).U32(4).U32(1);
  WriteBytes(p, c.b);
  EXPECT_OPEN_ERROR(p, "metadata entry #0", "key", "truncated");
}

TEST(GgufCorrupt, I64AndU64ValuesAreExact) {
  TempDir tmp;
  Spec s = BaseSpec();
  Bytes a, b;
  a.Put<int64_t>(std::numeric_limits<int64_t>::max());
  b.Put<uint64_t>(std::numeric_limits<uint64_t>::max());
  s.kvs.push_back({"x.i64", 11, a.b});
  s.kvs.push_back({"x.u64", 10, b.b});
  const std::string p = tmp.Path("ints.gguf");
  WriteBytes(p, Build(s));
  auto f = File::Open(p);
  EXPECT_EQ(f->GetInt("x.i64"), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(std::get<uint64_t>(f->Find("x.u64")->scalar), std::numeric_limits<uint64_t>::max());
  EXPECT_THROW(f->GetInt("x.u64"), Error);  // does not fit
}

// Truncating a file anywhere before the end of its last tensor must be reported.
void TruncationSweep(const std::string& src, const std::string& copy, size_t data_stride) {
  auto bytes = ReadBytes(src);
  WriteBytes(copy, bytes);
  size_t data_end = 0;
  size_t header_end = 0;
  {
    auto f = File::Open(copy);
    header_end = f->data_offset();
    for (const auto& t : f->tensors())
      data_end = std::max<size_t>(data_end, f->data_offset() + t.offset + t.n_bytes);
  }
  ASSERT_GT(data_end, header_end);
  std::vector<size_t> lengths;
  for (size_t l = 0; l < header_end; ++l) lengths.push_back(l);
  for (size_t l = header_end; l < data_end; l += data_stride) lengths.push_back(l);
  lengths.push_back(data_end - 1);
  std::sort(lengths.rbegin(), lengths.rend());  // shrink the same copy step by step
  int failures = 0;
  for (size_t l : lengths) {
    ASSERT_EQ(::truncate(copy.c_str(), static_cast<off_t>(l)), 0);
    try {
      auto f = File::Open(copy);
      ADD_FAILURE() << "opened when truncated to " << l << " bytes";
      if (++failures > 5) return;
    } catch (const Error& e) {
      const std::string m = e.what();
      if (m.find(copy) == std::string::npos ||
          (m.find("truncated") == std::string::npos && m.find("file ends") == std::string::npos &&
           m.find("can hold") == std::string::npos && m.find("too small") == std::string::npos)) {
        ADD_FAILURE() << "truncated to " << l << ": unhelpful message: " << m;
        if (++failures > 5) return;
      }
    }
  }
  // Cutting only the padding after the last tensor leaves a usable file.
  WriteBytes(copy, bytes);
  ASSERT_EQ(::truncate(copy.c_str(), static_cast<off_t>(data_end)), 0);
  EXPECT_NO_THROW(File::Open(copy));
}

TEST(GgufCorrupt, TruncatedAtEveryHeaderByte) {
  TempDir tmp;
  TruncationSweep(es::test::ModelPath("stories260K.gguf"), tmp.Path("stories.gguf"), 997);
  Spec s = BaseSpec();
  WriteBytes(tmp.Path("base.gguf"), Build(s));
  TruncationSweep(tmp.Path("base.gguf"), tmp.Path("base_cut.gguf"), 1);
}

TEST(GgufCorrupt, TruncatedVocabOnlyFile) {
  TempDir tmp;
  auto bytes = ReadBytes(es::test::ModelPath("vocab/ggml-vocab-gpt-2.gguf"));
  const std::string p = tmp.Path("vocab.gguf");
  WriteBytes(p, bytes);
  std::mt19937 rng(7);
  std::vector<size_t> lengths = {0, 4, 8, 16, 24, bytes.size() - 1};
  for (int i = 0; i < 300; ++i) lengths.push_back(rng() % bytes.size());
  std::sort(lengths.rbegin(), lengths.rend());
  for (size_t l : lengths) {
    ASSERT_EQ(::truncate(p.c_str(), static_cast<off_t>(l)), 0);
    const std::string m = OpenError(p);
    EXPECT_NE(m.find(p), std::string::npos) << l << ": " << m;
  }
}

// Random byte flips in the header of a real model: Open either succeeds with a consistent
// tensor table or throws es::Error; nothing else (crash, other exception, sanitizer report).
TEST(GgufCorrupt, FuzzHeaderByteFlips) {
  TempDir tmp;
  const std::string src = es::test::ModelPath("stories260K.gguf");
  auto bytes = ReadBytes(src);
  const std::string p = tmp.Path("fuzz.gguf");
  WriteBytes(p, bytes);
  size_t header_end = 0;
  {
    auto f = File::Open(p);
    header_end = f->data_offset();
  }
  const int fd = ::open(p.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  std::mt19937 rng(20240601);
  int opened = 0, rejected = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    const int n_flips = 1 + static_cast<int>(rng() % 4);
    std::vector<size_t> where;
    for (int k = 0; k < n_flips; ++k) {
      // Half the flips land in the first 512 bytes and the tensor table, where the counts
      // and lengths live; the rest anywhere in the header.
      size_t pos = rng() % header_end;
      if (rng() % 2) pos = rng() % 2 ? rng() % 512 : header_end - 1 - rng() % 2400;
      uint8_t v = bytes[pos] ^ static_cast<uint8_t>(1 + rng() % 255);
      if (rng() % 4 == 0) v = (rng() % 2) ? 0xFF : 0x00;
      ASSERT_EQ(::pwrite(fd, &v, 1, static_cast<off_t>(pos)), 1);
      where.push_back(pos);
    }
    try {
      auto f = File::Open(p);
      ++opened;
      for (const auto& t : f->tensors()) {
        ASSERT_LE(f->data_offset() + t.offset + t.n_bytes, f->file_size()) << t.name;
        ASSERT_EQ(t.data, f->base() + f->data_offset() + t.offset);
      }
    } catch (const Error& e) {
      ++rejected;
      ASSERT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iter << ": non-es::Error exception: " << e.what();
    }
    for (size_t pos : where) ASSERT_EQ(::pwrite(fd, &bytes[pos], 1, static_cast<off_t>(pos)), 1);
  }
  ::close(fd);
  EXPECT_GT(rejected, 100);
  EXPECT_GT(opened, 10);
}

TEST(GgufCorrupt, CliReportsCorruptModelOnOneLine) {
  TempDir tmp;
  auto bytes = ReadBytes(es::test::ModelPath("stories260K.gguf"));
  bytes.resize(5000);  // cut inside the vocabulary
  const std::string p = tmp.Path("cut.gguf");
  WriteBytes(p, bytes);
  auto r = es::test::RunCli("tokenize -m " + p + " -p hi");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.out, "");
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected one line: " << r.err;
  EXPECT_NE(r.err.find(p), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace es::gguf
