// GGUF reader limits (alignment, sizes, counts), the memory metadata arrays cost, and escaping of
// file strings in messages.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "gguf_test_files.h"

namespace es::gguf {
namespace {

using namespace test_files;

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
