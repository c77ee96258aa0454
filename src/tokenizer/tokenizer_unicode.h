// UTF-8 and GPT-2 byte-level helpers shared by the tokenizers.
// Decoding follows llama.cpp's lenient rules so that tokenization of malformed input matches it:
// a byte that does not start a complete sequence becomes U+FFFD and decoding resumes at the next
// byte.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace es::tok {

constexpr uint32_t kReplacementChar = 0xFFFD;

// Length of the UTF-8 sequence that `lead` starts (1 for continuation and ASCII bytes, as
// llama.cpp).
inline size_t Utf8SeqLen(char lead) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[static_cast<uint8_t>(lead) >> 4];
}

// Decodes `s` into code points; malformed sequences give U+FFFD for their first byte.
std::vector<uint32_t> DecodeUtf8(std::string_view s);

// Appends the UTF-8 encoding of `cpt`; values above U+10FFFF are written as U+FFFD.
void AppendUtf8(uint32_t cpt, std::string& out);

// GPT-2 byte-level mapping: every byte value has a printable code point (e.g. ' ' -> U+0120 'Ġ').
const std::array<std::string, 256>& ByteToUnicode();
// Inverse mapping: the byte for code point `cpt`, or -1 if `cpt` is not one of the 256 mapped ones.
int UnicodeToByte(uint32_t cpt);

}  // namespace es::tok
