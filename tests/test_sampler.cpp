// Sampling chain and stop strings.
#if defined(__GNUC__) && !defined(__clang__)
// The counting operator new below pairs malloc with free; GCC cannot see that through inlining.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <new>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "runtime/runtime_sampler.h"
#include "runtime/runtime_stop.h"

// Counts heap allocations so the test can prove Sample/Accept allocate nothing.
static std::atomic<long> g_allocs{0};
void* operator new(std::size_t n) {
  ++g_allocs;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}

namespace es::runtime {
namespace {

SamplerParams Plain(float temp = 1.0f) {
  SamplerParams p;
  p.temperature = temp;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = 1234;
  return p;
}

std::vector<float> LogitsFromProbs(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

std::vector<float> RandomLogits(int n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 3.0f);
  std::vector<float> l(static_cast<size_t>(n));
  for (auto& x : l) x = d(g);
  return l;
}

std::set<int32_t> CandidateIds(const Sampler& s) {
  std::set<int32_t> ids;
  for (const auto& c : s.candidates()) ids.insert(c.id);
  return ids;
}

std::map<int32_t, int> Histogram(Sampler& s, const std::vector<float>& logits, int draws) {
  std::map<int32_t, int> h;
  for (int i = 0; i < draws; ++i) ++h[s.Sample(logits.data())];
  return h;
}

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
  Sampler s(Plain(0.0f), 6);
  std::vector<float> l = {0.1f, 3.0f, -2.0f, 3.0f, NAN, 2.9f};
  EXPECT_EQ(s.Sample(l.data()), 1);
  ASSERT_EQ(s.candidates().size(), 1u);
  EXPECT_EQ(s.candidates()[0].id, 1);
  EXPECT_FLOAT_EQ(s.candidates()[0].p, 1.0f);
  l[4] = 7.0f;
  EXPECT_EQ(s.Sample(l.data()), 4);
  SamplerParams neg = Plain(-1.0f);  // negative temperature also means greedy
  Sampler s2(neg, 6);
  EXPECT_EQ(s2.Sample(l.data()), 4);
}

TEST(Sampler, GreedyMatchesArgmaxOnRandomLogits) {
  Sampler s(Plain(0.0f), 1000);
  for (uint32_t seed = 0; seed < 20; ++seed) {
    auto l = RandomLogits(1000, seed);
    const auto best = std::max_element(l.begin(), l.end()) - l.begin();
    EXPECT_EQ(s.Sample(l.data()), best);
  }
}

TEST(Sampler, TopK1EqualsGreedy) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    SamplerParams p;  // the default chain, only k changed
    p.top_k = 1;
    p.seed = seed;
    Sampler s(p, 500);
    Sampler g(Plain(0.0f), 500);
    auto l = RandomLogits(500, 100 + seed);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(s.Sample(l.data()), g.Sample(l.data()));
  }
}

TEST(Sampler, SameSeedSameSequenceDifferentSeedsDiffer) {
  auto l = RandomLogits(200, 7);
  for (auto& x : l) x *= 0.3f;  // flat enough that draws vary
  auto run = [&](uint64_t seed) {
    SamplerParams p;
    p.seed = seed;
    p.min_p = 0.0f;
    Sampler s(p, 200);
    std::vector<int32_t> out;
    for (int i = 0; i < 100; ++i) out.push_back(s.Sample(l.data()));
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_EQ(run(1ull << 40), run(1ull << 40));
  EXPECT_NE(run(42), run(43));
  EXPECT_NE(run(42), run(42 + (1ull << 40)));  // high seed bits matter too
  // The sequence itself varies (not one token repeated).
  auto seq = run(42);
  EXPECT_GT(std::set<int32_t>(seq.begin(), seq.end()).size(), 5u);
}

TEST(Sampler, ResetRestartsTheSequence) {
  auto l = RandomLogits(100, 3);
  SamplerParams p = Plain();
  p.seed = 99;
  Sampler s(p, 100);
  std::vector<int32_t> a, b;
  for (int i = 0; i < 50; ++i) a.push_back(s.Sample(l.data()));
  s.Reset();
  for (int i = 0; i < 50; ++i) b.push_back(s.Sample(l.data()));
  EXPECT_EQ(a, b);
  EXPECT_EQ(s.seed(), 99u);
}

TEST(Sampler, RandomSeedIsResolved) {
  SamplerParams p;
  p.seed = Sampler::kRandomSeed;
  Sampler s(p, 10);
  auto l = RandomLogits(10, 1);
  const int32_t t = s.Sample(l.data());
  EXPECT_GE(t, 0);
  EXPECT_LT(t, 10);
  EXPECT_LE(s.seed(), 0xFFFFFFFFull);
}

// The draw must be the one libstdc++'s std::discrete_distribution makes on the same engine
// state (that is what llama.cpp uses), so a seed means the same here as there.
TEST(Sampler, DrawMatchesDiscreteDistribution) {
  auto l = RandomLogits(64, 11);
  Sampler s(Plain(), 64);
  std::mt19937 ref(1234);
  for (int i = 0; i < 2000; ++i) {
    const int32_t got = s.Sample(l.data());
    std::vector<float> probs;
    for (const auto& c : s.candidates()) probs.push_back(c.p);
    std::discrete_distribution<int> d(probs.begin(), probs.end());
    EXPECT_EQ(got, s.candidates()[static_cast<size_t>(d(ref))].id) << "draw " << i;
  }
}

TEST(Sampler, FrequenciesFollowTheDistribution) {
  const std::vector<double> probs = {0.5, 0.25, 0.125, 0.0625, 0.0625};
  auto l = LogitsFromProbs(probs);
  Sampler s(Plain(), 5);
  const int n = 40000;
  auto h = Histogram(s, l, n);
  for (size_t i = 0; i < probs.size(); ++i)
    EXPECT_NEAR(static_cast<double>(h[static_cast<int32_t>(i)]) / n, probs[i], 0.01) << i;
}

TEST(Sampler, CandidateProbabilitiesAreTheTemperedSoftmax) {
  std::vector<float> l = {1.0f, 2.0f, 0.5f, -1.0f};
  const float t = 0.7f;
  Sampler s(Plain(t), 4);
  s.Sample(l.data());
  auto c = s.candidates();
  ASSERT_EQ(c.size(), 4u);
  double z = 0;
  for (float x : l) z += std::exp(static_cast<double>(x) / t);
  float sum = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    if (i) {
      EXPECT_GE(c[i - 1].p, c[i].p);  // most probable first
    }
    EXPECT_NEAR(c[i].p, std::exp(l[static_cast<size_t>(c[i].id)] / t) / z, 1e-6);
    EXPECT_FLOAT_EQ(c[i].logit, l[static_cast<size_t>(c[i].id)] / t);
    sum += c[i].p;
  }
  EXPECT_NEAR(sum, 1.0f, 1e-6);
  EXPECT_EQ(c[0].id, 1);
}

TEST(Sampler, TopKKeepsTheKLargest) {
  std::vector<float> l = {0.0f, 5.0f, 1.0f, 4.0f, 3.0f, 2.0f, 3.0f};
  SamplerParams p = Plain();
  p.top_k = 3;
  Sampler s(p, 7);
  for (int i = 0; i < 200; ++i) {
    const int32_t t = s.Sample(l.data());
    EXPECT_TRUE(t == 1 || t == 3 || t == 4) << t;
    EXPECT_EQ(CandidateIds(s), (std::set<int32_t>{1, 3, 4}));  // tie 4/6: lower id kept
  }
}

TEST(Sampler, TopPCutsAtTheCumulativeMass) {
  // Sorted mass 0.5, 0.8, 0.95, 1.0.
  auto l = LogitsFromProbs({0.3, 0.5, 0.05, 0.15});
  SamplerParams p = Plain();
  p.top_p = 0.75f;
  Sampler s(p, 4);
  auto h = Histogram(s, l, 20000);
  EXPECT_EQ(CandidateIds(s), (std::set<int32_t>{0, 1}));
  EXPECT_EQ(h.count(2) + h.count(3), 0u);
  EXPECT_NEAR(h[1] / 20000.0, 0.5 / 0.8, 0.015);
  // Renormalised over the survivors.
  for (const auto& c : s.candidates()) EXPECT_NEAR(c.p, c.id == 1 ? 0.625 : 0.375, 1e-5);

  p.top_p = 0.9f;
  Sampler s2(p, 4);
  s2.Sample(l.data());
  EXPECT_EQ(CandidateIds(s2), (std::set<int32_t>{0, 1, 3}));
  p.top_p = 0.0f;  // the top token always survives
  Sampler s3(p, 4);
  EXPECT_EQ(s3.Sample(l.data()), 1);
  EXPECT_EQ(CandidateIds(s3), (std::set<int32_t>{1}));
}

TEST(Sampler, MinPKeepsTokensAboveAFractionOfTheTop) {
  auto l = LogitsFromProbs({0.04, 0.4, 0.2, 0.3, 0.06});
  SamplerParams p = Plain();
  p.min_p = 0.125f;  // threshold 0.05
  Sampler s(p, 5);
  auto h = Histogram(s, l, 20000);
  EXPECT_EQ(CandidateIds(s), (std::set<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(h.count(0), 0u);
  EXPECT_GT(h[4], 0);
  EXPECT_NEAR(h[1] / 20000.0, 0.4 / 0.96, 0.015);
  p.min_p = 0.6f;  // threshold 0.24
  Sampler s2(p, 5);
  s2.Sample(l.data());
  EXPECT_EQ(CandidateIds(s2), (std::set<int32_t>{1, 3}));
}

TEST(Sampler, ChainOrderTopPBeforeTemperature) {
  // Top-p works on the untempered distribution: a high temperature must not widen the set.
  auto l = LogitsFromProbs({0.3, 0.5, 0.05, 0.15});
  SamplerParams p = Plain(5.0f);
  p.top_p = 0.75f;
  Sampler s(p, 4);
  s.Sample(l.data());
  EXPECT_EQ(CandidateIds(s), (std::set<int32_t>{0, 1}));
}

TEST(Sampler, PenaltiesChangeLogitsExactly) {
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 0.0f, 3.0f};
  SamplerParams p = Plain();
  p.repeat_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  Sampler s(p, 5);
  for (int32_t t : {0, 0, 1, 3}) s.Accept(t);
  s.Sample(l.data());
  std::map<int32_t, float> got;
  for (const auto& c : s.candidates()) got[c.id] = c.logit;
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(got[0], 2.0f / 2.0f - 2 * 0.5f - 0.25f);  // positive: divided
  EXPECT_EQ(got[1], -1.0f * 2.0f - 0.5f - 0.25f);     // negative: multiplied
  EXPECT_EQ(got[2], 0.5f);                            // not seen: unchanged
  EXPECT_EQ(got[3], 0.0f - 0.5f - 0.25f);             // zero stays zero before freq/presence
  EXPECT_EQ(got[4], 3.0f);
}

TEST(Sampler, PenaltyWindowForgetsOldTokens) {
  std::vector<float> l = {1.0f, 1.0f, 1.0f, 1.0f};
  SamplerParams p = Plain();
  p.presence_penalty = 1.0f;
  p.penalty_last_n = 2;
  Sampler s(p, 4);
  for (int32_t t : {0, 1, 2, 2}) s.Accept(t);  // window now {2, 2}
  s.Sample(l.data());
  std::map<int32_t, float> got;
  for (const auto& c : s.candidates()) got[c.id] = c.logit;
  EXPECT_EQ(got[0], 1.0f);
  EXPECT_EQ(got[1], 1.0f);
  EXPECT_EQ(got[2], 0.0f);
  s.Accept(3);  // window {2, 3}
  s.Sample(l.data());
  for (const auto& c : s.candidates()) got[c.id] = c.logit;
  EXPECT_EQ(got[2], 0.0f);
  EXPECT_EQ(got[3], 0.0f);
  s.Accept(3);  // window {3, 3}
  s.Sample(l.data());
  for (const auto& c : s.candidates()) got[c.id] = c.logit;
  EXPECT_EQ(got[2], 1.0f);
  s.Reset();
  s.Sample(l.data());
  for (const auto& c : s.candidates()) EXPECT_EQ(c.logit, 1.0f);
}

TEST(Sampler, GreedyAppliesPenalties) {
  std::vector<float> l = {3.0f, 2.0f, 1.0f};
  SamplerParams p = Plain(0.0f);
  p.repeat_penalty = 2.0f;
  Sampler s(p, 3);
  EXPECT_EQ(s.Sample(l.data()), 0);
  s.Accept(0);  // 3 / 2 = 1.5 < 2
  EXPECT_EQ(s.Sample(l.data()), 1);
  p.penalty_last_n = 0;  // window off: no penalty
  Sampler off(p, 3);
  off.Accept(0);
  EXPECT_EQ(off.Sample(l.data()), 0);
}

// logit_bias comes first in the chain (llama.cpp's order): -inf bans under greedy decoding and
// sampling alike, a large bias wins, and it is added before penalties see the logit.
TEST(Sampler, LogitBiasBansAndForces) {
  const std::vector<float> l = {3.0f, 2.0f, 1.0f, 0.0f};
  const float ban = -std::numeric_limits<float>::infinity();
  for (const float temp : {0.0f, 1.0f}) {
    SamplerParams p = Plain(temp);
    p.logit_bias = {{0, ban}};
    Sampler banned(p, 4);
    for (int i = 0; i < 200; ++i) EXPECT_NE(banned.Sample(l.data()), 0);
    p.logit_bias = {{3, 100.0f}};
    Sampler forced(p, 4);
    for (int i = 0; i < 200; ++i) EXPECT_EQ(forced.Sample(l.data()), 3);
  }
  SamplerParams p = Plain(0.0f);
  p.logit_bias = {{1, 2.0f}};  // 2 + 2 = 4 > 3
  p.repeat_penalty = 4.0f;     // then 4 / 4 = 1 < 3 once token 1 was seen
  Sampler s(p, 4);
  EXPECT_EQ(s.Sample(l.data()), 1);
  s.Accept(1);
  EXPECT_EQ(s.Sample(l.data()), 0);
  p.logit_bias = {{4, 1.0f}};
  EXPECT_THROW(Sampler(p, 4), Error);
  p.logit_bias = {{-1, 1.0f}};
  EXPECT_THROW(Sampler(p, 4), Error);
}

TEST(Sampler, RejectsBadInput) {
  EXPECT_THROW(Sampler(Plain(), 0), Error);
  SamplerParams p = Plain();
  p.penalty_last_n = -1;
  EXPECT_THROW(Sampler(p, 10), Error);
  Sampler s(Plain(), 10);
  EXPECT_THROW(s.Accept(10), Error);
  EXPECT_THROW(s.Accept(-1), Error);
}

TEST(Sampler, DegenerateLogitsStillSample) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> all_nan(8, NAN);
  std::vector<float> one_inf = {0.0f, inf, 1.0f, -inf};
  std::vector<float> all_neg_inf(8, -inf);
  SamplerParams p;
  p.seed = 5;
  Sampler s(p, 4), s8(p, 8);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(s.Sample(one_inf.data()), 1);
    const int32_t a = s8.Sample(all_nan.data());
    EXPECT_TRUE(a >= 0 && a < 8);
    const int32_t b = s8.Sample(all_neg_inf.data());
    EXPECT_TRUE(b >= 0 && b < 8);
  }
}

TEST(Sampler, NoHeapAllocationPerToken) {
  const int n = 32000;
  auto l = RandomLogits(n, 5);
  for (float temp : {0.0f, 0.8f}) {
    for (int k : {0, 40}) {
      SamplerParams p;
      p.temperature = temp;
      p.top_k = k;
      p.repeat_penalty = 1.1f;
      p.frequency_penalty = 0.1f;
      p.seed = 3;
      Sampler s(p, n);
      long sum = 0;
      const long before = g_allocs.load();
      for (int i = 0; i < 100; ++i) {
        const int32_t t = s.Sample(l.data());
        s.Accept(t);
        sum += t;
      }
      const long after = g_allocs.load();
      EXPECT_EQ(after - before, 0) << "temp " << temp << " top_k " << k;
      EXPECT_GE(sum, 0);
    }
  }
}

// ---- stop strings ----

struct Collected {
  std::string text;
  bool stopped = false;
  std::vector<std::string> outputs;
};

Collected FeedAll(StopMatcher& m, const std::vector<std::string>& pieces, bool flush = true) {
  Collected c;
  for (const auto& p : pieces) {
    auto r = m.Feed(p);
    c.text += r.text;
    c.outputs.push_back(r.text);
    if (r.stopped) {
      c.stopped = true;
      break;
    }
  }
  if (flush) c.text += m.Flush();
  return c;
}

TEST(StopMatcher, NoStopsPassesTextThrough) {
  StopMatcher m({});
  auto r = m.Feed("hello");
  EXPECT_EQ(r.text, "hello");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcher, StopSplitAcrossPiecesInEveryPosition) {
  const std::string text = "Hello, STOP world";
  const std::string stop = "STOP";
  const size_t n = text.size();
  // Every split into up to three pieces.
  for (size_t a = 0; a <= n; ++a) {
    for (size_t b = a; b <= n; ++b) {
      StopMatcher m({stop});
      auto c = FeedAll(m, {text.substr(0, a), text.substr(a, b - a), text.substr(b)});
      EXPECT_TRUE(c.stopped) << a << "," << b;
      EXPECT_EQ(c.text, "Hello, ") << a << "," << b;
      // No output ever shows part of the stop string.
      for (const auto& o : c.outputs) EXPECT_EQ(o.find('S'), std::string::npos);
    }
  }
  // One byte at a time.
  StopMatcher m({stop});
  std::vector<std::string> bytes;
  for (char ch : text) bytes.emplace_back(1, ch);
  auto c = FeedAll(m, bytes);
  EXPECT_TRUE(c.stopped);
  EXPECT_EQ(c.text, "Hello, ");
}

TEST(StopMatcher, StopAtStart) {
  StopMatcher m({"</s>"});
  auto r = m.Feed("</s>more");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
  EXPECT_TRUE(m.stopped());
  auto again = m.Feed("x");
  EXPECT_TRUE(again.stopped);
  EXPECT_EQ(again.text, "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcher, HeldPrefixIsReleasedWhenItDiverges) {
  StopMatcher m({"STOP"});
  auto r1 = m.Feed("a ST");
  EXPECT_EQ(r1.text, "a ");
  EXPECT_EQ(m.held(), 2u);
  auto r2 = m.Feed("ART");
  EXPECT_EQ(r2.text, "START");
  EXPECT_FALSE(r2.stopped);
  auto r3 = m.Feed("S");
  EXPECT_EQ(r3.text, "");
  EXPECT_EQ(m.Flush(), "S");  // end of generation releases what was held
}

TEST(StopMatcher, OverlappingPrefixHold) {
  // "abab" held after "aba": the suffix "ab"... must still find the stop that starts later.
  StopMatcher m({"abac"});
  auto c = FeedAll(m, {"ab", "ab", "ac", "zz"});
  EXPECT_TRUE(c.stopped);
  EXPECT_EQ(c.text, "ab");
}

TEST(StopMatcher, MultipleStopStringsEarliestWins) {
  const std::vector<std::string> stops = {"\n\nUser:", "###", "END"};
  {
    StopMatcher m(stops);
    auto c = FeedAll(m, {"answer #", "## then\n", "\nUser: x"});
    EXPECT_TRUE(c.stopped);
    EXPECT_EQ(c.text, "answer ");
  }
  {
    StopMatcher m(stops);
    auto c = FeedAll(m, {"text\n", "\nUs", "er:", " ###"});
    EXPECT_TRUE(c.stopped);
    EXPECT_EQ(c.text, "text");
  }
  {
    StopMatcher m(stops);
    auto c = FeedAll(m, {"xx END ### y"});  // both in one piece: the earlier one counts
    EXPECT_EQ(c.text, "xx ");
  }
  // The stop that completes first in the stream wins, however the text is cut.
  for (const auto& pieces :
       std::vector<std::vector<std::string>>{{"abc"}, {"a", "bc"}, {"ab", "c"}, {"a", "b", "c"}}) {
    StopMatcher m({"abc", "b"});
    auto c = FeedAll(m, pieces);
    EXPECT_TRUE(c.stopped);
    EXPECT_EQ(c.text, "a");
  }
  for (const auto& pieces : std::vector<std::vector<std::string>>{{"xabcd"}, {"xa", "bcd"}}) {
    StopMatcher m({"bcd", "abc"});  // "abc" completes before "bcd"
    auto c = FeedAll(m, pieces);
    EXPECT_EQ(c.text, "x");
  }
  {
    StopMatcher m({"bc", "abc"});  // both end at the same byte: the longer (earlier) one wins
    auto c = FeedAll(m, {"xabcd"});
    EXPECT_EQ(c.text, "x");
  }
  {
    StopMatcher m({"", "x"});  // empty stop strings are ignored
    auto c = FeedAll(m, {"abc"});
    EXPECT_FALSE(c.stopped);
    EXPECT_EQ(c.outputs[0], "abc");
  }
}

TEST(StopMatcher, HoldsIncompleteUtf8) {
  StopMatcher m({});
  const std::string euro = "\xE2\x82\xAC";       // 3 bytes
  const std::string emoji = "\xF0\x9F\x98\x80";  // 4 bytes
  const std::string text = "a" + euro + "b" + emoji + "\xC3\xA9";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    StopMatcher mm({});
    auto r1 = mm.Feed(text.substr(0, cut));
    auto r2 = mm.Feed(text.substr(cut));
    EXPECT_EQ(r1.text + r2.text, text);
    // The first output is always a whole number of characters.
    const std::string& o = r1.text;
    EXPECT_TRUE(o == "" || o == "a" || o == "a" + euro || o == "a" + euro + "b" ||
                o == "a" + euro + "b" + emoji || o == text)
        << cut;
    EXPECT_EQ(mm.Flush(), "");
  }
  auto r = m.Feed("x\xF0\x9F");
  EXPECT_EQ(r.text, "x");
  EXPECT_EQ(m.Flush(), "\xF0\x9F");  // at the end, even a partial character comes out
}

TEST(StopMatcher, InvalidUtf8IsNotHeldForever) {
  StopMatcher m({});
  EXPECT_EQ(m.Feed("a\xFF").text, "a\xFF");
  EXPECT_EQ(m.Feed("\x80\x80").text, "\x80\x80");          // stray continuation bytes
  EXPECT_EQ(m.Feed("\xC3\xA9\xA9").text, "\xC3\xA9\xA9");  // over-long tail
}

TEST(StopMatcher, Utf8StopStringSplitInsideCharacters) {
  const std::string stop = "\xE2\x82\xAC\xE2\x82\xAC";  // two euro signs
  const std::string text = "pay \xE2\x82\xAC" + stop + " now";
  for (size_t a = 0; a <= text.size(); ++a) {
    for (size_t b = a; b <= text.size(); ++b) {
      StopMatcher m({stop});
      auto c = FeedAll(m, {text.substr(0, a), text.substr(a, b - a), text.substr(b)});
      EXPECT_TRUE(c.stopped);
      EXPECT_EQ(c.text, "pay ") << a << "," << b;  // the earliest match starts at the first sign
    }
  }
}

TEST(StopMatcher, ResetStartsOver) {
  StopMatcher m({"x"});
  EXPECT_TRUE(m.Feed("axb").stopped);
  m.Reset();
  auto r = m.Feed("bcx");
  EXPECT_EQ(r.text, "bc");
  EXPECT_TRUE(r.stopped);
}

}  // namespace
}  // namespace es::runtime
