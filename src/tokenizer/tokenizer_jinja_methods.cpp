// Attribute and item access, slicing, and the methods of str, list and dict that chat templates
// call (message.content.strip(), tool.get('x'), ns.items.append(y), '{}'.format(z)).
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <optional>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_jinja_builtins.h"

namespace es::tok::jinja {

namespace {

bool IsPySpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' ||
         (c >= 0x1c && c <= 0x1f);
}

int64_t IntArg(const CallArgs& a, size_t i, const char* name, int64_t def) {
  const Value v = a.Get(i, name);
  if (v.IsUndefined() || v.IsNone()) return def;
  if (v.kind != Value::Kind::kInt && v.kind != Value::Kind::kBool)
    throw Error(std::string("argument '") + name + "' must be an integer, not " + TypeName(v));
  return v.kind == Value::Kind::kBool ? v.flag : v.i;
}

std::string StrArg(const CallArgs& a, size_t i, const char* name) {
  const Value v = a.Get(i, name);
  if (!v.IsString())
    throw Error(std::string("argument '") + name + "' must be a string, not " + TypeName(v));
  return v.s;
}

// Normalises a Python index (negative counts from the end) into [0, n]; `clamp` for slices.
int64_t PyIndex(int64_t i, int64_t n) {
  return i < 0 ? i + n : i;
}

bool PrefixTest(const std::string& s, const Value& arg, bool start) {
  const auto one = [&](const std::string& p) {
    if (p.size() > s.size()) return false;
    return start ? s.compare(0, p.size(), p) == 0
                 : s.compare(s.size() - p.size(), p.size(), p) == 0;
  };
  if (arg.IsList()) {
    for (const auto& p : *arg.list)
      if (p.IsString() && one(p.s)) return true;
    return false;
  }
  if (!arg.IsString())
    throw Error(std::string(start ? "startswith" : "endswith") +
                " first arg must be str or a tuple of str, not " + TypeName(arg));
  return one(arg.s);
}

std::string PyTitle(const std::string& s) {
  std::string out = s;
  bool prev_cased = false;
  for (char& c : out) {
    const bool alpha = std::isalpha(static_cast<unsigned char>(c));
    if (alpha) c = prev_cased ? std::tolower(c) : std::toupper(c);
    prev_cased = alpha;
  }
  return out;
}

// str.format with "{}", "{0}" and "{name}" fields ("{{" / "}}" escape braces).
std::string PyFormat(const std::string& f, const CallArgs& a) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < f.size(); ++k) {
    const char c = f[k];
    if ((c == '{' || c == '}') && k + 1 < f.size() && f[k + 1] == c) {
      out += c;
      ++k;
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    const size_t end = f.find('}', k);
    if (end == std::string::npos) throw Error("str.format: single '{' encountered");
    const std::string field = f.substr(k + 1, end - k - 1);
    Value v;
    if (field.empty()) {
      v = a.Get(auto_index++, nullptr);
    } else if (std::all_of(field.begin(), field.end(), ::isdigit)) {
      v = a.Get(std::stoul(field), nullptr);
    } else {
      v = a.Get(SIZE_MAX, field.c_str());
    }
    if (v.IsUndefined()) throw Error("str.format: no argument for '{" + field + "}'");
    out += Str(v);
    k = end;
  }
  return out;
}

Value StrMethod(const std::string& s, const std::string& name, const CallArgs& a) {
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return Value::Str(PyStrip(s, a.Get(0, "chars"), name != "rstrip", name != "lstrip"));
  if (name == "split")
    return Value::List(PySplit(s, a.Get(0, "sep"), IntArg(a, 1, "maxsplit", -1)));
  if (name == "startswith" || name == "endswith")
    return Value::Bool(PrefixTest(s, a.Get(0, "prefix"), name == "startswith"));
  if (name == "upper") return Value::Str(PyUpper(s));
  if (name == "lower") return Value::Str(PyLower(s));
  if (name == "title") return Value::Str(PyTitle(s));
  if (name == "capitalize") {
    std::string out = PyLower(s);
    if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
    return Value::Str(out);
  }
  if (name == "replace")
    return Value::Str(
        PyReplace(s, StrArg(a, 0, "old"), StrArg(a, 1, "new"), IntArg(a, 2, "count", -1)));
  if (name == "format") return Value::Str(PyFormat(s, a));
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    const std::string sub = StrArg(a, 0, "sub");
    if (name == "count") {
      if (sub.empty()) return Value::Int(static_cast<int64_t>(CodePoints(s).size()) + 1);
      int64_t n = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value::Int(n);
    }
    const size_t p = name[0] == 'r' ? s.rfind(sub) : s.find(sub);
    if (p == std::string::npos && name.find("index") != std::string::npos)
      throw Error("substring not found");
    return Value::Int(
        p == std::string::npos ? -1 : static_cast<int64_t>(CodePoints(s.substr(0, p)).size()));
  }
  if (name == "join") {
    std::string out;
    bool first = true;
    for (const auto& v : Iterate(a.Get(0, "iterable"))) {
      if (!v.IsString())
        throw Error("sequence item: expected str instance, " + TypeName(v) + " found");
      out += (first ? "" : s) + v.s;
      first = false;
    }
    return Value::Str(out);
  }
  if (name == "splitlines") {
    ValueList out;
    size_t b = 0;
    for (size_t k = 0; k < s.size(); ++k) {
      if (s[k] == '\n' || s[k] == '\r') {
        out.push_back(Value::Str(s.substr(b, k - b)));
        if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
        b = k + 1;
      }
    }
    if (b < s.size()) out.push_back(Value::Str(s.substr(b)));
    return Value::List(std::move(out));
  }
  const auto all = [&](int (*pred)(int)) {
    return Value::Bool(!s.empty() && std::all_of(s.begin(), s.end(), [&](char c) {
      return pred(static_cast<unsigned char>(c)) != 0;
    }));
  };
  if (name == "isdigit") return all(::isdigit);
  if (name == "isalpha") return all(::isalpha);
  if (name == "isalnum") return all(::isalnum);
  if (name == "isspace") return all(::isspace);
  if (name == "isupper") return Value::Bool(PyUpper(s) == s && PyLower(s) != s);
  if (name == "islower") return Value::Bool(PyLower(s) == s && PyUpper(s) != s);
  throw Error("'str' object has no attribute '" + name + "'");
}

Value ListMethod(const Value& self, const std::string& name, const CallArgs& a) {
  ValueList& l = *self.list;
  const bool tuple = self.flag;
  if (name == "append" && !tuple) {
    CheckListSize(l.size() + 1);
    CheckNesting(a.Get(0, "object"), &self);
    l.push_back(a.Get(0, "object"));
    return Value::None();
  }
  if (name == "extend" && !tuple) {
    for (auto& v : Iterate(a.Get(0, "iterable"))) {
      CheckListSize(l.size() + 1);
      CheckNesting(v, &self);
      l.push_back(v);
    }
    return Value::None();
  }
  if (name == "insert" && !tuple) {
    int64_t i = PyIndex(IntArg(a, 0, "index", 0), static_cast<int64_t>(l.size()));
    i = std::clamp<int64_t>(i, 0, static_cast<int64_t>(l.size()));
    CheckListSize(l.size() + 1);
    CheckNesting(a.Get(1, "object"), &self);
    l.insert(l.begin() + i, a.Get(1, "object"));
    return Value::None();
  }
  if (name == "pop" && !tuple) {
    if (l.empty()) throw Error("pop from empty list");
    const int64_t i = PyIndex(IntArg(a, 0, "index", -1), static_cast<int64_t>(l.size()));
    if (i < 0 || i >= static_cast<int64_t>(l.size())) throw Error("pop index out of range");
    Value v = l[i];
    l.erase(l.begin() + i);
    return v;
  }
  if (name == "index" || name == "count") {
    const Value x = a.Get(0, "value");
    int64_t n = 0;
    for (size_t k = 0; k < l.size(); ++k) {
      if (!Equal(l[k], x)) continue;
      if (name == "index") return Value::Int(static_cast<int64_t>(k));
      ++n;
    }
    if (name == "index") throw Error(Repr(x) + " is not in list");
    return Value::Int(n);
  }
  if (name == "copy") return Value::List(l);
  if (name == "reverse" && !tuple) {
    std::reverse(l.begin(), l.end());
    return Value::None();
  }
  throw Error("'" + TypeName(self) + "' object has no attribute '" + name + "'");
}

Value DictMethod(const Value& self, const std::string& name, const CallArgs& a) {
  ValueDict& d = *self.dict;
  if (name == "items" || name == "keys" || name == "values") {
    ValueList out;
    for (const auto& [k, v] : d.items) {
      if (name == "items") {
        out.push_back(Value::List({KeyValue(k), v}, true));
      } else {
        out.push_back(name == "keys" ? KeyValue(k) : v);
      }
    }
    return Value::List(std::move(out));
  }
  if (name == "get" || name == "pop" || name == "setdefault") {
    const Value key = a.Get(0, "key");
    Value def = a.Get(1, "default");
    const Value* v = d.Find(DictKey(key));
    if (name == "get") return v ? *v : def.IsUndefined() ? Value::None() : def;
    if (name == "setdefault") {
      if (v) return *v;
      if (def.IsUndefined()) def = Value::None();
      CheckNesting(def, &self);
      d.Set(DictKey(key), def);
      return def;
    }
    if (!v) {
      if (def.IsUndefined()) throw Error("KeyError: " + Repr(key));
      return def;
    }
    Value out = *v;
    d.Erase(DictKey(key));
    return out;
  }
  if (name == "update") {
    const Value other = a.Get(0, nullptr);
    if (other.IsDict())
      for (const auto& [k, v] : other.dict->items) CheckNesting(v, &self);
    for (const auto& [k, v] : a.kw) CheckNesting(v, &self);
    if (other.IsDict())
      for (const auto& [k, v] : other.dict->items) d.Set(k, v);
    for (const auto& [k, v] : a.kw) d.Set(k, v);
    return Value::None();
  }
  if (name == "copy") {
    Value c = Value::Dict();
    c.dict->items = d.items;
    return c;
  }
  throw Error("'dict' object has no attribute '" + name + "'");
}

bool IsMethodName(const Value& obj, const std::string& n) {
  static const char* const kStr[] = {"strip",    "lstrip",  "rstrip",  "split",      "startswith",
                                     "endswith", "upper",   "lower",   "title",      "capitalize",
                                     "replace",  "format",  "find",    "rfind",      "index",
                                     "rindex",   "count",   "join",    "splitlines", "isdigit",
                                     "isalpha",  "isalnum", "isspace", "isupper",    "islower"};
  static const char* const kList[] = {"append", "extend", "insert", "pop",
                                      "index",  "count",  "copy",   "reverse"};
  static const char* const kDict[] = {"items", "keys",       "values", "get",
                                      "pop",   "setdefault", "update", "copy"};
  const auto in = [&](const auto& names) {
    return std::any_of(std::begin(names), std::end(names), [&](const char* m) { return n == m; });
  };
  if (obj.IsString()) return in(kStr);
  if (obj.IsList()) return in(kList);
  if (obj.IsDict() && !obj.flag) return in(kDict);
  return false;
}

}  // namespace

[[noreturn]] void ThrowUndefined(const Value& v) {
  throw Error("'" + (v.s.empty() ? std::string("value") : v.s) + "' is undefined");
}

std::string PyStrip(const std::string& s, const Value& chars, bool left, bool right) {
  const bool ws = chars.IsUndefined() || chars.IsNone();
  const auto strip = [&](char c) {
    return ws ? IsPySpace(c) : chars.s.find(c) != std::string::npos;
  };
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && strip(s[b])) ++b;
  if (right)
    while (e > b && strip(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::string PyReplace(const std::string& s, const std::string& from, const std::string& to,
                      int64_t count) {
  if (from.empty()) return s;
  std::string out;
  size_t p = 0;
  for (int64_t n = 0; count < 0 || n < count; ++n) {
    const size_t q = s.find(from, p);
    if (q == std::string::npos) break;
    out += s.substr(p, q - p) + to;
    p = q + from.size();
  }
  return out + s.substr(p);
}

ValueList PySplit(const std::string& s, const Value& sep, int64_t maxsplit) {
  ValueList out;
  if (sep.IsUndefined() || sep.IsNone()) {
    size_t k = 0;
    while (k < s.size()) {
      while (k < s.size() && IsPySpace(s[k])) ++k;
      if (k >= s.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t e = s.size();
        while (e > k && IsPySpace(s[e - 1])) --e;
        out.push_back(Value::Str(s.substr(k, e - k)));
        break;
      }
      size_t e = k;
      while (e < s.size() && !IsPySpace(s[e])) ++e;
      out.push_back(Value::Str(s.substr(k, e - k)));
      k = e;
    }
    return out;
  }
  if (!sep.IsString()) throw Error("must be str or None, not " + TypeName(sep));
  if (sep.s.empty()) throw Error("empty separator");
  size_t p = 0;
  for (;;) {
    const size_t q = s.find(sep.s, p);
    if (q == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit))
      break;
    out.push_back(Value::Str(s.substr(p, q - p)));
    p = q + sep.s.size();
  }
  out.push_back(Value::Str(s.substr(p)));
  return out;
}

std::string PyUpper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string PyLower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

ValueList Iterate(const Value& v) {
  if (v.IsList()) ChargeWork(v.list->size());
  if (v.IsDict()) ChargeWork(v.dict->items.size());
  if (v.IsString()) ChargeWork(v.s.size() / 64);
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
      if (v.lazy) {  // a generator runs once
        ValueList out = std::move(*v.list);
        v.list->clear();
        return out;
      }
      return *v.list;
    case Value::Kind::kDict: {
      ValueList keys;
      for (const auto& kv : v.dict->items) keys.push_back(KeyValue(kv.first));
      return keys;
    }
    case Value::Kind::kString: {
      ValueList chars;
      for (auto& c : CodePoints(v.s)) chars.push_back(Value::Str(std::move(c)));
      return chars;
    }
    default:
      throw Error("'" + TypeName(v) + "' object is not iterable");
  }
}

Value Method(const Value& obj, const std::string& name) {
  if (!IsMethodName(obj, name)) return Value::Undefined(name);
  return Value::Func([obj, name](CallArgs& a) {
    if (obj.IsString()) return StrMethod(obj.s, name, a);
    if (obj.IsList()) return ListMethod(obj, name, a);
    return DictMethod(obj, name, a);
  });
}

Value GetAttr(const Value& obj, const std::string& name) {
  if (obj.IsUndefined()) ThrowUndefined(obj);
  Value m = Method(obj, name);
  if (!m.IsUndefined()) return m;
  if (obj.IsDict()) {
    const Value* v = obj.dict->Find(name);
    if (v) return *v;
  }
  return Value::Undefined(name);
}

Value GetItem(const Value& obj, const Value& key) {
  if (obj.IsUndefined()) ThrowUndefined(obj);
  if (obj.lazy) throw Error("'generator' object is not subscriptable");
  if (obj.IsDict()) {
    const Value* v = obj.dict->Find(DictKey(key));
    if (v) return *v;
  }
  if ((obj.IsList() || obj.IsString()) &&
      (key.kind == Value::Kind::kInt || key.kind == Value::Kind::kBool)) {
    if (obj.IsList()) {
      const int64_t n = static_cast<int64_t>(obj.list->size());
      const int64_t i = PyIndex(key.kind == Value::Kind::kInt ? key.i : key.flag, n);
      if (i >= 0 && i < n) return (*obj.list)[i];
    } else {
      const auto cps = CodePoints(obj.s);
      const int64_t n = static_cast<int64_t>(cps.size());
      const int64_t i = PyIndex(key.kind == Value::Kind::kInt ? key.i : key.flag, n);
      if (i >= 0 && i < n) return Value::Str(cps[i]);
    }
    return Value::Undefined(Repr(key));
  }
  if (key.IsString()) return GetAttr(obj, key.s);
  return Value::Undefined(Repr(key));
}

Value Slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.IsUndefined()) ThrowUndefined(obj);
  const auto opt = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.IsUndefined() || v.IsNone()) return std::nullopt;
    if (v.kind == Value::Kind::kInt) return v.i;
    throw Error(std::string("slice ") + what + " must be an integer, not " + TypeName(v));
  };
  ValueList items;
  if (obj.IsString()) {
    for (auto& c : CodePoints(obj.s)) items.push_back(Value::Str(std::move(c)));
  } else if (obj.IsList()) {
    items = *obj.list;
  } else {
    throw Error("'" + TypeName(obj) + "' object is not subscriptable");
  }
  const int64_t n = static_cast<int64_t>(items.size());
  const int64_t st = opt(step, "step").value_or(1);
  if (st == 0) throw Error("slice step cannot be zero");
  // Python's slice.indices: clamp to the valid range for the step's direction.
  const auto norm = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t i = *v < 0 ? *v + n : *v;
    if (st > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = norm(opt(start, "start"), st > 0 ? 0 : n - 1);
  const int64_t e = norm(opt(stop, "stop"), st > 0 ? n : -1);
  ValueList out;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) out.push_back(items[i]);
  if (!obj.IsString()) return Value::List(std::move(out), obj.flag);
  std::string s;
  for (const auto& c : out) s += c.s;
  return Value::Str(std::move(s));
}

}  // namespace es::tok::jinja
