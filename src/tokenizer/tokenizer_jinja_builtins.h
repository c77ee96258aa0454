// Built-in filters, tests, methods of str/list/dict and attribute lookup for the Jinja
// interpreter, with jinja2's (and Python's) behaviour.
#pragma once
#include <string>

#include "tokenizer/tokenizer_jinja_value.h"

namespace es::tok::jinja {

// jinja2 rejects unknown filters and tests when it compiles a template; these let the parser do
// the same.
bool IsKnownFilter(const std::string& name);
bool IsKnownTest(const std::string& name);

Value ApplyFilter(const std::string& name, const Value& v, const CallArgs& args);
bool ApplyTest(const std::string& name, const Value& v, const CallArgs& args);

// obj.name: a built-in method first, then the item (jinja2's getattr order). Throws the
// UndefinedError for attributes of an undefined value.
Value GetAttr(const Value& obj, const std::string& name);
// obj[key]: the item first, then an attribute.
Value GetItem(const Value& obj, const Value& key);
// obj[start:stop:step] for lists and strings.
Value Slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
// A bound method of a built-in type, or Undefined.
Value Method(const Value& obj, const std::string& name);

// Python's str methods used by filters and methods alike.
std::string PyStrip(const std::string& s, const Value& chars, bool left, bool right);
std::string PyReplace(const std::string& s, const std::string& from, const std::string& to,
                      int64_t count);
ValueList PySplit(const std::string& s, const Value& sep, int64_t maxsplit);
std::string PyUpper(std::string s);
std::string PyLower(std::string s);

// The items a for loop walks: list elements, dict keys, string characters; Undefined: none.
ValueList Iterate(const Value& v);

[[noreturn]] void ThrowUndefined(const Value& v);

}  // namespace es::tok::jinja
