// Jinja parser: statements and expressions with jinja2's grammar and operator precedence
// (or < and < not < comparisons < + - < ~ < * / // % < ** < unary minus < filters/tests/postfix).
#include <algorithm>
#include <utility>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_jinja_ast.h"
#include "tokenizer/tokenizer_jinja_builtins.h"

namespace es::tok::jinja {

namespace {

using T = Token::Type;
constexpr int kMaxDepth = 400;  // nesting limit: a hostile template cannot overflow the stack

class Parser {
 public:
  explicit Parser(const std::vector<Token>& t) : t_(t) {}

  Body Run() {
    Body b = ParseBody({}, nullptr);
    Check(b, false);
    return b;
  }

 private:
  const Token& Cur() const { return t_[p_]; }
  const Token& Peek(size_t n = 1) const { return t_[std::min(p_ + n, t_.size() - 1)]; }
  bool IsOp(const char* op) const { return Cur().type == T::kOp && Cur().text == op; }
  bool IsName(const char* n) const { return Cur().type == T::kName && Cur().text == n; }

  static std::string Describe(const Token& t) {
    switch (t.type) {
      case T::kText:
        return "text";
      case T::kBlockBegin:
        return "'{%'";
      case T::kBlockEnd:
        return "'%}'";
      case T::kVarBegin:
        return "'{{'";
      case T::kVarEnd:
        return "'}}'";
      case T::kEof:
        return "end of template";
      case T::kString:
        return "string literal";
      default:
        return "'" + t.text + "'";
    }
  }

  [[noreturn]] void Fail(const std::string& what) const { FailAt(Cur(), what); }
  [[noreturn]] static void FailAt(const Token& t, const std::string& what) {
    throw Error("template line " + std::to_string(t.line) + " column " + std::to_string(t.col) +
                ": " + what);
  }

  void Expect(T type, const char* what) {
    if (Cur().type != type) Fail(std::string("expected ") + what + ", got " + Describe(Cur()));
    ++p_;
  }
  void ExpectOp(const char* op) {
    if (!IsOp(op)) Fail(std::string("expected '") + op + "', got " + Describe(Cur()));
    ++p_;
  }
  std::string ExpectName() {
    if (Cur().type != T::kName) Fail("expected a name, got " + Describe(Cur()));
    return t_[p_++].text;
  }

  // Counts the nodes a loop wraps around an operand (a + b + c, a.b.c, x | f | g) into the
  // nesting depth: they nest the tree as deeply as parentheses do, and evaluating or freeing a
  // tree recurses once per level.
  struct ChainGuard {
    explicit ChainGuard(Parser& p) : p(p) {}
    void Add() {
      ++n;
      if (++p.depth_ > kMaxDepth) p.Fail("expression nested too deeply");
    }
    ~ChainGuard() { p.depth_ -= n; }
    ChainGuard(const ChainGuard&) = delete;
    ChainGuard& operator=(const ChainGuard&) = delete;
    Parser& p;
    int n = 0;
  };

  struct DepthGuard {
    explicit DepthGuard(Parser& p) : p(p) {
      if (++p.depth_ > kMaxDepth) p.Fail("template nested too deeply");
    }
    ~DepthGuard() { --p.depth_; }
    Parser& p;
  };

  ExprPtr NewExpr(Expr::Kind k, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = at.line;
    e->col = at.col;
    return e;
  }
  NodePtr NewNode(Node::Kind k, const Token& at) {
    auto n = std::make_unique<Node>();
    n->kind = k;
    n->line = at.line;
    n->col = at.col;
    return n;
  }

  // Parses nodes until a block tag named in `ends` (left unconsumed after its "{%"; its name is
  // stored in *which) or the end of the template (only allowed when `ends` is empty).
  Body ParseBody(std::initializer_list<const char*> ends, std::string* which) {
    DepthGuard g(*this);
    Body body;
    for (;;) {
      const Token& tok = Cur();
      if (tok.type == T::kEof) {
        if (ends.size() == 0) return body;
        std::string want;
        for (const char* e : ends) want += (want.empty() ? "'" : " or '") + std::string(e) + "'";
        FailAt(tok, "unexpected end of template, expected " + want);
      }
      if (tok.type == T::kText) {
        auto n = NewNode(Node::Kind::kText, tok);
        n->text = tok.text;
        body.push_back(std::move(n));
        ++p_;
      } else if (tok.type == T::kVarBegin) {
        auto n = NewNode(Node::Kind::kOutput, tok);
        ++p_;
        n->expr = ParseTuple(true);
        Expect(T::kVarEnd, "'}}'");
        body.push_back(std::move(n));
      } else if (tok.type == T::kBlockBegin) {
        const Token& name = Peek();
        if (name.type == T::kName &&
            std::any_of(ends.begin(), ends.end(), [&](const char* e) { return name.text == e; })) {
          p_ += 2;
          *which = name.text;
          return body;
        }
        ++p_;
        body.push_back(ParseStatement());
      } else {
        Fail("unexpected " + Describe(tok));
      }
    }
  }

  NodePtr ParseStatement() {
    const Token& at = Cur();
    const std::string kw = ExpectName();
    std::string which;
    if (kw == "if") {
      auto n = NewNode(Node::Kind::kIf, at);
      ExprPtr cond = ParseExpression(true);
      for (;;) {
        Expect(T::kBlockEnd, "'%}'");
        Body b = ParseBody({"elif", "else", "endif"}, &which);
        n->branches.emplace_back(std::move(cond), std::move(b));
        if (which != "elif") break;
        cond = ParseExpression(true);
      }
      return ParseElse(std::move(n), which, "endif");
    }
    if (kw == "for") {
      auto n = NewNode(Node::Kind::kFor, at);
      do {
        n->targets.push_back(ExpectName());
      } while (IsOp(",") && ++p_);
      if (!IsName("in")) Fail("expected 'in', got " + Describe(Cur()));
      ++p_;
      n->expr = ParseTuple(false);
      if (IsName("if")) {
        ++p_;
        n->cond = ParseExpression(false);
      }
      if (IsName("recursive")) {
        ++p_;
        n->recursive = true;
      }
      Expect(T::kBlockEnd, "'%}'");
      ++loops_;
      n->body = ParseBody({"else", "endfor"}, &which);
      --loops_;
      return ParseElse(std::move(n), which, "endfor");
    }
    if (kw == "set") {
      auto n = NewNode(Node::Kind::kSet, at);
      const std::string first = ExpectName();
      if (IsOp(".")) {
        ++p_;
        n->target_attr = NewExpr(Expr::Kind::kName, at);
        n->target_attr->name = first;
        n->targets.push_back(ExpectName());
      } else {
        n->targets.push_back(first);
        while (IsOp(",")) {
          ++p_;
          n->targets.push_back(ExpectName());
        }
      }
      if (IsOp("=")) {
        ++p_;
        n->expr = ParseTuple(true);
        Expect(T::kBlockEnd, "'%}'");
        return n;
      }
      n->kind = Node::Kind::kSetBlock;
      if (IsOp("|")) n->expr = ParseFilters(nullptr);
      Expect(T::kBlockEnd, "'%}'");
      n->body = ParseBody({"endset"}, &which);
      Expect(T::kBlockEnd, "'%}'");
      return n;
    }
    if (kw == "macro" || kw == "call") {
      auto n = NewNode(kw == "macro" ? Node::Kind::kMacro : Node::Kind::kCallBlock, at);
      if (kw == "call" && IsOp("(")) ParseParams(*n);
      if (kw == "macro") {
        n->text = ExpectName();
        ParseParams(*n);
      } else {
        n->expr = ParseExpression(true);
        if (n->expr->kind != Expr::Kind::kCall) FailAt(at, "{% call %} needs a macro call");
      }
      Expect(T::kBlockEnd, "'%}'");
      const int loops = std::exchange(loops_, 0);  // no break out of a macro into a loop
      n->body = ParseBody({kw == "macro" ? "endmacro" : "endcall"}, &which);
      loops_ = loops;
      if (Cur().type == T::kName) ++p_;  // {% endmacro name %}
      Expect(T::kBlockEnd, "'%}'");
      return n;
    }
    if (kw == "filter") {
      auto n = NewNode(Node::Kind::kFilterBlock, at);
      --p_;  // ParseFilters expects to stand on a filter introducer
      n->expr = ParseFilters(nullptr);
      Expect(T::kBlockEnd, "'%}'");
      n->body = ParseBody({"endfilter"}, &which);
      Expect(T::kBlockEnd, "'%}'");
      return n;
    }
    if (kw == "generation") {
      // Hugging Face's {% generation %} marks assistant text for training masks; it renders its
      // body unchanged.
      auto n = NewNode(Node::Kind::kScope, at);
      Expect(T::kBlockEnd, "'%}'");
      n->body = ParseBody({"endgeneration"}, &which);
      Expect(T::kBlockEnd, "'%}'");
      return n;
    }
    if (kw == "break" || kw == "continue") {
      if (loops_ == 0) FailAt(at, "'" + kw + "' outside a loop");
      Expect(T::kBlockEnd, "'%}'");
      return NewNode(kw == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, at);
    }
    FailAt(at, "unknown tag '" + kw + "'");
  }

  // After an if's or for's body ended at `which`: the optional else body, then the end tag.
  NodePtr ParseElse(NodePtr n, std::string& which, const char* end) {
    if (which == "else") {
      Expect(T::kBlockEnd, "'%}'");
      n->else_body = ParseBody({end}, &which);
    }
    Expect(T::kBlockEnd, "'%}'");
    return n;
  }

  void ParseParams(Node& n) {
    ExpectOp("(");
    while (!IsOp(")")) {
      std::string name = ExpectName();
      ExprPtr def;
      if (IsOp("=")) {
        ++p_;
        def = ParseExpression(true);
      }
      n.params.emplace_back(std::move(name), std::move(def));
      if (!IsOp(",")) break;
      ++p_;
    }
    ExpectOp(")");
  }

  // expr ("," expr)*: a tuple when there is a comma.
  ExprPtr ParseTuple(bool with_cond) {
    const Token& at = Cur();
    ExprPtr first = ParseExpression(with_cond);
    if (!IsOp(",")) return first;
    auto t = NewExpr(Expr::Kind::kList, at);
    t->value.flag = true;
    t->args.push_back(std::move(first));
    while (IsOp(",")) {
      ++p_;
      if (Cur().type == T::kVarEnd || Cur().type == T::kBlockEnd || IsOp(")")) break;
      t->args.push_back(ParseExpression(with_cond));
    }
    return t;
  }

  ExprPtr ParseExpression(bool with_cond) {
    DepthGuard g(*this);
    const Token& at = Cur();
    ChainGuard chain(*this);
    ExprPtr e = ParseBinary(0);
    while (with_cond && IsName("if")) {
      ++p_;
      auto c = NewExpr(Expr::Kind::kCond, at);
      c->a = ParseBinary(0);
      c->b = std::move(e);
      if (IsName("else")) {
        ++p_;
        c->c = ParseExpression(true);
      }
      e = std::move(c);
      chain.Add();
    }
    return e;
  }

  // Binary levels, loosest first: or, and, not, comparison, + -, ~, * / // %, **.
  ExprPtr ParseBinary(int level) {
    if (level == 7) return ParseUnary(true);
    const Token& at = Cur();
    if (level == 2) {
      if (IsName("not")) {
        ++p_;
        DepthGuard g(*this);
        auto u = NewExpr(Expr::Kind::kUnary, at);
        u->name = "not";
        u->a = ParseBinary(2);
        return u;
      }
      return ParseBinary(3);
    }
    ChainGuard chain(*this);
    ExprPtr left = ParseBinary(level + 1);
    for (;;) {
      std::string op;
      const Token& cur = Cur();
      if (level == 0 && IsName("or")) op = "or";
      if (level == 1 && IsName("and")) op = "and";
      if (level == 3) {
        if (cur.type == T::kOp && (cur.text == "==" || cur.text == "!=" || cur.text == "<" ||
                                   cur.text == ">" || cur.text == "<=" || cur.text == ">="))
          op = cur.text;
        if (IsName("in")) op = "in";
        if (IsName("not") && Peek().type == T::kName && Peek().text == "in") {
          op = "not in";
          ++p_;
        }
      }
      if (level == 4 && (IsOp("+") || IsOp("-"))) op = cur.text;
      if (level == 5 && IsOp("~")) op = "~";
      if (level == 6 && (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%"))) op = cur.text;
      if (op.empty()) return left;
      ++p_;
      auto b = NewExpr(Expr::Kind::kBinary, cur);
      b->name = op;
      b->a = std::move(left);
      b->b = ParseBinary(level + 1);
      left = std::move(b);
      chain.Add();
    }
  }

  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard g(*this);
    const Token& at = Cur();
    ExprPtr e;
    if (IsOp("-") || IsOp("+")) {
      ++p_;
      e = NewExpr(Expr::Kind::kUnary, at);
      e->name = at.text;
      e->a = ParseUnary(false);
    } else {
      e = ParsePrimary();
    }
    e = ParsePostfix(std::move(e));
    if (with_filter) e = ParseFilters(std::move(e));
    ChainGuard chain(*this);
    while (IsOp("**")) {
      chain.Add();
      const Token& op = Cur();
      ++p_;
      auto b = NewExpr(Expr::Kind::kBinary, op);
      b->name = "**";
      b->a = std::move(e);
      b->b = ParseUnary(true);
      e = std::move(b);
    }
    return e;
  }

  ExprPtr ParsePrimary() {
    const Token& at = Cur();
    switch (at.type) {
      case T::kName: {
        ++p_;
        static const std::pair<const char*, int> kConsts[] = {
            {"true", 1}, {"True", 1}, {"false", 0}, {"False", 0}, {"none", 2}, {"None", 2}};
        for (const auto& [n, v] : kConsts) {
          if (at.text == n) {
            auto e = NewExpr(Expr::Kind::kLiteral, at);
            e->value = v == 2 ? Value::None() : Value::Bool(v == 1);
            return e;
          }
        }
        auto e = NewExpr(Expr::Kind::kName, at);
        e->name = at.text;
        return e;
      }
      case T::kString: {
        std::string s;
        while (Cur().type == T::kString) s += t_[p_++].text;  // adjacent literals concatenate
        auto e = NewExpr(Expr::Kind::kLiteral, at);
        e->value = Value::Str(std::move(s));
        return e;
      }
      case T::kInt:
      case T::kFloat: {
        ++p_;
        auto e = NewExpr(Expr::Kind::kLiteral, at);
        e->value = at.type == T::kInt ? Value::Int(at.i) : Value::Float(at.f);
        return e;
      }
      default:
        break;
    }
    if (IsOp("(")) {
      ++p_;
      if (IsOp(")")) {
        ++p_;
        auto t = NewExpr(Expr::Kind::kList, at);
        t->value.flag = true;
        return t;
      }
      ExprPtr e = ParseTuple(true);
      ExpectOp(")");
      return e;
    }
    if (IsOp("[")) {
      ++p_;
      auto l = NewExpr(Expr::Kind::kList, at);
      while (!IsOp("]")) {
        l->args.push_back(ParseExpression(true));
        if (!IsOp(",")) break;
        ++p_;
      }
      ExpectOp("]");
      return l;
    }
    if (IsOp("{")) {
      ++p_;
      auto d = NewExpr(Expr::Kind::kDict, at);
      while (!IsOp("}")) {
        ExprPtr k = ParseExpression(true);
        ExpectOp(":");
        d->items.emplace_back(std::move(k), ParseExpression(true));
        if (!IsOp(",")) break;
        ++p_;
      }
      ExpectOp("}");
      return d;
    }
    Fail("unexpected " + Describe(at));
  }

  void ParseCallArgs(Expr& call) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (Cur().type == T::kName && Peek().type == T::kOp && Peek().text == "=") {
        std::string name = t_[p_].text;
        p_ += 2;
        call.kwargs.emplace_back(std::move(name), ParseExpression(true));
      } else {
        if (!call.kwargs.empty()) Fail("positional argument follows keyword argument");
        call.args.push_back(ParseExpression(true));
      }
      if (!IsOp(",")) break;
      ++p_;
    }
    ExpectOp(")");
  }

  ExprPtr ParsePostfix(ExprPtr e) {
    ChainGuard chain(*this);
    for (;;) {
      const Token& at = Cur();
      if (IsOp(".") || IsOp("[") || IsOp("(")) chain.Add();
      if (IsOp(".")) {
        ++p_;
        if (Cur().type == T::kInt) {
          auto it = NewExpr(Expr::Kind::kItem, at);
          it->a = std::move(e);
          it->b = NewExpr(Expr::Kind::kLiteral, Cur());
          it->b->value = Value::Int(Cur().i);
          ++p_;
          e = std::move(it);
          continue;
        }
        auto a = NewExpr(Expr::Kind::kAttr, at);
        a->a = std::move(e);
        a->name = ExpectName();
        e = std::move(a);
      } else if (IsOp("[")) {
        ++p_;
        e = ParseSubscript(std::move(e), at);
      } else if (IsOp("(")) {
        auto c = NewExpr(Expr::Kind::kCall, at);
        c->a = std::move(e);
        ParseCallArgs(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr e, const Token& at) {
    ExprPtr parts[3];
    int n = 0;
    bool slice = false;
    for (;;) {
      if (IsOp(":")) {
        slice = true;
        if (++n > 2) Fail("too many ':' in slice");
        ++p_;
        continue;
      }
      if (IsOp("]")) break;
      if (parts[n]) Fail("expected ':' or ']', got " + Describe(Cur()));
      parts[n] = ParseExpression(true);
    }
    ++p_;
    if (!slice) {
      if (!parts[0]) FailAt(at, "empty subscript");
      auto it = NewExpr(Expr::Kind::kItem, at);
      it->a = std::move(e);
      it->b = std::move(parts[0]);
      return it;
    }
    auto s = NewExpr(Expr::Kind::kSlice, at);
    s->a = std::move(e);
    s->args.resize(3);
    for (int k = 0; k < 3; ++k) s->args[k] = std::move(parts[k]);
    return s;
  }

  // Filters ("|name(args)") and tests ("is [not] name args") after an operand; `e` null for the
  // filter chain of a {% filter %} / {% set x | f %} block, applied to the block's text.
  ExprPtr ParseFilters(ExprPtr e) {
    ChainGuard chain(*this);
    for (;;) {
      const Token& at = Cur();
      chain.Add();
      const bool block_filter = !e && IsName("filter");
      if (IsOp("|") || block_filter) {
        ++p_;
        auto f = NewExpr(Expr::Kind::kFilter, at);
        f->a = std::move(e);
        f->name = ExpectName();
        if (IsOp("(")) ParseCallArgs(*f);
        e = std::move(f);
      } else if (e && IsName("is")) {
        ++p_;
        auto t = NewExpr(Expr::Kind::kTest, at);
        if (IsName("not")) {
          ++p_;
          t->negated = true;
        }
        t->a = std::move(e);
        t->name = ExpectName();
        const Token& c = Cur();
        if (IsOp("(")) {
          ParseCallArgs(*t);
        } else if ((c.type == T::kName && c.text != "else" && c.text != "or" && c.text != "and") ||
                   c.type == T::kString || c.type == T::kInt || c.type == T::kFloat || IsOp("[") ||
                   IsOp("{")) {
          t->args.push_back(ParsePostfix(ParsePrimary()));
        }
        e = std::move(t);
      } else if (e && IsOp("(")) {
        e = ParsePostfix(std::move(e));
      } else {
        return e;
      }
    }
  }

  // jinja2 rejects unknown filters and tests when it compiles a template, except inside an if
  // statement or a conditional expression ("soft" frames, where the error waits until the filter
  // runs). A for loop's or macro's body is a new frame, not soft.
  void Check(const Expr& e, bool soft) {
    soft = soft || e.kind == Expr::Kind::kCond;
    if (!soft && e.kind == Expr::Kind::kFilter && !IsKnownFilter(e.name))
      FailAt(e, "no filter named '" + e.name + "'");
    if (!soft && e.kind == Expr::Kind::kTest && !IsKnownTest(e.name))
      FailAt(e, "no test named '" + e.name + "'");
    for (const Expr* x : {e.a.get(), e.b.get(), e.c.get()})
      if (x) Check(*x, soft);
    for (const auto& x : e.args)
      if (x) Check(*x, soft);
    for (const auto& [k, x] : e.kwargs) Check(*x, soft);
    for (const auto& [k, x] : e.items) {
      Check(*k, soft);
      Check(*x, soft);
    }
  }
  void Check(const Body& body, bool soft) {
    for (const auto& n : body) {
      const bool is_if = n->kind == Node::Kind::kIf;
      const bool inner = !is_if && !n->body.empty();
      for (const Expr* x : {n->expr.get(), n->target_attr.get()})
        if (x) Check(*x, soft);
      if (n->cond) Check(*n->cond, false);
      for (const auto& [c, b] : n->branches) {
        Check(*c, true);
        Check(b, true);
      }
      for (const auto& [k, x] : n->params)
        if (x) Check(*x, false);
      Check(n->body, inner ? false : soft);
      Check(n->else_body, is_if);
    }
  }
  [[noreturn]] static void FailAt(const Expr& e, const std::string& what) {
    throw Error("template line " + std::to_string(e.line) + " column " + std::to_string(e.col) +
                ": " + what);
  }

  const std::vector<Token>& t_;
  size_t p_ = 0;
  int depth_ = 0;
  int loops_ = 0;  // for bodies around the current position (a macro body starts at 0)
};

}  // namespace

Body Parse(const std::vector<Token>& tokens) {
  return Parser(tokens).Run();
}

}  // namespace es::tok::jinja
