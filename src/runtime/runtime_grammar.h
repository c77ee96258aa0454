// Grammar-constrained decoding: GBNF grammars (llama.cpp's syntax) compiled once, a matcher that
// follows the text generated so far as a set of parse stacks, and the per-step mask of the tokens
// that may come next, computed by walking a byte trie of the vocabulary with those stacks.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace es::runtime {

// A compiled grammar. Immutable: one may serve many matchers at once.
//
// Syntax (llama.cpp's GBNF): `name ::= alternatives` rules, one per line (a rule continues over
// newlines inside parentheses or after `::=` and `|`); `|` alternatives; sequences; "literal"
// strings and [character classes] (ranges, `^` negation) with \n \r \t \\ \" \] \xHH \uHHHH
// \UHHHHHHHH escapes; `.` (any character); ( groups ); `*` `+` `?` `{m}` `{m,}` `{m,n}` `{,n}`;
// `#` comments. Matching is on Unicode code points of UTF-8 text.
struct Grammar {
  enum class Op : uint8_t { kEnd, kRef, kChar };
  struct Elem {
    Op op;
    uint32_t arg;  // kRef: rule index; kChar: class index
  };
  struct CharClass {
    bool negated = false;
    std::vector<std::pair<uint32_t, uint32_t>> ranges;  // inclusive code point ranges
    uint64_t ascii[2] = {0, 0};                         // the answer for code points < 128
    bool Match(uint32_t cp) const;
    // Whether some code point in [lo, hi] matches (for a partly read UTF-8 sequence).
    bool MatchAny(uint32_t lo, uint32_t hi) const;
    // Whether every code point in [lo, hi] matches.
    bool MatchAll(uint32_t lo, uint32_t hi) const;
  };

  // Parses and checks GBNF text. Throws es::Error "grammar: line L, column C: ..." saying what
  // was expected, and for a missing root rule, an undefined rule or left recursion (a rule that
  // can reach itself without reading a character, which would never end).
  static std::shared_ptr<const Grammar> Parse(std::string_view text,
                                              std::string_view root = "root");

  // Every alternative of every rule, each ended by kEnd; alternatives start at alts[rule][i].
  std::vector<Elem> elems;
  std::vector<std::vector<uint32_t>> alts;
  std::vector<std::string> rule_names;
  std::vector<CharClass> classes;
  uint32_t root = 0;
  // The text and root rule it was parsed from: what a cluster's last stage, which samples,
  // receives to build the same grammar.
  std::string source, root_name;
};

// The vocabulary's token pieces as a byte trie, built once per tokenizer and shared.
class TokenTrie {
 public:
  // pieces[i]: the bytes token i stands for ("" never matches a grammar: control tokens);
  // eog[i]: token i ends generation (allowed exactly where the grammar may end).
  TokenTrie(const std::vector<std::string>& pieces, const std::vector<bool>& eog);
  int32_t n_vocab() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& piece(int32_t id) const { return pieces_[static_cast<size_t>(id)]; }
  bool eog(int32_t id) const { return eog_[static_cast<size_t>(id)]; }
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }

  // Preorder nodes: node 0 is the root; a node's children are its edges' targets.
  struct Node {
    uint32_t first_edge, n_edges;
    uint32_t first_token, n_tokens;  // tokens whose piece ends here
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<uint8_t>& edge_bytes() const { return edge_bytes_; }
  const std::vector<uint32_t>& edge_nodes() const { return edge_nodes_; }
  const std::vector<int32_t>& node_tokens() const { return node_tokens_; }
  size_t max_depth() const { return max_depth_; }

 private:
  uint32_t Build(const std::vector<int32_t>& order, size_t lo, size_t hi, size_t depth);

  std::vector<std::string> pieces_;
  std::vector<bool> eog_;
  std::vector<int32_t> eog_ids_;
  std::vector<Node> nodes_;
  std::vector<uint8_t> edge_bytes_;
  std::vector<uint32_t> edge_nodes_;
  std::vector<int32_t> node_tokens_;
  size_t max_depth_ = 0;
};

// A set of parse stacks plus the UTF-8 bytes of a code point not yet complete. Each stack lists
// element positions, innermost last; the last one is a kChar element to match next. An empty
// stack means the input so far is a complete sentence.
struct GrammarStacks {
  std::vector<uint32_t> data;
  std::vector<uint32_t> ends;  // stack i is data[ends[i-1] .. ends[i])
  uint32_t cp = 0;             // partial code point bits read so far
  uint8_t need = 0;            // continuation bytes still to come, | kAnyCp
  // Every stack takes whatever code point the partial bytes become: cp is not kept.
  static constexpr uint8_t kAnyCp = 0x80;
  size_t size() const { return ends.size(); }
  // The whole state as bytes, for finding it again.
  std::string Key() const;
  void Clear() {
    data.clear();
    ends.clear();
    cp = 0;
    need = 0;
  }
};

// Follows generated text through a grammar. Not thread-safe; one per generation. Every method
// that advances may throw es::Error when a pathological grammar needs more work or nesting than
// allowed for one character.
class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const Grammar> g);

  // Advances over `bytes`; false (and the state unchanged) when the grammar does not allow them.
  bool Accept(std::string_view bytes);
  bool CanAccept(std::string_view bytes) const;
  // The text so far is a complete sentence of the grammar.
  bool CanEnd() const;
  // Complete, and nothing more may follow: only an end-of-generation token fits.
  bool Done() const;
  // Back to the start of the grammar.
  void Reset();

  // Whether token `id` may come next (an EOG token: where the grammar can end).
  bool TokenAllowed(const TokenTrie& trie, int32_t id) const;
  // Sets bit i of `mask` (trie.n_vocab() bits, 64 per word) for each token allowed next.
  // Returns how many are allowed. Masks of states met before are reused.
  size_t FillMask(const TokenTrie& trie, std::vector<uint64_t>& mask);
  // Advances over token `id`'s piece (an EOG token leaves the state as it is); false when the
  // token is not allowed.
  bool AcceptToken(const TokenTrie& trie, int32_t id);

  const Grammar& grammar() const { return *g_; }

 private:
  // The mask's walk runs on an automaton built as it goes: each distinct stack set met is a
  // state with a table of 256 successors, filled when a byte is first tried from it. A state met
  // again (inside a string, the next array item, a later step) then costs one table lookup per
  // trie edge instead of advancing its stacks.
  static constexpr uint32_t kUnknown = UINT32_MAX, kDead = UINT32_MAX - 1, kFull = UINT32_MAX - 2;
  static constexpr size_t kMaxStates = 8192;  // 8 MiB of tables; then the walk goes on without
  uint32_t Intern(const GrammarStacks& s);
  uint32_t Next(uint32_t state, uint8_t byte);
  void Walk(const TokenTrie& trie, uint32_t node, uint32_t state, size_t depth,
            std::vector<uint64_t>& mask, size_t& n);
  void WalkStacks(const TokenTrie& trie, uint32_t node, size_t depth, std::vector<uint64_t>& mask,
                  size_t& n) const;

  std::shared_ptr<const Grammar> g_;
  GrammarStacks cur_;
  mutable std::vector<GrammarStacks> levels_;  // per trie depth, reused by CanAccept, WalkStacks
  mutable std::vector<uint32_t> scratch_;
  std::vector<GrammarStacks> states_;
  std::vector<uint32_t> next_;  // 256 per state
  std::unordered_map<std::string, uint32_t> state_ids_;
  GrammarStacks tmp_;
  struct CachedMask {
    std::vector<uint64_t> bits;
    size_t n;
  };
  std::unordered_map<uint32_t, CachedMask> cache_;  // by state
};

// Moves `in` over one byte into `out` (cleared first); false when no stack survives.
bool AdvanceStacks(const Grammar& g, const GrammarStacks& in, uint8_t byte, GrammarStacks& out,
                   std::vector<uint32_t>& scratch);

}  // namespace es::runtime
