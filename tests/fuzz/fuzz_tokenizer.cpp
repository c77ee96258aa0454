// Tokenizers of every shared vocabulary: the first byte picks the vocabulary and the options, the
// rest is text to encode; the same bytes, read as token ids, are decoded.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace {

using es::tok::Tokenizer;

struct Vocab {
  std::string name;
  std::unique_ptr<Tokenizer> tk;
  // Bytes whose byte-level symbol is no token (falcon lacks 0x03, 0xf2, ...): encoding skips
  // them, as llama.cpp does, so texts holding one do not reassemble.
  std::string unencodable;
};

// GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the others for
// U+0100 onwards in byte order.
std::string MissingBytes(const Tokenizer& tk) {
  std::set<std::string> texts;
  for (int32_t id = 0; id < tk.n_vocab(); ++id) texts.insert(tk.TokenText(id));
  std::string missing;
  int next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const uint32_t cp = printable ? b : next++;
    std::string sym;  // cp < 0x800: one or two UTF-8 bytes
    if (cp < 0x80) {
      sym = std::string(1, static_cast<char>(cp));
    } else {
      sym += static_cast<char>(0xC0 | (cp >> 6));
      sym += static_cast<char>(0x80 | (cp & 0x3F));
    }
    if (!texts.count(sym)) missing += static_cast<char>(b);
  }
  return missing;
}

std::vector<Vocab>& Vocabs() {
  static auto all = [] {
    std::vector<std::string> paths;
    for (const auto& e : std::filesystem::directory_iterator(es::fuzz::ModelPath("vocab")))
      if (e.path().extension() == ".gguf") paths.push_back(e.path().string());
    // Sorted, so the byte that picks a vocabulary means the same one on every machine.
    std::sort(paths.begin(), paths.end());
    paths.push_back(es::fuzz::ModelPath("stories260K.gguf"));
    std::vector<Vocab> v;
    for (const auto& p : paths) {
      Vocab vocab{std::filesystem::path(p).filename().string(), es::fuzz::LoadTokenizer(p), ""};
      if (vocab.tk->type() == es::tok::VocabType::kBpe) vocab.unencodable = MissingBytes(*vocab.tk);
      v.push_back(std::move(vocab));
    }
    return v;
  }();
  return all;
}

std::string Concat(const Tokenizer& tk, const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += tk.TokenToPiece(id);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Vocabs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto& vocabs = Vocabs();
  const uint8_t sel = data[0];
  const Vocab& vocab = vocabs[(sel & 0x1F) % vocabs.size()];
  const Tokenizer& tk = *vocab.tk;
  const bool add_special = sel & 0x20, parse_special = sel & 0x40, render_special = sel & 0x80;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const int32_t n = tk.n_vocab();

  std::vector<int32_t> ids;
  try {
    ids = tk.Encode(text, add_special, parse_special);
  } catch (const es::Error&) {
    return 0;
  }
  for (int32_t id : ids)
    if (id < 0 || id >= n) es::fuzz::Fail("Encode gave id " + std::to_string(id));
  (void)tk.Decode(ids, render_special);

  // Pieces reassemble the text (tests/test_tokenizer.cpp PiecesReassembleTheInput), checked where
  // those tests show it: plain encoding of valid UTF-8. SentencePiece prepends its space, and
  // its pieces write U+2581 (its escaped space) as a space, so a literal one does not come back.
  const bool spm = tk.type() == es::tok::VocabType::kSpm;
  if (!add_special && !parse_special && es::fuzz::IsValidUtf8(text) &&
      text.find_first_of(vocab.unencodable) == std::string::npos &&
      !(spm && text.find("\xe2\x96\x81") != std::string::npos)) {
    const std::string want = spm && !text.empty() ? " " + text : text;
    if (Concat(tk, ids) != want) {
      std::string list;
      for (int32_t id : ids) list += " " + std::to_string(id) + " '" + tk.TokenText(id) + "'";
      es::fuzz::Fail(vocab.name + ": the pieces of" + list + " do not reassemble the text");
    }
  }

  // The bytes as little-endian 16-bit ids folded into the vocabulary.
  std::vector<int32_t> raw;
  for (size_t i = 1; i + 1 < size; i += 2)
    raw.push_back(static_cast<int32_t>((data[i] | data[i + 1] << 8) % n));
  (void)tk.Decode(raw, render_special);
  for (int32_t id : raw) (void)tk.TokenToPiece(id, render_special);
  return 0;
}
