#include "tokenizer/tokenizer_pretok.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <map>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "tokenizer/tokenizer_unicode.h"

namespace es::tok {

namespace {

// The pre-tokenizer regexes, as the models' tokenizer.json files define them (llama.cpp adapts
// case-insensitive groups to explicit classes, which these keep). `\s` and `\S` are rewritten
// below.
constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kPoro = R"( ?[^(\s|.,!?…。，、।۔،)]+)";
constexpr const char* kTekken =
    R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// o200k (gpt-4o, gpt-oss, Llama 4): tekken's letter runs with English contractions attached, and
// digits in groups of up to three; in llama.cpp's form, where "upper" is a letter other than a-z.
constexpr const char* kGpt4o =
    R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kCjk = R"([一-龥ࠀ-一가-퟿]+)";

// The whitespace llama.cpp recognises (Unicode White_Space). Non-ASCII members are replaced by
// U+000B in the text the regexes see, as llama.cpp does, so ASCII classes suffice here.
constexpr const char* kSpaceClass = R"(\t\n\x0B\f\r )";

}  // namespace

PreTokenizerSpec PreTokenizerFor(const std::string& pre) {
  PreTokenizerSpec s;
  const std::vector<std::string> starcoder = {R"(\p{N})", kGpt2};
  if (pre.empty() || pre == "default") {
    s.regexes = {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"};
  } else if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3") {
    s.regexes = {kLlama3};
    s.ignore_merges = true;
    s.add_bos = true;
  } else if (pre == "deepseek-llm") {
    s.regexes = {
        "[\r\n]",
        R"(\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+)",
        R"(\s?[!-/:-~！-／：-～‘-‟　-。]+)",
        R"(\s+$)",
        kCjk,
        R"(\p{N}+)"};
    s.clean_spaces = false;
  } else if (pre == "deepseek-coder") {
    s.regexes = {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjk, R"(\p{N})"};
    s.clean_spaces = false;
  } else if (pre == "deepseek-v3") {
    // llama.cpp's category table leaves '~' out of \p{S} (it is Sm in Unicode); these classes
    // follow it so the splits agree.
    s.regexes = {
        R"(\p{N}{1,3})", R"([一-龥぀-ゟ゠-ヿ]+)",
        R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|(?:[^\r\n\p{L}\p{P}\p{S}]|~)?[\p{L}\p{M}]+| ?(?:(?!~)[\p{P}\p{S}])+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
    s.clean_spaces = false;
  } else if (pre == "falcon") {
    s.regexes = {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"};
  } else if (pre == "gpt-2" || pre == "phi-2" || pre == "jina-es" || pre == "jina-de" ||
             pre == "gigachat" || pre == "jina-v1-en" || pre == "jina-v2-es" ||
             pre == "jina-v2-de" || pre == "jina-v2-code" || pre == "roberta-bpe" || pre == "mpt" ||
             pre == "olmo" || pre == "jais") {
    s.regexes = {kGpt2};
  } else if (pre == "starcoder" || pre == "refact" || pre == "codeshell" || pre == "exaone" ||
             pre == "minerva-7b") {
    s.regexes = starcoder;
  } else if (pre == "command-r" || pre == "smollm") {
    s.regexes = starcoder;
    s.clean_spaces = false;
  } else if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    s.regexes = {kQwen2};
    s.clean_spaces = false;
  } else if (pre == "stablelm2" || pre == "megrez") {
    s.regexes = {kQwen2};
  } else if (pre == "dbrx" || pre == "smaug-bpe") {
    s.regexes = {kLlama3};
  } else if (pre == "chatglm-bpe") {
    s.regexes = {kLlama3};
    s.no_bos = true;
  } else if (pre == "poro-chat") {
    s.regexes = {kPoro};
    s.clean_spaces = false;
  } else if (pre == "bloom" || pre == "gpt3-finnish") {
    s.regexes = {kPoro};
  } else if (pre == "viking") {
    s.regexes = {kPoro, R"(\p{N})"};
    s.clean_spaces = false;
  } else if (pre == "tekken") {
    s.regexes = {kTekken};
    s.clean_spaces = false;
    s.ignore_merges = true;
    s.add_bos = true;
  } else if (pre == "gpt-4o" || pre == "llama4" || pre == "kanana2" || pre == "talkie") {
    s.regexes = {kGpt4o};
    s.clean_spaces = false;
  } else if (pre == "chameleon") {
    s.regexes = {"<sentinel:[0-9]+>",       "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                 "([\\t\\n]|    |  )",      R"(\p{N})",
                 R"([\p{P}!-/:-@\[-`{-~])", kGpt2};
    s.add_bos = true;
    s.clean_spaces = false;
  } else {
    throw Error(
        "unknown pre-tokenizer '" + gguf::Printable(pre) +
        "' in tokenizer.ggml.pre (supported: default, gpt-2, llama-bpe/llama3, qwen2, "
        "deepseek-llm, deepseek-coder, deepseek-v3, falcon, mpt, starcoder, refact, "
        "command-r, stablelm2, olmo, dbrx, smaug-bpe, poro-chat, chatglm-bpe, viking, jais, "
        "tekken, gpt-4o, llama4, smollm, codeshell, bloom, gpt3-finnish, exaone, chameleon, "
        "minerva-7b, "
        "megrez, phi-2, jina-*, roberta-bpe, gigachat)");
  }
  return s;
}

namespace {

// Rewrites `\s` and `\S` into explicit classes (see kSpaceClass); everything else is kept.
std::string RewriteSpaces(const std::string& re) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    const char c = re[i];
    if (c == '\\' && i + 1 < re.size()) {
      const char n = re[++i];
      if (n == 's' || (n == 'S' && !in_class)) {
        if (!in_class) out.append(n == 's' ? "[" : "[^");
        out.append(kSpaceClass);
        if (!in_class) out.append("]");
      } else if (n == 'S') {
        throw Error("pre-tokenizer regex '" + re + "' uses \\S inside a class (unsupported)");
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < re.size() && re[i + 1] == '^') out += re[++i];
      if (i + 1 < re.size() && re[i + 1] == ']') out += re[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

// The text as the regexes see it: one code point per input code point, with non-ASCII whitespace
// folded to U+000B and code points PCRE2 cannot hold (surrogates) replaced.
struct MatchText {
  std::string s;
  std::vector<uint32_t> offset;  // byte offset of each code point, plus the end
  std::vector<uint32_t> index;   // code point index at each byte offset (valid at boundaries)
};

bool IsNonAsciiSpace(uint32_t c) {
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

MatchText MakeMatchText(const std::vector<uint32_t>& cpts) {
  MatchText m;
  m.s.reserve(cpts.size() + cpts.size() / 2);
  m.offset.reserve(cpts.size() + 1);
  for (uint32_t c : cpts) {
    m.offset.push_back(static_cast<uint32_t>(m.s.size()));
    if (IsNonAsciiSpace(c)) c = 0x0B;
    // Surrogates (accepted by the lenient decoder) stand in as a private-use character: like the
    // surrogate category, it is neither letter, number, punctuation, symbol nor space.
    if ((c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) c = 0xE000;
    AppendUtf8(c, m.s);
  }
  m.offset.push_back(static_cast<uint32_t>(m.s.size()));
  m.index.assign(m.s.size() + 1, 0);
  for (size_t i = 0; i < m.offset.size(); ++i) m.index[m.offset[i]] = static_cast<uint32_t>(i);
  return m;
}

}  // namespace

struct PreTokenizer::Impl {
  struct Regex {
    pcre2_code* code = nullptr;
    bool jit = false;
  };
  std::vector<Regex> regexes;

  ~Impl() {
    for (auto& r : regexes) pcre2_code_free(r.code);
  }

  // Splits the code point range [begin, end) with regex `r`, appending piece lengths (in code
  // points) to `out`: every match and every unmatched gap becomes its own piece.
  void SplitRange(const Regex& r, const MatchText& m, size_t begin, size_t end,
                  pcre2_match_data* md, std::vector<size_t>& out) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(m.s.data() + m.offset[begin]);
    const size_t len = m.offset[end] - m.offset[begin];
    const auto cp = [&](size_t byte) { return m.index[m.offset[begin] + byte] - begin; };
    size_t pos = 0;   // byte where the next search starts
    size_t done = 0;  // bytes already assigned to pieces
    uint32_t opts = 0;
    while (pos <= len) {
      int rc = pcre2_match(r.code, subject, len, pos, opts | PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        rc = pcre2_match(r.code, subject, len, pos, opts | PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                         nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) {
        if (opts == 0) break;
        // No non-empty match at the position of an empty one: search again one character on.
        opts = 0;
        if (pos == len) break;
        pos += Utf8SeqLen(static_cast<char>(subject[pos]));
        continue;
      }
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error(std::string("pre-tokenizer regex failed on the input: ") +
                    reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t ms = ov[0], me = ov[1];
      if (ms > done) out.push_back(cp(ms) - cp(done));
      if (me > ms) out.push_back(cp(me) - cp(ms));
      done = me;
      pos = me;
      // After an empty match, std::regex (which llama.cpp uses) retries at the same place for a
      // non-empty anchored match before moving on.
      opts = me == ms ? (PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED) : 0;
      if (me == ms && pos == len) break;
    }
    if (len > done) out.push_back(cp(len) - cp(done));
  }
};

PreTokenizer::PreTokenizer(const std::vector<std::string>& regexes)
    : impl_(std::make_unique<Impl>()) {
  for (const auto& src : regexes) {
    const std::string re = RewriteSpaces(src);
    int err = 0;
    PCRE2_SIZE err_off = 0;
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(re.data()), re.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &err_off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error("pre-tokenizer regex '" + src + "' does not compile at offset " +
                  std::to_string(err_off) + ": " + reinterpret_cast<const char*>(msg));
    }
    Impl::Regex r;
    r.code = code;
    r.jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    impl_->regexes.push_back(r);
  }
}

PreTokenizer::~PreTokenizer() = default;

std::vector<std::string> PreTokenizer::Split(std::string_view text) const {
  const std::vector<uint32_t> cpts = DecodeUtf8(text);
  const MatchText m = MakeMatchText(cpts);
  std::vector<size_t> pieces = {cpts.size()};
  if (cpts.empty()) pieces.clear();
  for (const auto& r : impl_->regexes) {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(r.code, nullptr);
    if (!md) throw Error("out of memory creating regex match data");
    std::vector<size_t> next;
    next.reserve(pieces.size() * 2);
    size_t start = 0;
    try {
      for (size_t n : pieces) {
        impl_->SplitRange(r, m, start, start + n, md, next);
        start += n;
      }
    } catch (...) {
      pcre2_match_data_free(md);
      throw;
    }
    pcre2_match_data_free(md);
    pieces = std::move(next);
  }
  // Words are the original code points (llama.cpp re-encodes them), mapped to byte-level text.
  const auto& b2u = ByteToUnicode();
  std::vector<std::string> words;
  words.reserve(pieces.size());
  size_t start = 0;
  std::string utf8;
  for (size_t n : pieces) {
    utf8.clear();
    for (size_t i = start; i < start + n; ++i) AppendUtf8(cpts[i], utf8);
    std::string w;
    w.reserve(utf8.size() * 2);
    for (unsigned char c : utf8) w += b2u[c];
    words.push_back(std::move(w));
    start += n;
  }
  return words;
}

}  // namespace es::tok
