#include "tokenizer/tokenizer_trie.h"

#include <algorithm>
#include <string>
#include <vector>

namespace es::tok {

std::shared_ptr<const runtime::TokenTrie> BuildTokenTrie(const Tokenizer& t, int32_t n_vocab) {
  // Ids past the tokenizer's (a padded output layer) spell nothing.
  std::vector<std::string> pieces(static_cast<size_t>(std::max(n_vocab, t.n_vocab())));
  std::vector<bool> eog(pieces.size());
  for (int32_t i = 0; i < t.n_vocab(); ++i) {
    pieces[static_cast<size_t>(i)] = t.TokenToPiece(i);
    eog[static_cast<size_t>(i)] = t.IsEog(i);
  }
  return std::make_shared<const runtime::TokenTrie>(pieces, eog);
}

}  // namespace es::tok
