#include "fuzz_util.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "gguf/gguf_file.h"

namespace es::fuzz {

const std::string& ModelsDir() {
  static const std::string dir = [] {
    const char* env = std::getenv("EDGESHARD_TEST_MODELS");
    std::string d = env && *env ? env : EDGESHARD_DEFAULT_MODELS;
    if (!std::filesystem::is_directory(d)) {
      std::fprintf(stderr, "fuzz: test models not found at %s (set EDGESHARD_TEST_MODELS)\n",
                   d.c_str());
      std::abort();
    }
    return d;
  }();
  return dir;
}

std::string ModelPath(const std::string& rel) {
  std::string p = ModelsDir() + "/" + rel;
  if (!std::filesystem::exists(p)) {
    std::fprintf(stderr, "fuzz: missing test file %s\n", p.c_str());
    std::abort();
  }
  return p;
}

std::unique_ptr<tok::Tokenizer> LoadTokenizer(const std::string& path) {
  auto f = gguf::File::Open(path);
  return tok::Tokenizer::FromGGUF(*f);
}

MemFile::MemFile() {
  fd_ = memfd_create("fuzz-input", 0);
  if (fd_ < 0) Fail("memfd_create failed");
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemFile::~MemFile() {
  if (fd_ >= 0) close(fd_);
}

void MemFile::Write(const uint8_t* data, size_t size) {
  if (ftruncate(fd_, 0) != 0 || ftruncate(fd_, static_cast<off_t>(size)) != 0)
    Fail("ftruncate of the memfd failed");
  size_t done = 0;
  while (done < size) {
    const ssize_t n = pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) Fail("write to the memfd failed");
    done += static_cast<size_t>(n);
  }
}

void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz: property violated: %s\n", what.c_str());
  std::abort();
}

std::vector<std::string_view> Split(std::string_view s, char sep, size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t at = s.find(sep);
    if (at == std::string_view::npos) break;
    parts.push_back(s.substr(0, at));
    s.remove_prefix(at + 1);
  }
  parts.push_back(s);
  return parts;
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

}  // namespace es::fuzz
