// Shared pieces of the libFuzzer targets: where the test models are, an in-memory file for
// readers that take a path, and a loud failure for a broken property.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace es::fuzz {

// EDGESHARD_TEST_MODELS, else ../shared/models beside the source tree. Aborts when missing:
// a target fuzzing without its models would report coverage of nothing.
const std::string& ModelsDir();
std::string ModelPath(const std::string& rel);
std::unique_ptr<tok::Tokenizer> LoadTokenizer(const std::string& path);

// One anonymous memory file (memfd), rewritten per input; path() names it for open().
class MemFile {
 public:
  MemFile();
  ~MemFile();
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  void Write(const uint8_t* data, size_t size);
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// A property the code promises does not hold: print and abort, so libFuzzer keeps the input.
[[noreturn]] void Fail(const std::string& what);

// The input cut at every `sep` byte (at most max_parts parts; the last keeps the rest).
std::vector<std::string_view> Split(std::string_view s, char sep, size_t max_parts);

bool IsValidUtf8(std::string_view s);

}  // namespace es::fuzz
