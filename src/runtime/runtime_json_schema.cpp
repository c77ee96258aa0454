// JSON Schema -> GBNF: one rule per schema node, shared rules for the JSON primitives, integer
// ranges as digit patterns.
#include "runtime/runtime_json_schema.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "edgeshard/error.h"

namespace es::runtime {
namespace {

using json = nlohmann::json;

// Digits an integer or a fraction may have: bounded, so a model cannot write digits forever.
constexpr int kMaxDigits = 16;
constexpr int64_t kMaxBound = 999999999999999;  // 15 digits: bounds beyond count as none

// A GBNF string literal for the bytes of `s`.
std::string Lit(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7F) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string Sanitize(const std::string& s) {
  std::string out;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    out += ok ? c : '-';
  }
  return out.empty() ? "x" : out.substr(0, 40);
}

std::string Digits(uint64_t v) {
  return std::to_string(v);
}

// A pattern for [a, b] when both have the same number of digits and the range is one of those
// split below: equal digits literally, the rest as classes.
std::string DigitPattern(const std::string& a, const std::string& b) {
  std::string out;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!out.empty()) out += ' ';
    if (a[i] == b[i])
      out += std::string("\"") + a[i] + "\"";
    else
      out += std::string("[") + a[i] + "-" + b[i] + "]";
  }
  return out;
}

// Decimal integers in [lo, hi] (0 <= lo <= hi) as alternatives of digit patterns: the range is
// cut where a run of trailing 9s or 0s lets each piece be written digit by digit.
std::string UIntRange(uint64_t lo, uint64_t hi) {
  std::set<uint64_t> stops = {hi};
  auto nines = [](uint64_t n, int k) {
    std::string s = Digits(n);
    const size_t keep = s.size() > static_cast<size_t>(k) ? s.size() - static_cast<size_t>(k) : 0;
    return std::stoull(s.substr(0, keep) + std::string(static_cast<size_t>(k), '9'));
  };
  auto zeros = [](uint64_t n, int k) {
    uint64_t p = 1;
    for (int i = 0; i < k; ++i) p *= 10;
    return n - n % p;
  };
  for (int k = 1; k <= 18; ++k) {
    const uint64_t s = nines(lo, k);
    if (!(lo <= s && s < hi)) break;
    stops.insert(s);
  }
  for (int k = 1; k <= 18; ++k) {
    const uint64_t z = zeros(hi + 1, k);
    if (z == 0) break;
    const uint64_t s = z - 1;
    if (!(lo < s && s <= hi)) break;
    stops.insert(s);
  }
  std::string out;
  uint64_t start = lo;
  for (uint64_t stop : stops) {
    if (!out.empty()) out += " | ";
    out += DigitPattern(Digits(start), Digits(stop));
    start = stop + 1;
  }
  return "(" + out + ")";
}

// Decimal integers >= a, without leading zeros, at most kMaxDigits digits.
std::string UIntAtLeast(uint64_t a) {
  const std::string any = "[1-9] [0-9]{0," + std::to_string(kMaxDigits - 1) + "}";
  if (a == 0) return "(\"0\" | " + any + ")";
  const size_t d = Digits(a).size();
  uint64_t top = 1;
  for (size_t i = 0; i < d; ++i) top *= 10;
  std::string out = UIntRange(a, top - 1);
  if (d < static_cast<size_t>(kMaxDigits))
    out = "(" + out + " | [1-9] [0-9]{" + std::to_string(d) + "," + std::to_string(kMaxDigits - 1) +
          "})";
  return out;
}

// Keywords that constrain a value but are not implemented: refused by name.
// clang-format off
const std::set<std::string> kUnsupported = {
    "not", "if", "then", "else", "dependentRequired", "dependencies", "dependentSchemas",
    "patternProperties", "propertyNames", "minProperties", "maxProperties", "contains",
    "minContains", "maxContains", "multipleOf", "$dynamicRef", "$recursiveRef",
    "unevaluatedItems", "additionalItems"};
// clang-format on

class Converter {
 public:
  Converter(const json& root, std::string prefix) : root_(root), p_(std::move(prefix)) {
    for (char c : p_)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_'))
        throw Error("json schema: the rule prefix '" + p_ +
                    "' may hold only letters, digits, '-' and '_'");
  }

  std::string Run() {
    const std::string entry = Visit(root_, "root", "#");
    if (entry != p_ + "root") Rule("root", entry, true);
    return Text();
  }

  std::string RunObject() {
    Rule("root", Prim("object"), true);
    return Text();
  }

 private:
  [[noreturn]] void Fail(const std::string& where, const std::string& what) const {
    throw Error("json schema: at " + where + ": " + what);
  }

  std::string Text() const {
    std::string out;
    for (const auto& name : order_) out += name + " ::= " + rules_.at(name) + "\n";
    return out;
  }

  // Adds a rule named p_ + hint (made unique) and returns its name. `exact`: the name as given.
  std::string Rule(const std::string& hint, const std::string& body, bool exact = false) {
    std::string name = p_ + hint;
    if (!exact) {
      for (int k = 2; rules_.count(name) && rules_.at(name) != body; ++k)
        name = p_ + hint + "-" + std::to_string(k);
      if (rules_.count(name)) return name;
    }
    if (!rules_.count(name)) order_.push_back(name);
    rules_[name] = body;
    return name;
  }

  // The shared rules for JSON's building blocks, added when first used.
  std::string Prim(const std::string& what) {
    const std::string name = p_ + what;
    if (rules_.count(name)) return name;
    const std::string d = std::to_string(kMaxDigits);
    const std::string d1 = std::to_string(kMaxDigits - 1);
    std::string body;
    if (what == "ws") {
      body = "| \" \" | \"\\n\" [ \\t]{0,20}";
    } else if (what == "char") {
      body = "[^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})";
    } else if (what == "string") {
      body = "\"\\\"\" " + Prim("char") + "* \"\\\"\"";
    } else if (what == "integer") {
      body = "\"-\"? (\"0\" | [1-9] [0-9]{0," + d1 + "})";
    } else if (what == "number") {
      body = "\"-\"? (\"0\" | [1-9] [0-9]{0," + d1 + "}) (\".\" [0-9]{1," + d +
             "})? ([eE] [-+]? [0-9]{1,2})?";
    } else if (what == "boolean") {
      body = "\"true\" | \"false\"";
    } else if (what == "null") {
      body = "\"null\"";
    } else if (what == "value") {
      order_.push_back(name);  // recursive with object and array: reserve the name first
      rules_[name] = "";
      body = Prim("object") + " | " + Prim("array") + " | " + Prim("string") + " | " +
             Prim("number") + " | " + Prim("boolean") + " | " + Prim("null");
    } else if (what == "object") {
      order_.push_back(name);
      rules_[name] = "";
      const std::string ws = Prim("ws");
      const std::string kv =
          Prim("string") + " " + ws + " \":\" " + ws + " " + Prim("value") + " " + ws;
      body = "\"{\" " + ws + " (" + kv + " (\",\" " + ws + " " + kv + ")*)? \"}\"";
    } else if (what == "array") {
      order_.push_back(name);
      rules_[name] = "";
      const std::string ws = Prim("ws");
      const std::string item = Prim("value") + " " + ws;
      body = "\"[\" " + ws + " (" + item + " (\",\" " + ws + " " + item + ")*)? \"]\"";
    } else if (what == "date") {
      const std::string d31 = "(\"0\" [1-9] | [12] [0-9] | \"3\" [01])";
      const std::string d30 = "(\"0\" [1-9] | [12] [0-9] | \"30\")";
      const std::string d28 = "(\"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8])";
      body =
          "[0-9]{4} \"-\" ((\"01\" | \"03\" | \"05\" | \"07\" | \"08\" | \"10\" | \"12\") \"-\" " +
          d31 + " | (\"04\" | \"06\" | \"09\" | \"11\") \"-\" " + d30 + " | \"02-\" " + d28 + ")";
    } else if (what == "time") {
      const std::string hh = "([01] [0-9] | \"2\" [0-3])", mm = "[0-5] [0-9]";
      body = hh + " \":\" " + mm + " \":\" " + mm + " (\".\" [0-9]{1,6})? (\"Z\" | [+-] " + hh +
             " \":\" " + mm + ")";
    } else if (what == "date-time") {
      body = Prim("date") + " \"T\" " + Prim("time");
    } else if (what == "uuid") {
      const std::string h = "[0-9a-fA-F]";
      body = h + "{8} \"-\" " + h + "{4} \"-\" " + h + "{4} \"-\" " + h + "{4} \"-\" " + h + "{12}";
    }
    if (!rules_.count(name)) order_.push_back(name);
    rules_[name] = body;
    return name;
  }

  void CheckKeywords(const json& s, const std::string& where) const {
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (kUnsupported.count(it.key()))
        Fail(where, "the keyword '" + it.key() +
                        "' is not supported by this server's structured output; remove it");
      if (it.key() == "uniqueItems" && *it == true)
        Fail(where, "the keyword 'uniqueItems' is not supported; remove it");
      if (it.key() == "unevaluatedProperties" && *it != false)
        Fail(where, "'unevaluatedProperties' other than false is not supported");
    }
  }

  const json& Resolve(const json& ref, const std::string& where) const {
    if (!ref.is_string()) Fail(where, "'$ref' must be a string");
    const std::string r = ref.get<std::string>();
    if (r.empty() || r[0] != '#')
      Fail(where, "'$ref' " + r + " is not supported: only references inside the schema (#/...)");
    try {
      const json::json_pointer ptr(r.substr(1));
      if (root_.contains(ptr)) return root_.at(ptr);
    } catch (const json::exception&) {
    }
    Fail(where, "'$ref' " + r + " points at nothing in the schema");
  }

  std::string RefRule(const json& ref, const std::string& where) {
    const std::string r = ref.is_string() ? ref.get<std::string>() : "";
    if (auto it = refs_.find(r); it != refs_.end()) return it->second;
    const json& target = Resolve(ref, where);
    const std::string leaf =
        r.substr(r.find_last_of('/') == std::string::npos ? 1 : r.find_last_of('/') + 1);
    // Reserve the name first: the definition may refer to itself.
    std::string name = p_ + "ref-" + Sanitize(leaf);
    for (int k = 2; rules_.count(name); ++k)
      name = p_ + "ref-" + Sanitize(leaf) + "-" + std::to_string(k);
    order_.push_back(name);
    rules_[name] = "";
    refs_[r] = name;
    rules_[name] = Visit(target, "ref-" + Sanitize(leaf) + "-body", r);
    return name;
  }

  std::string Visit(const json& s, const std::string& hint, const std::string& where) {
    if (s.is_boolean()) {
      if (s == true) return Prim("value");
      Fail(where, "the schema false allows no value at all");
    }
    if (!s.is_object()) Fail(where, "a schema must be an object or a boolean, got " + s.dump());
    if (++depth_ > 256) Fail(where, "the schema nests too deeply");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    CheckKeywords(s, where);
    if (const auto it = s.find("$ref"); it != s.end()) {
      // Siblings of $ref other than annotations would have to hold too.
      for (const char* k : {"type", "properties", "enum", "const", "items", "anyOf", "oneOf"})
        if (s.contains(k))
          Fail(where, std::string("'$ref' with a sibling '") + k + "' is not supported");
      return RefRule(*it, where + "/$ref");
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      const auto it = s.find(key);
      if (it == s.end()) continue;
      if (!it->is_array() || it->empty())
        Fail(where, std::string("'") + key + "' must be a non-empty array of schemas");
      for (const char* k : {"type", "properties", "enum", "const", "items", "allOf"})
        if (s.contains(k))
          Fail(where, std::string("'") + key + "' with a sibling '" + k + "' is not supported");
      std::string body;
      for (size_t i = 0; i < it->size(); ++i) {
        if (!body.empty()) body += " | ";
        body += Visit((*it)[i], hint + "-" + std::to_string(i),
                      where + "/" + key + "/" + std::to_string(i));
      }
      return Rule(hint, body);
    }
    if (const auto it = s.find("allOf"); it != s.end())
      return Visit(MergeAllOf(s, where), hint, where);
    if (const auto it = s.find("const"); it != s.end()) return Rule(hint, Lit(it->dump()));
    if (const auto it = s.find("enum"); it != s.end()) {
      if (!it->is_array() || it->empty()) Fail(where, "'enum' must be a non-empty array");
      std::string body;
      for (const auto& v : *it) body += (body.empty() ? "" : " | ") + Lit(v.dump());
      return Rule(hint, body);
    }
    const auto type = s.find("type");
    if (type != s.end() && type->is_array()) {
      if (type->empty()) Fail(where, "'type' must not be an empty array");
      std::string body;
      for (const auto& t : *type) {
        json one = s;
        one["type"] = t;
        if (!t.is_string()) Fail(where, "'type' entries must be strings, got " + t.dump());
        body += (body.empty() ? "" : " | ") + Visit(one, hint + "-" + t.get<std::string>(), where);
      }
      return Rule(hint, body);
    }
    std::string t;
    if (type != s.end()) {
      if (!type->is_string()) Fail(where, "'type' must be a string or an array of strings");
      t = type->get<std::string>();
    } else if (s.contains("properties") || s.contains("additionalProperties") ||
               s.contains("required")) {
      t = "object";
    } else if (s.contains("items") || s.contains("prefixItems")) {
      t = "array";
    } else if (s.contains("minLength") || s.contains("maxLength") || s.contains("format")) {
      t = "string";
    } else {
      return Prim("value");
    }
    if (t == "object") return Object(s, hint, where);
    if (t == "array") return Array(s, hint, where);
    if (t == "string") return String(s, hint, where);
    if (t == "integer") return Integer(s, hint, where);
    if (t == "number") {
      for (const char* k : {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
        if (s.contains(k))
          Fail(where, std::string("'") + k +
                          "' on a number is not supported (it is on integers); remove it");
      return Prim("number");
    }
    if (t == "boolean" || t == "null") return Prim(t);
    Fail(where, "unknown type '" + t +
                    "' (expected object, array, string, number, integer, boolean or null)");
  }

  json MergeAllOf(const json& s, const std::string& where) {
    const json& all = s["allOf"];
    if (!all.is_array() || all.empty()) Fail(where, "'allOf' must be a non-empty array of schemas");
    json merged = s;
    merged.erase("allOf");
    for (size_t i = 0; i < all.size(); ++i) {
      const std::string w = where + "/allOf/" + std::to_string(i);
      const json* sub = &all[i];
      if (sub->is_object() && sub->contains("$ref")) sub = &Resolve((*sub)["$ref"], w);
      if (!sub->is_object()) Fail(w, "'allOf' entries must be schemas (objects)");
      json inner;
      if (sub->contains("allOf")) {
        inner = MergeAllOf(*sub, w);
        sub = &inner;
      }
      for (auto it = sub->begin(); it != sub->end(); ++it) {
        if (it.key() == "properties") {
          for (auto p = it->begin(); p != it->end(); ++p) {
            if (merged["properties"].contains(p.key()) && merged["properties"][p.key()] != *p)
              Fail(w, "'allOf' entries define the property '" + p.key() +
                          "' differently; merging them is not supported");
            merged["properties"][p.key()] = *p;
          }
        } else if (it.key() == "required") {
          for (const auto& r : *it)
            if (!merged.contains("required") ||
                std::find(merged["required"].begin(), merged["required"].end(), r) ==
                    merged["required"].end())
              merged["required"].push_back(r);
        } else if (it.key() == "title" || it.key() == "description" || it.key() == "$defs" ||
                   it.key() == "definitions") {
          continue;
        } else if (!merged.contains(it.key())) {
          merged[it.key()] = *it;
        } else if (merged[it.key()] != *it) {
          Fail(w, "'allOf' entries disagree on '" + it.key() + "'; merging them is not supported");
        }
      }
    }
    return merged;
  }

  std::string Object(const json& s, const std::string& hint, const std::string& where) {
    static const json kEmpty = json::object();
    const json& props = s.contains("properties") ? s["properties"] : kEmpty;
    if (!props.is_object()) Fail(where, "'properties' must be an object");
    std::vector<std::string> required;
    if (const auto it = s.find("required"); it != s.end()) {
      if (!it->is_array()) Fail(where, "'required' must be an array of property names");
      for (const auto& r : *it) {
        if (!r.is_string()) Fail(where, "'required' must hold strings, got " + r.dump());
        required.push_back(r.get<std::string>());
      }
    }
    const json* addl = s.contains("additionalProperties") ? &s["additionalProperties"] : nullptr;
    if (addl && !addl->is_boolean() && !addl->is_object())
      Fail(where, "'additionalProperties' must be a boolean or a schema");
    const std::string ws = Prim("ws");
    // An open object with nothing named: any object, or a map of one value schema.
    if (props.empty() && required.empty()) {
      if (!addl || *addl == true) return Prim("object");
      if (*addl == false) return Rule(hint, "\"{\" " + ws + " \"}\"");
      const std::string v = Visit(*addl, hint + "-value", where + "/additionalProperties");
      const std::string kv = Prim("string") + " " + ws + " \":\" " + ws + " " + v + " " + ws;
      return Rule(hint, "\"{\" " + ws + " (" + kv + " (\",\" " + ws + " " + kv + ")*)? \"}\"");
    }
    auto kv = [&](const std::string& name) {
      std::string v;
      if (props.contains(name)) {
        v = Visit(props[name], hint + "-" + Sanitize(name), where + "/properties/" + name);
      } else if (!addl || addl->is_boolean()) {
        if (addl && *addl == false)
          Fail(where, "the required property '" + name +
                          "' is not in 'properties' and additionalProperties is false");
        v = Prim("value");
      } else {
        v = Visit(*addl, hint + "-value", where + "/additionalProperties");
      }
      return Lit(json(name).dump()) + " " + ws + " \":\" " + ws + " " + v + " " + ws;
    };
    std::vector<std::string> req, opt;
    std::set<std::string> req_set(required.begin(), required.end());
    for (auto it = props.begin(); it != props.end(); ++it)
      if (req_set.count(it.key()))
        req.push_back(kv(it.key()));
      else
        opt.push_back(kv(it.key()));
    for (const auto& r : required)
      if (!props.contains(r)) req.push_back(kv(r));
    std::string body = "\"{\" " + ws + " ";
    const std::string comma = "\",\" " + ws + " ";
    for (size_t i = 0; i < req.size(); ++i) body += (i ? comma : "") + req[i] + " ";
    if (!opt.empty()) {
      // Optional properties in order, each present or not.
      std::vector<std::string> tails(opt.size() + 1);
      for (size_t i = opt.size(); i-- > 0;) tails[i] = "(" + comma + opt[i] + ")? " + tails[i + 1];
      if (!req.empty()) {
        body += tails[0];
      } else {
        std::string alts;
        for (size_t i = 0; i < opt.size(); ++i)
          alts += (i ? " | " : "") + opt[i] + " " + tails[i + 1];
        body += "(" + Rule(hint + "-opt", alts) + ")? ";
      }
    }
    return Rule(hint, body + "\"}\"");
  }

  static std::optional<uint64_t> Count(const json& s, const char* key, const std::string& where,
                                       const Converter& c) {
    const auto it = s.find(key);
    if (it == s.end()) return std::nullopt;
    if (!it->is_number_integer() || it->get<int64_t>() < 0)
      c.Fail(where, std::string("'") + key + "' must be a non-negative integer");
    return it->get<uint64_t>();
  }

  std::string Array(const json& s, const std::string& hint, const std::string& where) {
    const uint64_t lo = Count(s, "minItems", where, *this).value_or(0);
    uint64_t hi = Count(s, "maxItems", where, *this).value_or(UINT64_MAX);
    if (hi < lo) Fail(where, "'maxItems' is below 'minItems'");
    std::vector<std::string> prefix;
    if (const auto it = s.find("prefixItems"); it != s.end()) {
      if (!it->is_array()) Fail(where, "'prefixItems' must be an array of schemas");
      for (size_t i = 0; i < it->size(); ++i)
        prefix.push_back(Visit((*it)[i], hint + "-" + std::to_string(i),
                               where + "/prefixItems/" + std::to_string(i)));
    }
    std::string item;
    const auto items = s.find("items");
    if (items != s.end() && *items == false) {
      hi = std::min<uint64_t>(hi, prefix.size());
    } else if (items != s.end()) {
      if (items->is_array()) Fail(where, "'items' as an array is not supported: use prefixItems");
      item = Visit(*items, hint + "-item", where + "/items");
    } else {
      item = Prim("value");
    }
    if (lo > hi) Fail(where, "'minItems' asks for more items than the schema allows");
    const std::string ws = Prim("ws");
    const std::string comma = "\",\" " + ws + " ";
    auto at = [&](size_t i) { return i < prefix.size() ? prefix[i] : item; };
    // The items after the first: positional ones each required or optional, then the rest as
    // one bounded repetition.
    auto tail = [&](auto&& self, uint64_t t) -> std::string {
      if (t >= prefix.size()) {
        if (item.empty() || hi <= t) return "";
        const uint64_t rlo = lo > t ? lo - t : 0;
        const std::string rhi = hi == UINT64_MAX ? "" : std::to_string(hi - t);
        return "(" + comma + item + " " + ws + "){" + std::to_string(rlo) + "," + rhi + "}";
      }
      if (t >= hi) return "";
      const std::string e = comma + prefix[t] + " " + ws + " " + self(self, t + 1);
      return t < lo ? e : "(" + e + ")?";
    };
    std::string body = "\"[\" " + ws + " ";
    if (hi > 0) {
      const std::string content = at(0) + " " + ws + " " + tail(tail, 1);
      body += lo > 0 ? content : "(" + content + ")?";
    }
    return Rule(hint, body + " \"]\"");
  }

  std::string String(const json& s, const std::string& hint, const std::string& where) {
    if (const auto it = s.find("pattern"); it != s.end()) {
      if (!it->is_string()) Fail(where, "'pattern' must be a string");
      for (const char* k : {"format", "minLength", "maxLength"})
        if (s.contains(k))
          Fail(where, std::string("'pattern' together with '") + k + "' is not supported");
      std::string inside;
      try {
        inside = PatternToGbnf(it->get<std::string>());
      } catch (const Error& e) {
        Fail(where, e.what());
      }
      return Rule(hint, "\"\\\"\" (" + inside + ") \"\\\"\"");
    }
    if (const auto it = s.find("format"); it != s.end()) {
      const std::string f = it->is_string() ? it->get<std::string>() : it->dump();
      if (f != "date" && f != "time" && f != "date-time" && f != "uuid")
        Fail(where, "the string format '" + f +
                        "' is not supported (supported: date, time, date-time, uuid); remove it");
      if (s.contains("minLength") || s.contains("maxLength"))
        Fail(where, "'minLength'/'maxLength' together with 'format' is not supported");
      return Rule(hint, "\"\\\"\" " + Prim(f) + " \"\\\"\"");
    }
    const uint64_t lo = Count(s, "minLength", where, *this).value_or(0);
    const auto hi = Count(s, "maxLength", where, *this);
    if (!hi && lo == 0) return Prim("string");
    if (hi && *hi < lo) Fail(where, "'maxLength' is below 'minLength'");
    const std::string rep =
        "{" + std::to_string(lo) + "," + (hi ? std::to_string(*hi) : std::string()) + "}";
    return Rule(hint, "\"\\\"\" " + Prim("char") + rep + " \"\\\"\"");
  }

  std::optional<int64_t> Bound(const json& s, const char* key, const std::string& where) const {
    const auto it = s.find(key);
    if (it == s.end()) return std::nullopt;
    if (!it->is_number()) Fail(where, std::string("'") + key + "' must be a number");
    const double v = it->get<double>();
    if (v > static_cast<double>(kMaxBound) || v < -static_cast<double>(kMaxBound))
      return std::nullopt;  // beyond what kMaxDigits digits can write anyway
    return static_cast<int64_t>(v);
  }

  std::string Integer(const json& s, const std::string& hint, const std::string& where) {
    // Non-integral bounds round inwards: minimum 1.5 means >= 2.
    auto lo = Bound(s, "minimum", where), hi = Bound(s, "maximum", where);
    if (lo && s["minimum"].get<double>() > static_cast<double>(*lo)) ++*lo;
    if (hi && s["maximum"].get<double>() < static_cast<double>(*hi)) --*hi;
    if (auto x = Bound(s, "exclusiveMinimum", where)) {
      if (s["exclusiveMinimum"].get<double>() < static_cast<double>(*x)) --*x;
      lo = lo ? std::max(*lo, *x + 1) : *x + 1;
    }
    if (auto x = Bound(s, "exclusiveMaximum", where)) {
      if (s["exclusiveMaximum"].get<double>() > static_cast<double>(*x)) ++*x;
      hi = hi ? std::min(*hi, *x - 1) : *x - 1;
    }
    if (!lo && !hi) return Prim("integer");
    if (lo && hi && *lo > *hi) Fail(where, "no integer lies between the minimum and the maximum");
    std::vector<std::string> alts;
    // Negative values: "-" then the magnitudes allowed.
    if (!lo || *lo < 0) {
      const uint64_t mlo = (!hi || *hi >= 0) ? 1 : static_cast<uint64_t>(-*hi);
      alts.push_back("\"-\" " +
                     (lo ? UIntRange(mlo, static_cast<uint64_t>(-*lo)) : UIntAtLeast(mlo)));
    }
    if (!hi || *hi >= 0) {
      const uint64_t a = lo && *lo > 0 ? static_cast<uint64_t>(*lo) : 0;
      alts.push_back(hi ? UIntRange(a, static_cast<uint64_t>(*hi)) : UIntAtLeast(a));
    }
    std::string body;
    for (const auto& a : alts) body += (body.empty() ? "" : " | ") + a;
    return Rule(hint, body);
  }

  const json& root_;
  std::string p_;
  std::map<std::string, std::string> rules_;
  std::vector<std::string> order_;
  std::map<std::string, std::string> refs_;
  int depth_ = 0;
};

}  // namespace

std::string JsonSchemaToGbnf(const json& schema, const std::string& rule_prefix) {
  return Converter(schema, rule_prefix).Run();
}

std::string JsonObjectGbnf(const std::string& rule_prefix) {
  return Converter(json::object(), rule_prefix).RunObject();
}

std::shared_ptr<const Grammar> CompileJsonSchema(const json& schema) {
  return Grammar::Parse(JsonSchemaToGbnf(schema));
}

}  // namespace es::runtime
