#include "tokenizer/tokenizer_jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_unicode.h"

namespace es::tok::jinja {

namespace {

thread_local int64_t work_left = INT64_MAX;
thread_local int nesting = 0;

// Bounds the recursion of repr/==/< over values a template nested (e.g. by `set x = [x]` in a
// loop), which would otherwise overflow the stack.
struct NestGuard {
  NestGuard() {
    if (++nesting > 256) {
      --nesting;
      throw Error("value nested too deeply");
    }
  }
  ~NestGuard() { --nesting; }
  NestGuard(const NestGuard&) = delete;
  NestGuard& operator=(const NestGuard&) = delete;
};

}  // namespace

void ResetWork(int64_t budget) {
  work_left = budget;
}

void ChargeWork(size_t units) {
  work_left -= static_cast<int64_t>(units);
  if (work_left < 0) throw Error("template ran too long (work limit reached)");
}

namespace {

bool DeeperThan(const Value& v, int limit, const void* target) {
  if (!v.IsList() && !v.IsDict()) return false;
  if (limit == 0) return true;
  if (target && (v.list.get() == target || v.dict.get() == target)) return true;
  ChargeWork(1);  // a value holding another twice at every level has exponentially many paths
  if (v.IsList()) {
    for (const auto& x : *v.list)
      if (DeeperThan(x, limit - 1, target)) return true;
  } else {
    for (const auto& kv : v.dict->items)
      if (DeeperThan(kv.second, limit - 1, target)) return true;
  }
  return false;
}

}  // namespace

void CheckNesting(const Value& v, const Value* into) {
  const void* target = !into            ? nullptr
                       : into->IsList() ? static_cast<const void*>(into->list.get())
                                        : static_cast<const void*>(into->dict.get());
  if (DeeperThan(v, 128, target)) throw Error("value nested too deeply (or containing itself)");
}

void CheckListSize(size_t n) {
  if (n > kMaxListSize) throw Error("list too long (" + std::to_string(n) + " elements)");
}

Value Value::List(ValueList items, bool tuple) {
  Value v = Make(Kind::kList);
  v.list = std::make_shared<ValueList>(std::move(items));
  v.flag = tuple;
  return v;
}

Value Value::Dict() {
  Value v = Make(Kind::kDict);
  v.dict = std::make_shared<ValueDict>();
  return v;
}

Value Value::Func(Function f) {
  Value v = Make(Kind::kFunc);
  v.fn = std::make_shared<const Function>(std::move(f));
  return v;
}

Value Value::FromJson(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return None();
    case nlohmann::ordered_json::value_t::boolean:
      return Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Int(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float:
      return Float(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      ValueList items;
      for (const auto& e : j) items.push_back(FromJson(e));
      return List(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Value d = Dict();
      for (const auto& [k, e] : j.items()) d.dict->items.emplace_back(k, FromJson(e));
      return d;
    }
    default:
      return None();
  }
}

const Value* ValueDict::Find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void ValueDict::Set(const std::string& key, Value v) {
  for (auto& [k, old] : items) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  items.emplace_back(key, std::move(v));
}

std::string DictKey(const Value& key) {
  if (key.IsString()) return key.s;
  if (key.kind == Value::Kind::kInt || key.kind == Value::Kind::kBool)
    return "\x01" + std::to_string(key.kind == Value::Kind::kInt ? key.i : key.flag);
  if (key.kind == Value::Kind::kFloat) return "\x02" + FormatFloat(key.f);
  if (key.IsNone()) return "\x03";
  throw Error("unhashable type: '" + TypeName(key) + "'");
}

Value KeyValue(const std::string& k) {
  if (k.empty() || k[0] > '\x03') return Value::Str(k);
  if (k[0] == '\x01') return Value::Int(std::stoll(k.substr(1)));
  if (k[0] == '\x02') return Value::Float(std::stod(k.substr(1)));
  return Value::None();
}

bool ValueDict::Erase(const std::string& key) {
  for (auto it = items.begin(); it != items.end(); ++it) {
    if (it->first == key) {
      items.erase(it);
      return true;
    }
  }
  return false;
}

Value CallArgs::Get(size_t index, const char* name) const {
  for (const auto& [k, v] : kw)
    if (name && k == name) return v;
  return index < pos.size() ? pos[index] : Value::Undefined(name ? name : "");
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
      return v.flag;
    case Value::Kind::kInt:
      return v.i != 0;
    case Value::Kind::kFloat:
      return v.f != 0;
    case Value::Kind::kString:
      return !v.s.empty();
    case Value::Kind::kList:
      return v.lazy || !v.list->empty();
    case Value::Kind::kDict:
      return v.flag || !v.dict->items.empty();  // a namespace object is always true
    case Value::Kind::kFunc:
      return true;
  }
  return false;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

Value Generator(ValueList items) {
  Value v = Value::List(std::move(items));
  v.lazy = true;
  return v;
}

std::string FormatFloat(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string out;
  if (sci[0] == '-') {
    out = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  const int exp = std::stoi(sci.substr(e + 1));
  std::string digits;
  for (size_t k = 0; k < e; ++k)
    if (sci[k] != '.') digits += sci[k];
  // Python's repr switches to exponent notation outside 1e-4 <= |d| < 1e16.
  if (exp < -4 || exp >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return out + eb;
  }
  if (exp < 0) return out + "0." + std::string(-exp - 1, '0') + digits;
  if (digits.size() <= static_cast<size_t>(exp) + 1)
    return out + digits + std::string(exp + 1 - digits.size(), '0') + ".0";
  return out + digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
}

namespace {

std::string ReprString(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == q || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + q;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof(b), "\\u%04x", c);
          out += b;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void JsonTo(std::string& out, const Value& v, int indent, int depth, const std::string& item_sep,
            const std::string& key_sep, bool sort_keys) {
  if (depth > 500) throw Error("tojson: value nested too deeply");
  const auto newline = [&](int d) {
    if (indent >= 0) out += "\n" + std::string(static_cast<size_t>(indent) * d, ' ');
  };
  switch (v.kind) {
    case Value::Kind::kNone:
      out += "null";
      return;
    case Value::Kind::kBool:
      out += v.flag ? "true" : "false";
      return;
    case Value::Kind::kInt:
      out += std::to_string(v.i);
      return;
    case Value::Kind::kFloat:
      out += std::isnan(v.f)   ? "NaN"
             : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity")
                               : FormatFloat(v.f);
      return;
    case Value::Kind::kString:
      out += JsonString(v.s);
      return;
    case Value::Kind::kList: {
      if (v.lazy) throw Error("tojson: Object of type generator is not JSON serializable");
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += item_sep;
        newline(depth + 1);
        JsonTo(out, (*v.list)[k], indent, depth + 1, item_sep, key_sep, sort_keys);
      }
      newline(depth);
      out += "]";
      return;
    }
    case Value::Kind::kDict: {
      if (v.flag) throw Error("tojson: Object of type Namespace is not JSON serializable");
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](auto* a, auto* b) { return a->first < b->first; });
      out += "{";
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += item_sep;
        newline(depth + 1);
        const Value key = KeyValue(items[k]->first);
        out += JsonString(key.IsString() ? key.s : key.IsNone() ? "null" : Repr(key)) + key_sep;
        JsonTo(out, items[k]->second, indent, depth + 1, item_sep, key_sep, sort_keys);
      }
      newline(depth);
      out += "}";
      return;
    }
    default:
      throw Error("tojson: Object of type " + TypeName(v) + " is not JSON serializable");
  }
}

}  // namespace

std::string TypeName(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "NoneType";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "str";
    case Value::Kind::kList:
      return v.lazy ? "generator" : v.flag ? "tuple" : "list";
    case Value::Kind::kDict:
      return v.flag ? "Namespace" : "dict";
    case Value::Kind::kFunc:
      return "function";
  }
  return "?";
}

std::string Str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kString:
      return v.s;
    default:
      return Repr(v);
  }
}

std::string Repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.flag ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.i);
    case Value::Kind::kFloat:
      return FormatFloat(v.f);
    case Value::Kind::kString:
      return ReprString(v.s);
    case Value::Kind::kList: {
      if (v.lazy) return "<generator object>";
      NestGuard guard;
      ChargeWork(v.list->size());
      std::string out = v.flag ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + Repr((*v.list)[k]);
      if (v.flag && v.list->size() == 1) out += ",";
      return out + (v.flag ? ")" : "]");
    }
    case Value::Kind::kDict: {
      NestGuard guard;
      ChargeWork(v.dict->items.size());
      std::string out = "{";
      bool first = true;
      for (const auto& [k, e] : v.dict->items) {
        out += (first ? "" : ", ") + Repr(KeyValue(k)) + ": " + Repr(e);
        first = false;
      }
      out += "}";
      return v.flag ? "<Namespace " + out + ">" : out;
    }
    case Value::Kind::kFunc:
      return "<function>";
  }
  return "";
}

bool Equal(const Value& a, const Value& b) {
  if (a.IsNumber() && b.IsNumber()) {
    if (a.kind != Value::Kind::kFloat && b.kind != Value::Kind::kFloat)
      return (a.kind == Value::Kind::kBool ? a.flag : a.i) ==
             (b.kind == Value::Kind::kBool ? b.flag : b.i);
    return a.AsDouble() == b.AsDouble();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.s == b.s;
    case Value::Kind::kList: {
      if (a.list->size() != b.list->size()) return false;
      NestGuard guard;
      ChargeWork(a.list->size());
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!Equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    }
    case Value::Kind::kDict: {
      if (a.flag || b.flag) return a.dict == b.dict;
      if (a.dict->items.size() != b.dict->items.size()) return false;
      NestGuard guard;
      ChargeWork(a.dict->items.size());
      for (const auto& [k, e] : a.dict->items) {
        const Value* o = b.dict->Find(k);
        if (!o || !Equal(e, *o)) return false;
      }
      return true;
    }
    case Value::Kind::kFunc:
      return a.fn == b.fn;
    default:
      return false;
  }
}

int Compare(const Value& a, const Value& b) {
  if (a.IsNumber() && b.IsNumber()) {
    if (a.kind == Value::Kind::kInt && b.kind == Value::Kind::kInt)
      return a.i < b.i ? -1 : a.i > b.i ? 1 : 0;
    const double x = a.AsDouble(), y = b.AsDouble();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.IsString() && b.IsString()) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  if (a.IsList() && b.IsList()) {
    NestGuard guard;
    ChargeWork(a.list->size());
    for (size_t k = 0; k < a.list->size() && k < b.list->size(); ++k) {
      if (Equal((*a.list)[k], (*b.list)[k])) continue;
      return Compare((*a.list)[k], (*b.list)[k]);
    }
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
  }
  throw Error("'<' not supported between instances of '" + TypeName(a) + "' and '" + TypeName(b) +
              "'");
}

std::string ToJson(const Value& v, int indent, const std::string& item_sep,
                   const std::string& key_sep, bool sort_keys) {
  std::string out;
  JsonTo(out, v, indent, 0, item_sep, key_sep, sort_keys);
  return out;
}

std::vector<std::string> CodePoints(const std::string& s) {
  std::vector<std::string> out;
  for (size_t k = 0; k < s.size();) {
    const size_t n = std::min(Utf8SeqLen(s[k]), s.size() - k);
    out.push_back(s.substr(k, n));
    k += n;
  }
  return out;
}

}  // namespace es::tok::jinja
