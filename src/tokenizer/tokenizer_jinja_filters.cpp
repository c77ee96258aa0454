// jinja2's built-in filters and tests that chat templates use, plus Hugging Face's tojson
// (json.dumps with ensure_ascii=False, key order kept).
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_jinja_builtins.h"

namespace es::tok::jinja {

namespace {

const char* const kFilters[] = {
    "tojson",      "length",    "count",      "trim",    "string",     "default",
    "d",           "join",      "items",      "upper",   "lower",      "safe",
    "dictsort",    "list",      "select",     "reject",  "selectattr", "rejectattr",
    "map",         "replace",   "indent",     "int",     "float",      "unique",
    "sort",        "min",       "max",        "first",   "last",       "abs",
    "round",       "reverse",   "capitalize", "title",   "sum",        "attr",
    "wordcount",   "center",    "batch",      "e",       "escape",     "format",
    "truncate",    "striptags", "pprint",     "xmlattr", "urlencode",  "filesizeformat",
    "forceescape", "groupby",   "random",     "slice",   "wordwrap",   "mark_safe",
    "mark_unsafe", "urlize"};
const char* const kTests[] = {
    "defined", "undefined", "none",   "boolean", "false",       "true",        "integer",
    "float",   "number",    "string", "mapping", "iterable",    "sequence",    "callable",
    "sameas",  "escaped",   "in",     "odd",     "even",        "divisibleby", "eq",
    "equalto", "==",        "ne",     "!=",      "lt",          "<",           "lessthan",
    "le",      "<=",        "gt",     ">",       "greaterthan", "ge",          ">=",
    "lower",   "upper",     "filter", "test"};

// Attribute paths like "function.name" (jinja2's make_attrgetter), items by integer.
Value AttrPath(const Value& v, const std::string& path) {
  Value cur = v;
  size_t b = 0;
  for (;;) {
    const size_t e = path.find('.', b);
    const std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    cur = GetItem(cur, digits ? Value::Int(std::stoll(part)) : Value::Str(part));
    if (e == std::string::npos) return cur;
    b = e + 1;
  }
}

// Sort key comparison with jinja2's default case-insensitivity for strings.
int SortCompare(const Value& a, const Value& b, bool case_sensitive) {
  if (!case_sensitive && a.IsString() && b.IsString()) {
    const std::string x = PyLower(a.s), y = PyLower(b.s);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  return Compare(a, b);
}

CallArgs Rest(const CallArgs& a, size_t from) {
  CallArgs r;
  for (size_t k = from; k < a.pos.size(); ++k) r.pos.push_back(a.pos[k]);
  r.kw = a.kw;
  return r;
}

ValueList SelectOrReject(const Value& v, const CallArgs& a, bool by_attr, bool select) {
  ValueList out;
  if (!Truthy(v)) return out;  // jinja2 skips a falsy input (none) without iterating it
  const std::string attr = by_attr ? Str(a.Get(0, nullptr)) : "";
  const size_t test_at = by_attr ? 1 : 0;
  const Value test = test_at < a.pos.size() ? a.pos[test_at] : Value::Undefined();
  const CallArgs targs = Rest(a, test_at + 1);
  for (const auto& item : Iterate(v)) {
    const Value x = by_attr ? AttrPath(item, attr) : item;
    const bool ok = test.IsUndefined() ? Truthy(x) : ApplyTest(Str(test), x, targs);
    if (ok == select) out.push_back(item);
  }
  return out;
}

int64_t ToInt(const Value& v, int64_t def) {
  switch (v.kind) {
    case Value::Kind::kInt:
      return v.i;
    case Value::Kind::kBool:
      return v.flag;
    case Value::Kind::kFloat:
      return std::isfinite(v.f) ? static_cast<int64_t>(v.f) : def;
    case Value::Kind::kString: {
      const std::string s = PyStrip(v.s, Value::Undefined(), true, true);
      char* end = nullptr;
      const long long i = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && end && *end == 0) return i;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == 0 && std::isfinite(d)) return static_cast<int64_t>(d);
      return def;
    }
    default:
      return def;
  }
}

std::string Indent(const std::string& text, const Value& width, bool first, bool blank) {
  const std::string ind =
      width.IsString() ? width.s : std::string(width.IsUndefined() ? 4 : ToInt(width, 4), ' ');
  std::vector<std::string> lines;
  const std::string s = text + "\n";  // jinja2 appends a newline before splitlines()
  size_t b = 0;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] == '\n' || s[k] == '\r') {
      lines.push_back(s.substr(b, k - b));
      if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
      b = k + 1;
    }
  }
  std::string rv;
  for (size_t k = 0; k < lines.size(); ++k) {
    if (k == 0) {
      rv = lines[0];
      continue;
    }
    rv += "\n" + ((blank || !lines[k].empty()) ? ind + lines[k] : lines[k]);
  }
  return first ? ind + rv : rv;
}

Value MinMax(const Value& v, const CallArgs& a, bool max) {
  const bool cs = Truthy(a.Get(0, "case_sensitive"));
  const Value attr = a.Get(1, "attribute");
  const ValueList items = Iterate(v);
  if (items.empty()) return Value::Undefined("min/max of an empty sequence");
  const Value* best = &items[0];
  for (const auto& x : items) {
    const Value kx = attr.IsUndefined() ? x : AttrPath(x, Str(attr));
    const Value kb = attr.IsUndefined() ? *best : AttrPath(*best, Str(attr));
    const int c = SortCompare(kx, kb, cs);
    if (max ? c > 0 : c < 0) best = &x;
  }
  return *best;
}

Value ToJsonFilter(const Value& v, const CallArgs& a) {
  const Value indent = a.Get(1, "indent");
  const Value seps = a.Get(2, "separators");
  const bool sort_keys = Truthy(a.Get(3, "sort_keys"));
  const int ind = indent.IsUndefined() || indent.IsNone() ? -1 : static_cast<int>(ToInt(indent, 0));
  std::string item_sep = ind >= 0 ? "," : ", ", key_sep = ": ";
  if (seps.IsList() && seps.list->size() == 2) {
    item_sep = Str((*seps.list)[0]);
    key_sep = Str((*seps.list)[1]);
  }
  return Value::Str(ToJson(v, ind, item_sep, key_sep, sort_keys));
}

Value SortFilter(const Value& v, const CallArgs& a) {
  const bool reverse = Truthy(a.Get(0, "reverse"));
  const bool cs = Truthy(a.Get(1, "case_sensitive"));
  const Value attr = a.Get(2, "attribute");
  ValueList items = Iterate(v);
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    const Value kx = attr.IsUndefined() ? x : AttrPath(x, Str(attr));
    const Value ky = attr.IsUndefined() ? y : AttrPath(y, Str(attr));
    return reverse ? SortCompare(ky, kx, cs) < 0 : SortCompare(kx, ky, cs) < 0;
  });
  return Value::List(std::move(items));
}

Value DictSort(const Value& v, const CallArgs& a) {
  if (!v.IsDict()) throw Error("dictsort: expected a dict, got " + TypeName(v));
  const bool cs = Truthy(a.Get(0, "case_sensitive"));
  const Value by = a.Get(1, "by");
  const bool by_value = by.IsString() && by.s == "value";
  const bool reverse = Truthy(a.Get(2, "reverse"));
  ValueList items;
  for (const auto& [k, x] : v.dict->items) items.push_back(Value::List({KeyValue(k), x}, true));
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    const Value& kx = (*x.list)[by_value ? 1 : 0];
    const Value& ky = (*y.list)[by_value ? 1 : 0];
    return reverse ? SortCompare(ky, kx, cs) < 0 : SortCompare(kx, ky, cs) < 0;
  });
  return Value::List(std::move(items));
}

Value MapFilter(const Value& v, const CallArgs& a) {
  ValueList out;
  if (!Truthy(v)) return Generator(std::move(out));
  const Value attr = a.Get(SIZE_MAX, "attribute");
  const Value def = a.Get(SIZE_MAX, "default");
  for (const auto& item : Iterate(v)) {
    if (!attr.IsUndefined()) {
      Value x = AttrPath(item, Str(attr));
      out.push_back(x.IsUndefined() && !def.IsUndefined() ? def : x);
    } else {
      if (a.pos.empty()) throw Error("map: needs a filter name or attribute=");
      out.push_back(ApplyFilter(Str(a.pos[0]), item, Rest(a, 1)));
    }
  }
  return Generator(std::move(out));
}

Value Unique(const Value& v, const CallArgs& a) {
  const bool cs = Truthy(a.Get(0, "case_sensitive"));
  const Value attr = a.Get(1, "attribute");
  ValueList out, seen;
  for (const auto& item : Iterate(v)) {
    Value key = attr.IsUndefined() ? item : AttrPath(item, Str(attr));
    if (!cs && key.IsString()) key = Value::Str(PyLower(key.s));
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return Equal(s, key); }))
      continue;
    seen.push_back(key);
    out.push_back(item);
  }
  return Generator(std::move(out));
}

}  // namespace

bool IsKnownFilter(const std::string& name) {
  return std::any_of(std::begin(kFilters), std::end(kFilters),
                     [&](const char* f) { return name == f; });
}

bool IsKnownTest(const std::string& name) {
  return std::any_of(std::begin(kTests), std::end(kTests),
                     [&](const char* f) { return name == f; });
}

Value ApplyFilter(const std::string& f, const Value& v, const CallArgs& a) {
  if (f == "default" || f == "d") {
    const bool boolean = Truthy(a.Get(1, "boolean"));
    if (v.IsUndefined() || (boolean && !Truthy(v))) {
      const Value def = a.Get(0, "default_value");
      return def.IsUndefined() ? Value::Str("") : def;
    }
    return v;
  }
  if (f == "safe" || f == "mark_safe" || f == "e" || f == "escape" || f == "forceescape") {
    if (v.IsString() && v.flag && f != "forceescape") return v;
    Value m = Value::Str(f == "safe" || f == "mark_safe" ? Str(v) : HtmlEscape(Str(v)));
    m.flag = true;  // Markup
    return m;
  }
  if (f == "tojson") return ToJsonFilter(v, a);
  if (f == "string") return Value::Str(Str(v));
  if (f == "length" || f == "count") {
    switch (v.kind) {
      case Value::Kind::kUndefined:
        return Value::Int(0);
      case Value::Kind::kString:
        return Value::Int(static_cast<int64_t>(CodePoints(v.s).size()));
      case Value::Kind::kList:
        if (v.lazy) throw Error("object of type 'generator' has no len()");
        return Value::Int(static_cast<int64_t>(v.list->size()));
      case Value::Kind::kDict:
        return Value::Int(static_cast<int64_t>(v.dict->items.size()));
      default:
        throw Error("object of type '" + TypeName(v) + "' has no len()");
    }
  }
  if (f == "trim") return Value::Str(PyStrip(Str(v), a.Get(0, "chars"), true, true));
  if (f == "upper") return Value::Str(PyUpper(Str(v)));
  if (f == "lower") return Value::Str(PyLower(Str(v)));
  if (f == "capitalize" || f == "title") {
    CallArgs none;
    return (*Method(Value::Str(Str(v)), f).fn)(none);
  }
  if (f == "replace") {
    const Value count = a.Get(2, "count");
    return Value::Str(PyReplace(Str(v), Str(a.Get(0, "old")), Str(a.Get(1, "new")),
                                count.IsUndefined() || count.IsNone() ? -1 : ToInt(count, -1)));
  }
  if (f == "join") {
    const std::string sep = Str(a.Get(0, "d"));
    const Value attr = a.Get(1, "attribute");
    std::string out;
    bool first = true;
    for (const auto& x : Iterate(v)) {
      out += (first ? "" : sep) + Str(attr.IsUndefined() ? x : AttrPath(x, Str(attr)));
      first = false;
    }
    return Value::Str(out);
  }
  if (f == "items") {
    if (v.IsUndefined()) return Value::List();
    if (!v.IsDict()) throw Error("items: expected a mapping, got " + TypeName(v));
    CallArgs none;
    return Generator(*(*Method(v, "items").fn)(none).list);
  }
  if (f == "list") return Value::List(Iterate(v));
  if (f == "first" || f == "last") {
    const ValueList items = Iterate(v);
    if (items.empty()) return Value::Undefined(f + " of an empty sequence");
    return f == "first" ? items.front() : items.back();
  }
  if (f == "reverse") {
    if (v.IsString()) {
      auto cps = CodePoints(v.s);
      std::string out;
      for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
      return Value::Str(out);
    }
    ValueList items = Iterate(v);
    std::reverse(items.begin(), items.end());
    return Generator(std::move(items));  // reversed() gives an iterator
  }
  if (f == "select" || f == "reject" || f == "selectattr" || f == "rejectattr")
    return Generator(SelectOrReject(v, a, f.size() > 6, f[0] == 's'));
  if (f == "map") return MapFilter(v, a);
  if (f == "indent")
    return Value::Str(
        Indent(Str(v), a.Get(0, "width"), Truthy(a.Get(1, "first")), Truthy(a.Get(2, "blank"))));
  if (f == "int") return Value::Int(ToInt(v, ToInt(a.Get(0, "default"), 0)));
  if (f == "float") {
    if (v.IsNumber()) return Value::Float(v.AsDouble());
    char* end = nullptr;
    const std::string s = Str(v);
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end && *end == 0) return Value::Float(d);
    const Value def = a.Get(0, "default");
    return def.IsUndefined() ? Value::Float(0.0) : def;
  }
  if (f == "abs") {
    if (v.kind == Value::Kind::kInt) return Value::Int(std::llabs(v.i));
    if (!v.IsNumber()) throw Error("bad operand type for abs(): '" + TypeName(v) + "'");
    return Value::Float(std::fabs(v.AsDouble()));
  }
  if (f == "round") {
    const int64_t prec = ToInt(a.Get(0, "precision"), 0);
    const std::string method = a.Get(1, "method").IsString() ? a.Get(1, "method").s : "common";
    const double scale = std::pow(10.0, static_cast<double>(prec));
    const double x = v.AsDouble() * scale;
    const double r = method == "floor"  ? std::floor(x)
                     : method == "ceil" ? std::ceil(x)
                                        : std::round(x);
    return Value::Float(r / scale);
  }
  if (f == "unique") return Unique(v, a);
  if (f == "sort") return SortFilter(v, a);
  if (f == "dictsort") return DictSort(v, a);
  if (f == "min" || f == "max") return MinMax(v, a, f == "max");
  if (f == "sum") {
    const Value attr = a.Get(0, "attribute");
    Value total = a.Get(1, "start");
    if (total.IsUndefined()) total = Value::Int(0);
    for (const auto& x : Iterate(v)) {
      const Value y = attr.IsUndefined() ? x : AttrPath(x, Str(attr));
      if (!total.IsNumber() || !y.IsNumber()) throw Error("sum: operands must be numbers");
      total = total.kind == Value::Kind::kFloat || y.kind == Value::Kind::kFloat
                  ? Value::Float(total.AsDouble() + y.AsDouble())
                  : Value::Int(ToInt(total, 0) + ToInt(y, 0));
    }
    return total;
  }
  if (f == "attr") return GetAttr(v, Str(a.Get(0, "name")));
  if (f == "wordcount") return Value::Int(static_cast<int64_t>(PySplit(Str(v), {}, -1).size()));
  throw Error("filter '" + f + "' is not supported");
}

bool ApplyTest(const std::string& t, const Value& v, const CallArgs& a) {
  const Value arg = a.Get(0, nullptr);
  if (t == "defined") return !v.IsUndefined();
  if (t == "undefined") return v.IsUndefined();
  if (t == "none") return v.IsNone();
  if (t == "boolean") return v.kind == Value::Kind::kBool;
  if (t == "false") return v.kind == Value::Kind::kBool && !v.flag;
  if (t == "true") return v.kind == Value::Kind::kBool && v.flag;
  if (t == "integer") return v.kind == Value::Kind::kInt;
  if (t == "float") return v.kind == Value::Kind::kFloat;
  if (t == "number") return v.IsNumber();
  if (t == "string") return v.IsString();
  if (t == "mapping") return v.IsDict() && !v.flag;
  // jinja2's Undefined is iterable and has __len__/__getitem__, so these hold for it too.
  if (t == "iterable" || t == "sequence")
    return v.IsUndefined() || v.IsString() || v.IsList() || (v.IsDict() && !v.flag);
  if (t == "callable") return v.kind == Value::Kind::kFunc;
  if (t == "sameas") {
    if (v.kind != arg.kind) return false;
    if (v.IsList()) return v.list == arg.list;
    if (v.IsDict()) return v.dict == arg.dict;
    return Equal(v, arg);
  }
  if (t == "escaped") return false;
  if (t == "in") {
    if (arg.IsString()) return v.IsString() && arg.s.find(v.s) != std::string::npos;
    if (arg.IsDict()) return arg.dict->Find(DictKey(v)) != nullptr;
    for (const auto& x : Iterate(arg))
      if (Equal(x, v)) return true;
    return false;
  }
  if (t == "odd" || t == "even" || t == "divisibleby") {
    if (v.kind != Value::Kind::kInt) throw Error("test '" + t + "' needs an integer");
    if (t == "divisibleby") {
      const int64_t n = ToInt(arg, 0);
      if (n == 0) throw Error("integer division or modulo by zero");
      return v.i % n == 0;
    }
    return (v.i % 2 != 0) == (t == "odd");
  }
  if (t == "eq" || t == "equalto" || t == "==") return Equal(v, arg);
  if (t == "ne" || t == "!=") return !Equal(v, arg);
  if (t == "lt" || t == "<" || t == "lessthan") return Compare(v, arg) < 0;
  if (t == "le" || t == "<=") return Compare(v, arg) <= 0;
  if (t == "gt" || t == ">" || t == "greaterthan") return Compare(v, arg) > 0;
  if (t == "ge" || t == ">=") return Compare(v, arg) >= 0;
  if (t == "lower") return v.IsString() && PyLower(v.s) == v.s;
  if (t == "upper") return v.IsString() && PyUpper(v.s) == v.s;
  if (t == "filter") return arg.IsString() && IsKnownFilter(arg.s);
  if (t == "test") return arg.IsString() && IsKnownTest(arg.s);
  throw Error("test '" + t + "' is not supported");
}

}  // namespace es::tok::jinja
