// Pre-tokenizer for byte-level BPE vocabularies: splits text into words with a cascade of regexes
// chosen by `tokenizer.ggml.pre`, the way llama.cpp (b4748) does, using PCRE2 in UTF mode.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace es::tok {

// How a BPE vocabulary is pre-tokenized and post-processed, derived from its pre-tokenizer name.
struct PreTokenizerSpec {
  std::vector<std::string>
      regexes;                 // applied in order; each refines the pieces of the previous one
  bool ignore_merges = false;  // a whole word that is a token is emitted as is (llama3, tekken)
  bool add_bos = false;        // default for tokenizer.ggml.add_bos_token
  bool clean_spaces = true;    // detokenizer removes spaces before punctuation
  bool no_bos = false;         // the vocabulary has no BOS unless the file names one
};

// The spec for a `tokenizer.ggml.pre` value ("" means llama.cpp's default). Throws es::Error naming
// the value and the supported ones if it is unknown.
PreTokenizerSpec PreTokenizerFor(const std::string& pre);

class PreTokenizer {
 public:
  explicit PreTokenizer(const std::vector<std::string>& regexes);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Splits `text` into words, each already mapped to GPT-2 byte-level characters. Malformed UTF-8
  // becomes U+FFFD first, as in llama.cpp.
  std::vector<std::string> Split(std::string_view text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace es::tok
