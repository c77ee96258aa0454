// GBNF grammars: parsing and its errors, matching text, the token mask against a per-token check
// on the Qwen2 vocabulary (151936 tokens), and the sampler under a grammar.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "runtime/runtime_grammar.h"
#include "runtime/runtime_json_schema.h"
#include "runtime/runtime_sampler.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace es::runtime {
namespace {

// Whether `text` is a whole sentence of `gbnf`.
bool Matches(const std::string& gbnf, const std::string& text) {
  GrammarMatcher m(Grammar::Parse(gbnf));
  return m.Accept(text) && m.CanEnd();
}

// The message Grammar::Parse throws for `gbnf` ("" if it parses).
std::string ParseError(const std::string& gbnf) {
  try {
    Grammar::Parse(gbnf);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(GrammarParse, AcceptsTheSyntax) {
  EXPECT_TRUE(Matches(R"(root ::= "a" b "c"
b ::= [x-z]  # a comment
)",
                      "ayc"));
  EXPECT_TRUE(Matches(R"(root ::= ("ab" | "c")+)", "abcab"));
  EXPECT_TRUE(Matches(R"(root ::= "a"? "b"* [0-9]{2} [a]{1,} [b]{,2} "c"{0,1})", "b12aab"));
  EXPECT_TRUE(Matches("root ::= \"\\n\\t\\\\\\\"\\x41\\u00e9\\U0001F600\"", "\n\t\\\"Aé😀"));
  EXPECT_TRUE(Matches(R"(root ::= [^\]\-] .)", "q\xE2\x82\xAC"));  // '.' takes a 3-byte char
  // Rules may span lines inside parentheses, after '::=' and around '|'.
  EXPECT_TRUE(Matches("root ::=\n  (\n \"a\"\n | \"b\"\n )\n  | \"c\"\nx ::= \"y\"\n", "b"));
  EXPECT_TRUE(Matches("root ::= \"\"", ""));
}

TEST(GrammarParse, RefusesWithLineAndColumn) {
  EXPECT_NE(ParseError("root ::= \"a\"\nx ::= \"b\" (").find("opened at line 2, column 11"),
            std::string::npos);
  EXPECT_NE(ParseError("root ::= \"abc").find("not closed"), std::string::npos);
  EXPECT_NE(ParseError("root ::= [a-").find("line 1, column 10"), std::string::npos);
  EXPECT_NE(ParseError("root ::= missing").find("'missing' is used but never defined"),
            std::string::npos);
  EXPECT_NE(ParseError("x ::= \"a\"").find("no 'root' rule"), std::string::npos);
  EXPECT_NE(ParseError("root ::= \"a\"\nroot ::= \"b\"").find("defined twice"), std::string::npos);
  EXPECT_NE(ParseError("root ::= a\na ::= b \"x\"\nb ::= \"\" | a").find("left-recursive"),
            std::string::npos);
  EXPECT_NE(ParseError("root ::= \"\\q\"").find("unknown escape"), std::string::npos);
  EXPECT_NE(ParseError("root ::= * \"a\"").find("expected an element before '*'"),
            std::string::npos);
  EXPECT_NE(ParseError("root ::= \"a\"{3,1}").find("maximum is below its minimum"),
            std::string::npos);
  EXPECT_NE(ParseError("root ::= \"a\" )").find("line 1, column 14"), std::string::npos);
  EXPECT_NE(ParseError("root = \"a\"").find("expected '::='"), std::string::npos);
  EXPECT_NE(ParseError("root ::= " + std::string(300, '(') + "\"a\"" + std::string(300, ')'))
                .find("nest deeper than 256"),
            std::string::npos);
  // Rules that match nothing, nested so that one character would need millions of steps.
  EXPECT_NE(ParseError("root ::= ((\"a\"?){0,3000}){0,3000} \"b\"").find("simplify it"),
            std::string::npos);
  EXPECT_NE(ParseError("root ::= [z-a]").find("before its start"), std::string::npos);
}

TEST(GrammarMatch, FollowsTextAcrossCallsAndSplitCharacters) {
  auto g = Grammar::Parse(R"(root ::= "{" [a-zé]+ "}" | "x")");
  GrammarMatcher m(g);
  EXPECT_TRUE(m.Accept("{a"));
  EXPECT_FALSE(m.CanEnd());
  EXPECT_FALSE(m.Accept("A"));    // refused, state unchanged
  EXPECT_TRUE(m.Accept("\xC3"));  // first byte of 'é'
  EXPECT_FALSE(m.CanAccept("}"));
  EXPECT_TRUE(m.Accept("\xA9}"));
  EXPECT_TRUE(m.CanEnd());
  EXPECT_TRUE(m.Done());
  EXPECT_FALSE(m.CanAccept("x"));
  m.Reset();
  EXPECT_FALSE(m.CanAccept("\xC3\xA8"));  // 'è' is not in the class
  EXPECT_FALSE(m.CanAccept("\xFF"));      // not UTF-8
  // A lead byte passes only if some character it may start fits (E0 and F0 start no ASCII).
  GrammarMatcher ascii(Grammar::Parse("root ::= [a-z]"));
  for (const char* lead : {"\xC2", "\xE0", "\xF0", "\xE1"}) EXPECT_FALSE(ascii.CanAccept(lead));
  // Only valid UTF-8 passes '.': no surrogates, overlong forms or code points past U+10FFFF.
  GrammarMatcher any(Grammar::Parse("root ::= .+"));
  EXPECT_TRUE(any.CanAccept("\xED\x9F\xBF\xE0\xA0\x80\xF4\x8F\xBF\xBF"));
  for (const char* bad : {"\xED\xA0\x80", "\xE0\x9F\xBF", "\xC1\xBF", "\xF0\x8F\xBF\xBF",
                          "\xF4\x90\x80\x80", "\xF5\x80\x80\x80"}) {
    EXPECT_FALSE(any.CanAccept(bad)) << bad;
    EXPECT_FALSE(any.CanAccept(std::string(bad).substr(0, 2)) && std::string(bad).size() > 2 &&
                 (static_cast<unsigned char>(bad[0]) != 0xC1))
        << "prefix of " << bad;
  }
  EXPECT_TRUE(m.Accept("x"));
  EXPECT_TRUE(m.Done());
}

TEST(GrammarMatch, CanEndWhileMoreMayFollow) {
  GrammarMatcher m(Grammar::Parse(R"(root ::= [0-9]+)"));
  EXPECT_FALSE(m.CanEnd());
  EXPECT_TRUE(m.Accept("12"));
  EXPECT_TRUE(m.CanEnd());
  EXPECT_FALSE(m.Done());
}

TEST(GrammarMatch, DeepRightRecursionStaysShallow) {
  GrammarMatcher m(Grammar::Parse(R"(root ::= "a"* "b")"));
  EXPECT_TRUE(m.Accept(std::string(100000, 'a')));
  EXPECT_TRUE(m.Accept("b"));
  EXPECT_TRUE(m.Done());
}

// A small vocabulary: the mask must equal a per-token check, EOG only where the grammar ends.
TEST(GrammarMask, SmallVocabulary) {
  const std::vector<std::string> pieces = {"a",    "ab",       "b", "", "\xC3",
                                           "\xA9", "\xC3\xA9", "{", "}"};
  const std::vector<bool> eog = {false, false, false, true, false, false, false, false, false};
  TokenTrie trie(pieces, eog);
  GrammarMatcher m(Grammar::Parse(R"(root ::= "{" [aé]* "}")"));
  std::vector<uint64_t> mask;
  auto allowed = [&] {
    std::vector<int> out;
    m.FillMask(trie, mask);
    for (int i = 0; i < trie.n_vocab(); ++i)
      if ((mask[0] >> i) & 1) out.push_back(i);
    return out;
  };
  EXPECT_EQ(allowed(), std::vector<int>({7}));
  ASSERT_TRUE(m.AcceptToken(trie, 7));
  EXPECT_EQ(allowed(), std::vector<int>({0, 4, 6, 8}));  // "\xC3" may start 'é'
  ASSERT_TRUE(m.AcceptToken(trie, 4));
  EXPECT_EQ(allowed(), std::vector<int>({5}));
  ASSERT_TRUE(m.AcceptToken(trie, 5));
  ASSERT_TRUE(m.AcceptToken(trie, 8));
  EXPECT_EQ(allowed(), std::vector<int>({3}));  // complete: only end of generation
}

std::unique_ptr<tok::Tokenizer> QwenTokenizer() {
  auto f = gguf::File::Open(test::ModelPath("synth-qwen3.f16.gguf"));
  return tok::Tokenizer::FromGGUF(*f);
}

std::shared_ptr<const TokenTrie> TrieOf(const tok::Tokenizer& t) {
  std::vector<std::string> pieces;
  std::vector<bool> eog;
  for (int32_t i = 0; i < t.n_vocab(); ++i) {
    pieces.push_back(t.TokenToPiece(i));
    eog.push_back(t.IsEog(i));
  }
  return std::make_shared<TokenTrie>(pieces, eog);
}

// The trie walk against a token-by-token check, at several points of several grammars.
TEST(GrammarMask, EqualsPerTokenCheckOnQwen2Vocabulary) {
  const auto tok = QwenTokenizer();
  ASSERT_EQ(tok->n_vocab(), 151936);
  const auto trie = TrieOf(*tok);
  const nlohmann::json schema = nlohmann::json::parse(R"({
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12},
                   "age": {"type": "integer", "minimum": 0, "maximum": 150},
                   "tags": {"type": "array", "items": {"enum": ["a", "é", "日本"]}}},
    "required": ["name", "age"]})");
  const struct {
    std::string gbnf;
    std::vector<std::string> prefixes;
  } cases[] = {
      {JsonSchemaToGbnf(schema),
       {"", "{", "{\"age\"", "{\"age\": 1", "{\"age\": 12, \"name\": \"ab",
        "{\"age\": 12, \"name\"", "{\"age\":3,\"name\":\"x\",\"tags\":[\"\xE6\x97",
        "{\"age\":3,\"name\":\"x\"}"}},
      {JsonObjectGbnf(), {"", "{\"k\": [1, {\"z\": nu", "{\"k\": \"\\u00"}},
      {R"(root ::= [^a-z]* "end" | "日本語" .)", {"", "\xE6\x97\xA5", "AB", "XYZe"}},
  };
  size_t checked = 0;
  for (const auto& c : cases) {
    const auto g = Grammar::Parse(c.gbnf);
    for (const auto& prefix : c.prefixes) {
      GrammarMatcher m(g);
      ASSERT_TRUE(m.Accept(prefix)) << prefix;
      std::vector<uint64_t> mask;
      const size_t n = m.FillMask(*trie, mask);
      size_t count = 0;
      for (int32_t id = 0; id < trie->n_vocab(); ++id) {
        const bool fast = (mask[static_cast<size_t>(id) / 64] >> (id % 64)) & 1;
        const bool slow =
            trie->eog(id) ? m.CanEnd() : !trie->piece(id).empty() && m.CanAccept(trie->piece(id));
        ASSERT_EQ(fast, slow) << "token " << id << " '" << trie->piece(id) << "' after '" << prefix
                              << "'";
        count += slow;
      }
      EXPECT_EQ(n, count);
      EXPECT_GT(count, 0u) << prefix;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 15u);
}

SamplerParams Greedy(std::shared_ptr<const Grammar> g) {
  SamplerParams p;
  p.temperature = 0;
  p.grammar = std::move(g);
  return p;
}

// Greedy under a grammar picks what masking first and taking the argmax would; sampled tokens
// always fit, and the generation ends with an EOG token once the grammar is complete.
TEST(GrammarSampler, GreedyEqualsMaskFirstAndOutputMatches) {
  const auto tok = QwenTokenizer();
  const auto trie = TrieOf(*tok);
  const auto g = CompileJsonSchema(nlohmann::json::parse(
      R"({"type":"object","properties":{"ok":{"type":"boolean"},"n":{"type":"integer",
          "minimum":-20,"maximum":20},"s":{"type":"string","maxLength":5}},
          "required":["ok","n","s"],"additionalProperties":false})"));
  const int32_t n_vocab = trie->n_vocab();
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    for (float temp : {0.0f, 0.8f}) {
      SamplerParams p = Greedy(g);
      p.temperature = temp;
      p.seed = seed;
      Sampler s(p, n_vocab, trie);
      GrammarMatcher ref(g);
      std::mt19937 rng(seed);
      std::normal_distribution<float> d(0, 3);
      std::vector<float> logits(static_cast<size_t>(n_vocab));
      std::string text;
      bool ended = false;
      for (int step = 0; step < 200 && !ended; ++step) {
        for (auto& l : logits) l = d(rng);
        const int32_t t = s.Sample(logits.data());
        ASSERT_TRUE(ref.TokenAllowed(*trie, t)) << "token " << t << " after " << text;
        if (temp == 0) {
          std::vector<uint64_t> mask;
          ref.FillMask(*trie, mask);
          int32_t best = -1;
          for (int32_t i = 0; i < n_vocab; ++i)
            if (((mask[static_cast<size_t>(i) / 64] >> (i % 64)) & 1) &&
                (best < 0 || logits[static_cast<size_t>(i)] > logits[static_cast<size_t>(best)]))
              best = i;
          ASSERT_EQ(t, best) << "step " << step;
        }
        if (trie->eog(t)) {
          ended = true;
          break;
        }
        s.Accept(t, true);
        ASSERT_TRUE(ref.AcceptToken(*trie, t));
        text += trie->piece(t);
      }
      ASSERT_TRUE(ended) << text;
      EXPECT_TRUE(ref.CanEnd());
      const auto j = nlohmann::json::parse(text);
      EXPECT_TRUE(j["ok"].is_boolean());
      EXPECT_TRUE(j["n"].is_number_integer() && j["n"] >= -20 && j["n"] <= 20) << text;
      EXPECT_LE(j["s"].get<std::string>().size(), 5u * 4) << text;
      EXPECT_FALSE(s.grammar_dead_end());
    }
  }
}

TEST(GrammarSampler, NeedsATrieAndRefusesTokensOutsideTheGrammar) {
  const auto g = Grammar::Parse(R"(root ::= "b")");
  EXPECT_THROW(Sampler(Greedy(g), 3), Error);
  const auto trie = std::make_shared<TokenTrie>(std::vector<std::string>{"a", "b", ""},
                                                std::vector<bool>{false, false, true});
  Sampler s(Greedy(g), 3, trie);
  const float logits[3] = {5, 1, 9};  // the grammar forbids the two likelier ones
  EXPECT_EQ(s.Sample(logits), 1);
  EXPECT_THROW(s.Accept(0, true), Error);
  s.Accept(0);  // a prompt token: the penalty window only
  s.Accept(1, true);
  EXPECT_EQ(s.Sample(logits), 2);  // complete: end of generation
  s.Reset();
  EXPECT_EQ(s.Sample(logits), 1);
}

TEST(GrammarSampler, DeadEndOffersEndOfGeneration) {
  // No token spells 'z': after "a" nothing fits.
  const auto trie = std::make_shared<TokenTrie>(std::vector<std::string>{"a", "b", ""},
                                                std::vector<bool>{false, false, true});
  Sampler s(Greedy(Grammar::Parse(R"(root ::= "a" "z")")), 3, trie);
  const float logits[3] = {1, 9, 0};
  EXPECT_EQ(s.Sample(logits), 0);
  s.Accept(0, true);
  EXPECT_FALSE(s.grammar_dead_end());
  EXPECT_EQ(s.Sample(logits), 2);
  EXPECT_TRUE(s.grammar_dead_end());
}

// A grammar that only blows up after its first character: the sampler ends the generation
// with the reason instead of throwing from a sampling thread.
TEST(GrammarSampler, PathologicalGrammarEndsWithItsReason) {
  const auto trie = std::make_shared<TokenTrie>(std::vector<std::string>{"x", "a", "b", ""},
                                                std::vector<bool>{false, false, false, true});
  Sampler s(Greedy(Grammar::Parse(R"(root ::= "x" (("a"?){0,3000}){0,3000} "b")")), 4, trie);
  const float logits[4] = {1, 2, 3, 0};
  EXPECT_FALSE(s.grammar_dead_end());
  EXPECT_EQ(s.Sample(logits), 3);  // looking past "x" already needs too much
  EXPECT_TRUE(s.grammar_dead_end());
  EXPECT_NE(s.grammar_error().find("simplify it"), std::string::npos) << s.grammar_error();
  s.Accept(3, true);  // the end-of-generation token is taken without complaint
  EXPECT_EQ(s.Sample(logits), 3);
}

}  // namespace
}  // namespace es::runtime
