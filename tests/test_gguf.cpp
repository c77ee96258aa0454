// GGUF reader on the shared models and on corrupted files, and the GGUF writer.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "test_util.h"

namespace es::gguf {
namespace {

namespace fs = std::filesystem;

// ---- helpers ----

// A fresh temporary directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("es_gguf_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  fs::path dir_;
};

void WriteBytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::string s = es::test::ReadFile(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

// Opens `path` expecting es::Error; returns its message ("" and a test failure otherwise).
std::string OpenError(const std::string& path) {
  try {
    auto f = File::Open(path);
    ADD_FAILURE() << path << " opened although it is corrupt";
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << path << ": threw a non-es::Error exception: " << e.what();
  }
  return "";
}

#define EXPECT_OPEN_ERROR(path, ...)                                                     \
  do {                                                                                   \
    const std::string msg_ = OpenError(path);                                            \
    EXPECT_NE(msg_.find(path), std::string::npos) << "message lacks the path: " << msg_; \
    for (const char* part_ : {__VA_ARGS__})                                              \
      EXPECT_NE(msg_.find(part_), std::string::npos)                                     \
          << "message lacks '" << part_ << "': " << msg_;                                \
  } while (0)

// Little-endian byte builder for hand-made (and deliberately broken) GGUF files.
struct Bytes {
  std::vector<uint8_t> b;
  uint32_t version = 3;
  template <typename T>
  Bytes& Put(T v) {
    const size_t at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
    return *this;
  }
  Bytes& U32(uint32_t v) { return Put(v); }
  Bytes& U64(uint64_t v) { return Put(v); }
  Bytes& Count(uint64_t v) { return version == 1 ? Put(static_cast<uint32_t>(v)) : Put(v); }
  Bytes& Str(const std::string& s) { return StrLen(s.size(), s); }
  Bytes& StrLen(uint64_t len, const std::string& s) {
    Count(len);
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
};

struct Kv {
  std::string key;
  uint32_t type;
  std::vector<uint8_t> payload;
};

struct Ti {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;
  std::optional<uint64_t> offset;    // default: laid out in order, padded
  std::optional<uint32_t> n_dims;    // default: dims.size()
  std::optional<uint64_t> name_len;  // default: name.size()
};

struct Spec {
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors, n_kv;
  std::vector<Kv> kvs;
  std::vector<Ti> tensors;
  size_t alignment = 32;
  std::optional<size_t> data_bytes;  // default: every tensor's padded size
};

Kv KvU32(const std::string& key, uint32_t v) {
  Bytes p;
  p.U32(v);
  return {key, 4, p.b};
}
Kv KvStr(const std::string& key, const std::string& v, uint32_t version = 3) {
  Bytes p;
  p.version = version;
  p.Str(v);
  return {key, 8, p.b};
}

Ti MakeTi(const std::string& name, std::vector<uint64_t> dims, uint32_t type) {
  Ti t;
  t.name = name;
  t.dims = std::move(dims);
  t.type = type;
  return t;
}

size_t TiBytes(const Ti& t) {
  auto tr = GetTypeTraits(t.type);
  if (!tr) return 0;
  uint64_t n = 1;
  for (auto d : t.dims) n *= d;
  return n / static_cast<uint64_t>(tr->block_elems) * static_cast<uint64_t>(tr->block_bytes);
}

std::vector<uint8_t> Build(const Spec& s) {
  Bytes h;
  h.version = s.version;
  h.U32(s.magic).U32(s.version);
  h.Count(s.n_tensors.value_or(s.tensors.size()));
  h.Count(s.n_kv.value_or(s.kvs.size()));
  for (const auto& kv : s.kvs) {
    h.Str(kv.key).U32(kv.type);
    h.b.insert(h.b.end(), kv.payload.begin(), kv.payload.end());
  }
  uint64_t off = 0;
  for (const auto& t : s.tensors) {
    h.StrLen(t.name_len.value_or(t.name.size()), t.name);
    h.U32(t.n_dims.value_or(static_cast<uint32_t>(t.dims.size())));
    for (auto d : t.dims) h.Count(d);
    h.U32(t.type);
    h.U64(t.offset.value_or(off));
    off += (TiBytes(t) + s.alignment - 1) / s.alignment * s.alignment;
  }
  h.b.resize((h.b.size() + s.alignment - 1) / s.alignment * s.alignment, 0);
  const size_t data = s.data_bytes.value_or(off);
  for (size_t i = 0; i < data; ++i) h.b.push_back(static_cast<uint8_t>(i * 7));
  return h.b;
}

// A small valid file: a few metadata types and an F32 and a Q8_0 tensor.
Spec BaseSpec() {
  Spec s;
  s.kvs.push_back(KvStr("general.architecture", "llama"));
  s.kvs.push_back(KvU32("llama.block_count", 2));
  Bytes arr;
  arr.U32(8).U64(2).Str("ab").Str("cd");
  s.kvs.push_back({"tokenizer.ggml.tokens", 9, arr.b});
  Bytes nums;
  nums.U32(6).U64(3);
  for (float f : {0.5f, -1.0f, 2.0f}) nums.Put(f);
  s.kvs.push_back({"tokenizer.ggml.scores", 9, nums.b});
  s.tensors.push_back(MakeTi("a", {4, 2}, 0));
  s.tensors.push_back(MakeTi("b", {32, 3}, 8));
  return s;
}

size_t ElemBytes(ValueType t) {
  switch (t) {
    case ValueType::kU16:
    case ValueType::kI16:
      return 2;
    case ValueType::kU32:
    case ValueType::kI32:
    case ValueType::kF32:
      return 4;
    case ValueType::kU64:
    case ValueType::kI64:
    case ValueType::kF64:
      return 8;
    default:
      return 1;
  }
}

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

// ---- writer ----

TEST(GgufWriter, RoundTripsEveryTypeByteExact) {
  TempDir tmp;
  Writer w;
  w.SetString("general.architecture", "llama");
  w.SetU8("t.u8", 250);
  w.SetI8("t.i8", -120);
  w.SetU16("t.u16", 65000);
  w.SetI16("t.i16", -32000);
  w.SetU32("t.u32", 4000000000u);
  w.SetI32("t.i32", -2000000000);
  w.SetU64("t.u64", std::numeric_limits<uint64_t>::max());
  w.SetI64("t.i64", std::numeric_limits<int64_t>::min());
  w.SetF32("t.f32", 0.1f);
  w.SetF64("t.f64", 0.1);
  w.SetBool("t.bool", true);
  w.SetString("t.empty", "");
  w.SetStringArray("t.strs", {"a", "", "\xE2\x82\xAC", std::string(300, 'x')});
  w.SetStringArray("t.strs0", {});
  const std::vector<uint8_t> au8 = {0, 1, 255};
  const std::vector<int8_t> ai8 = {-128, 0, 127};
  const std::vector<uint16_t> au16 = {0, 65535};
  const std::vector<int16_t> ai16 = {-32768, 32767};
  const std::vector<uint32_t> au32 = {0, 4294967295u};
  const std::vector<int32_t> ai32 = {-5, 7, 1 << 30};
  const std::vector<uint64_t> au64 = {0, std::numeric_limits<uint64_t>::max()};
  const std::vector<int64_t> ai64 = {std::numeric_limits<int64_t>::min(), -1, 1};
  const std::vector<float> af32 = {0.5f, -0.0f, 1e-30f};
  const std::vector<double> af64 = {0.1, -2.5};
  w.SetArray("a.u8", au8);
  w.SetArray("a.i8", ai8);
  w.SetArray("a.u16", au16);
  w.SetArray("a.i16", ai16);
  w.SetArray("a.u32", au32);
  w.SetArray("a.i32", ai32);
  w.SetArray("a.u64", au64);
  w.SetArray("a.i64", ai64);
  w.SetArray("a.f32", af32);
  w.SetArray("a.f64", af64);
  w.SetArray("a.empty", std::vector<float>{});
  w.SetBoolArray("a.bool", {true, false, true});
  w.SetU32("t.u32", 7);  // replaced in place: keeps its position

  std::vector<float> t0(15);
  for (size_t i = 0; i < t0.size(); ++i) t0[i] = static_cast<float>(i) * 0.25f - 1.0f;
  w.AddTensor("t0", {3, 5}, TensorType::kF32, t0.data());
  std::vector<uint8_t> expect_f16(7 * 2), expect_q8(2 * 34 * 2), expect_q4k(144);
  std::mt19937 rng(1);
  for (auto* v : {&expect_f16, &expect_q8, &expect_q4k})
    for (auto& x : *v) x = static_cast<uint8_t>(rng());
  w.AddTensor("t1.f16", {7}, TensorType::kF16, [&](TensorSink& s) {
    for (size_t i = 0; i < expect_f16.size(); i += 3)  // odd pieces
      s.Write(&expect_f16[i], std::min<size_t>(3, expect_f16.size() - i));
  });
  w.AddTensor("t2.q8", {64, 2, 1}, TensorType::kQ8_0,
              [&](TensorSink& s) { s.Write(expect_q8.data(), expect_q8.size()); });
  w.AddTensor("t3.q4k", {256, 1, 1, 1}, TensorType::kQ4_K, expect_q4k.data());
  EXPECT_EQ(w.n_tensors(), 4u);
  EXPECT_EQ(w.alignment(), 32u);

  const std::string p = tmp.Path("all.gguf");
  const uint64_t size = w.Write(p);
  EXPECT_EQ(size, fs::file_size(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  EXPECT_EQ(size % 32, 0u);

  auto f = File::Open(p);
  EXPECT_EQ(f->version(), 3u);
  const std::vector<std::string> keys = {"general.architecture",
                                         "t.u8",
                                         "t.i8",
                                         "t.u16",
                                         "t.i16",
                                         "t.u32",
                                         "t.i32",
                                         "t.u64",
                                         "t.i64",
                                         "t.f32",
                                         "t.f64",
                                         "t.bool",
                                         "t.empty",
                                         "t.strs",
                                         "t.strs0",
                                         "a.u8",
                                         "a.i8",
                                         "a.u16",
                                         "a.i16",
                                         "a.u32",
                                         "a.i32",
                                         "a.u64",
                                         "a.i64",
                                         "a.f32",
                                         "a.f64",
                                         "a.empty",
                                         "a.bool"};
  EXPECT_EQ(f->metadata_keys(), keys);
  EXPECT_EQ(f->Find("t.u8")->type, ValueType::kU8);
  EXPECT_EQ(f->GetInt("t.u8"), 250);
  EXPECT_EQ(f->GetInt("t.i8"), -120);
  EXPECT_EQ(f->GetInt("t.u16"), 65000);
  EXPECT_EQ(f->GetInt("t.i16"), -32000);
  EXPECT_EQ(f->Find("t.u32")->type, ValueType::kU32);
  EXPECT_EQ(f->GetInt("t.u32"), 7);
  EXPECT_EQ(f->GetInt("t.i32"), -2000000000);
  EXPECT_EQ(std::get<uint64_t>(f->Find("t.u64")->scalar), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f->GetInt("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f->Find("t.f32")->type, ValueType::kF32);
  EXPECT_EQ(static_cast<float>(f->GetFloat("t.f32")), 0.1f);
  EXPECT_EQ(f->GetFloat("t.f64"), 0.1);
  EXPECT_TRUE(f->GetBool("t.bool"));
  EXPECT_EQ(f->GetString("t.empty"), "");
  EXPECT_EQ(f->GetStringArray("t.strs").Strings(),
            (std::vector<std::string>{"a", "", "\xE2\x82\xAC", std::string(300, 'x')}));
  EXPECT_EQ(f->GetStringArray("t.strs0").size(), 0u);
  auto raw = [&](const char* key, const void* data, size_t bytes, ValueType et, size_t n) {
    const Value* v = f->Find(key);
    ASSERT_NE(v, nullptr) << key;
    EXPECT_EQ(v->type, ValueType::kArray) << key;
    EXPECT_EQ(v->elem_type, et) << key;
    EXPECT_EQ(v->array_len, n) << key;
    if (bytes) {
      EXPECT_EQ(std::memcmp(v->array_data, data, bytes), 0) << key;
    }
  };
  raw("a.u8", au8.data(), 3, ValueType::kU8, 3);
  raw("a.i8", ai8.data(), 3, ValueType::kI8, 3);
  raw("a.u16", au16.data(), 4, ValueType::kU16, 2);
  raw("a.i16", ai16.data(), 4, ValueType::kI16, 2);
  raw("a.u32", au32.data(), 8, ValueType::kU32, 2);
  raw("a.i32", ai32.data(), 12, ValueType::kI32, 3);
  raw("a.u64", au64.data(), 16, ValueType::kU64, 2);
  raw("a.i64", ai64.data(), 24, ValueType::kI64, 3);
  raw("a.f32", af32.data(), 12, ValueType::kF32, 3);
  raw("a.f64", af64.data(), 16, ValueType::kF64, 2);
  raw("a.empty", nullptr, 0, ValueType::kF32, 0);
  const uint8_t bools[] = {1, 0, 1};
  raw("a.bool", bools, 3, ValueType::kBool, 3);
  EXPECT_EQ(f->GetNumberArray("a.i32").Numbers(), (std::vector<double>{-5, 7, 1 << 30}));

  ASSERT_EQ(f->tensors().size(), 4u);
  const char* names[] = {"t0", "t1.f16", "t2.q8", "t3.q4k"};
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(f->tensors()[i].name, names[i]);
  const auto& a = f->GetTensor("t0");
  EXPECT_EQ(a.dims, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(std::memcmp(a.data, t0.data(), 60), 0);
  const auto& b = f->GetTensor("t1.f16");
  EXPECT_EQ(b.type, TensorType::kF16);
  EXPECT_EQ(b.offset, 64u);  // 60 bytes padded to 64
  EXPECT_EQ(std::memcmp(b.data, expect_f16.data(), expect_f16.size()), 0);
  const auto& c = f->GetTensor("t2.q8");
  EXPECT_EQ(c.dims, (std::vector<int64_t>{64, 2, 1}));
  EXPECT_EQ(std::memcmp(c.data, expect_q8.data(), expect_q8.size()), 0);
  const auto& d = f->GetTensor("t3.q4k");
  EXPECT_EQ(d.dims, (std::vector<int64_t>{256, 1, 1, 1}));
  EXPECT_EQ(std::memcmp(d.data, expect_q4k.data(), expect_q4k.size()), 0);
  // llama.cpp's layout: offsets follow each other, every tensor padded to the alignment.
  uint64_t off = 0;
  for (const auto& t : f->tensors()) {
    EXPECT_EQ(t.offset, off) << t.name;
    off += (t.n_bytes + 31) / 32 * 32;
  }
  EXPECT_EQ(f->data_offset() + off, f->file_size());
  // Padding is zeros.
  const auto bytes = ReadBytes(p);
  for (size_t i = f->data_offset() + 60; i < f->data_offset() + 64; ++i) EXPECT_EQ(bytes[i], 0);
}

TEST(GgufWriter, CustomAlignment) {
  TempDir tmp;
  Writer w;
  w.SetString("general.architecture", "x");
  w.SetAlignment(64);
  EXPECT_EQ(w.alignment(), 64u);
  const std::vector<float> v(5, 1.5f);
  w.AddTensor("a", {5}, TensorType::kF32, v.data());
  w.AddTensor("b", {5}, TensorType::kF32, v.data());
  const std::string p = tmp.Path("al.gguf");
  w.Write(p);
  auto f = File::Open(p);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->Find("general.alignment")->type, ValueType::kU32);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->GetTensor("b").offset, 64u);
  EXPECT_EQ(f->file_size() % 64, 0u);
  EXPECT_THROW(w.SetAlignment(48), Error);
  EXPECT_THROW(w.SetAlignment(0), Error);
  w.SetString("general.alignment", "bad");
  EXPECT_THROW(w.Write(p), Error);
}

TEST(GgufWriter, ReplaceAndRemoveKeepOrder) {
  TempDir tmp;
  Writer w;
  w.SetU32("a", 1);
  w.SetU32("b", 2);
  w.SetU32("c", 3);
  w.SetString("a", "now a string");
  EXPECT_TRUE(w.Remove("b"));
  EXPECT_FALSE(w.Remove("b"));
  EXPECT_TRUE(w.Has("c"));
  EXPECT_EQ(w.n_metadata(), 2u);
  const std::string p = tmp.Path("kv.gguf");
  w.Write(p);
  auto f = File::Open(p);
  EXPECT_EQ(f->metadata_keys(), (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(f->GetString("a"), "now a string");
  EXPECT_TRUE(f->tensors().empty());
}

TEST(GgufWriter, RejectsBadTensorsAndShortCallbacks) {
  TempDir tmp;
  const float x[64] = {};
  Writer w;
  EXPECT_THROW(w.AddTensor(std::string(64, 'n'), {4}, TensorType::kF32, x), Error);
  EXPECT_THROW(w.AddTensor("", {4}, TensorType::kF32, x), Error);
  EXPECT_THROW(w.AddTensor("z", {4, 0}, TensorType::kF32, x), Error);
  EXPECT_THROW(w.AddTensor("z", {}, TensorType::kF32, x), Error);
  EXPECT_THROW(w.AddTensor("z", {1, 1, 1, 1, 1}, TensorType::kF32, x), Error);
  EXPECT_THROW(w.AddTensor("z", {33}, TensorType::kQ8_0, x), Error);
  EXPECT_THROW(w.AddTensor("z", {1ll << 40, 1ll << 40}, TensorType::kF32, x), Error);
  EXPECT_THROW(w.AddTensor("z", {4}, static_cast<TensorType>(99), x), Error);
  EXPECT_THROW(w.AddTensor("z", {4}, TensorType::kF32, static_cast<const void*>(nullptr)), Error);
  w.AddTensor(std::string(63, 'n'), {4}, TensorType::kF32, x);
  EXPECT_THROW(w.AddTensor(std::string(63, 'n'), {4}, TensorType::kF32, x), Error);

  const std::string p = tmp.Path("short.gguf");
  Writer s;
  s.AddTensor("short", {8}, TensorType::kF32, [&](TensorSink& sink) { sink.Write(x, 16); });
  try {
    s.Write(p);
    ADD_FAILURE() << "a short callback was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'short'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(p));  // nothing half-written is left behind
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  Writer l;
  l.AddTensor("long", {2}, TensorType::kF32, [&](TensorSink& sink) { sink.Write(x, 12); });
  EXPECT_THROW(l.Write(p), Error);
  EXPECT_FALSE(fs::exists(p));

  Writer thrower;  // an exception from the callback propagates and cleans up
  thrower.AddTensor("t", {2}, TensorType::kF32,
                    [](TensorSink&) { throw std::runtime_error("source failed"); });
  EXPECT_THROW(thrower.Write(p), std::runtime_error);
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  Writer ok;  // an unwritable destination names the file
  ok.SetU32("a", 1);
  const std::string bad = tmp.Path("no/such/dir/x.gguf");
  try {
    ok.Write(bad);
    ADD_FAILURE() << "wrote into a missing directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
}

// Copying a model's metadata and tensors reproduces the file llama.cpp wrote, byte for byte.
TEST(GgufWriter, CopyOfSharedModelsIsIdentical) {
  TempDir tmp;
  for (const char* name : {"stories260K.gguf", "llama-2-tiny-random.gguf",
                           "synth-llama-spm-256.q4_k_m.gguf", "vocab/ggml-vocab-gpt-2.gguf"}) {
    SCOPED_TRACE(name);
    const std::string src = es::test::ModelPath(name);
    auto in = File::Open(src);
    Writer w;
    w.CopyMetadataFrom(*in);
    for (const auto& t : in->tensors()) w.AddTensor(t.name, t.dims, t.type, t.data);
    const std::string p = tmp.Path("copy.gguf");
    w.Write(p);
    auto out = File::Open(p);
    EXPECT_EQ(out->metadata_keys(), in->metadata_keys());
    for (const auto& key : in->metadata_keys()) {
      const Value& a = *in->Find(key);
      const Value& b = *out->Find(key);
      EXPECT_EQ(a.type, b.type) << key;
      EXPECT_EQ(a.scalar, b.scalar) << key;
      EXPECT_EQ(a.elem_type, b.elem_type) << key;
      EXPECT_EQ(a.array_len, b.array_len) << key;
      EXPECT_EQ(a.Strings(), b.Strings()) << key;
      if (a.IsArray() && a.elem_type != ValueType::kString && a.array_len) {
        EXPECT_EQ(std::memcmp(a.array_data, b.array_data, a.array_len * ElemBytes(a.elem_type)), 0)
            << key;
      }
    }
    ASSERT_EQ(out->tensors().size(), in->tensors().size());
    for (size_t i = 0; i < in->tensors().size(); ++i) {
      const auto& a = in->tensors()[i];
      const auto& b = out->tensors()[i];
      EXPECT_EQ(a.name, b.name);
      EXPECT_EQ(a.dims, b.dims);
      EXPECT_EQ(a.type, b.type);
      ASSERT_EQ(a.n_bytes, b.n_bytes);
      EXPECT_EQ(std::memcmp(a.data, b.data, a.n_bytes), 0) << a.name;
    }
    EXPECT_TRUE(ReadBytes(p) == ReadBytes(src)) << "the copy differs from the original bytes";
  }
}

TEST(GgufWriter, StreamsLargeTensorsInPieces) {
  // A 64 MiB tensor produced row by row: the writer never needs it whole in memory.
  TempDir tmp;
  Writer w;
  const int64_t cols = 4096, rows = 4096;
  w.AddTensor("big", {cols, rows}, TensorType::kF32, [&](TensorSink& s) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) row[static_cast<size_t>(c)] = static_cast<float>(r ^ c);
      s.Write(row.data(), row.size() * sizeof(float));
    }
  });
  const std::string p = tmp.Path("big.gguf");
  w.Write(p);
  auto f = File::Open(p);
  const auto& t = f->GetTensor("big");
  const float* d = reinterpret_cast<const float*>(t.data);
  for (int64_t r : {0, 1, 777, 4095})
    for (int64_t c : {0, 5, 4095}) EXPECT_EQ(d[r * cols + c], static_cast<float>(r ^ c));
}

// ---- limits, memory and escaping ----

TEST(GgufLimits, MetadataOverTheLimitIsRefused) {
  // A sparse file big enough for an array that would take the metadata past kMaxMetadataBytes.
  TempDir tmp;
  Spec s;
  Bytes arr;
  arr.U32(0).U64(kMaxMetadataBytes);
  s.kvs.push_back({"big.array", 9, arr.b});
  const std::string p = tmp.Path("big.gguf");
  WriteBytes(p, Build(s));
  ASSERT_EQ(::truncate(p.c_str(), static_cast<off_t>(kMaxMetadataBytes + (1 << 20))), 0);
  EXPECT_OPEN_ERROR(p, "metadata 'big.array'", "crosses the limit of 256 MiB");
}

TEST(GgufLimits, TensorDataIsAlignedInMemory) {
  TempDir tmp;
  for (size_t al : {size_t{8}, size_t{32}, size_t{4096}}) {
    Spec s = BaseSpec();
    s.alignment = al;
    s.kvs.push_back(KvU32("general.alignment", static_cast<uint32_t>(al)));
    const std::string p = tmp.Path("al" + std::to_string(al) + ".gguf");
    WriteBytes(p, Build(s));
    auto f = File::Open(p);
    EXPECT_EQ(f->alignment(), al);
    for (const auto& t : f->tensors())
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % al, 0u) << al << " " << t.name;
  }
}

// Anonymous (heap) memory of this process, in bytes: what the metadata costs beyond the mapping.
size_t RssAnonBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8)) * 1024;
  return 0;
}

TEST(GgufLimits, LargeArraysCostLittleMemory) {
  // 64 MiB of u8 elements and 64 MiB of empty strings: widening every number to a double cost 8x
  // the file bytes, a std::string per element 4x. Now numbers stay in the mapping and strings
  // cost a 4-byte position each.
  TempDir tmp;
  const std::string p = tmp.Path("arrays.gguf");
  const uint64_t n_u8 = 64ull << 20, n_str = 8ull << 20;
  {
    Bytes h;
    h.U32(0x46554747).U32(3).U64(0).U64(2);
    h.Str("big.u8").U32(9).U32(0).U64(n_u8);
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(h.b.data()), static_cast<std::streamsize>(h.b.size()));
    std::vector<char> chunk(1 << 20);
    for (uint64_t i = 0; i < n_u8; i += chunk.size()) {
      for (size_t j = 0; j < chunk.size(); ++j) chunk[j] = static_cast<char>((i + j) * 7);
      out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    }
    Bytes k;
    k.Str("big.strs").U32(9).U32(8).U64(n_str);
    out.write(reinterpret_cast<const char*>(k.b.data()), static_cast<std::streamsize>(k.b.size()));
    std::fill(chunk.begin(), chunk.end(), 0);  // empty strings: a zero length each
    for (uint64_t i = 0; i < n_str * 8; i += chunk.size())
      out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    ASSERT_TRUE(out.good());
  }
  const size_t before = RssAnonBytes();
  auto f = File::Open(p);
  const Value& u8 = f->GetNumberArray("big.u8");
  const Value& strs = f->GetStringArray("big.strs");
  ASSERT_EQ(u8.size(), n_u8);
  ASSERT_EQ(strs.size(), n_str);
  for (uint64_t i : {uint64_t{0}, uint64_t{1}, uint64_t{12345}, n_u8 - 1})
    EXPECT_EQ(u8.Number(i), static_cast<uint8_t>(i * 7)) << i;
  EXPECT_EQ(strs.String(0), "");
  EXPECT_EQ(strs.String(n_str - 1), "");
  const size_t after = RssAnonBytes();
  const double file_mib = static_cast<double>(n_u8 + n_str * 8) / (1 << 20);
  const double grew_mib = static_cast<double>(after > before ? after - before : 0) / (1 << 20);
  std::printf("metadata of %.0f MiB: RssAnon grew by %.1f MiB on open\n", file_mib, grew_mib);
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "memory figures are not meaningful under AddressSanitizer";
#else
  EXPECT_LT(grew_mib, file_mib / 2);
#endif
}

TEST(GgufArrays, StringArraysOfEveryVersionViewTheMapping) {
  TempDir tmp;
  const std::vector<std::string> want = {"", "a", "\xC3\xA9", std::string(300, 'x'), ""};
  for (uint32_t version : {1u, 2u, 3u}) {
    Spec s;
    s.version = version;
    Bytes arr;
    arr.version = version;
    arr.U32(8).Count(want.size());
    for (const auto& w : want) arr.Str(w);
    s.kvs.push_back({"t.strs", 9, arr.b});
    const std::string p = tmp.Path("v" + std::to_string(version) + ".gguf");
    WriteBytes(p, Build(s));
    auto f = File::Open(p);
    const Value& v = f->GetStringArray("t.strs");
    EXPECT_EQ(v.Strings(), want) << version;
    for (size_t i = 0; i < v.size(); ++i) {
      const auto* d = reinterpret_cast<const uint8_t*>(v.String(i).data());
      EXPECT_TRUE(d >= f->base() && d + v.String(i).size() <= f->base() + f->file_size());
    }
  }
}

TEST(GgufEscaping, PrintableKeepsUtf8AndEscapesTheRest) {
  EXPECT_EQ(Printable("blk.0.attn_q.weight"), "blk.0.attn_q.weight");
  EXPECT_EQ(Printable("caf\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80"),
            "caf\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80");
  EXPECT_EQ(Printable(std::string("a\x1b[31m\0b\x7f\n", 10)), "a\\x1b[31m\\x00b\\x7f\\x0a");
  EXPECT_EQ(Printable("back\\slash"), "back\\\\slash");
  // Invalid UTF-8: a lone lead byte, a stray continuation, overlong, a surrogate, 0xFF, a C1
  // control (U+009B, CSI on some terminals), a sequence cut by the end.
  EXPECT_EQ(Printable("\xC3x\x80\xC0\xAF\xED\xA0\x80\xFF\xC2\x9B\xE6\x97"),
            "\\xc3x\\x80\\xc0\\xaf\\xed\\xa0\\x80\\xff\\xc2\\x9b\\xe6\\x97");
  EXPECT_EQ(Printable(std::string(250, 'k')), std::string(200, 'k') + "... (250 bytes)");
  EXPECT_EQ(Printable(std::string(5, '\x1b'), 2), "\\x1b\\x1b... (5 bytes)");
}

TEST(GgufEscaping, NamesFromTheFileAreEscapedInMessages) {
  TempDir tmp;
  const std::string evil("evil\x1b[31m\0red", 13);
  const auto check = [&](const std::string& msg, const char* rest) {
    EXPECT_EQ(msg.find('\x1b'), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\0'), std::string::npos) << msg;
    EXPECT_NE(msg.find("evil\\x1b[31m\\x00red"), std::string::npos) << msg;
    EXPECT_NE(msg.find(rest), std::string::npos) << "cut before '" << rest << "': " << msg;
  };
  {  // a key, while parsing
    Spec s = BaseSpec();
    s.kvs.push_back({evil, 13, {}});
    const std::string p = tmp.Path("key.gguf");
    WriteBytes(p, Build(s));
    check(OpenError(p), "unknown value type 13");
  }
  {  // a tensor name, while parsing and in the checks after it
    Spec s = BaseSpec();
    s.tensors[1].name = evil;
    s.tensors[1].type = 99;
    const std::string p = tmp.Path("tensor.gguf");
    WriteBytes(p, Build(s));
    check(OpenError(p), "type id 99");
    s = BaseSpec();
    s.tensors[1].name = evil;
    s.tensors[1].offset = 40;
    WriteBytes(p, Build(s));
    check(OpenError(p), "is not aligned");
  }
  {  // getters
    Spec s = BaseSpec();
    s.kvs.push_back(KvStr(evil, "x"));
    const std::string p = tmp.Path("get.gguf");
    WriteBytes(p, Build(s));
    auto f = File::Open(p);
    try {
      f->GetInt(evil);
      ADD_FAILURE() << "a string read as an integer";
    } catch (const Error& e) {
      check(e.what(), "expected an integer");
    }
    try {
      f->GetTensor(evil);
      ADD_FAILURE() << "a missing tensor found";
    } catch (const Error& e) {
      check(e.what(), "is missing");
    }
  }
}

}  // namespace
}  // namespace es::gguf
