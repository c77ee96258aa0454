// Matching text against a Grammar: parse stacks advanced byte by byte (UTF-8 decoded into code
// points, partial sequences pruned by the code points they could still become), and the token
// mask: a depth-first walk of the vocabulary's byte trie that drops a whole subtree as soon as no
// stack survives its prefix.
#include <algorithm>
#include <cstring>

#include "edgeshard/error.h"
#include "runtime/runtime_grammar.h"

namespace es::runtime {
namespace {

using Op = Grammar::Op;

// Adds base (+ top, unless top is kNoTop) to out unless an equal stack is already there.
constexpr uint32_t kNoTop = UINT32_MAX;
void Emit(GrammarStacks& out, const std::vector<uint32_t>& base, uint32_t top) {
  const size_t len = base.size() + (top != kNoTop);
  uint32_t begin = 0;
  for (uint32_t end : out.ends) {
    if (end - begin == len && std::equal(base.begin(), base.end(), out.data.begin() + begin) &&
        (top == kNoTop || out.data[end - 1] == top))
      return;
    begin = end;
  }
  out.data.insert(out.data.end(), base.begin(), base.end());
  if (top != kNoTop) out.data.push_back(top);
  out.ends.push_back(static_cast<uint32_t>(out.data.size()));
}

// Bounds on one expansion, so that a grammar written to blow up (nullable rules nested
// thousands deep, stacks grown without end) is refused instead of exhausting the stack or time.
constexpr int kMaxExpandDepth = 2000;
constexpr size_t kMaxExpandSteps = 500000;
constexpr size_t kMaxStackDepth = 20000;

struct Budget {
  size_t steps = 0;
};

// Puts position `pos` on top of `base` and expands rule references and ends until each stack
// made waits on a character (or is empty: the sentence is complete). `base` is restored.
void Expand(const Grammar& g, std::vector<uint32_t>& base, uint32_t pos, GrammarStacks& out,
            Budget& b, int depth = 0) {
  if (depth > kMaxExpandDepth || ++b.steps > kMaxExpandSteps || base.size() > kMaxStackDepth)
    throw Error("grammar: matching needs more than " +
                std::string(base.size() > kMaxStackDepth ? "20000 nested rules"
                                                         : "the allowed work for one character") +
                " (rules that match nothing nested deeply, or nesting without end); simplify it");
  const Grammar::Elem& e = g.elems[pos];
  if (e.op == Op::kChar) {
    Emit(out, base, pos);
  } else if (e.op == Op::kEnd) {
    if (base.empty()) {
      Emit(out, base, kNoTop);
      return;
    }
    const uint32_t ret = base.back();
    base.pop_back();
    Expand(g, base, ret, out, b, depth + 1);
    base.push_back(ret);
  } else {
    // A reference last in its alternative returns straight to our caller: no frame for it, so
    // right recursion (repetition) does not deepen the stack.
    const uint32_t next = pos + 1;
    const bool tail = g.elems[next].op == Op::kEnd;
    if (!tail) base.push_back(next);
    for (uint32_t a : g.alts[e.arg]) Expand(g, base, a, out, b, depth + 1);
    if (!tail) base.pop_back();
  }
}

}  // namespace

bool AdvanceStacks(const Grammar& g, const GrammarStacks& in, uint8_t byte, GrammarStacks& out,
                   std::vector<uint32_t>& scratch) {
  out.Clear();
  uint32_t cp;
  uint8_t need;
  // kAnyCp: every stack takes any code point these bytes may still become, so which one it is
  // does not matter; forgetting it lets partial characters share states in the mask's automaton.
  bool any = false;
  if (in.need == 0) {
    if (byte < 0x80) {
      cp = byte, need = 0;
    } else if (byte >= 0xC2 && byte < 0xE0) {
      cp = byte & 0x1Fu, need = 1;
    } else if ((byte & 0xF0) == 0xE0) {
      cp = byte & 0x0Fu, need = 2;
    } else if (byte >= 0xF0 && byte <= 0xF4) {
      cp = byte & 0x07u, need = 3;
    } else {
      return false;  // not the first byte of a UTF-8 sequence
    }
  } else {
    if ((byte & 0xC0) != 0x80) return false;
    any = (in.need & GrammarStacks::kAnyCp) != 0;
    cp = any ? 0 : (in.cp << 6) | (byte & 0x3Fu);
    need = static_cast<uint8_t>((in.need & ~GrammarStacks::kAnyCp) - 1);
    // The first continuation byte decides whether the sequence can be valid: no overlong
    // forms, no surrogates, nothing past U+10FFFF (4-byte: in.need 3; 3-byte: lead bits < 16).
    if (!any && in.need == 3 && (cp < 0x10 || cp > 0x10F)) return false;
    if (!any && in.need == 2 && in.cp < 0x10 && (cp < 0x20 || (cp >= 0x360 && cp <= 0x37F)))
      return false;
  }
  uint32_t begin = 0;
  if (need > 0) {
    if (any) {
      out.data = in.data;
      out.ends = in.ends;
      out.need = static_cast<uint8_t>(need | GrammarStacks::kAnyCp);
      return true;
    }
    // Keep the stacks whose next character could still be what these bytes begin.
    uint32_t lo = cp << (6 * need);
    const uint32_t hi = std::min<uint32_t>(lo | ((1u << (6 * need)) - 1), 0x10FFFF);
    // After a lead byte: the smallest code point its length may encode (no overlong forms).
    if (in.need == 0) lo = std::max<uint32_t>(lo, need == 1 ? 0x80 : need == 2 ? 0x800 : 0x10000);
    bool all = true;
    for (uint32_t end : in.ends) {
      if (end > begin) {
        const auto& cls = g.classes[g.elems[in.data[end - 1]].arg];
        if (cls.MatchAny(lo, hi)) {
          out.data.insert(out.data.end(), in.data.begin() + begin, in.data.begin() + end);
          out.ends.push_back(static_cast<uint32_t>(out.data.size()));
          all = all && cls.MatchAll(lo, hi);
        }
      }
      begin = end;
    }
    // Leads whose next byte is restricted keep their bits until that byte is checked.
    if (in.need == 0 && (byte == 0xE0 || byte == 0xED || byte == 0xF0 || byte == 0xF4)) all = false;
    out.cp = all ? 0 : cp;
    out.need = all ? static_cast<uint8_t>(need | GrammarStacks::kAnyCp) : need;
    return !out.ends.empty();
  }
  Budget budget;
  for (uint32_t end : in.ends) {
    if (end > begin) {
      const uint32_t top = in.data[end - 1];
      if (any || g.classes[g.elems[top].arg].Match(cp)) {
        scratch.assign(in.data.begin() + begin, in.data.begin() + end - 1);
        Expand(g, scratch, top + 1, out, budget);
      }
    }
    begin = end;
  }
  return !out.ends.empty();
}

TokenTrie::TokenTrie(const std::vector<std::string>& pieces, const std::vector<bool>& eog)
    : pieces_(pieces), eog_(eog) {
  if (eog_.size() != pieces_.size())
    throw Error("token trie: " + std::to_string(eog.size()) + " end-of-generation flags for " +
                std::to_string(pieces.size()) + " tokens");
  std::vector<int32_t> order;
  for (size_t i = 0; i < pieces_.size(); ++i) {
    if (eog_[i]) eog_ids_.push_back(static_cast<int32_t>(i));
    if (!eog_[i] && !pieces_[i].empty()) order.push_back(static_cast<int32_t>(i));
    max_depth_ = std::max(max_depth_, pieces_[i].size());
  }
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return pieces_[static_cast<size_t>(a)] < pieces_[static_cast<size_t>(b)] ||
           (pieces_[static_cast<size_t>(a)] == pieces_[static_cast<size_t>(b)] && a < b);
  });
  Build(order, 0, order.size(), 0);
}

// order[lo, hi) share their first `depth` bytes; sorted, so those ending here come first.
uint32_t TokenTrie::Build(const std::vector<int32_t>& order, size_t lo, size_t hi, size_t depth) {
  const auto idx = static_cast<uint32_t>(nodes_.size());
  nodes_.push_back({});
  size_t k = lo;
  const auto first_token = static_cast<uint32_t>(node_tokens_.size());
  while (k < hi && piece(order[k]).size() == depth) node_tokens_.push_back(order[k++]);
  const auto n_tokens = static_cast<uint32_t>(node_tokens_.size() - first_token);
  std::vector<std::pair<size_t, size_t>> groups;
  while (k < hi) {
    const char b = piece(order[k])[depth];
    const size_t start = k;
    while (k < hi && piece(order[k])[depth] == b) ++k;
    groups.emplace_back(start, k);
  }
  const auto first_edge = static_cast<uint32_t>(edge_bytes_.size());
  for (const auto& [s, e] : groups) {
    edge_bytes_.push_back(static_cast<uint8_t>(piece(order[s])[depth]));
    edge_nodes_.push_back(0);
  }
  for (size_t gi = 0; gi < groups.size(); ++gi)
    edge_nodes_[first_edge + gi] = Build(order, groups[gi].first, groups[gi].second, depth + 1);
  nodes_[idx] = {first_edge, static_cast<uint32_t>(groups.size()), first_token, n_tokens};
  return idx;
}

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> g) : g_(std::move(g)) {
  if (!g_) throw Error("grammar matcher: no grammar given");
  Reset();
}

void GrammarMatcher::Reset() {
  cur_.Clear();
  scratch_.clear();
  Budget budget;
  for (uint32_t a : g_->alts[g_->root]) Expand(*g_, scratch_, a, cur_, budget);
}

bool GrammarMatcher::CanAccept(std::string_view bytes) const {
  if (bytes.empty()) return true;
  if (levels_.size() < 2) levels_.resize(2);
  const GrammarStacks* in = &cur_;
  for (size_t k = 0; k < bytes.size(); ++k) {
    GrammarStacks& out = levels_[k % 2];
    if (!AdvanceStacks(*g_, *in, static_cast<uint8_t>(bytes[k]), out, scratch_)) return false;
    in = &out;
  }
  return true;
}

bool GrammarMatcher::Accept(std::string_view bytes) {
  if (!CanAccept(bytes)) return false;
  if (!bytes.empty()) std::swap(cur_, levels_[(bytes.size() - 1) % 2]);
  return true;
}

bool GrammarMatcher::CanEnd() const {
  if (cur_.need != 0) return false;
  uint32_t begin = 0;
  for (uint32_t end : cur_.ends) {
    if (end == begin) return true;
    begin = end;
  }
  return false;
}

bool GrammarMatcher::Done() const {
  return CanEnd() && cur_.ends.size() == 1;  // stacks are distinct: the one is the empty one
}

bool GrammarMatcher::TokenAllowed(const TokenTrie& trie, int32_t id) const {
  if (trie.eog(id)) return CanEnd();
  const std::string& p = trie.piece(id);
  return !p.empty() && CanAccept(p);
}

bool GrammarMatcher::AcceptToken(const TokenTrie& trie, int32_t id) {
  if (trie.eog(id)) return CanEnd();
  const std::string& p = trie.piece(id);
  return !p.empty() && Accept(p);
}

}  // namespace es::runtime
