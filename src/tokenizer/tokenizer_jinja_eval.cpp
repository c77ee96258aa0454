// The Jinja evaluator: runs a parsed template against a context with jinja2's scoping (a for
// loop's body and a macro get their own scope; if does not), loop variables, macros and call
// blocks, and limits that keep a hostile template from exhausting the stack, memory or time.
#include <cmath>
#include <iterator>
#include <unordered_map>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_jinja.h"
#include "tokenizer/tokenizer_jinja_ast.h"
#include "tokenizer/tokenizer_jinja_builtins.h"

namespace es::tok::jinja {

namespace {

constexpr int kMaxCallDepth = 100;        // nested macro calls / recursive loops
constexpr int64_t kMaxWork = 4'000'000;   // work units per render (see ChargeWork)
constexpr size_t kMaxOutput = 64u << 20;  // rendered bytes (and any string built)
constexpr int64_t kMaxRange = 1'000'000;  // range() length

struct Frame {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Frame> parent;
  const Value* Find(const std::string& name) const {
    for (const Frame* f = this; f; f = f->parent.get()) {
      auto it = f->vars.find(name);
      if (it != f->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

enum class Flow { kNormal, kBreak, kContinue };

class Interp {
 public:
  explicit Interp(std::time_t now) : now_(now) {}

  std::string Run(const Body& body, const nlohmann::ordered_json& context) {
    auto globals = std::make_shared<Frame>();
    AddGlobals(*globals);
    frame_ = std::make_shared<Frame>();
    frame_->parent = globals;
    for (const auto& [k, v] : context.items()) frame_->vars[k] = Value::FromJson(v);
    std::string out;
    ResetWork(kMaxWork);
    try {
      Exec(body, out);
    } catch (const std::exception& e) {  // es::Error, and std::bad_alloc / out_of_range alike
      ResetWork(INT64_MAX);
      throw Error("chat template error at line " + std::to_string(line_) + " column " +
                  std::to_string(col_) + ": " + e.what());
    }
    ResetWork(INT64_MAX);
    return out;
  }

 private:
  void At(int line, int col) {
    line_ = line;
    col_ = col;
  }

  static void Step() { ChargeWork(1); }

  static void Append(std::string& out, const std::string& s) {
    if (out.size() + s.size() > kMaxOutput) throw Error("template output too large");
    out += s;
  }

  void AddGlobals(Frame& g) {
    g.vars["range"] = Value::Func([](CallArgs& a) {
      int64_t start = 0, stop = 0, step = 1;
      const auto num = [](const Value& v) {
        if (v.kind != Value::Kind::kInt) throw Error("range() needs integers, not " + TypeName(v));
        return v.i;
      };
      if (a.pos.size() == 1) {
        stop = num(a.pos[0]);
      } else if (a.pos.size() >= 2) {
        start = num(a.pos[0]);
        stop = num(a.pos[1]);
        if (a.pos.size() > 2) step = num(a.pos[2]);
      } else {
        throw Error("range expected at least 1 argument");
      }
      if (step == 0) throw Error("range() arg 3 must not be zero");
      ValueList out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (static_cast<int64_t>(out.size()) >= kMaxRange) throw Error("range() too long");
        out.push_back(Value::Int(i));
      }
      ChargeWork(out.size());
      return Value::List(std::move(out));
    });
    const auto make_dict = [](bool ns) {
      return Value::Func([ns](CallArgs& a) {
        Value d = Value::Dict();
        d.flag = ns;
        for (const auto& p : a.pos) {
          if (!p.IsDict()) throw Error("namespace()/dict() positional argument must be a dict");
          for (const auto& [k, v] : p.dict->items) d.dict->Set(k, v);
        }
        for (const auto& [k, v] : a.kw) d.dict->Set(k, v);
        CheckNesting(d);
        return d;
      });
    };
    g.vars["namespace"] = make_dict(true);
    g.vars["dict"] = make_dict(false);
    g.vars["raise_exception"] = Value::Func([](CallArgs& a) -> Value {
      throw Error("the template raised an exception: " + Str(a.Get(0, "message")));
    });
    g.vars["strftime_now"] = Value::Func([this](CallArgs& a) {
      const std::time_t t = now_ ? now_ : std::time(nullptr);
      std::tm tm{};
      if (now_) {
        gmtime_r(&t, &tm);
      } else {
        localtime_r(&t, &tm);
      }
      char buf[256];
      const size_t n = std::strftime(buf, sizeof(buf), Str(a.Get(0, "format")).c_str(), &tm);
      return Value::Str(std::string(buf, n));
    });
  }

  Value Lookup(const std::string& name) const {
    const Value* v = frame_->Find(name);
    return v ? *v : Value::Undefined(name);
  }

  Flow Exec(const Body& body, std::string& out) {
    for (const auto& n : body) {
      const Flow f = ExecNode(*n, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  // Binds `v` to the names (several: tuple unpacking, as in `for k, v in d.items()`).
  void Bind(Frame& f, const std::vector<std::string>& names, const Value& v) {
    if (names.size() == 1) {
      f.vars[names[0]] = v;
      return;
    }
    const ValueList items = Iterate(v);
    if (items.size() != names.size())
      throw Error("cannot unpack " + std::to_string(items.size()) + " values into " +
                  std::to_string(names.size()) + " names");
    for (size_t k = 0; k < names.size(); ++k) f.vars[names[k]] = items[k];
  }

  Flow ExecNode(const Node& n, std::string& out) {
    At(n.line, n.col);
    Step();
    switch (n.kind) {
      case Node::Kind::kText:
        Append(out, n.text);
        return Flow::kNormal;
      case Node::Kind::kOutput:
        Append(out, Str(Eval(*n.expr)));
        return Flow::kNormal;
      case Node::Kind::kIf:
        for (const auto& [cond, body] : n.branches)
          if (Truthy(Eval(*cond))) return Exec(body, out);
        return Exec(n.else_body, out);
      case Node::Kind::kFor:
        RunFor(n, Eval(*n.expr), 0, out);
        return Flow::kNormal;
      case Node::Kind::kSet: {
        Value v = Eval(*n.expr);
        if (n.target_attr) {
          Value ns = Eval(*n.target_attr);
          if (!ns.IsDict() || !ns.flag)
            throw Error("cannot assign attribute on non-namespace object '" + n.target_attr->name +
                        "'");
          CheckNesting(v, &ns);
          ns.dict->Set(n.targets[0], std::move(v));
        } else {
          Bind(*frame_, n.targets, v);
        }
        return Flow::kNormal;
      }
      case Node::Kind::kSetBlock: {
        std::string text;
        Exec(n.body, text);
        Value v = Value::Str(std::move(text));
        if (n.expr) v = Filter(*n.expr, v);
        frame_->vars[n.targets[0]] = v;
        return Flow::kNormal;
      }
      case Node::Kind::kMacro:
        frame_->vars[n.text] = MakeMacro(n, frame_);
        return Flow::kNormal;
      case Node::Kind::kCallBlock: {
        Value caller = MakeMacro(n, frame_);
        Value fn = Eval(*n.expr->a);
        CallArgs args = EvalArgs(*n.expr);
        args.kw.emplace_back("caller", caller);
        Append(out, Str(Call(fn, args)));
        return Flow::kNormal;
      }
      case Node::Kind::kFilterBlock: {
        std::string text;
        Exec(n.body, text);
        Append(out, Str(Filter(*n.expr, Value::Str(std::move(text)))));
        return Flow::kNormal;
      }
      case Node::Kind::kScope: {
        auto outer = frame_;
        frame_ = std::make_shared<Frame>();
        frame_->parent = outer;
        const Flow f = Exec(n.body, out);
        frame_ = outer;
        return f;
      }
      case Node::Kind::kBreak:
        return Flow::kBreak;
      case Node::Kind::kContinue:
        return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  void RunFor(const Node& n, const Value& iterable, int depth, std::string& out) {
    if (iterable.IsNone()) throw Error("'NoneType' object is not iterable");
    ValueList items = Iterate(iterable);
    auto outer = frame_;
    if (n.cond) {
      // `for x in xs if cond`: the filter sees the loop variable, not `loop`.
      ValueList kept;
      for (const auto& it : items) {
        Step();
        frame_ = std::make_shared<Frame>();
        frame_->parent = outer;
        Bind(*frame_, n.targets, it);
        if (Truthy(Eval(*n.cond))) kept.push_back(it);
      }
      frame_ = outer;
      items = std::move(kept);
    }
    if (items.empty()) {
      Exec(n.else_body, out);
      return;
    }
    const int64_t len = static_cast<int64_t>(items.size());
    // One `loop` object per loop, updated in place each iteration (cheaper than a new one).
    Value loop = Value::Dict();
    ValueDict& d = *loop.dict;
    for (const char* key : {"index", "index0", "revindex", "revindex0", "first", "last", "length",
                            "depth", "depth0", "previtem", "nextitem", "cycle"})
      d.items.emplace_back(key, Value());
    auto pos = std::make_shared<int64_t>(0);
    d.items[11].second = Value::Func([pos](CallArgs& a) {
      if (a.pos.empty()) throw Error("no items for cycling given");
      return a.pos[static_cast<size_t>(*pos) % a.pos.size()];
    });
    if (n.recursive) {
      // loop(children) renders the same loop body one level deeper.
      loop.fn = std::make_shared<const Function>([this, &n, depth](CallArgs& a) {
        if (depth + 1 > kMaxCallDepth) throw Error("recursive loop nested too deeply");
        std::string text;
        auto saved = frame_;
        RunFor(n, a.Get(0, nullptr), depth + 1, text);
        frame_ = saved;
        return Value::Str(std::move(text));
      });
    }
    for (int64_t k = 0; k < len; ++k) {
      Step();
      frame_ = std::make_shared<Frame>();
      frame_->parent = outer;
      Bind(*frame_, n.targets, items[k]);
      *pos = k;
      const Value vals[] = {Value::Int(k + 1),
                            Value::Int(k),
                            Value::Int(len - k),
                            Value::Int(len - k - 1),
                            Value::Bool(k == 0),
                            Value::Bool(k == len - 1),
                            Value::Int(len),
                            Value::Int(depth + 1),
                            Value::Int(depth),
                            k > 0 ? items[k - 1] : Value::Undefined("previtem"),
                            k + 1 < len ? items[k + 1] : Value::Undefined("nextitem")};
      for (size_t j = 0; j < std::size(vals); ++j) d.items[j].second = vals[j];
      frame_->vars["loop"] = loop;
      const Flow f = Exec(n.body, out);
      if (f == Flow::kBreak) break;
    }
    frame_ = outer;
  }

  // The macro holds its defining scope weakly: that scope holds the macro, and a strong
  // reference would make a cycle that leaks every render's frames.
  Value MakeMacro(const Node& n, const std::shared_ptr<Frame>& scope) {
    return Value::Func([this, &n, weak = std::weak_ptr<Frame>(scope)](CallArgs& a) {
      if (depth_ >= kMaxCallDepth) throw Error("macro calls nested too deeply");
      auto def = weak.lock();
      if (!def) throw Error("macro '" + n.text + "' called after its scope ended");
      auto f = std::make_shared<Frame>();
      f->parent = def;
      auto saved = frame_;
      frame_ = f;
      ++depth_;
      std::vector<bool> used_kw(a.kw.size(), false);
      for (size_t k = 0; k < n.params.size(); ++k) {
        const auto& [name, def_expr] = n.params[k];
        Value v = Value::Undefined(name);
        bool set = false;
        if (k < a.pos.size()) {
          v = a.pos[k];
          set = true;
        }
        for (size_t j = 0; j < a.kw.size(); ++j) {
          if (a.kw[j].first != name) continue;
          if (set) throw Error("macro '" + n.text + "' got multiple values for '" + name + "'");
          v = a.kw[j].second;
          used_kw[j] = set = true;
        }
        if (!set && def_expr) v = Eval(*def_expr);
        f->vars[name] = v;
      }
      ValueList varargs;
      for (size_t k = n.params.size(); k < a.pos.size(); ++k) varargs.push_back(a.pos[k]);
      f->vars["varargs"] = Value::List(std::move(varargs));
      Value kwargs = Value::Dict();
      for (size_t j = 0; j < a.kw.size(); ++j) {
        if (used_kw[j]) continue;
        if (a.kw[j].first == "caller") {
          f->vars["caller"] = a.kw[j].second;
        } else {
          kwargs.dict->Set(a.kw[j].first, a.kw[j].second);
        }
      }
      f->vars["kwargs"] = kwargs;
      std::string text;
      Exec(n.body, text);
      --depth_;
      frame_ = saved;
      return Value::Str(std::move(text));
    });
  }

  CallArgs EvalArgs(const Expr& e) {
    CallArgs a;
    for (const auto& x : e.args) a.pos.push_back(Eval(*x));
    for (const auto& [k, x] : e.kwargs) a.kw.emplace_back(k, Eval(*x));
    return a;
  }

  Value Call(const Value& fn, CallArgs& args) {
    if (fn.IsUndefined()) ThrowUndefined(fn);
    if (!fn.fn) throw Error("'" + TypeName(fn) + "' object is not callable");
    return (*fn.fn)(args);
  }

  // Applies the filter chain `e` (whose innermost operand is null) to `input`.
  Value Filter(const Expr& e, const Value& input) {
    Value v = !e.a ? input : e.a->kind == Expr::Kind::kFilter ? Filter(*e.a, input) : Eval(*e.a);
    CallArgs a = EvalArgs(e);
    At(e.line, e.col);
    return ApplyFilter(e.name, v, a);
  }

  Value Eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return Lookup(e.name);
      case Expr::Kind::kList: {
        ValueList items;
        for (const auto& x : e.args) items.push_back(Eval(*x));
        Value l = Value::List(std::move(items), e.value.flag);
        CheckNesting(l);
        return l;
      }
      case Expr::Kind::kDict: {
        Value d = Value::Dict();
        for (const auto& [k, x] : e.items) {
          const Value key = Eval(*k);
          At(k->line, k->col);
          d.dict->Set(DictKey(key), Eval(*x));
        }
        CheckNesting(d);
        return d;
      }
      case Expr::Kind::kAttr: {
        const Value obj = Eval(*e.a);
        At(e.line, e.col);
        return GetAttr(obj, e.name);
      }
      case Expr::Kind::kItem: {
        const Value obj = Eval(*e.a);
        const Value key = Eval(*e.b);
        At(e.line, e.col);
        return GetItem(obj, key);
      }
      case Expr::Kind::kSlice: {
        const Value obj = Eval(*e.a);
        Value parts[3];
        for (int k = 0; k < 3; ++k)
          if (e.args[k]) parts[k] = Eval(*e.args[k]);
        At(e.line, e.col);
        return Slice(obj, parts[0], parts[1], parts[2]);
      }
      case Expr::Kind::kCall: {
        const Value fn = Eval(*e.a);
        CallArgs a = EvalArgs(e);
        At(e.line, e.col);
        return Call(fn, a);
      }
      case Expr::Kind::kFilter:
        return Filter(e, Value());
      case Expr::Kind::kTest: {
        const Value v = Eval(*e.a);
        CallArgs a = EvalArgs(e);
        At(e.line, e.col);
        return Value::Bool(ApplyTest(e.name, v, a) != e.negated);
      }
      case Expr::Kind::kUnary: {
        const Value v = Eval(*e.a);
        At(e.line, e.col);
        if (e.name == "not") return Value::Bool(!Truthy(v));
        if (v.IsUndefined()) ThrowUndefined(v);
        if (!v.IsNumber()) throw Error("bad operand type for unary " + e.name + ": " + TypeName(v));
        if (v.kind == Value::Kind::kFloat) return e.name == "+" ? v : Value::Float(-v.f);
        const int64_t i = v.kind == Value::Kind::kBool ? v.flag : v.i;
        return Value::Int(e.name == "+" ? i : -i);
      }
      case Expr::Kind::kBinary:
        return Binary(e);
      case Expr::Kind::kCond:
        if (Truthy(Eval(*e.a))) return Eval(*e.b);
        return e.c ? Eval(*e.c) : Value::Undefined();
    }
    return Value();
  }

  Value Binary(const Expr& e) {
    const std::string& op = e.name;
    Value a = Eval(*e.a);
    if (op == "and") return Truthy(a) ? Eval(*e.b) : a;
    if (op == "or") return Truthy(a) ? a : Eval(*e.b);
    const Value b = Eval(*e.b);
    At(e.line, e.col);
    if (op == "~") {
      std::string s = Str(a) + Str(b);
      ChargeWork(s.size() / 64);
      if (s.size() > kMaxOutput) throw Error("string too large");
      return Value::Str(std::move(s));
    }
    if (op == "==") return Value::Bool(Equal(a, b));
    if (op == "!=") return Value::Bool(!Equal(a, b));
    if (op == "<") return Value::Bool(Compare(a, b) < 0);
    if (op == ">") return Value::Bool(Compare(a, b) > 0);
    if (op == "<=") return Value::Bool(Compare(a, b) <= 0);
    if (op == ">=") return Value::Bool(Compare(a, b) >= 0);
    if (op == "in" || op == "not in") return Value::Bool(Contains(b, a) == (op == "in"));
    return Arith(op, a, b);
  }

  static bool Contains(const Value& c, const Value& x) {
    if (c.IsString()) {
      if (!x.IsString())
        throw Error("'in <string>' requires string as left operand, not " + TypeName(x));
      return c.s.find(x.s) != std::string::npos;
    }
    if (c.IsDict()) return c.dict->Find(DictKey(x)) != nullptr;
    if (c.IsList()) {
      for (const auto& y : Iterate(c))
        if (Equal(x, y)) return true;
      return false;
    }
    if (c.IsUndefined()) return false;
    throw Error("argument of type '" + TypeName(c) + "' is not iterable");
  }

  static Value Arith(const std::string& op, const Value& a, const Value& b) {
    if (a.IsUndefined()) ThrowUndefined(a);
    if (b.IsUndefined()) ThrowUndefined(b);
    if (op == "+" && a.IsString() && b.IsString()) {
      if (a.s.size() + b.s.size() > kMaxOutput) throw Error("string too large");
      ChargeWork((a.s.size() + b.s.size()) / 64);
      // Markup + str escapes the plain side (jinja2's |safe gives Markup even without
      // autoescaping).
      if (a.flag == b.flag) {
        Value r = Value::Str(a.s + b.s);
        r.flag = a.flag;
        return r;
      }
      Value r = Value::Str((a.flag ? a.s : HtmlEscape(a.s)) + (b.flag ? b.s : HtmlEscape(b.s)));
      r.flag = true;
      return r;
    }
    if (op == "+" && a.IsList() && b.IsList() && !a.lazy && !b.lazy) {
      CheckListSize(a.list->size() + b.list->size());
      ChargeWork(a.list->size() + b.list->size());
      ValueList items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return Value::List(std::move(items), a.flag && b.flag);
    }
    if (op == "*" && (a.IsString() || a.IsList()) && b.kind == Value::Kind::kInt)
      return Repeat(a, b.i);
    if (op == "*" && (b.IsString() || b.IsList()) && a.kind == Value::Kind::kInt)
      return Repeat(b, a.i);
    if (a.IsNumber() && b.IsNumber()) {
      const bool flt = a.kind == Value::Kind::kFloat || b.kind == Value::Kind::kFloat;
      const int64_t x = a.kind == Value::Kind::kBool ? a.flag : a.i;
      const int64_t y = b.kind == Value::Kind::kBool ? b.flag : b.i;
      const double fx = a.AsDouble(), fy = b.AsDouble();
      if ((op == "/" || op == "//" || op == "%") && fy == 0) throw Error("division by zero");
      if (op == "+") return flt ? Value::Float(fx + fy) : Value::Int(x + y);
      if (op == "-") return flt ? Value::Float(fx - fy) : Value::Int(x - y);
      if (op == "*") return flt ? Value::Float(fx * fy) : Value::Int(x * y);
      if (op == "/") return Value::Float(fx / fy);
      if (op == "//") {
        if (flt) return Value::Float(std::floor(fx / fy));
        const int64_t q = x / y;
        return Value::Int((x % y != 0 && ((x < 0) != (y < 0))) ? q - 1 : q);
      }
      if (op == "%") {
        if (flt) return Value::Float(fx - fy * std::floor(fx / fy));
        const int64_t r = x % y;
        return Value::Int(r != 0 && ((r < 0) != (y < 0)) ? r + y : r);
      }
      if (op == "**") {
        if (!flt && y >= 0) {
          int64_t r = 1;
          for (int64_t k = 0; k < y && k < 64; ++k) r *= x;
          return Value::Int(r);
        }
        return Value::Float(std::pow(fx, fy));
      }
    }
    throw Error("unsupported operand type(s) for " + op + ": '" + TypeName(a) + "' and '" +
                TypeName(b) + "'");
  }

  static Value Repeat(const Value& v, int64_t n) {
    if (n < 0) n = 0;
    const size_t unit = v.IsString() ? v.s.size() : v.list->size();
    if (unit * static_cast<size_t>(n) > kMaxOutput) throw Error("repetition too large");
    if (v.IsList()) CheckListSize(unit * static_cast<size_t>(n));
    ChargeWork(v.IsString() ? unit * n / 64 : unit * n);
    if (v.IsString()) {
      std::string s;
      for (int64_t k = 0; k < n; ++k) s += v.s;
      return Value::Str(std::move(s));
    }
    ValueList items;
    for (int64_t k = 0; k < n; ++k) items.insert(items.end(), v.list->begin(), v.list->end());
    return Value::List(std::move(items), v.flag);
  }

  std::time_t now_;
  std::shared_ptr<Frame> frame_;
  int depth_ = 0;
  int line_ = 0, col_ = 0;
};

}  // namespace

Template::Template(const std::string& source)
    : body_(std::make_shared<const Body>(Parse(Lex(source)))) {}

std::string Template::Render(const nlohmann::ordered_json& context, std::time_t now) const {
  return Interp(now).Run(*body_, context);
}

}  // namespace es::tok::jinja
