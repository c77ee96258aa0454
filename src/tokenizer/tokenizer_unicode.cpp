#include "tokenizer/tokenizer_unicode.h"

namespace es::tok {

namespace {

// Decodes one sequence at `i`; returns false (and leaves `i`) if it is malformed or truncated.
// Like llama.cpp, overlong forms and surrogates are accepted: only the bit pattern is checked.
bool DecodeOne(std::string_view s, size_t& i, uint32_t& cpt) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c0 = b(i);
  if (c0 < 0x80) {
    cpt = c0;
    i += 1;
    return true;
  }
  const auto cont = [&](size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
  if ((c0 & 0x40) == 0) return false;  // stray continuation byte
  if ((c0 & 0x20) == 0) {
    if (!cont(i + 1)) return false;
    cpt = ((c0 & 0x1Fu) << 6) | (b(i + 1) & 0x3Fu);
    i += 2;
    return true;
  }
  if ((c0 & 0x10) == 0) {
    if (!cont(i + 1) || !cont(i + 2)) return false;
    cpt = ((c0 & 0x0Fu) << 12) | ((b(i + 1) & 0x3Fu) << 6) | (b(i + 2) & 0x3Fu);
    i += 3;
    return true;
  }
  if ((c0 & 0x08) == 0) {
    if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return false;
    cpt = ((c0 & 0x07u) << 18) | ((b(i + 1) & 0x3Fu) << 12) | ((b(i + 2) & 0x3Fu) << 6) |
          (b(i + 3) & 0x3Fu);
    i += 4;
    return true;
  }
  return false;
}

struct ByteTables {
  std::array<std::string, 256> to_unicode;
  std::array<int16_t, 324> to_byte;  // mapped code points are all below 256 + 68
  ByteTables() {
    to_byte.fill(-1);
    // Printable Latin-1 bytes map to themselves; the rest take code points from U+0100 upwards.
    const auto printable = [](int c) {
      return (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    };
    int next = 256;
    for (int c = 0; c < 256; ++c) {
      const int cpt = printable(c) ? c : next++;
      AppendUtf8(static_cast<uint32_t>(cpt), to_unicode[c]);
      to_byte[cpt] = static_cast<int16_t>(c);
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

std::vector<uint32_t> DecodeUtf8(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cpt = 0;
    if (DecodeOne(s, i, cpt)) {
      out.push_back(cpt);
    } else {
      out.push_back(kReplacementChar);
      ++i;
    }
  }
  return out;
}

void AppendUtf8(uint32_t cpt, std::string& out) {
  if (cpt > 0x10FFFF) cpt = kReplacementChar;
  if (cpt < 0x80) {
    out += static_cast<char>(cpt);
  } else if (cpt < 0x800) {
    out += static_cast<char>(0xC0 | (cpt >> 6));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  } else if (cpt < 0x10000) {
    out += static_cast<char>(0xE0 | (cpt >> 12));
    out += static_cast<char>(0x80 | ((cpt >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cpt >> 18));
    out += static_cast<char>(0x80 | ((cpt >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cpt >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  }
}

const std::array<std::string, 256>& ByteToUnicode() {
  return Tables().to_unicode;
}

int UnicodeToByte(uint32_t cpt) {
  const auto& t = Tables().to_byte;
  return cpt < t.size() ? t[cpt] : -1;
}

}  // namespace es::tok
