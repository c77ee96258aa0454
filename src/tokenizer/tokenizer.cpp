#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <queue>
#include <unordered_map>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_pretok.h"
#include "tokenizer/tokenizer_unicode.h"

namespace es::tok {

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// GGUF tokenizer.ggml.token_type values.
enum GgufTokenType {
  kTypeUndefined = 0,
  kTypeNormal,
  kTypeUnknown,
  kTypeControl,
  kTypeUserDefined,
  kTypeUnused,
  kTypeByte
};

uint32_t AttrFromType(int64_t t) {
  switch (t) {
    case kTypeNormal:
      return kAttrNormal;
    case kTypeUnknown:
      return kAttrUnknown;
    case kTypeControl:
      return kAttrControl;
    case kTypeUserDefined:
      return kAttrUserDefined;
    case kTypeUnused:
      return kAttrUnused;
    case kTypeByte:
      return kAttrByte;
    default:
      return kAttrUndefined;
  }
}

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string_view, int32_t, SvHash, std::equal_to<>>;

void ReplaceAll(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// A raw-text span of the input or an already identified special token.
struct Fragment {
  int32_t token;  // -1 for raw text
  size_t offset, length;
};

// llama.cpp's detokenizer clean-up for vocabularies with clean_up_tokenization_spaces: drops the
// space before ?!., and before the contractions 's 'm 're 've, and the spaces around a lone '.
// It works in place over the buffer exactly like llama.cpp so edge cases agree.
void CleanSpaces(std::string& t) {
  size_t total = t.size();
  // Pass 1: " ?", " !", " .", " ,".
  {
    const size_t n = total;
    total = n ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {
      const char x = t[i];
      if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --total;
      t[total++] = x;
    }
  }
  // Pass 2: " ' " -> "'".
  {
    const size_t n = total;
    total = n ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {
      const char x = t[i];
      if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') {
        --total;
        t[++i] = '\0';
      }
      t[total++] = x;
    }
  }
  // Pass 3: " 's", " 'm", " 're", " 've" lose the space (" 't", " 'd", " 'll" keep it).
  {
    const size_t n = total;
    total = n ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {
      const char x = t[i];
      if (t[i - 1] == ' ' && x == '\'' && i + 1 < n) {
        const char x1 = t[i + 1];
        if (x1 == 's' || x1 == 'm') {
          --total;
        } else if (x1 != 't' && x1 != 'd' && i + 2 < n) {
          const char x2 = t[i + 2];
          if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --total;
        }
      }
      t[total++] = x;
    }
  }
  t.resize(total);
}

// Scores are float32 in llama.cpp. A NaN would make merge order depend on comparison order and
// a finite value beyond float range has no float (converting it is undefined): both are refused.
// Infinities are kept.
float Score(const gguf::File& f, const gguf::Value& scores, size_t i) {
  const double d = scores.Number(i);
  if (std::isnan(d) || (std::isfinite(d) && std::fabs(d) > std::numeric_limits<float>::max()))
    throw Error(f.path() + ": tokenizer.ggml.scores element #" + std::to_string(i) + " is " +
                std::to_string(d) + ", expected a float32 number; the vocabulary is corrupt");
  return static_cast<float>(d);
}

// llama.cpp reads token types as int32; anything else (NaN, fractions, out of range) is corrupt,
// and converting it to an integer would be undefined.
int64_t TokenType(const gguf::File& f, const gguf::Value& types, size_t i) {
  const double d = types.Number(i);
  if (!(d >= std::numeric_limits<int32_t>::min() && d <= std::numeric_limits<int32_t>::max()) ||
      d != std::trunc(d))
    throw Error(f.path() + ": tokenizer.ggml.token_type element #" + std::to_string(i) + " is " +
                std::to_string(d) + ", expected an int32 token type (1 normal ... 6 byte); " +
                "the vocabulary is corrupt");
  return static_cast<int64_t>(d);
}

}  // namespace

struct Tokenizer::Impl {
  VocabType type = VocabType::kSpm;
  std::string pre;
  std::vector<std::string> text;
  std::vector<float> score;
  std::vector<uint32_t> attr;
  TokenMap token_to_id;
  std::vector<std::string> merge_keys;  // "left right", as in tokenizer.ggml.merges
  TokenMap merge_rank;

  int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  bool clean_spaces = false, ignore_merges = false;
  std::vector<uint8_t> eog;
  std::vector<int32_t> special;     // tokens matched in the input text, longest first
  std::vector<std::string> pieces;  // TokenToPiece with render_special
  std::unique_ptr<PreTokenizer> pretok;
  std::optional<std::string> chat_template;

  int32_t Find(std::string_view s) const {
    auto it = token_to_id.find(s);
    return it == token_to_id.end() ? -1 : it->second;
  }

  void CheckId(int32_t id) const {
    if (id < 0 || id >= static_cast<int32_t>(text.size()))
      throw Error("token id " + std::to_string(id) + " is out of range: the vocabulary has " +
                  std::to_string(text.size()) + " tokens");
  }

  std::string ComputePiece(int32_t id) const;
  std::vector<Fragment> Partition(std::string_view input, bool parse_special) const;
  void EncodeSpm(std::string_view s, std::vector<int32_t>& out) const;
  void EncodeBpe(std::string_view s, std::vector<int32_t>& out) const;
  int32_t SpmByteToken(uint8_t byte) const;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

std::string Tokenizer::Impl::ComputePiece(int32_t id) const {
  const uint32_t a = attr[id];
  const std::string& t = text[id];
  if (a & (kAttrUnknown | kAttrControl | kAttrUserDefined)) return t;
  if (a & kAttrNormal) {
    if (type == VocabType::kSpm) {
      std::string s = t;
      ReplaceAll(s, kSpaceMark, " ");
      return s;
    }
    // Byte-level BPE: each code point stands for one byte.
    std::string s;
    for (uint32_t cpt : DecodeUtf8(t)) {
      const int b = UnicodeToByte(cpt);
      if (b >= 0) {
        s += static_cast<char>(b);
      } else {
        // llama.cpp marks characters outside the byte alphabet this way.
        std::string u;
        AppendUtf8(cpt, u);
        s += "[UNK_BYTE_0x";
        static const char* hex = "0123456789abcdef";
        for (unsigned char c : u) s += hex[c >> 4], s += hex[c & 15];
        s += t + "]";
      }
    }
    return s;
  }
  if ((a & kAttrByte) && type == VocabType::kSpm) {
    // "<0xNN>"
    const std::string hex = t.size() >= 5 ? t.substr(3, 2) : std::string();
    return std::string(1, static_cast<char>(std::strtol(hex.c_str(), nullptr, 16)));
  }
  return "";
}

std::unique_ptr<Tokenizer> Tokenizer::FromGGUF(const gguf::File& f) {
  std::unique_ptr<Tokenizer> tk(new Tokenizer());
  Impl& m = *tk->impl_;
  const std::string& path = f.path();
  const auto model = f.GetStringOr("tokenizer.ggml.model");
  if (!model) throw Error(path + ": tokenizer.ggml.model is missing (the file has no vocabulary)");
  m.pre = f.GetStringOr("tokenizer.ggml.pre").value_or("");

  PreTokenizerSpec spec;
  if (*model == "llama") {
    m.type = VocabType::kSpm;
    m.bos = 1, m.eos = 2, m.unk = 0;
    m.add_space_prefix = true;
    m.add_bos = true;
  } else if (*model == "gpt2") {
    m.type = VocabType::kBpe;
    m.bos = 11, m.eos = 11;  // llama.cpp's defaults when the file names none
    const gguf::Value* merges = f.Find("tokenizer.ggml.merges");
    if (!merges)
      throw Error(path + ": tokenizer.ggml.merges is missing (a gpt2 vocabulary needs it)");
    const gguf::Value& list = f.GetStringArray("tokenizer.ggml.merges");
    m.merge_keys.reserve(list.size());
    for (size_t i = 0; i < list.size(); ++i) m.merge_keys.emplace_back(list.String(i));
    m.merge_rank.reserve(list.size());
    for (size_t i = 0; i < m.merge_keys.size(); ++i) {
      // The first space after position 0 separates the pair; entries without one never match.
      if (m.merge_keys[i].find(' ', 1) == std::string::npos) continue;
      m.merge_rank.emplace(m.merge_keys[i], static_cast<int32_t>(i));
    }
    try {
      spec = PreTokenizerFor(m.pre);
    } catch (const Error& e) {
      throw Error(path + ": " + e.what());
    }
    m.ignore_merges = spec.ignore_merges;
    m.add_bos = spec.add_bos;
    m.clean_spaces = spec.clean_spaces;
    if (spec.no_bos) m.bos = -1;
  } else {
    throw Error(path + ": unsupported tokenizer.ggml.model '" + gguf::Printable(*model) +
                "' (supported: 'llama' for SentencePiece, 'gpt2' for byte-level BPE)");
  }
  if (auto v = f.GetBoolOr("tokenizer.ggml.add_space_prefix")) m.add_space_prefix = *v;

  const gguf::Value& tokens = f.GetStringArray("tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  if (n == 0) throw Error(path + ": tokenizer.ggml.tokens is empty");
  if (n > static_cast<size_t>(INT32_MAX))
    throw Error(path + ": tokenizer.ggml.tokens has too many entries");
  const gguf::Value* scores = nullptr;
  if (f.Has("tokenizer.ggml.scores")) {
    scores = &f.GetNumberArray("tokenizer.ggml.scores");
    if (scores->size() < n)
      throw Error(path + ": tokenizer.ggml.scores has " + std::to_string(scores->size()) +
                  " entries for " + std::to_string(n) + " tokens");
  }
  const gguf::Value* types = nullptr;
  if (f.Has("tokenizer.ggml.token_type")) {
    types = &f.GetNumberArray("tokenizer.ggml.token_type");
    if (types->size() < n)
      throw Error(path + ": tokenizer.ggml.token_type has " + std::to_string(types->size()) +
                  " entries for " + std::to_string(n) + " tokens");
  }
  m.text.resize(n);
  m.score.resize(n);
  m.attr.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string_view t = tokens.String(i);
    m.text[i] = t.empty() ? "[EMPTY_" + std::to_string(i) + "]" : std::string(t);
    m.score[i] = scores ? Score(f, *scores, i) : 0.0f;
    m.attr[i] = types ? AttrFromType(TokenType(f, *types, i)) : kAttrNormal;
  }
  m.token_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) m.token_to_id[m.text[i]] = static_cast<int32_t>(i);  // last wins

  // Defaults that do not fit the vocabulary are dropped.
  for (int32_t* id : {&m.bos, &m.eos, &m.unk})
    if (*id >= static_cast<int32_t>(n)) *id = -1;
  int32_t fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
  int32_t sep = -1, pad = -1;
  const std::pair<const char*, int32_t*> ids[] = {
      {"tokenizer.ggml.bos_token_id", &m.bos},       {"tokenizer.ggml.eos_token_id", &m.eos},
      {"tokenizer.ggml.eot_token_id", &m.eot},       {"tokenizer.ggml.eom_token_id", &m.eom},
      {"tokenizer.ggml.unknown_token_id", &m.unk},   {"tokenizer.ggml.seperator_token_id", &sep},
      {"tokenizer.ggml.padding_token_id", &pad},     {"tokenizer.ggml.fim_pre_token_id", &fim_pre},
      {"tokenizer.ggml.fim_suf_token_id", &fim_suf}, {"tokenizer.ggml.fim_mid_token_id", &fim_mid},
      {"tokenizer.ggml.fim_pad_token_id", &fim_pad}, {"tokenizer.ggml.fim_rep_token_id", &fim_rep},
      {"tokenizer.ggml.fim_sep_token_id", &fim_sep}, {"tokenizer.ggml.prefix_token_id", &fim_pre},
      {"tokenizer.ggml.suffix_token_id", &fim_suf},  {"tokenizer.ggml.middle_token_id", &fim_mid},
  };
  for (const auto& [key, id] : ids) {
    // An id outside the vocabulary (e.g. 0xFFFFFFFF for "none") keeps the default, as llama.cpp.
    if (auto v = f.GetIntOr(key); v && *v >= 0 && *v < static_cast<int64_t>(n))
      *id = static_cast<int32_t>(*v);
  }
  if (auto v = f.GetBoolOr("tokenizer.ggml.add_bos_token")) m.add_bos = *v;
  if (auto v = f.GetBoolOr("tokenizer.ggml.add_eos_token")) m.add_eos = *v;

  // Special tokens that older converters did not name are recognised by their text and forced to
  // control type, as llama.cpp does.
  const auto make_control = [&](int32_t i) {
    if (!(m.attr[i] & kAttrControl)) m.attr[i] = kAttrControl;
  };
  const auto detect = [&](int32_t& id, std::initializer_list<std::string_view> names) {
    if (id != -1) return;
    for (auto nm : names) {
      if (const int32_t i = m.Find(nm); i >= 0) {
        id = i;
        make_control(i);
        return;
      }
    }
  };
  detect(m.eot, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
                 "<\xEF\xBD\x9C"
                 "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"});
  detect(m.eom, {"<|eom_id|>"});
  detect(fim_pre, {"<|fim_prefix|>", "<fim-prefix>",
                   "<\xEF\xBD\x9C"
                   "fim\xE2\x96\x81"
                   "begin\xEF\xBD\x9C>",
                   "<PRE>"});
  detect(fim_suf, {"<|fim_suffix|>", "<fim-suffix>",
                   "<\xEF\xBD\x9C"
                   "fim\xE2\x96\x81"
                   "hole\xEF\xBD\x9C>",
                   "<SUF>"});
  detect(fim_mid, {"<|fim_middle|>", "<fim-middle>",
                   "<\xEF\xBD\x9C"
                   "fim\xE2\x96\x81"
                   "end\xEF\xBD\x9C>",
                   "<MID>"});
  detect(fim_pad, {"<|fim_pad|>", "<fim-pad>", "<PAD>"});
  detect(fim_rep, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"});
  detect(fim_sep, {"<|file_sep|>"});

  m.eog.assign(n, 0);
  for (int32_t id : {fim_pad, fim_rep, fim_sep})
    if (id >= 0) m.eog[id] = 1;
  for (auto nm : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                  "<|eom_id|>", "<EOT>"}) {
    if (const int32_t i = m.Find(nm); i >= 0) {
      m.eog[i] = 1;
      make_control(i);
    }
  }
  for (int32_t id : {m.eos, m.eot, m.eom})
    if (id >= 0) m.eog[id] = 1;

  // Texts recognised before the model's own algorithm runs; longest first (std::sort on ids in
  // ascending order, as llama.cpp, so ties resolve the same way).
  for (size_t i = 0; i < n; ++i)
    if (m.attr[i] & (kAttrControl | kAttrUserDefined | kAttrUnknown))
      m.special.push_back(static_cast<int32_t>(i));
  std::sort(m.special.begin(), m.special.end(),
            [&](int32_t a, int32_t b) { return m.text[a].size() > m.text[b].size(); });

  m.pieces.resize(n);
  for (size_t i = 0; i < n; ++i) m.pieces[i] = m.ComputePiece(static_cast<int32_t>(i));

  // Per-model whitespace stripping around special tokens (llama.cpp sets these by name).
  std::string name = f.GetStringOr("general.name").value_or("");
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const auto set_attr = [&](std::string_view t, uint32_t bit, bool on) {
    const int32_t id = m.Find(t);
    if (id < 0) return;
    m.attr[id] = on ? (m.attr[id] | bit) : (m.attr[id] & ~bit);
  };
  if (m.pre == "jina-v2-de" || m.pre == "jina-v2-es" || m.pre == "jina-v2-code") {
    set_attr("<mask>", kAttrLstrip, true);
  } else if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (int32_t id : m.special) m.attr[id] |= kAttrRstrip;
    set_attr("</s>", kAttrRstrip, true);
    for (auto t : {"<unk>", "<s>", "<|endoftext|>"}) set_attr(t, kAttrRstrip, false);
  }

  if (m.type == VocabType::kBpe) m.pretok = std::make_unique<PreTokenizer>(spec.regexes);
  m.chat_template = f.GetStringOr("tokenizer.chat_template");
  return tk;
}

std::vector<Fragment> Tokenizer::Impl::Partition(std::string_view input, bool parse_special) const {
  std::vector<Fragment> frags;
  if (input.empty()) return frags;
  frags.push_back({-1, 0, input.size()});
  std::vector<Fragment> next;
  for (int32_t id : special) {
    // Control and unknown tokens only when asked; user-defined ones always (llama.cpp, following
    // Hugging Face's added-token handling).
    if (!parse_special && (attr[id] & (kAttrControl | kAttrUnknown))) continue;
    const std::string& tok = text[id];
    bool found = false;
    for (const auto& fr : frags) {
      if (fr.token < 0 && input.substr(fr.offset, fr.length).find(tok) != std::string_view::npos) {
        found = true;
        break;
      }
    }
    if (!found) continue;
    next.clear();
    for (const auto& fr : frags) {
      if (fr.token >= 0) {
        next.push_back(fr);
        continue;
      }
      size_t pos = fr.offset;
      const size_t end = fr.offset + fr.length;
      while (pos < end) {
        const size_t hit = input.substr(0, end).find(tok, pos);
        if (hit == std::string_view::npos) {
          next.push_back({-1, pos, end - pos});
          break;
        }
        size_t left_len = hit - pos;
        if (attr[id] & kAttrLstrip)
          while (left_len > 0 &&
                 std::isspace(static_cast<unsigned char>(input[pos + left_len - 1])))
            --left_len;
        if (left_len > 0) next.push_back({-1, pos, left_len});
        next.push_back({id, 0, 0});
        pos = hit + tok.size();
        if (attr[id] & kAttrRstrip)
          while (pos < end && std::isspace(static_cast<unsigned char>(input[pos]))) ++pos;
      }
    }
    frags.swap(next);
  }
  return frags;
}

int32_t Tokenizer::Impl::SpmByteToken(uint8_t byte) const {
  static const char* hex = "0123456789ABCDEF";
  const char buf[6] = {'<', '0', 'x', hex[byte >> 4], hex[byte & 15], '>'};
  int32_t id = Find(std::string_view(buf, 6));
  if (id < 0) id = Find(std::string_view(reinterpret_cast<const char*>(&byte), 1));
  return id < 0 ? unk : id;
}

// SentencePiece BPE as llama.cpp runs it: start from UTF-8 characters and repeatedly merge the
// adjacent pair whose concatenation is the highest-scoring token (leftmost on ties); leftovers
// that are not tokens fall back to byte tokens <0xNN>.
void Tokenizer::Impl::EncodeSpm(std::string_view s, std::vector<int32_t>& out) const {
  struct Sym {
    int prev, next;
    size_t start, n;
  };
  std::vector<Sym> sym;
  for (size_t off = 0; off < s.size();) {
    const size_t len = std::min(Utf8SeqLen(s[off]), s.size() - off);
    const int idx = static_cast<int>(sym.size());
    sym.push_back({idx - 1, off + len == s.size() ? -1 : idx + 1, off, len});
    off += len;
  }
  if (sym.empty()) return;
  struct Bigram {
    int left, right;
    float score;
    size_t size;
  };
  const auto lower = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> queue(lower);
  const auto try_add = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    const std::string_view t = s.substr(sym[l].start, sym[l].n + sym[r].n);
    const int32_t id = Find(t);
    if (id < 0) return;
    queue.push({l, r, score[id], t.size()});
  };
  for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Sym& l = sym[b.left];
    Sym& r = sym[b.right];
    // Stale: one side was merged away or grew since this pair was queued.
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int i = 0; i != -1; i = sym[i].next) {
    const std::string_view t = s.substr(sym[i].start, sym[i].n);
    const int32_t id = Find(t);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (char c : t) {
      const int32_t b = SpmByteToken(static_cast<uint8_t>(c));
      if (b >= 0) out.push_back(b);
    }
  }
}

// Byte-level BPE: each pre-tokenized word starts as characters and the adjacent pair with the
// lowest merge rank is merged until none applies (leftmost on ties).
void Tokenizer::Impl::EncodeBpe(std::string_view s, std::vector<int32_t>& out) const {
  struct Sym {
    int prev, next;
    size_t start, n;
  };
  struct Bigram {
    int left, right;
    int32_t rank;
    size_t size;
  };
  const auto lower = [](const Bigram& a, const Bigram& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::vector<Sym> sym;
  std::string key;
  for (const std::string& w : pretok->Split(s)) {
    if (w.empty()) continue;
    if (ignore_merges) {
      if (const int32_t id = Find(w); id >= 0) {
        out.push_back(id);
        continue;
      }
    }
    sym.clear();
    for (size_t off = 0; off < w.size();) {
      const size_t len = std::min(Utf8SeqLen(w[off]), w.size() - off);
      const int idx = static_cast<int>(sym.size());
      sym.push_back({idx - 1, off + len == w.size() ? -1 : idx + 1, off, len});
      off += len;
    }
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> queue(lower);
    const auto try_add = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      key.assign(w, sym[l].start, sym[l].n);
      key += ' ';
      key.append(w, sym[r].start, sym[r].n);
      auto it = merge_rank.find(std::string_view(key));
      if (it == merge_rank.end()) return;
      queue.push({l, r, it->second, sym[l].n + sym[r].n});
    };
    for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Sym& l = sym[b.left];
      Sym& r = sym[b.right];
      if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    for (int i = 0; i != -1; i = sym[i].next) {
      const std::string_view t = std::string_view(w).substr(sym[i].start, sym[i].n);
      const int32_t id = Find(t);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      // Not a token: llama.cpp emits whichever single bytes of it are tokens.
      for (size_t k = 0; k < t.size(); ++k)
        if (const int32_t b = Find(t.substr(k, 1)); b >= 0) out.push_back(b);
    }
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  const auto fragments = m.Partition(text, parse_special);
  if (add_special && m.add_bos) {
    if (m.bos < 0) throw Error("the vocabulary asks for a BOS token but defines none");
    out.push_back(m.bos);
  }
  bool prev_special =
      true;  // SentencePiece text gets a leading space at the start and after specials
  for (const auto& fr : fragments) {
    if (fr.token >= 0) {
      out.push_back(fr.token);
      prev_special = true;
      continue;
    }
    const std::string_view raw = text.substr(fr.offset, fr.length);
    if (m.type == VocabType::kSpm) {
      std::string s;
      if (m.add_space_prefix && prev_special) s = " ";
      s.append(raw);
      ReplaceAll(s, " ", kSpaceMark);
      m.EncodeSpm(s, out);
    } else {
      m.EncodeBpe(raw, out);
    }
    prev_special = false;
  }
  if (add_special && m.add_eos) {
    if (m.eos < 0) throw Error("the vocabulary asks for an EOS token but defines none");
    out.push_back(m.eos);
  }
  return out;
}

std::string Tokenizer::TokenToPiece(int32_t id, bool render_special) const {
  impl_->CheckId(id);
  if (!render_special && (impl_->attr[id] & (kAttrUnknown | kAttrControl))) return "";
  return impl_->pieces[id];
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  bool strip_space = impl_->add_space_prefix;  // undo the space SentencePiece encoding added
  for (int32_t id : ids) {
    std::string piece = TokenToPiece(id, render_special);
    if (strip_space && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    strip_space = false;
    out += piece;
  }
  if (impl_->clean_spaces) CleanSpaces(out);
  return out;
}

int32_t Tokenizer::n_vocab() const {
  return static_cast<int32_t>(impl_->text.size());
}
int32_t Tokenizer::bos() const {
  return impl_->bos;
}
int32_t Tokenizer::eos() const {
  return impl_->eos;
}
int32_t Tokenizer::eot() const {
  return impl_->eot;
}
int32_t Tokenizer::unk() const {
  return impl_->unk;
}
bool Tokenizer::IsEog(int32_t id) const {
  return id >= 0 && id < n_vocab() && impl_->eog[id] != 0;
}
bool Tokenizer::add_bos() const {
  return impl_->add_bos;
}
bool Tokenizer::add_eos() const {
  return impl_->add_eos;
}
const std::string& Tokenizer::TokenText(int32_t id) const {
  impl_->CheckId(id);
  return impl_->text[id];
}
uint32_t Tokenizer::TokenAttrs(int32_t id) const {
  impl_->CheckId(id);
  return impl_->attr[id];
}
float Tokenizer::TokenScore(int32_t id) const {
  impl_->CheckId(id);
  return impl_->score[id];
}
std::optional<std::string> Tokenizer::ChatTemplate() const {
  return impl_->chat_template;
}
VocabType Tokenizer::type() const {
  return impl_->type;
}
const std::string& Tokenizer::pre() const {
  return impl_->pre;
}

}  // namespace es::tok
