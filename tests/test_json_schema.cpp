// JSON Schema -> GBNF: what each keyword lets through, integer ranges exactly, keywords refused
// by name, and random documents written under the grammar validating against their schema.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "runtime/runtime_grammar.h"
#include "runtime/runtime_json_schema.h"

namespace es::runtime {
namespace {

using json = nlohmann::json;

bool Accepts(const std::shared_ptr<const Grammar>& g, const std::string& text) {
  GrammarMatcher m(g);
  return m.Accept(text) && m.CanEnd();
}

std::string Refusal(const std::string& schema) {
  try {
    JsonSchemaToGbnf(json::parse(schema));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

std::wstring Wide(const std::string& s) {
  std::wstring out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
    uint32_t cp = n == 0 ? c : n == 1 ? (c & 0x1F) : n == 2 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k <= n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out += static_cast<wchar_t>(cp);
    i += static_cast<size_t>(n) + 1;
  }
  return out;
}

// A validator for the keywords the converter covers, written independently of it.
class Validator {
 public:
  explicit Validator(const json& root) : root_(root) {}
  bool Valid(const json& v) const { return Check(root_, v); }

 private:
  const json& Deref(const json& s) const {
    if (s.is_object() && s.contains("$ref"))
      return Deref(root_.at(json::json_pointer(s["$ref"].get<std::string>().substr(1))));
    return s;
  }

  static bool HasType(const std::string& t, const json& v) {
    if (t == "object") return v.is_object();
    if (t == "array") return v.is_array();
    if (t == "string") return v.is_string();
    if (t == "integer") return v.is_number_integer();
    if (t == "number") return v.is_number();
    if (t == "boolean") return v.is_boolean();
    return t == "null" && v.is_null();
  }

  bool Check(const json& schema, const json& v) const {
    const json& s = Deref(schema);
    if (s.is_boolean()) return s.get<bool>();
    if (s.contains("type")) {
      bool any = false;
      for (const auto& t : s["type"].is_array() ? s["type"] : json::array({s["type"]}))
        any = any || HasType(t.get<std::string>(), v);
      if (!any) return false;
    }
    if (s.contains("const") && s["const"] != v) return false;
    if (s.contains("enum") && std::find(s["enum"].begin(), s["enum"].end(), v) == s["enum"].end())
      return false;
    if (s.contains("anyOf")) {
      bool any = false;
      for (const auto& sub : s["anyOf"]) any = any || Check(sub, v);
      if (!any) return false;
    }
    if (s.contains("oneOf")) {
      int n = 0;
      for (const auto& sub : s["oneOf"]) n += Check(sub, v);
      if (n != 1) return false;
    }
    if (s.contains("allOf"))
      for (const auto& sub : s["allOf"])
        if (!Check(sub, v)) return false;
    if (v.is_object()) {
      for (const auto& r : s.value("required", json::array()))
        if (!v.contains(r.get<std::string>())) return false;
      const json props = s.value("properties", json::object());
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (props.contains(it.key())) {
          if (!Check(props[it.key()], *it)) return false;
        } else if (s.contains("additionalProperties") && !Check(s["additionalProperties"], *it)) {
          return false;
        }
      }
    }
    if (v.is_array()) {
      const size_t n = v.size();
      if (n < s.value("minItems", size_t{0}) || n > s.value("maxItems", SIZE_MAX)) return false;
      const json prefix = s.value("prefixItems", json::array());
      for (size_t i = 0; i < n; ++i) {
        if (i < prefix.size()) {
          if (!Check(prefix[i], v[i])) return false;
        } else if (s.contains("items") && !Check(s["items"], v[i])) {
          return false;
        }
      }
    }
    if (v.is_string()) {
      const std::string& str = v.get_ref<const std::string&>();
      const size_t n = CodePoints(str);
      if (n < s.value("minLength", size_t{0}) || n > s.value("maxLength", SIZE_MAX)) return false;
      // Over code points (wchar_t is 32 bits here), as ECMA-262 with the u flag counts them.
      if (s.contains("pattern") && !std::regex_search(Wide(str), std::wregex(Wide(s["pattern"]))))
        return false;
      if (s.contains("format")) {
        static const std::string date = R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))";
        static const std::string time =
            R"(([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))";
        const std::string f = s["format"];
        const std::string re = f == "date"   ? date
                               : f == "time" ? time
                               : f == "uuid" ? "[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
                                             : date + "T" + time;
        if (!std::regex_match(str, std::regex(re))) return false;
      }
    }
    if (v.is_number()) {
      const double x = v.get<double>();
      if (s.contains("minimum") && x < s["minimum"].get<double>()) return false;
      if (s.contains("maximum") && x > s["maximum"].get<double>()) return false;
      if (s.contains("exclusiveMinimum") && x <= s["exclusiveMinimum"].get<double>()) return false;
      if (s.contains("exclusiveMaximum") && x >= s["exclusiveMaximum"].get<double>()) return false;
    }
    return true;
  }

  const json& root_;
};

// A random sentence of `g`: characters drawn from a pool among those the grammar allows next,
// stopping at random where it may end. Empty when it ran past max_len.
std::string RandomSentence(const std::shared_ptr<const Grammar>& g, std::mt19937& rng,
                           size_t max_len = 3000) {
  static const std::vector<std::string> pool = [] {
    std::vector<std::string> p;
    for (char c = 0x20; c < 0x7F; ++c) p.emplace_back(1, c);
    for (const char* u : {"\n", "\t", "\xC3\xA9", "\xE6\x97\xA5", "\xF0\x9F\x98\x80"})
      p.emplace_back(u);
    return p;
  }();
  GrammarMatcher m(g);
  std::string out;
  std::vector<const std::string*> ok;
  while (out.size() < max_len) {
    if (m.CanEnd() && (m.Done() || rng() % 4 == 0)) return out;
    ok.clear();
    for (const auto& c : pool)
      if (m.CanAccept(c)) ok.push_back(&c);
    if (ok.empty()) return out;  // nothing from the pool fits: the test will fail on it
    const std::string& c = *ok[rng() % ok.size()];
    m.Accept(c);
    out += c;
  }
  return "";
}

const char* kSchemas[] = {
    // OpenAI strict: every property required, no others.
    R"({"type":"object","additionalProperties":false,"required":["name","age","tags","pet"],
        "properties":{"name":{"type":"string","maxLength":20},
        "age":{"type":"integer","minimum":0,"maximum":130},
        "tags":{"type":"array","items":{"enum":["red","green","blue"]},"maxItems":4},
        "pet":{"anyOf":[{"type":"null"},{"type":"object","additionalProperties":false,
               "required":["kind"],"properties":{"kind":{"const":"cat"}}}]}}})",
    // pydantic: $defs, allOf around a $ref, optional properties, titles.
    R"({"title":"Order","type":"object","$defs":{"Item":{"title":"Item","type":"object",
        "properties":{"sku":{"type":"string","minLength":2,"maxLength":6},
        "qty":{"type":"integer","exclusiveMinimum":0,"maximum":999}},"required":["sku"]}},
        "properties":{"item":{"allOf":[{"$ref":"#/$defs/Item"}],"description":"what"},
        "note":{"type":["string","null"],"maxLength":8},"price":{"type":"number"},
        "ok":{"type":"boolean","default":true}},"required":["item"]})",
    // Recursion through the root, bounded by maxItems.
    R"({"type":"object","properties":{"v":{"type":"integer","minimum":-1000,"maximum":-3},
        "kids":{"type":"array","items":{"$ref":"#"},"maxItems":2}},
        "required":["v"],"additionalProperties":false})",
    // Tuples, formats, a map, oneOf of disjoint shapes, definitions.
    R"({"type":"array","prefixItems":[{"type":"string","format":"date"},
        {"type":"string","format":"date-time"},{"type":"string","format":"uuid"},
        {"type":"string","format":"time"}],"items":false,"minItems":3})",
    R"({"type":"object","additionalProperties":{"$ref":"#/definitions/n"},
        "definitions":{"n":{"oneOf":[{"type":"integer","minimum":10},{"type":"boolean"}]}}})",
    R"({"type":"array","items":{"type":"integer","maximum":-7},"minItems":2,"maxItems":5})",
    // Patterns (pydantic constr, zod .regex): escapes, classes, groups, counts, alternation.
    R"({"type":"object","additionalProperties":false,"required":["id","code","x","q"],
        "properties":{"id":{"type":"string","pattern":"^[A-Z]{2}-\\d{3,5}$"},
        "code":{"type":"string","pattern":"^(?:ab|c[de]?)+_\\w?[^a-z\\s]{0,3}$"},
        "x":{"type":"string","pattern":"^a\\.b\"q\\\\.{1,2}[\"\\\\x]$"},
        "q":{"type":"string","pattern":"^(?:\\S\\s?){1,4}$"}}})",
};

TEST(JsonSchema, RandomDocumentsUnderTheGrammarValidate) {
  std::mt19937 rng(42);
  for (const char* text : kSchemas) {
    const json schema = json::parse(text);
    const auto g = CompileJsonSchema(schema);
    const Validator v(schema);
    int valid = 0;
    for (int i = 0; i < 60; ++i) {
      const std::string doc = RandomSentence(g, rng);
      if (doc.empty()) continue;  // ran long (an unbounded string); the rest must all hold
      json parsed;
      ASSERT_NO_THROW(parsed = json::parse(doc)) << doc;
      ASSERT_TRUE(v.Valid(parsed)) << doc << "\nschema: " << text;
      ++valid;
    }
    EXPECT_GE(valid, 50) << text;
  }
}

TEST(JsonSchema, PatternsMatchWholeStrings) {
  auto g = CompileJsonSchema(json::parse(R"({"type":"string","pattern":"^[A-Z]{2}-\\d{3}$"})"));
  EXPECT_TRUE(Accepts(g, R"("AB-123")"));
  EXPECT_FALSE(Accepts(g, R"("AB-12")"));
  EXPECT_FALSE(Accepts(g, R"("ab-123")"));
  g = CompileJsonSchema(json::parse(R"({"type":"string","pattern":"^(?<n>x|yz)*?$"})"));
  EXPECT_TRUE(Accepts(g, R"("xyzx")"));
  EXPECT_FALSE(Accepts(g, R"("xy")"));
  // A quote or backslash the pattern matches is written escaped.
  g = CompileJsonSchema(json::parse(R"({"type":"string","pattern":"^[\"\\\\]+$"})"));
  EXPECT_TRUE(Accepts(g, R"("\"\\")"));
  EXPECT_FALSE(Accepts(g, R"(""")"));
}

TEST(JsonSchema, KeywordsLetThroughWhatTheyShould) {
  auto g = CompileJsonSchema(json::parse(kSchemas[0]));
  // Properties come in nlohmann's order (alphabetical), required ones first.
  EXPECT_TRUE(Accepts(g, R"({"age":3,"name":"x","pet":null,"tags":["red"]})"));
  EXPECT_TRUE(Accepts(g,
                      "{ \"age\": 130, \"name\" : \"\\u00e9\\n\" ,\n  "
                      "\"pet\": {\"kind\": \"cat\"}, \"tags\": []}"));
  EXPECT_FALSE(Accepts(g, R"({"age":131,"name":"x","pet":null,"tags":[]})"));
  EXPECT_FALSE(Accepts(g, R"({"age":3,"name":"x","pet":null,"tags":["pink"]})"));
  EXPECT_FALSE(Accepts(g, R"({"age":3,"name":"x","tags":[]})"));  // pet is required
  EXPECT_FALSE(Accepts(g, R"({"age":3,"name":"x","pet":null,"tags":[],"more":1})"));
  EXPECT_FALSE(Accepts(g, R"({"age":03,"name":"x","pet":null,"tags":[]})"));
  EXPECT_FALSE(
      Accepts(g, R"({"age":3,"name":"x","pet":null,"tags":["red","red","red","red","red"]})"));
  g = CompileJsonSchema(json::parse(kSchemas[1]));
  EXPECT_TRUE(Accepts(g, R"({"item":{"sku":"ab"}})"));
  EXPECT_TRUE(Accepts(g, R"({"item":{"sku":"ab","qty":1},"ok":false,"price":-1.5e3})"));
  EXPECT_FALSE(Accepts(g, R"({"item":{"sku":"ab","qty":0}})"));  // exclusiveMinimum
  EXPECT_FALSE(Accepts(g, R"({"item":{"sku":"a"}})"));           // minLength
  EXPECT_FALSE(Accepts(g, R"({"note":null})"));                  // item is required
  g = CompileJsonSchema(json::parse(R"({"type":"string","format":"date"})"));
  EXPECT_TRUE(Accepts(g, R"("2024-02-28")"));
  EXPECT_FALSE(Accepts(g, R"("2024-02-30")"));
  EXPECT_FALSE(Accepts(g, R"("2024-13-01")"));
  g = CompileJsonSchema(json::parse(R"({"enum":["a",1,null,{"k":[true]}]})"));
  EXPECT_TRUE(Accepts(g, R"({"k":[true]})"));
  EXPECT_FALSE(Accepts(g, R"("b")"));
  // No schema constraint at all: any JSON value.
  g = CompileJsonSchema(json::parse("{}"));
  EXPECT_TRUE(Accepts(g, R"([1, "x", {"a": null}])"));
  // json_object: an object at the top level only.
  g = Grammar::Parse(JsonObjectGbnf());
  EXPECT_TRUE(Accepts(g, R"({"a": [1, 2.5e-3, "x", {"b": false}]})"));
  EXPECT_FALSE(Accepts(g, R"([1])"));
  EXPECT_FALSE(Accepts(g, R"({"a": 01})"));
}

// Integer bounds become digit patterns: every value near and inside the range is checked.
TEST(JsonSchema, IntegerRangesAreExact) {
  const std::pair<json, json> ranges[] = {
      {0, 9},     {3, 7},  {-5, 120},     {12, 345},      {-999, -10},    {1, 1},
      {99, 1001}, {-1, 0}, {nullptr, 17}, {-12, nullptr}, {150, nullptr}, {nullptr, -40}};
  for (const auto& [lo, hi] : ranges) {
    json schema = {{"type", "integer"}};
    if (!lo.is_null()) schema["minimum"] = lo;
    if (!hi.is_null()) schema["maximum"] = hi;
    const auto g = CompileJsonSchema(schema);
    for (int64_t x = -1500; x <= 1500; ++x) {
      const bool want =
          (lo.is_null() || x >= lo.get<int64_t>()) && (hi.is_null() || x <= hi.get<int64_t>());
      ASSERT_EQ(Accepts(g, std::to_string(x)), want) << x << " in " << schema.dump();
    }
    EXPECT_FALSE(Accepts(g, "-0"));
    EXPECT_FALSE(Accepts(g, "007"));
  }
}

TEST(JsonSchema, RefusesWhatItDoesNotImplementNamingIt) {
  EXPECT_NE(Refusal(R"({"type":"string","pattern":"(?=a)b"})").find("lookaround"),
            std::string::npos);
  EXPECT_NE(Refusal(R"({"type":"string","pattern":"(a)\\1"})").find("backreferences"),
            std::string::npos);
  EXPECT_NE(Refusal(R"({"type":"string","pattern":"\\bx"})").find("'pattern'"), std::string::npos);
  EXPECT_NE(Refusal(R"({"not":{"type":"string"}})").find("'not'"), std::string::npos);
  EXPECT_NE(Refusal(R"({"type":"number","multipleOf":2})").find("'multipleOf'"), std::string::npos);
  EXPECT_NE(Refusal(R"({"type":"string","format":"email"})").find("'email'"), std::string::npos);
  EXPECT_NE(Refusal(R"({"type":"number","minimum":1})").find("'minimum' on a number"),
            std::string::npos);
  EXPECT_NE(Refusal(R"({"type":"array","uniqueItems":true})").find("'uniqueItems'"),
            std::string::npos);
  EXPECT_NE(Refusal(R"({"properties":{"a":{"$ref":"#/$defs/missing"}}})").find("#/properties/a"),
            std::string::npos);
  EXPECT_NE(Refusal(R"({"type":"strin"})").find("unknown type 'strin'"), std::string::npos);
  EXPECT_NE(Refusal(R"({"type":"integer","minimum":5,"maximum":4})").find("no integer"),
            std::string::npos);
  EXPECT_NE(Refusal(R"({"$ref":"https://example.com/s.json"})").find("only references inside"),
            std::string::npos);
  EXPECT_THROW(JsonSchemaToGbnf(json::object(), "bad prefix!"), Error);
}

// The rules can be pasted into a larger grammar under a prefix (tool calls do this).
TEST(JsonSchema, PrefixedRulesCombine) {
  const std::string args = JsonSchemaToGbnf(
      json::parse(R"({"type":"object","properties":{"city":{"type":"string","maxLength":9}},
                     "required":["city"],"additionalProperties":false})"),
      "weather-");
  EXPECT_EQ(args.find("\nroot ::="), std::string::npos);
  EXPECT_NE(args.find("weather-root ::="), std::string::npos);
  const auto g = Grammar::Parse("root ::= \"<call>\" weather-root \"</call>\"\n" + args);
  EXPECT_TRUE(Accepts(g, R"(<call>{"city": "Oslo"}</call>)"));
  EXPECT_FALSE(Accepts(g, R"(<call>{"city": 1}</call>)"));
}

}  // namespace
}  // namespace es::runtime
