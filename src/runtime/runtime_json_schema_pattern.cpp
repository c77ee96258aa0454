// JSON Schema `pattern` (an ECMA-262 regular expression) -> GBNF for the inside of a JSON string.
// The grammar writes strings the pattern matches as a whole, JSON-escaped; where a construct
// would match characters that need escaping (quotes, backslashes, control characters) it
// allows a subset that is always valid. Constructs that cannot be written as a grammar
// (lookaround, backreferences, word boundaries, Unicode properties) are refused by name.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "edgeshard/error.h"
#include "runtime/runtime_json_schema.h"

namespace es::runtime {
namespace {

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;

// What JSON text must escape, and what ECMA-262's \s matches besides the controls.
const Ranges kSpecial = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}};
const Ranges kUnicodeSpace = {{0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
                              {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                              {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};

// A code point inside a GBNF class or literal.
std::string ClassChar(uint32_t cp) {
  char buf[16];
  if (cp < 0x20 || cp == '"' || cp == '\\' || cp == ']' || cp == '[' || cp == '-' || cp == '^' ||
      cp == 0x7F) {
    std::snprintf(buf, sizeof buf, "\\x%02X", cp);
    return buf;
  }
  if (cp >= 0x80) {
    std::snprintf(buf, sizeof buf, cp > 0xFFFF ? "\\U%08X" : "\\u%04X", cp);
    return buf;
  }
  return std::string(1, static_cast<char>(cp));
}

// The JSON text of one character, as a GBNF literal: "\"" for a quote, "\\n" for a newline.
std::string JsonChar(uint32_t cp) {
  std::string text;
  if (cp == '"' || cp == '\\') {
    text = std::string("\\") + static_cast<char>(cp);
  } else if (cp < 0x20) {
    static const char* named[] = {"", "", "", "", "", "", "", "", "b", "t", "n", "", "f", "r"};
    char buf[8];
    if (cp < 14 && named[cp][0]) {
      text = std::string("\\") + named[cp];
    } else {
      std::snprintf(buf, sizeof buf, "\\u%04X", cp);
      text = buf;
    }
  } else {
    return "\"" + ClassChar(cp) + "\"";
  }
  std::string lit = "\"";
  for (char c : text) {
    if (c == '\\' || c == '"') lit += '\\';
    lit += c;
  }
  return lit + "\"";
}

class Pattern {
 public:
  explicit Pattern(const std::string& p) : p_(p) {}

  std::string Run() {
    if (i_ < p_.size() && p_[i_] == '^') ++i_;  // patterns match anywhere; a whole match will do
    std::string out = Alternatives();
    if (i_ < p_.size()) Fail("unexpected '" + std::string(1, p_[i_]) + "'");
    return out.empty() ? "\"\"" : out;
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    throw Error("'pattern' " + p_ + ": " + what + " at offset " + std::to_string(i_) +
                " (supported: literals, ., [classes], \\d \\w \\s and their negations, groups, "
                "|, * + ? {m,n}, ^ and $ at the ends)");
  }

  std::string Alternatives() {
    std::string out = Sequence();
    while (i_ < p_.size() && p_[i_] == '|') {
      ++i_;
      const std::string next = Sequence();
      out = "(" + (out.empty() ? "\"\"" : out) + ") | (" + (next.empty() ? "\"\"" : next) + ")";
    }
    return out;
  }

  std::string Sequence() {
    std::string out;
    while (i_ < p_.size() && p_[i_] != '|' && p_[i_] != ')') {
      if (p_[i_] == '$') {
        if (i_ + 1 != p_.size()) Fail("'$' only at the end is supported");
        ++i_;
        continue;
      }
      std::string atom = Atom();
      atom = Quantified(atom);
      out += (out.empty() ? "" : " ") + atom;
    }
    return out;
  }

  std::string Quantified(const std::string& atom) {
    if (i_ >= p_.size()) return atom;
    const char c = p_[i_];
    std::string q;
    if (c == '*' || c == '+' || c == '?') {
      q = std::string(1, c);
      ++i_;
    } else if (c == '{') {
      const size_t close = p_.find('}', i_);
      if (close == std::string::npos) Fail("'{' without '}'");
      q = p_.substr(i_, close - i_ + 1);
      for (char d : q.substr(1, q.size() - 2))
        if (!(d >= '0' && d <= '9') && d != ',') Fail("a malformed {m,n}");
      i_ = close + 1;
    } else {
      return atom;
    }
    if (i_ < p_.size() && p_[i_] == '?') ++i_;  // lazy or greedy: the same set of matches
    return "(" + atom + ")" + q;
  }

  uint32_t Char() {
    const auto c = static_cast<unsigned char>(p_[i_]);
    const int n = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
    uint32_t cp = n == 0 ? c : n == 1 ? (c & 0x1F) : n == 2 ? (c & 0x0F) : (c & 0x07);
    ++i_;
    for (int k = 0; k < n && i_ < p_.size(); ++k, ++i_)
      cp = (cp << 6) | (static_cast<unsigned char>(p_[i_]) & 0x3F);
    return cp;
  }

  uint32_t Hex(size_t digits) {
    if (i_ + digits > p_.size()) Fail("a short hex escape");
    const std::string h = p_.substr(i_, digits);
    if (h.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
      Fail("a malformed hex escape");
    i_ += digits;
    return static_cast<uint32_t>(std::stoul(h, nullptr, 16));
  }

  // An escape after '\': a class (\d \w \s and negations) into `ranges` (negated: `neg`), or a
  // single code point returned.
  bool Escape(Ranges& ranges, bool& neg, uint32_t& cp) {
    if (i_ >= p_.size()) Fail("a '\\' at the end");
    const char e = p_[i_++];
    neg = e == 'D' || e == 'W' || e == 'S';
    switch (e) {
      case 'd':
      case 'D':
        ranges = {{'0', '9'}};
        return true;
      case 'w':
      case 'W':
        ranges = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
        return true;
      case 's':
      case 'S':
        ranges = {{' ', ' '}, {'\t', '\r'}};
        ranges.insert(ranges.end(), kUnicodeSpace.begin(), kUnicodeSpace.end());
        return true;
      case 'n':
        cp = '\n';
        return false;
      case 't':
        cp = '\t';
        return false;
      case 'r':
        cp = '\r';
        return false;
      case 'f':
        cp = '\f';
        return false;
      case 'v':
        cp = '\v';
        return false;
      case 'x':
        cp = Hex(2);
        return false;
      case 'u':
        cp = Hex(4);
        return false;
      case 'b':
      case 'B':
        --i_;
        Fail("word boundaries (\\b, \\B) are not supported");
      case 'p':
      case 'P':
        --i_;
        Fail("Unicode properties (\\p{...}) are not supported");
      default:
        if (e >= '0' && e <= '9') {
          --i_;
          Fail("backreferences are not supported");
        }
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
          --i_;
          Fail(std::string("the escape \\") + e + " is not supported");
        }
        cp = static_cast<unsigned char>(e);
        return false;
    }
  }

  // A set of code points as GBNF: JSON-escaped alternatives for the special characters in it
  // (a negated set leaves them out: always valid, a subset of the matches).
  static std::string Set(const Ranges& ranges, bool negated) {
    std::string cls = negated ? "[^" : "[";
    for (const auto& [lo, hi] : ranges) cls += ClassChar(lo) + (hi > lo ? "-" + ClassChar(hi) : "");
    if (negated) {
      for (const auto& [lo, hi] : kSpecial)
        cls += ClassChar(lo) + (hi > lo ? "-" + ClassChar(hi) : "");
      return cls + "]";
    }
    // Positive: the special characters it holds become their escapes.
    std::vector<std::string> alts;
    Ranges plain;
    for (auto [lo, hi] : ranges) {
      for (uint32_t c = lo; c <= hi && c < 0x20; ++c) alts.push_back(JsonChar(c));
      lo = std::max<uint32_t>(lo, 0x20);
      for (uint32_t special : {uint32_t{'"'}, uint32_t{'\\'}}) {
        if (lo <= special && special <= hi) {
          alts.push_back(JsonChar(special));
          if (lo < special) plain.emplace_back(lo, special - 1);
          lo = special + 1;
        }
      }
      if (lo <= hi) plain.emplace_back(lo, hi);
    }
    std::string out;
    if (!plain.empty()) {
      out = "[";
      for (const auto& [lo, hi] : plain)
        out += ClassChar(lo) + (hi > lo ? "-" + ClassChar(hi) : "");
      out += "]";
    }
    for (const auto& a : alts) out += (out.empty() ? "" : " | ") + a;
    if (out.empty()) throw Error("'pattern': a character class that matches nothing");
    return alts.empty() ? out : "(" + out + ")";
  }

  std::string Class() {
    ++i_;  // '['
    bool negated = false;
    if (i_ < p_.size() && p_[i_] == '^') negated = true, ++i_;
    Ranges ranges;
    bool first = true;
    while (i_ < p_.size() && (p_[i_] != ']' || first)) {
      first = false;
      uint32_t lo;
      if (p_[i_] == '\\') {
        ++i_;
        Ranges sub;
        bool neg = false;
        if (Escape(sub, neg, lo)) {
          if (neg) Fail("a negated class escape inside [...] is not supported");
          ranges.insert(ranges.end(), sub.begin(), sub.end());
          continue;
        }
      } else {
        lo = Char();
      }
      uint32_t hi = lo;
      if (i_ + 1 < p_.size() && p_[i_] == '-' && p_[i_ + 1] != ']') {
        ++i_;
        if (p_[i_] == '\\') {
          ++i_;
          Ranges sub;
          bool neg = false;
          if (Escape(sub, neg, hi)) Fail("a class escape cannot end a range");
        } else {
          hi = Char();
        }
        if (hi < lo) Fail("a range whose end comes before its start");
      }
      ranges.emplace_back(lo, hi);
    }
    if (i_ >= p_.size()) Fail("'[' without ']'");
    ++i_;
    return Set(ranges, negated);
  }

  std::string Atom() {
    const char c = p_[i_];
    if (c == '(') {
      ++i_;
      if (p_.compare(i_, 2, "?:") == 0) {
        i_ += 2;
      } else if (p_.compare(i_, 2, "?<") == 0 && p_.compare(i_, 3, "?<=") != 0 &&
                 p_.compare(i_, 3, "?<!") != 0) {
        const size_t close = p_.find('>', i_);
        if (close == std::string::npos) Fail("a named group without '>'");
        i_ = close + 1;
      } else if (i_ < p_.size() && p_[i_] == '?') {
        Fail("lookaround and other (?...) groups are not supported");
      }
      std::string inner = Alternatives();
      if (i_ >= p_.size() || p_[i_] != ')') Fail("'(' without ')'");
      ++i_;
      return "(" + (inner.empty() ? "\"\"" : inner) + ")";
    }
    if (c == '[') return Class();
    if (c == '.') {
      ++i_;
      return Set({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}}, true);
    }
    if (c == '\\') {
      ++i_;
      Ranges ranges;
      bool neg = false;
      uint32_t cp = 0;
      if (Escape(ranges, neg, cp)) return Set(ranges, neg);
      return JsonChar(cp);
    }
    if (c == '*' || c == '+' || c == '?' || c == '{') Fail("a quantifier with nothing to repeat");
    if (c == '^') Fail("'^' only at the start is supported");
    return JsonChar(Char());
  }

  const std::string& p_;
  size_t i_ = 0;
};

}  // namespace

std::string PatternToGbnf(const std::string& pattern) {
  return Pattern(pattern).Run();
}

}  // namespace es::runtime
