#!/usr/bin/env python3
"""Reference renderer for test_chat_template_corpus: renders chat templates with Python's jinja2
in the environment Hugging Face's apply_chat_template uses (trim_blocks, lstrip_blocks, the
loopcontrols extension, the {% generation %} tag, a tojson that keeps non-ASCII text and key order,
raise_exception and strftime_now at a fixed time).

Usage: chat_template_ref.py CASES.json > RESULTS.json
CASES.json: {"templates": [path...], "now": [y, m, d, H, M, S], "bos_token": ..., "eos_token": ...,
             "cases": [{"messages": [...], "tools": [...] | null, "add_generation_prompt": bool,
                        "extra": {...}}]}
RESULTS.json: [[{"ok": true, "text": ...} | {"ok": false, "error": ...} per case] per template]
"""
import datetime
import json
import sys

import jinja2
import jinja2.ext
import jinja2.nodes


class GenerationTag(jinja2.ext.Extension):
    """Hugging Face's AssistantTracker: {% generation %} renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        call = self.call_method("_render", [])
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env(now):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return now.strftime(fmt)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True,
                             extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def normalize(messages):
    """Tool call arguments arrive as JSON text and reach the template as objects."""
    out = json.loads(json.dumps(messages))
    for m in out:
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            if isinstance(fn.get("arguments"), str):
                try:
                    fn["arguments"] = json.loads(fn["arguments"])
                except ValueError:
                    pass
    return out


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    env = make_env(datetime.datetime(*spec["now"]))
    results = []
    for path in spec["templates"]:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        row = []
        try:
            tmpl = env.from_string(source)
        except Exception as e:  # a template jinja2 cannot compile fails every case
            results.append([{"ok": False, "error": f"{type(e).__name__}: {e}"}] * len(spec["cases"]))
            continue
        for case in spec["cases"]:
            ctx = dict(case.get("extra") or {})
            ctx.update(messages=normalize(case["messages"]), tools=case.get("tools"),
                       add_generation_prompt=case["add_generation_prompt"],
                       bos_token=spec["bos_token"], eos_token=spec["eos_token"])
            try:
                row.append({"ok": True, "text": tmpl.render(**ctx)})
            except Exception as e:
                row.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
        results.append(row)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
