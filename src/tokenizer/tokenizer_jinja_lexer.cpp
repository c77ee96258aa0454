// Jinja lexer with jinja2's settings for chat templates: trim_blocks and lstrip_blocks on,
// newlines normalised to "\n", one trailing newline dropped (keep_trailing_newline off).
#include <cctype>
#include <cstring>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_jinja_ast.h"
#include "tokenizer/tokenizer_unicode.h"

namespace es::tok::jinja {

namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {}

  std::vector<Token> Run() {
    bool line_starting = true;  // the previous tag's end swallowed a newline (jinja2's flag)
    while (pos_ < src_.size()) {
      size_t tag = FindTag(pos_);
      std::string text = src_.substr(pos_, tag - pos_);
      if (tag == src_.size()) {
        Emit(Token::Type::kText, text, pos_);
        break;
      }
      const char kind = src_[tag + 1];  // '{', '%' or '#'
      const char sign = tag + 2 < src_.size() ? src_[tag + 2] : 0;
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && IsSpace(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: whitespace between a line's start and a block tag goes.
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size()) {
          bool blank = true;
          for (size_t k = l_pos; k < text.size(); ++k) blank = blank && IsSpace(text[k]);
          if (blank) text.resize(l_pos);
        }
      }
      Emit(Token::Type::kText, text, pos_);
      pos_ = tag + 2 + (sign == '-' || sign == '+' ? 1 : 0);
      if (kind == '#') {
        line_starting = Comment(tag);
      } else {
        line_starting = Tag(kind == '%', tag);
      }
    }
    Token eof{Token::Type::kEof, "", 0, 0, 0, 0};
    Locate(src_.size(), eof);
    out_.push_back(eof);
    return std::move(out_);
  }

 private:
  size_t FindTag(size_t from) const {
    for (size_t k = from; k + 1 < src_.size(); ++k)
      if (src_[k] == '{' && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#'))
        return k;
    return src_.size();
  }

  void Locate(size_t at, Token& t) {
    for (; line_pos_ < at && line_pos_ < src_.size(); ++line_pos_) {
      if (src_[line_pos_] == '\n') {
        ++line_;
        line_start_ = line_pos_ + 1;
      }
    }
    t.line = line_;
    t.col = static_cast<int>(at - line_start_) + 1;
  }

  [[noreturn]] void Fail(size_t at, const std::string& what) {
    Token t;
    Locate(at, t);
    throw Error("template line " + std::to_string(t.line) + " column " + std::to_string(t.col) +
                ": " + what);
  }

  void Emit(Token::Type type, std::string text, size_t at) {
    if (type == Token::Type::kText && text.empty()) return;
    Token t{type, std::move(text), 0, 0, 0, 0};
    Locate(at, t);
    out_.push_back(std::move(t));
  }

  // Skips the tag end's trailing whitespace: all of it after "-", one newline (trim_blocks)
  // unless "+". Returns whether what was skipped ends in a newline.
  bool AfterEnd(char sign, bool block) {
    size_t start = pos_;
    if (sign == '-') {
      while (pos_ < src_.size() && IsSpace(src_[pos_])) ++pos_;
    } else if (sign != '+' && block && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
    }
    return pos_ > start && src_[pos_ - 1] == '\n';
  }

  bool Comment(size_t tag) {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) Fail(tag, "missing end of comment tag");
    const char sign =
        end > pos_ && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : 0;
    pos_ = end + 2;
    return AfterEnd(sign, true);
  }

  bool Tag(bool block, size_t tag) {
    Emit(block ? Token::Type::kBlockBegin : Token::Type::kVarBegin, block ? "{%" : "{{", tag);
    int depth = 0;  // open brackets: a "}}" inside a dict literal does not end the tag
    const char closer = block ? '%' : '}';
    for (;;) {
      while (pos_ < src_.size() && IsSpace(src_[pos_])) ++pos_;
      if (pos_ >= src_.size()) Fail(tag, std::string("missing end of ") + (block ? "{%" : "{{"));
      const char c = src_[pos_];
      if (depth == 0) {
        size_t p = pos_;
        char sign = 0;
        if ((c == '-' || (c == '+' && block)) && p + 1 < src_.size()) {
          sign = c;
          ++p;
        }
        if (p + 1 < src_.size() && src_[p] == closer && src_[p + 1] == '}') {
          Emit(block ? Token::Type::kBlockEnd : Token::Type::kVarEnd, "", pos_);
          pos_ = p + 2;
          return AfterEnd(sign, block);
        }
      }
      const size_t at = pos_;
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (pos_ < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_'))
          ++pos_;
        Emit(Token::Type::kName, src_.substr(at, pos_ - at), at);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        Number(at);
      } else if (c == '\'' || c == '"') {
        String(at);
      } else {
        static const char* const kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op(1, c);
        for (const char* t : kTwo)
          if (src_.compare(pos_, 2, t) == 0) op = t;
        if (op.size() == 1 && !std::strchr("+-/*%~[](){}<>=.:|,;!", c))
          Fail(at, std::string("unexpected character '") + c + "'");
        if (c == '(' || c == '[' || c == '{') ++depth;
        if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
        pos_ += op.size();
        Emit(Token::Type::kOp, op, at);
      }
    }
  }

  void Number(size_t at) {
    std::string digits;
    bool is_float = false;
    while (pos_ < src_.size()) {
      const char c = src_[pos_];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        digits += c;
      } else if (c == '_') {
      } else if (c == '.' && !is_float && pos_ + 1 < src_.size() &&
                 std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
        is_float = true;
        digits += c;
      } else if ((c == 'e' || c == 'E') && pos_ + 1 < src_.size() &&
                 (std::isdigit(static_cast<unsigned char>(src_[pos_ + 1])) ||
                  src_[pos_ + 1] == '-' || src_[pos_ + 1] == '+')) {
        is_float = true;
        digits += c;
        digits += src_[++pos_];
      } else {
        break;
      }
      ++pos_;
    }
    Token t{is_float ? Token::Type::kFloat : Token::Type::kInt, digits, 0, 0, 0, 0};
    try {
      if (is_float) {
        t.f = std::stod(digits);
      } else {
        t.i = std::stoll(digits);
      }
    } catch (const std::exception&) {
      Fail(at, "number '" + digits + "' out of range");
    }
    Locate(at, t);
    out_.push_back(std::move(t));
  }

  // A string literal with Python's escapes (jinja2 decodes them with unicode-escape).
  void String(size_t at) {
    const char q = src_[pos_++];
    std::string s;
    for (;;) {
      if (pos_ >= src_.size()) Fail(at, "unterminated string literal");
      const char c = src_[pos_++];
      if (c == q) break;
      if (c != '\\' || pos_ >= src_.size()) {
        s += c;
        continue;
      }
      const char e = src_[pos_++];
      const char* simple = std::strchr("nrtbfv0\\'\"", e);
      if (simple && e != 0) {
        static const char kMap[] = "\n\r\t\b\f\v\0\\'\"";
        s += kMap[simple - "nrtbfv0\\'\""];
      } else if (e == '\n') {
      } else if (e == 'x' || e == 'u' || e == 'U') {
        const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        if (pos_ + n > src_.size()) Fail(at, "truncated escape in string literal");
        try {
          AppendUtf8(static_cast<uint32_t>(std::stoul(src_.substr(pos_, n), nullptr, 16)), s);
        } catch (const std::exception&) {
          Fail(at, "bad escape in string literal");
        }
        pos_ += n;
      } else {
        s += '\\';
        s += e;
      }
    }
    Emit(Token::Type::kString, s, at);
  }

  std::string src_;
  size_t pos_ = 0;
  std::vector<Token> out_;
  int line_ = 1;
  size_t line_pos_ = 0, line_start_ = 0;
};

}  // namespace

std::vector<Token> Lex(const std::string& source) {
  std::string src;
  src.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      src += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      src += source[k];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  return Lexer(std::move(src)).Run();
}

}  // namespace es::tok::jinja
