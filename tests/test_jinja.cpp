// The Jinja interpreter on its own: syntax, scoping, filters, Python value semantics, whitespace
// control, and clear errors (never crashes) for broken or hostile templates. Expected strings are
// what Python's jinja2 3.1 renders with trim_blocks and lstrip_blocks.
#include <gtest/gtest.h>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_jinja.h"

namespace {

using json = nlohmann::ordered_json;

std::string R(const std::string& src, const json& ctx = json::object()) {
  return es::tok::jinja::Template(src).Render(ctx);
}

std::string ErrorOf(const std::string& src, const json& ctx = json::object()) {
  try {
    R(src, ctx);
  } catch (const es::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Jinja, WhitespaceControl) {
  // trim_blocks drops the newline after a tag; lstrip_blocks the indent before one.
  EXPECT_EQ(R("{% if true %}\n  a\n  {% endif %}\nb"), "  a\nb");
  EXPECT_EQ(R("x  {%- if true -%}  \n y {{- ' z ' -}}  w{% endif %}"), "xy z w");
  EXPECT_EQ(R("a {# note #}\nb\n    {# indented #}\nc"), "a b\nc");
  EXPECT_EQ(R("{%+ if true %}k{% endif +%}\n"), "k");  // one trailing newline is dropped
  EXPECT_EQ(R("a\r\nb\n\n"), "a\nb\n");
}

TEST(Jinja, LoopsAndScopes) {
  const json ctx = {{"xs", {"a", "b", "c"}}};
  EXPECT_EQ(
      R("{% for x in xs %}{{ loop.index }}{{ x }}{{ ',' if not loop.last }}{% endfor %}", ctx),
      "1a,2b,3c");
  EXPECT_EQ(
      R("{% for x in xs if x != 'b' %}{{ loop.length }}{{ loop.revindex0 }}{% endfor %}", ctx),
      "2120");
  EXPECT_EQ(
      R("{% for x in xs %}{{ loop.previtem | default('-') }}{{ loop.nextitem }}|{% endfor %}", ctx),
      "-b|ac|b|");
  EXPECT_EQ(R("{% for x in [] %}no{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for x in xs %}{% if x == 'b' %}{% continue %}{% endif %}{% if x == 'c' %}"
              "{% break %}{% endif %}{{ x }}{% endfor %}",
              ctx),
            "a");
  // A for loop's assignments stay inside it; a namespace carries state out.
  EXPECT_EQ(R("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for x in xs %}{% set n = n + 1 %}"
              "{% set ns.n = ns.n + 1 %}{% endfor %}{{ n }} {{ ns.n }}",
              ctx),
            "0 3");
  EXPECT_EQ(R("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"),
            "a=1;b=2;");
}

TEST(Jinja, MacrosSetBlocksFilterAndCallBlocks) {
  EXPECT_EQ(R("{% macro m(a, b='B', c=none) %}[{{ a }}{{ b }}{{ c }}]{% endmacro %}"
              "{{ m(1) }}{{ m(1, c=3) }}{{ m(1, 2, 3) }}"),
            "[1BNone][1B3][123]");
  EXPECT_EQ(R("{% set x %}  hi {{ 1 + 1 }}  {% endset %}[{{ x | trim }}]"), "[hi 2]");
  EXPECT_EQ(R("{% filter upper %}abc{% endfilter %}"), "ABC");
  // Hugging Face's {% generation %} renders its body in its own scope.
  EXPECT_EQ(R("{% set x = 1 %}{% generation %}{% set x = 2 %}{{ x }}{% endgeneration %}{{ x }}"),
            "21");
  EXPECT_EQ(R("{% macro w() %}<{{ caller() }}>{% endmacro %}{% call w() %}in{% endcall %}"),
            "<in>");
}

TEST(Jinja, PythonValueSemantics) {
  EXPECT_EQ(R("{{ [1, 'a', none, true, 2.5, {'k': \"it's\"}] }}"),
            "[1, 'a', None, True, 2.5, {'k': \"it's\"}]");
  EXPECT_EQ(
      R("{{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1e20 }} {{ 3.0 }}"),
      "3.5 3 -4 2 1024 1e+20 3.0");
  EXPECT_EQ(R("{{ 'abcdef'[1:5:2] }} {{ 'abc'[::-1] }} {{ [1, 2, 3][-1] }} {{ 'héllo'[1] }}"),
            "bd cba 3 é");
  EXPECT_EQ(R("{{ 'a' in 'cat' }} {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }} {{ [1] + [2] }}"),
            "True False True [1, 2]");
  EXPECT_EQ(R("{{ '  x y  '.strip().split(' ') }} {{ 'a,b'.split(',', 1) }} {{ 'Hi'.upper() }}"),
            "['x', 'y'] ['a', 'b'] HI");
  EXPECT_EQ(R("{{ '{} and {name}'.format(1, name='n') }} {{ 'ab' * 2 }} {{ 1 ~ none }}"),
            "1 and n abab 1None");
  EXPECT_EQ(
      R("{{ x is defined }} {{ (x.y is defined) if x is defined else 'u' }} {{ none is none }}"),
      "False u True");
  EXPECT_EQ(R("{{ 'a' if 0 else 'b' }}{{ 'c' if 1 }}{{ 'd' if 0 }}"), "bc");
}

TEST(Jinja, Filters) {
  const json ctx = json::parse(
      R"({"d": {"b": 1, "a": [1, "é"]}, "people": [{"n": "x", "ok": true}, {"n": "y", "ok": false}]})");
  EXPECT_EQ(R("{{ d | tojson }}", ctx), "{\"b\": 1, \"a\": [1, \"é\"]}");
  EXPECT_EQ(R("{{ d | tojson(indent=2) }}", ctx),
            "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    \"é\"\n  ]\n}");
  EXPECT_EQ(R("{{ d | tojson(separators=(',', ':'), sort_keys=true) }}", ctx),
            "{\"a\":[1,\"é\"],\"b\":1}");
  EXPECT_EQ(R("{{ d | dictsort | first | first }} {{ d | length }} {{ d | list }}", ctx),
            "a 2 ['b', 'a']");
  EXPECT_EQ(R("{{ people | selectattr('ok') | map(attribute='n') | join(',') }}", ctx), "x");
  EXPECT_EQ(R("{{ people | rejectattr('ok') | map(attribute='n') | list }}", ctx), "['y']");
  EXPECT_EQ(R("{{ people | selectattr('n', 'equalto', 'y') | list | length }}", ctx), "1");
  EXPECT_EQ(R("{{ ['b', 'A', 'a'] | unique | list }} {{ ['b', 'A', 'c'] | sort }}"),
            "['b', 'A'] ['A', 'b', 'c']");
  EXPECT_EQ(R("{{ 'a\nb\n\nc' | indent(2) }}|{{ 'x' | indent(2, true) }}"), "a\n  b\n\n  c|  x");
  EXPECT_EQ(R("{{ u | default('dflt') }} {{ '' | default('e', true) }} {{ '3' | int + 1 }}"),
            "dflt e 4");
  EXPECT_EQ(R("{{ 'hello world' | title }} {{ 'ABC' | lower | capitalize }} {{ -2.5 | abs }}"),
            "Hello World Abc 2.5");
  EXPECT_EQ(
      R("{{ 'aXbX' | replace('X', '-') }} {{ [3, 1, 2] | max }} {{ [1, 2] | reverse | list }}"),
      "a-b- 3 [2, 1]");
}

TEST(Jinja, ErrorsNamePlaceAndCause) {
  EXPECT_NE(ErrorOf("a\n{% if x %}b").find("line 2"), std::string::npos);
  EXPECT_NE(ErrorOf("a\n{% if x %}b").find("endif"), std::string::npos);
  EXPECT_NE(ErrorOf("{% frobnicate %}").find("unknown tag 'frobnicate'"), std::string::npos);
  EXPECT_NE(ErrorOf("{% break %}").find("'break' outside a loop"), std::string::npos);
  EXPECT_NE(ErrorOf("{% for x in [1] %}{% macro m() %}{% continue %}{% endmacro %}{% endfor %}")
                .find("outside a loop"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{{ x | nope }}").find("no filter named 'nope'"), std::string::npos);
  EXPECT_NE(ErrorOf("{{ x is nope }}").find("no test named 'nope'"), std::string::npos);
  EXPECT_NE(ErrorOf("{{ 'abc }}").find("unterminated string"), std::string::npos);
  EXPECT_NE(ErrorOf("{{ (1 }}").find("line 1"), std::string::npos);
  EXPECT_NE(ErrorOf("x\n\n  {{ u.v }}").find("line 3 column"), std::string::npos);
  EXPECT_NE(ErrorOf("{{ 1 + 'a' }}").find("unsupported operand"), std::string::npos);
  EXPECT_NE(ErrorOf("{{ raise_exception('bad role') }}").find("bad role"), std::string::npos);
  EXPECT_NE(ErrorOf("{% set x = 1 %}{% set x.y = 2 %}").find("namespace"), std::string::npos);
}

// Hostile templates end with an error instead of exhausting the stack, memory or time.
TEST(Jinja, LimitsStopHostileTemplates) {
  EXPECT_NE(ErrorOf("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("nested"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}").find("nested"),
      std::string::npos);
  EXPECT_NE(
      ErrorOf("{{ " + std::string(5000, '[') + "1" + std::string(5000, ']') + " }}").find("nested"),
      std::string::npos);
  EXPECT_NE(ErrorOf("{% for i in range(100000000) %}{% endfor %}").find("range"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}"
                    "{% endfor %}")
                .find("too long"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{{ 'x' * 1000000000 }}").find("too large"), std::string::npos);
  EXPECT_NE(ErrorOf("{% set ns = namespace(x=[]) %}{% for i in range(5000) %}"
                    "{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}")
                .find("nested too deeply"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{% set ns = namespace(x=[]) %}{% for i in range(1000000) %}"
                    "{% set ns.x = {'k': ns.x} %}{% endfor %}")
                .find("nested too deeply"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{% set l = [] %}{% for i in range(100) %}{% set _ = l.append(l) %}"
                    "{% endfor %}{{ [l] }}")
                .find("nested too deeply"),
            std::string::npos);
  // Long chains nest the syntax tree as deeply as parentheses do.
  for (const char* link : {" + 1", ".a", " | trim", "[0]"}) {
    std::string chain = "{{ x";
    for (int i = 0; i < 100000; ++i) chain += link;
    EXPECT_NE(ErrorOf(chain + " }}").find("nested too deeply"), std::string::npos) << link;
  }
  EXPECT_NE(ErrorOf("{% set ns = namespace(x=[1]) %}{% for i in range(40) %}"
                    "{% set ns.x = ns.x + ns.x %}{% endfor %}")
                .find("list too long"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{% set ns = namespace(s='x' * 1000000) %}{% for i in range(100000) %}"
                    "{% set ns.t = ns.s ~ i %}{% endfor %}")
                .find("too long"),
            std::string::npos);
}

}  // namespace
