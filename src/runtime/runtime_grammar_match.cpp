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

// Puts position `pos` on top of `base` and expands rule references and ends until each stack
// made waits on a character (or is empty: the sentence is complete). `base` is restored.
void Expand(const Grammar& g, std::vector<uint32_t>& base, uint32_t pos, GrammarStacks& out) {
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
    Expand(g, base, ret, out);
    base.push_back(ret);
  } else {
    // A reference last in its alternative returns straight to our caller: no frame for it, so
    // right recursion (repetition) does not deepen the stack.
    const uint32_t next = pos + 1;
    const bool tail = g.elems[next].op == Op::kEnd;
    if (!tail) base.push_back(next);
    for (uint32_t a : g.alts[e.arg]) Expand(g, base, a, out);
    if (!tail) base.pop_back();
  }
}

}  // namespace

bool AdvanceStacks(const Grammar& g, const GrammarStacks& in, uint8_t byte, GrammarStacks& out,
                   std::vector<uint32_t>& scratch) {
  out.Clear();
  uint32_t cp;
  uint8_t need;
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
    cp = (in.cp << 6) | (byte & 0x3Fu);
    need = static_cast<uint8_t>(in.need - 1);
  }
  uint32_t begin = 0;
  if (need > 0) {
    // Keep the stacks whose next character could still be what these bytes begin.
    const uint32_t lo = cp << (6 * need), hi = lo | ((1u << (6 * need)) - 1);
    for (uint32_t end : in.ends) {
      if (end > begin && g.classes[g.elems[in.data[end - 1]].arg].MatchAny(lo, hi)) {
        out.data.insert(out.data.end(), in.data.begin() + begin, in.data.begin() + end);
        out.ends.push_back(static_cast<uint32_t>(out.data.size()));
      }
      begin = end;
    }
    out.cp = cp;
    out.need = need;
    return !out.ends.empty();
  }
  for (uint32_t end : in.ends) {
    if (end > begin) {
      const uint32_t top = in.data[end - 1];
      if (g.classes[g.elems[top].arg].Match(cp)) {
        scratch.assign(in.data.begin() + begin, in.data.begin() + end - 1);
        Expand(g, scratch, top + 1, out);
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
  nodes_[idx] = {first_edge, static_cast<uint32_t>(groups.size()), first_token,
                 static_cast<uint32_t>(node_tokens_.size() - first_token)};
  return idx;
}

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> g) : g_(std::move(g)) {
  if (!g_) throw Error("grammar matcher: no grammar given");
  Reset();
}

void GrammarMatcher::Reset() {
  cur_.Clear();
  scratch_.clear();
  for (uint32_t a : g_->alts[g_->root]) Expand(*g_, scratch_, a, cur_);
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

std::string GrammarMatcher::StateKey() const {
  std::string k;
  k.resize(sizeof(uint32_t) * (cur_.data.size() + cur_.ends.size()) + 5);
  char* o = k.data();
  std::memcpy(o, cur_.data.data(), sizeof(uint32_t) * cur_.data.size());
  o += sizeof(uint32_t) * cur_.data.size();
  std::memcpy(o, cur_.ends.data(), sizeof(uint32_t) * cur_.ends.size());
  o += sizeof(uint32_t) * cur_.ends.size();
  std::memcpy(o, &cur_.cp, sizeof(uint32_t));
  o[4] = static_cast<char>(cur_.need);
  return k;
}

void GrammarMatcher::Walk(const TokenTrie& trie, uint32_t node, size_t depth,
                          std::vector<uint64_t>& mask, size_t& n) const {
  const TokenTrie::Node& nd = trie.nodes()[node];
  if (depth > 0) {
    for (uint32_t t = nd.first_token; t < nd.first_token + nd.n_tokens; ++t) {
      const auto id = static_cast<uint32_t>(trie.node_tokens()[t]);
      mask[id / 64] |= uint64_t{1} << (id % 64);
    }
    n += nd.n_tokens;
  }
  for (uint32_t e = nd.first_edge; e < nd.first_edge + nd.n_edges; ++e)
    if (AdvanceStacks(*g_, levels_[depth], trie.edge_bytes()[e], levels_[depth + 1], scratch_))
      Walk(trie, trie.edge_nodes()[e], depth + 1, mask, n);
}

size_t GrammarMatcher::FillMask(const TokenTrie& trie, std::vector<uint64_t>& mask) {
  const size_t words = (static_cast<size_t>(trie.n_vocab()) + 63) / 64;
  std::string key = StateKey();
  if (auto it = cache_.find(key); it != cache_.end()) {
    mask = it->second.bits;
    return it->second.n;
  }
  mask.assign(words, 0);
  size_t n = 0;
  if (levels_.size() < trie.max_depth() + 2) levels_.resize(trie.max_depth() + 2);
  levels_[0] = cur_;
  Walk(trie, 0, 0, mask, n);
  if (CanEnd())
    for (int32_t id : trie.eog_ids()) {
      mask[static_cast<size_t>(id) / 64] |= uint64_t{1} << (id % 64);
      ++n;
    }
  // States repeat (inside a string, between array items): keep a bounded number of masks.
  if (cache_.size() >= 64) cache_.clear();
  cache_.emplace(std::move(key), CachedMask{mask, n});
  return n;
}

}  // namespace es::runtime
