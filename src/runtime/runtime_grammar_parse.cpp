// GBNF text -> Grammar: a recursive-descent parser with line:column errors, repetition expanded
// into generated rules, and the checks that keep matching finite (every rule defined, no left
// recursion).
#include <algorithm>
#include <limits>
#include <unordered_map>

#include "edgeshard/error.h"
#include "runtime/runtime_grammar.h"

namespace es::runtime {
namespace {

using Elem = Grammar::Elem;
using Op = Grammar::Op;
using Seq = std::vector<Elem>;

constexpr uint32_t kMaxCodePoint = 0x10FFFF;
// Repetition counts are expanded into rules: bound them so a typo cannot exhaust memory.
constexpr uint64_t kMaxRepeat = 10000;

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

std::string Printable(std::string_view s, size_t i) {
  if (i >= s.size()) return "the end of the grammar";
  const char c = s[i];
  if (c == '\n') return "a newline";
  if (static_cast<unsigned char>(c) < 0x20) return "a control character";
  return "'" + std::string(1, c) + "'";
}

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  std::shared_ptr<const Grammar> Run(std::string_view root_name) {
    SkipSpace(true);
    while (i_ < s_.size()) {
      const size_t at = i_;
      const std::string name = ParseName("a rule name");
      SkipSpace(false);
      if (s_.substr(i_, 3) != "::=") Fail(i_, "expected '::=' after the rule name '" + name + "'");
      i_ += 3;
      SkipSpace(true);
      const uint32_t id = RuleId(name, at);
      if (defined_[id]) Fail(at, "the rule '" + name + "' is defined twice");
      defined_[id] = true;
      bodies_[id] = ParseAlternates(name, false);
      if (i_ < s_.size() && s_[i_] != '\n')
        Fail(i_,
             "expected '|', another element or the end of the line, found " + Printable(s_, i_));
      SkipSpace(true);
    }
    const auto root = ids_.find(std::string(root_name));
    if (root == ids_.end() || !defined_[root->second])
      throw Error("grammar: there is no '" + std::string(root_name) +
                  "' rule (the rule generation starts from); define it, e.g. " +
                  std::string(root_name) + " ::= \"yes\" | \"no\"");
    for (uint32_t r = 0; r < bodies_.size(); ++r)
      if (!defined_[r])
        Fail(first_use_[r], "the rule '" + names_[r] + "' is used but never defined");
    CheckLeftRecursion();
    auto g = Flatten(root->second);
    GrammarMatcher start(g);  // throws if even the start needs too much expanding
    return g;
  }

 private:
  // "line L, column C" of byte offset `at` (columns count code points).
  std::string Where(size_t at) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < at && k < s_.size(); ++k) {
      if (s_[k] == '\n') {
        ++line;
        col = 1;
      } else if ((static_cast<unsigned char>(s_[k]) & 0xC0) != 0x80) {
        ++col;
      }
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col);
  }

  [[noreturn]] void Fail(size_t at, const std::string& what) const {
    throw Error("grammar: " + Where(at) + ": " + what);
  }

  // Spaces, tabs and comments; newlines too inside parentheses and after '::=' or '|'.
  void SkipSpace(bool newlines) {
    while (i_ < s_.size()) {
      const char c = s_[i_];
      if (c == ' ' || c == '\t' || c == '\r' || (newlines && c == '\n')) {
        ++i_;
      } else if (c == '#') {
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      } else {
        break;
      }
    }
  }

  std::string ParseName(const char* what) {
    const size_t start = i_;
    while (i_ < s_.size() && NameChar(s_[i_])) ++i_;
    if (i_ == start) Fail(i_, std::string("expected ") + what + ", found " + Printable(s_, i_));
    return std::string(s_.substr(start, i_ - start));
  }

  uint32_t RuleId(const std::string& name, size_t at) {
    auto [it, fresh] = ids_.try_emplace(name, static_cast<uint32_t>(names_.size()));
    if (fresh) {
      names_.push_back(name);
      bodies_.emplace_back();
      defined_.push_back(false);
      first_use_.push_back(at);
    }
    return it->second;
  }

  uint32_t NewRule(const std::string& parent, std::vector<Seq> body) {
    std::string name;
    do name = parent + "_" + std::to_string(++generated_);
    while (ids_.count(name));
    const uint32_t id = RuleId(name, i_);
    defined_[id] = true;
    bodies_[id] = std::move(body);
    return id;
  }

  std::vector<Seq> ParseAlternates(const std::string& rule, bool nested) {
    std::vector<Seq> alts;
    alts.push_back(ParseSequence(rule, nested));
    while (true) {
      if (i_ < s_.size() && s_[i_] == '|') {
        ++i_;
        SkipSpace(true);
        alts.push_back(ParseSequence(rule, nested));
        continue;
      }
      // A line that starts with '|' continues the rule above it.
      size_t k = i_;
      while (k < s_.size() && (s_[k] == ' ' || s_[k] == '\t' || s_[k] == '\r' || s_[k] == '\n'))
        ++k;
      if (!nested && k > i_ && k < s_.size() && s_[k] == '|') {
        i_ = k;
        continue;
      }
      return alts;
    }
  }

  // One code point of a literal or class, with its escapes.
  uint32_t ParseChar() {
    if (i_ >= s_.size()) Fail(i_, "unexpected end of the grammar inside a literal or class");
    const auto c = static_cast<unsigned char>(s_[i_]);
    if (c == '\\') {
      const size_t at = i_;
      if (++i_ >= s_.size()) Fail(at, "expected an escaped character after '\\'");
      const char e = s_[i_++];
      switch (e) {
        case 'n':
          return '\n';
        case 'r':
          return '\r';
        case 't':
          return '\t';
        case '\\':
        case '"':
        case '[':
        case ']':
        case '-':
        case '^':
        case '/':
        case '.':
          return static_cast<unsigned char>(e);
        case 'x':
          return Hex(2, at);
        case 'u':
          return Hex(4, at);
        case 'U':
          return Hex(8, at);
        default:
          Fail(at,
               std::string("unknown escape '\\") + e +
                   "' (known: \\n \\r \\t \\\\ \\\" \\[ \\] \\- \\^ \\xHH \\uHHHH \\UHHHHHHHH)");
      }
    }
    // UTF-8 text of the grammar itself.
    const int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : 3;
    if (c >= 0x80 && (c & 0xC0) == 0x80) Fail(i_, "the grammar text is not valid UTF-8");
    uint32_t cp = n == 0 ? c : n == 1 ? (c & 0x1F) : n == 2 ? (c & 0x0F) : (c & 0x07);
    ++i_;
    for (int k = 0; k < n; ++k, ++i_) {
      if (i_ >= s_.size() || (static_cast<unsigned char>(s_[i_]) & 0xC0) != 0x80)
        Fail(i_, "the grammar text is not valid UTF-8");
      cp = (cp << 6) | (static_cast<unsigned char>(s_[i_]) & 0x3F);
    }
    return cp;
  }

  uint32_t Hex(int digits, size_t at) {
    uint32_t v = 0;
    for (int k = 0; k < digits; ++k, ++i_) {
      const char h = i_ < s_.size() ? s_[i_] : '\0';
      const int d = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
      if (d < 0)
        Fail(at, "expected " + std::to_string(digits) + " hex digits after '" +
                     std::string(s_.substr(at, 2)) + "'");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    if (v > kMaxCodePoint) Fail(at, "the code point is beyond U+10FFFF");
    return v;
  }

  uint32_t AddClass(Grammar::CharClass c) {
    std::sort(c.ranges.begin(), c.ranges.end());
    std::vector<std::pair<uint32_t, uint32_t>> merged;
    for (const auto& r : c.ranges) {
      if (!merged.empty() && r.first <= merged.back().second + 1)
        merged.back().second = std::max(merged.back().second, r.second);
      else
        merged.push_back(r);
    }
    c.ranges = std::move(merged);
    c.ascii[0] = c.ascii[1] = 0;
    for (uint32_t cp = 0; cp < 128; ++cp) {
      bool in = false;
      for (const auto& r : c.ranges) in = in || (cp >= r.first && cp <= r.second);
      if (in != c.negated) c.ascii[cp / 64] |= uint64_t{1} << (cp % 64);
    }
    classes_.push_back(std::move(c));
    return static_cast<uint32_t>(classes_.size() - 1);
  }

  Seq ParseSequence(const std::string& rule, bool nested) {
    Seq seq;
    size_t last = SIZE_MAX;  // where the last element (what a postfix repeats) starts in seq
    while (i_ < s_.size()) {
      const size_t at = i_;
      const char c = s_[i_];
      if (c == '"') {
        ++i_;
        last = seq.size();
        while (i_ < s_.size() && s_[i_] != '"') {
          if (s_[i_] == '\n') Fail(i_, "a string literal must end on its line with '\"'");
          Grammar::CharClass cc;
          const uint32_t cp = ParseChar();
          cc.ranges.emplace_back(cp, cp);
          seq.push_back({Op::kChar, AddClass(std::move(cc))});
        }
        if (i_ >= s_.size()) Fail(at, "the string literal is not closed with '\"'");
        ++i_;
      } else if (c == '[') {
        ++i_;
        Grammar::CharClass cc;
        if (i_ < s_.size() && s_[i_] == '^') cc.negated = true, ++i_;
        while (i_ < s_.size() && s_[i_] != ']') {
          const uint32_t lo = ParseChar();
          uint32_t hi = lo;
          if (i_ + 1 < s_.size() && s_[i_] == '-' && s_[i_ + 1] != ']') {
            ++i_;
            const size_t hi_at = i_;
            hi = ParseChar();
            if (hi < lo) Fail(hi_at, "the range's end comes before its start");
          }
          cc.ranges.emplace_back(lo, hi);
        }
        if (i_ >= s_.size()) Fail(at, "the character class is not closed with ']'");
        ++i_;
        last = seq.size();
        seq.push_back({Op::kChar, AddClass(std::move(cc))});
      } else if (c == '.') {
        ++i_;
        Grammar::CharClass any;
        any.negated = true;
        last = seq.size();
        seq.push_back({Op::kChar, AddClass(std::move(any))});
      } else if (NameChar(c)) {
        // A name followed by '::=' starts the next rule (its line break was skipped in parens).
        size_t k = i_;
        while (k < s_.size() && NameChar(s_[k])) ++k;
        size_t k2 = k;
        while (k2 < s_.size() && (s_[k2] == ' ' || s_[k2] == '\t')) ++k2;
        if (s_.substr(k2, 3) == "::=") {
          if (nested) Fail(at, "expected ')' before the next rule");
          break;
        }
        const std::string name = ParseName("a rule name");
        last = seq.size();
        seq.push_back({Op::kRef, RuleId(name, at)});
      } else if (c == '(') {
        if (++nest_ > 256) Fail(at, "groups nest deeper than 256");
        ++i_;
        SkipSpace(true);
        auto body = ParseAlternates(rule, true);
        --nest_;
        if (i_ >= s_.size() || s_[i_] != ')')
          Fail(i_, "expected ')' to close the group opened at " + Where(at) + ", found " +
                       Printable(s_, i_));
        ++i_;
        last = seq.size();
        seq.push_back({Op::kRef, NewRule(rule, std::move(body))});
      } else if (c == '*' || c == '+' || c == '?' || c == '{') {
        if (last == SIZE_MAX)
          Fail(at, std::string("expected an element before '") + c + "' to repeat");
        ++i_;
        uint64_t lo = 0, hi = UINT64_MAX;
        if (c == '+') lo = 1;
        if (c == '?') hi = 1;
        if (c == '{') ParseBraces(at, lo, hi);
        Repeat(rule, seq, last, lo, hi);
        last = SIZE_MAX;
      } else {
        break;
      }
      SkipSpace(nested);
    }
    return seq;
  }

  uint64_t Number(size_t at) {
    SkipSpace(false);
    if (i_ >= s_.size() || s_[i_] < '0' || s_[i_] > '9')
      Fail(i_, "expected a number in the repetition opened at " + Where(at));
    uint64_t v = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      v = v * 10 + static_cast<uint64_t>(s_[i_++] - '0');
      if (v > kMaxRepeat)
        Fail(at, "the repetition count is above the limit of " + std::to_string(kMaxRepeat));
    }
    SkipSpace(false);
    return v;
  }

  // {m} {m,} {m,n} {,n}
  void ParseBraces(size_t at, uint64_t& lo, uint64_t& hi) {
    SkipSpace(false);
    lo = (i_ < s_.size() && s_[i_] == ',') ? 0 : Number(at);
    if (i_ < s_.size() && s_[i_] == ',') {
      ++i_;
      SkipSpace(false);
      hi = (i_ < s_.size() && s_[i_] == '}') ? UINT64_MAX : Number(at);
    } else {
      hi = lo;
    }
    if (i_ >= s_.size() || s_[i_] != '}')
      Fail(i_, "expected '}' to close the repetition opened at " + Where(at) + ", found " +
                   Printable(s_, i_));
    ++i_;
    if (hi < lo) Fail(at, "the repetition's maximum is below its minimum");
  }

  // Replaces seq[last..] (one element, or a literal's characters) with lo..hi copies of it.
  void Repeat(const std::string& rule, Seq& seq, size_t last, uint64_t lo, uint64_t hi) {
    Seq item(seq.begin() + static_cast<std::ptrdiff_t>(last), seq.end());
    seq.resize(last);
    if (item.size() != 1) item = {{Op::kRef, NewRule(rule, {item})}};
    const Elem x = item[0];
    for (uint64_t k = 0; k < lo; ++k) seq.push_back(x);
    if (hi == UINT64_MAX) {
      // r ::= x r | (empty): right recursion, which the matcher runs as a loop.
      const uint32_t r = NewRule(rule, {});
      bodies_[r] = {{x, {Op::kRef, r}}, {}};
      seq.push_back({Op::kRef, r});
    } else if (hi > lo) {
      // Optional tail, innermost first: t1 ::= x | (empty); tk ::= x t(k-1) | (empty).
      uint32_t inner = NewRule(rule, {{x}, {}});
      for (uint64_t k = lo + 1; k < hi; ++k) inner = NewRule(rule, {{x, {Op::kRef, inner}}, {}});
      seq.push_back({Op::kRef, inner});
    }
  }

  void CheckLeftRecursion() const {
    const size_t n = bodies_.size();
    std::vector<bool> nullable(n, false);
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < n; ++r) {
        if (nullable[r]) continue;
        for (const auto& alt : bodies_[r]) {
          bool all = true;
          for (const auto& e : alt) all = all && e.op == Op::kRef && nullable[e.arg];
          if (all) {
            nullable[r] = changed = true;
            break;
          }
        }
      }
    }
    // Edges r -> s where s may be entered before any character of r is read.
    std::vector<std::vector<uint32_t>> first(n);
    for (size_t r = 0; r < n; ++r)
      for (const auto& alt : bodies_[r])
        for (const auto& e : alt) {
          if (e.op != Op::kRef) break;
          first[r].push_back(e.arg);
          if (!nullable[e.arg]) break;
        }
    std::vector<int> color(n, 0);
    std::vector<uint32_t> path;
    auto visit = [&](auto&& self, uint32_t r) -> void {
      color[r] = 1;
      path.push_back(r);
      for (uint32_t s : first[r]) {
        if (color[s] == 1) {
          std::string cycle;
          auto it = std::find(path.begin(), path.end(), s);
          for (; it != path.end(); ++it) cycle += names_[*it] + " -> ";
          throw Error("grammar: the rule '" + names_[s] +
                      "' is left-recursive: it can reach itself before reading a character (" +
                      cycle + names_[s] +
                      "), so matching would never end; rewrite it with repetition, e.g. "
                      "list ::= item (\",\" item)*");
        }
        if (color[s] == 0) self(self, s);
      }
      path.pop_back();
      color[r] = 2;
    };
    for (uint32_t r = 0; r < n; ++r)
      if (color[r] == 0) visit(visit, r);
  }

  std::shared_ptr<const Grammar> Flatten(uint32_t root) {
    auto g = std::make_shared<Grammar>();
    g->rule_names = names_;
    g->classes = std::move(classes_);
    g->root = root;
    g->alts.resize(bodies_.size());
    for (size_t r = 0; r < bodies_.size(); ++r)
      for (const auto& alt : bodies_[r]) {
        g->alts[r].push_back(static_cast<uint32_t>(g->elems.size()));
        g->elems.insert(g->elems.end(), alt.begin(), alt.end());
        g->elems.push_back({Op::kEnd, 0});
      }
    if (g->elems.size() > std::numeric_limits<uint32_t>::max() / 2)
      throw Error("grammar: too large after expanding repetitions");
    return g;
  }

  std::string_view s_;
  size_t i_ = 0;
  std::unordered_map<std::string, uint32_t> ids_;
  std::vector<std::string> names_;
  std::vector<std::vector<Seq>> bodies_;
  std::vector<bool> defined_;
  std::vector<size_t> first_use_;
  std::vector<Grammar::CharClass> classes_;
  int generated_ = 0;
  int nest_ = 0;  // open parentheses
};

}  // namespace

bool Grammar::CharClass::Match(uint32_t cp) const {
  if (cp < 128) return (ascii[cp / 64] >> (cp % 64)) & 1;
  for (const auto& r : ranges)
    if (cp >= r.first && cp <= r.second) return !negated;
  return negated;
}

namespace {

// Whether some listed range meets [lo, hi] / one covers all of it (ranges are merged, so a
// covering range is a single one).
bool Meets(const std::vector<std::pair<uint32_t, uint32_t>>& ranges, uint32_t lo, uint32_t hi) {
  return std::any_of(ranges.begin(), ranges.end(),
                     [&](const auto& r) { return r.first <= hi && r.second >= lo; });
}
bool Covers(const std::vector<std::pair<uint32_t, uint32_t>>& ranges, uint32_t lo, uint32_t hi) {
  return std::any_of(ranges.begin(), ranges.end(),
                     [&](const auto& r) { return r.first <= lo && r.second >= hi; });
}

}  // namespace

bool Grammar::CharClass::MatchAny(uint32_t lo, uint32_t hi) const {
  return negated ? !Covers(ranges, lo, hi) : Meets(ranges, lo, hi);
}

bool Grammar::CharClass::MatchAll(uint32_t lo, uint32_t hi) const {
  return negated ? !Meets(ranges, lo, hi) : Covers(ranges, lo, hi);
}

std::shared_ptr<const Grammar> Grammar::Parse(std::string_view text, std::string_view root) {
  auto g = Parser(text).Run(root);
  auto out = std::make_shared<Grammar>(*g);
  out->source = std::string(text);
  out->root_name = std::string(root);
  return out;
}

}  // namespace es::runtime
