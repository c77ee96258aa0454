// GGUF writer: byte-exact round trips, alignment, copies of the shared models, streaming.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "gguf_test_files.h"
#include "test_util.h"

namespace es::gguf {
namespace {

using namespace test_files;

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
        EXPECT_EQ(std::memcmp(a.array_data, b.array_data, a.array_len * ValueSize(a.elem_type)), 0)
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

}  // namespace
}  // namespace es::gguf
