// Values of the Jinja interpreter, with the Python semantics chat templates rely on: truthiness,
// str()/repr() printing, json.dumps, comparisons. Lists and dicts are shared by reference, as in
// Python, so `ns.items.append(x)` and namespace attribute assignment are visible to every holder.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace es::tok::jinja {

struct Value;
using ValueList = std::vector<Value>;
struct ValueDict;
struct CallArgs;
using Function = std::function<Value(CallArgs&)>;

struct Value {
  enum class Kind : uint8_t {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kFunc
  };
  Kind kind = Kind::kUndefined;
  // bool: its value; string: jinja2 Markup (from |safe; `+` then HTML-escapes plain strings);
  // list: a tuple; dict: a namespace()
  bool flag = false;
  // list: a generator (what select/map/... return): one pass, no len(), not JSON serialisable
  bool lazy = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // string; undefined: the name that was looked up (for error messages)
  std::shared_ptr<ValueList> list;
  std::shared_ptr<ValueDict> dict;
  std::shared_ptr<const Function> fn;

  static Value Undefined(std::string name = "") {
    Value v;
    v.s = std::move(name);
    return v;
  }
  static Value None() { return Make(Kind::kNone); }
  static Value Bool(bool b) {
    Value v = Make(Kind::kBool);
    v.flag = b;
    return v;
  }
  static Value Int(int64_t i) {
    Value v = Make(Kind::kInt);
    v.i = i;
    return v;
  }
  static Value Float(double f) {
    Value v = Make(Kind::kFloat);
    v.f = f;
    return v;
  }
  static Value Str(std::string s) {
    Value v = Make(Kind::kString);
    v.s = std::move(s);
    return v;
  }
  static Value List(ValueList items = {}, bool tuple = false);
  static Value Dict();
  static Value Func(Function f);
  static Value FromJson(const nlohmann::ordered_json& j);

  bool IsUndefined() const { return kind == Kind::kUndefined; }
  bool IsNone() const { return kind == Kind::kNone; }
  bool IsString() const { return kind == Kind::kString; }
  bool IsList() const { return kind == Kind::kList; }
  bool IsDict() const { return kind == Kind::kDict; }
  bool IsNumber() const {
    return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool;
  }
  double AsDouble() const { return kind == Kind::kFloat ? f : kind == Kind::kBool ? flag : i; }

 private:
  static Value Make(Kind k) {
    Value v;
    v.kind = k;
    return v;
  }
};

// An insertion-ordered dict. Keys are strings (what JSON and keyword arguments give); other key
// types (a template's {512: 128}) are stored encoded by DictKey.
struct ValueDict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* Find(std::string_view key) const;
  void Set(const std::string& key, Value v);
  bool Erase(const std::string& key);
};

// The stored form of a dict key: strings as they are, other values tagged so they stay distinct.
std::string DictKey(const Value& key);
Value KeyValue(const std::string& stored);  // the key as the template sees it

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // The argument named `name` or at position `index`; Undefined when absent.
  Value Get(size_t index, const char* name) const;
};

// Python semantics.
bool Truthy(const Value& v);
std::string Str(const Value& v);   // str(v); Undefined prints as ""
std::string Repr(const Value& v);  // repr(v), as inside a printed list
bool Equal(const Value& a, const Value& b);
// -1/0/1 like Python's <; throws es::Error for types Python cannot order.
int Compare(const Value& a, const Value& b);
std::string TypeName(const Value& v);
// json.dumps(v, ensure_ascii=False, indent=indent (<0: none), separators=(item_sep, key_sep),
// sort_keys=sort_keys). Undefined and functions are not serialisable (es::Error).
std::string ToJson(const Value& v, int indent, const std::string& item_sep,
                   const std::string& key_sep, bool sort_keys);
std::string FormatFloat(double d);             // Python's repr(float)
std::string HtmlEscape(const std::string& s);  // markupsafe.escape: & < > " '
Value Generator(ValueList items);              // a one-pass list, as select()/map() return

// The work budget of the render running on this thread: statements, loop iterations and copied
// elements (or 64-byte pieces of text) cost a unit each, so a hostile template ends with an
// es::Error instead of running for hours. ChargeWork throws once the budget is spent.
void ResetWork(int64_t budget);
void ChargeWork(size_t units);
// The most elements a list may hold (memory bound for hostile templates).
constexpr size_t kMaxListSize = 1u << 20;
void CheckListSize(size_t n);
// Throws es::Error when `v` nests lists/dicts more than 128 deep or reaches `into` (the list or
// dict it is about to be stored in, which would make a cycle that is never freed): values a
// template builds are checked as they are stored, so printing or freeing them cannot overflow
// the stack.
void CheckNesting(const Value& v, const Value* into = nullptr);

// UTF-8 code points, for Python's character indexing and len().
std::vector<std::string> CodePoints(const std::string& s);

}  // namespace es::tok::jinja
