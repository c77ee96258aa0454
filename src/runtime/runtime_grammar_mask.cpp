// The token mask: a depth-first walk of the vocabulary's byte trie from the matcher's state,
// dropping a subtree as soon as no parse stack survives its prefix, over an automaton of stack
// sets that is built as the walk meets them and kept for later steps.
#include <cstring>

#include "runtime/runtime_grammar.h"

namespace es::runtime {

std::string GrammarStacks::Key() const {
  std::string k(sizeof(uint32_t) * (data.size() + ends.size() + 1) + 1, '\0');
  char* o = k.data();
  // memcpy from an empty vector's null data() is undefined even for 0 bytes.
  if (!data.empty()) std::memcpy(o, data.data(), sizeof(uint32_t) * data.size());
  o += sizeof(uint32_t) * data.size();
  if (!ends.empty()) std::memcpy(o, ends.data(), sizeof(uint32_t) * ends.size());
  o += sizeof(uint32_t) * ends.size();
  std::memcpy(o, &cp, sizeof(uint32_t));
  o[sizeof(uint32_t)] = static_cast<char>(need);
  return k;
}

uint32_t GrammarMatcher::Intern(const GrammarStacks& s) {
  auto [it, fresh] = state_ids_.try_emplace(s.Key(), static_cast<uint32_t>(states_.size()));
  if (fresh) {
    states_.push_back(s);
    next_.resize(next_.size() + 256, kUnknown);
  }
  return it->second;
}

// The state after `byte` from `state`; kDead when no stack survives, kFull when the automaton
// is at its size limit (tmp_ then holds the stacks).
uint32_t GrammarMatcher::Next(uint32_t state, uint8_t byte) {
  uint32_t& slot = next_[static_cast<size_t>(state) * 256 + byte];
  if (slot != kUnknown) return slot;
  uint32_t result = kDead;
  if (AdvanceStacks(*g_, states_[state], byte, tmp_, scratch_)) {
    const auto it = state_ids_.find(tmp_.Key());
    if (it != state_ids_.end())
      result = it->second;
    else if (states_.size() >= kMaxStates)
      return kFull;
    else
      result = Intern(tmp_);
  }
  next_[static_cast<size_t>(state) * 256 + byte] = result;  // `slot` may have moved
  return result;
}

void GrammarMatcher::Walk(const TokenTrie& trie, uint32_t node, uint32_t state, size_t depth,
                          std::vector<uint64_t>& mask, size_t& n) {
  const TokenTrie::Node& nd = trie.nodes()[node];
  for (uint32_t t = nd.first_token; t < nd.first_token + nd.n_tokens; ++t) {
    const auto id = static_cast<uint32_t>(trie.node_tokens()[t]);
    mask[id / 64] |= uint64_t{1} << (id % 64);
  }
  n += nd.n_tokens;
  for (uint32_t e = nd.first_edge; e < nd.first_edge + nd.n_edges; ++e) {
    const uint32_t nx = Next(state, trie.edge_bytes()[e]);
    if (nx == kDead) continue;
    if (nx == kFull) {
      levels_[depth + 1] = tmp_;
      WalkStacks(trie, trie.edge_nodes()[e], depth + 1, mask, n);
    } else {
      Walk(trie, trie.edge_nodes()[e], nx, depth + 1, mask, n);
    }
  }
}

// The same walk advancing stacks directly (levels_[depth] holds this node's stacks).
void GrammarMatcher::WalkStacks(const TokenTrie& trie, uint32_t node, size_t depth,
                                std::vector<uint64_t>& mask, size_t& n) const {
  const TokenTrie::Node& nd = trie.nodes()[node];
  for (uint32_t t = nd.first_token; t < nd.first_token + nd.n_tokens; ++t) {
    const auto id = static_cast<uint32_t>(trie.node_tokens()[t]);
    mask[id / 64] |= uint64_t{1} << (id % 64);
  }
  n += nd.n_tokens;
  for (uint32_t e = nd.first_edge; e < nd.first_edge + nd.n_edges; ++e)
    if (AdvanceStacks(*g_, levels_[depth], trie.edge_bytes()[e], levels_[depth + 1], scratch_))
      WalkStacks(trie, trie.edge_nodes()[e], depth + 1, mask, n);
}

size_t GrammarMatcher::FillMask(const TokenTrie& trie, std::vector<uint64_t>& mask) {
  // A long generation through a grammar with counters keeps making states: start afresh.
  if (states_.size() > kMaxStates * 3 / 4) {
    states_.clear();
    next_.clear();
    state_ids_.clear();
    cache_.clear();
  }
  const uint32_t state = Intern(cur_);
  if (const auto it = cache_.find(state); it != cache_.end()) {
    mask = it->second.bits;
    return it->second.n;
  }
  mask.assign((static_cast<size_t>(trie.n_vocab()) + 63) / 64, 0);
  size_t n = 0;
  if (levels_.size() < trie.max_depth() + 2) levels_.resize(trie.max_depth() + 2);
  Walk(trie, 0, state, 0, mask, n);
  if (CanEnd())
    for (int32_t id : trie.eog_ids()) {
      mask[static_cast<size_t>(id) / 64] |= uint64_t{1} << (id % 64);
      ++n;
    }
  if (cache_.size() >= 256) cache_.clear();  // 256 masks of 151936 tokens: 4.6 MiB
  cache_.emplace(state, CachedMask{mask, n});
  return n;
}

}  // namespace es::runtime
