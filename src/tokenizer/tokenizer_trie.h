// The vocabulary as grammar-constrained sampling sees it: each token's piece (as generated text
// shows it) and whether it ends generation, in a byte trie (runtime_grammar.h). Built by the
// server's scheduler and by a cluster's last stage, which samples.
#pragma once
#include <cstdint>
#include <memory>

#include "runtime/runtime_grammar.h"
#include "tokenizer/tokenizer.h"

namespace es::tok {

// n_vocab: the model's (its output layer may be padded past the tokenizer's ids).
std::shared_ptr<const runtime::TokenTrie> BuildTokenTrie(const Tokenizer& t, int32_t n_vocab);

}  // namespace es::tok
