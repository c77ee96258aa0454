// Tokenizers built from a GGUF file's `tokenizer.*` metadata: SentencePiece (model "llama") and
// byte-level BPE (model "gpt2"). Token ids, special-token handling and pieces match llama.cpp
// (b4748).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf_file.h"

namespace es::tok {

enum class VocabType { kSpm, kBpe };

// Token attributes (llama.cpp's llama_token_attr bits), derived from tokenizer.ggml.token_type.
enum TokenAttr : uint32_t {
  kAttrUndefined = 0,
  kAttrUnknown = 1u << 0,
  kAttrUnused = 1u << 1,
  kAttrNormal = 1u << 2,
  kAttrControl = 1u << 3,
  kAttrUserDefined = 1u << 4,
  kAttrByte = 1u << 5,
  kAttrLstrip = 1u << 7,
  kAttrRstrip = 1u << 8,
};

class Tokenizer {
 public:
  // Builds the tokenizer from `f`'s metadata. Throws es::Error naming the key at fault when the
  // vocabulary is missing, malformed or of an unsupported kind.
  static std::unique_ptr<Tokenizer> FromGGUF(const gguf::File& f);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // add_special: add BOS/EOS as tokenizer.ggml.add_bos_token / add_eos_token say (llama.cpp's
  // defaults when absent). parse_special: texts of control tokens (e.g. "<|im_start|>") in the
  // input become those tokens; user-defined tokens are always recognised, as in llama.cpp.
  std::vector<int32_t> Encode(std::string_view text, bool add_special, bool parse_special) const;

  // The bytes a token stands for. Control and unknown tokens give "" unless render_special.
  std::string TokenToPiece(int32_t id) const { return TokenToPiece(id, false); }
  std::string TokenToPiece(int32_t id, bool render_special) const;
  // Concatenated pieces with llama.cpp's detokenizer rules (leading space of SentencePiece text
  // removed, spaces before punctuation cleaned for vocabularies that ask for it).
  std::string Decode(const std::vector<int32_t>& ids, bool render_special = false) const;

  int32_t n_vocab() const;
  int32_t bos() const;           // -1 if none
  int32_t eos() const;           // -1 if none
  int32_t eot() const;           // -1 if none
  int32_t unk() const;           // -1 if none
  bool IsEog(int32_t id) const;  // end of generation: eos, eot, eom and tokens like <|im_end|>
  bool add_bos() const;
  bool add_eos() const;
  const std::string& TokenText(int32_t id) const;
  uint32_t TokenAttrs(int32_t id) const;  // TokenAttr bits
  float TokenScore(int32_t id) const;
  std::optional<std::string> ChatTemplate() const;  // tokenizer.chat_template
  VocabType type() const;
  const std::string& pre() const;  // tokenizer.ggml.pre ("" if absent)

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace es::tok
