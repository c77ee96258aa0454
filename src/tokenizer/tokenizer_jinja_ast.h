// The Jinja interpreter's tokens and syntax tree, shared by its lexer, parser and evaluator.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer_jinja_value.h"

namespace es::tok::jinja {

struct Token {
  enum class Type {
    kText,
    kBlockBegin,
    kBlockEnd,
    kVarBegin,
    kVarEnd,
    kName,
    kString,
    kInt,
    kFloat,
    kOp,
    kEof
  };
  Type type;
  std::string text;  // text data, name, string value, operator
  int64_t i = 0;
  double f = 0;
  int line = 1, col = 1;
};

// Splits a template into tokens, applying whitespace control ({%- -%}, trim_blocks,
// lstrip_blocks) the way jinja2's lexer does. Throws es::Error naming line:column.
std::vector<Token> Lex(const std::string& source);

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,  // value
    kName,     // name
    kList,     // args (tuple when value.flag)
    kDict,     // kwargs-like pairs in `items`
    kAttr,     // a.name
    kItem,     // a[b]
    kSlice,    // a[b:c:d] (b/c/d may be null)
    kCall,     // a(args, kwargs)
    kFilter,   // a | name(args, kwargs); a is null inside a {% filter %} block
    kTest,     // a is [not] name(args)
    kUnary,    // op a: "-", "+", "not"
    kBinary,   // a op b: + - * / // % ** ~ and or in "not in" == != < > <= >=
    kCond,     // b if a else c
  };
  Kind kind;
  int line = 0, col = 0;
  Value value;
  std::string name;  // name, attribute, filter/test name, operator
  bool negated = false;
  ExprPtr a, b, c;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::pair<ExprPtr, ExprPtr>> items;  // dict literal
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Kind {
    kText,
    kOutput,
    kIf,
    kFor,
    kSet,
    kSetBlock,
    kMacro,
    kCallBlock,
    kFilterBlock,
    kBreak,
    kContinue,
    kScope  // a {% generation %} body: run in its own scope, like jinja2's call block
  };
  Kind kind;
  int line = 0, col = 0;
  std::string text;                  // text data; macro name
  std::vector<std::string> targets;  // for / set names (more than one: unpacking)
  ExprPtr expr;                      // output, for iterable, set value, filter chain, call
  ExprPtr target_attr;               // set ns.attr = ...: the namespace expression
  ExprPtr cond;                      // for ... if cond
  bool recursive = false;
  std::vector<std::pair<ExprPtr, Body>> branches;  // if / elif
  Body body, else_body;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters and defaults
};

// Parses tokens into a template body. Throws es::Error naming line:column and what was expected.
Body Parse(const std::vector<Token>& tokens);

}  // namespace es::tok::jinja
