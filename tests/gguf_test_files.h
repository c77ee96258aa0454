// Hand-made GGUF files for the reader and writer tests: a byte builder, a file spec with
// deliberately breakable fields, and temporary directories.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "test_util.h"

namespace es::gguf::test_files {

namespace fs = std::filesystem;

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

inline void WriteBytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(f.good()) << path;
}

inline std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::string s = es::test::ReadFile(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

// Opens `path` expecting es::Error; returns its message ("" and a test failure otherwise).
inline std::string OpenError(const std::string& path) {
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

inline Kv KvU32(const std::string& key, uint32_t v) {
  Bytes p;
  p.U32(v);
  return {key, 4, p.b};
}
inline Kv KvStr(const std::string& key, const std::string& v, uint32_t version = 3) {
  Bytes p;
  p.version = version;
  p.Str(v);
  return {key, 8, p.b};
}

inline Ti MakeTi(const std::string& name, std::vector<uint64_t> dims, uint32_t type) {
  Ti t;
  t.name = name;
  t.dims = std::move(dims);
  t.type = type;
  return t;
}

inline size_t TiBytes(const Ti& t) {
  auto tr = GetTypeTraits(t.type);
  if (!tr) return 0;
  uint64_t n = 1;
  for (auto d : t.dims) n *= d;
  return n / static_cast<uint64_t>(tr->block_elems) * static_cast<uint64_t>(tr->block_bytes);
}

inline std::vector<uint8_t> Build(const Spec& s) {
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
inline Spec BaseSpec() {
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

}  // namespace es::gguf::test_files
