#!/usr/bin/env python3
"""Table of `edgeshard bench --cluster --json` results: measured against planned.

Arguments: OBJECTIVE:PLAN:FILE ... [--llamacpp llama-bench.json]
"""
import json
import sys


def main(argv):
    llamacpp = None
    if "--llamacpp" in argv:
        i = argv.index("--llamacpp")
        llamacpp = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    rows = []
    stages = []
    for arg in argv:
        obj, plan, path = arg.split(":", 2)
        for r in json.load(open(path)):
            c = r.get("cluster")
            rows.append((obj, plan, r["mode"], r["test"], r["sequences"], r["median"],
                         r.get("planned_tokens_per_s", 0), c["step_ms"] if c else None,
                         c["planned_step_ms"] if c else None, c["plan_method"] if c else ""))
            if c and r["mode"] == "sequential":
                stages.append((obj, plan, c["stages"]))
    print("| objective | plan | mode | test | seqs | t/s measured | t/s planned | step ms | "
          "planned step ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for o, p, m, t, s, med, pl, st, pst, _ in rows:
        f = lambda x: "-" if x is None or x == 0 else f"{x:.2f}"
        print(f"| {o} | {p} | {m} | {t} | {s} | {med:.2f} | {f(pl)} | {f(st)} | {f(pst)} |")
    for o, p, st in stages:
        print(f"\n{o} / {p}, sequential decode step per stage:")
        print("| device | units | compute ms | planned | link ms | planned | bytes |")
        print("|---|---|---|---|---|---|---|")
        for s in st:
            print(f"| {s['device']} | {s['units']} | {s['compute_ms']:.2f} | "
                  f"{s['planned_compute_ms']:.2f} | {s['link_ms']:.2f} | "
                  f"{s['planned_link_ms']:.2f} | {s['wire_bytes_per_step']:.0f} |")
    if llamacpp:
        try:
            for r in json.load(open(llamacpp)):
                test = f"pp{r['n_prompt']}" if r.get("n_prompt") else f"tg{r.get('n_gen')}"
                print(f"llama.cpp RPC {test}: {r.get('avg_ts', 0):.2f} t/s")
        except (OSError, ValueError) as e:
            print(f"llama.cpp RPC: no results ({e})")


if __name__ == "__main__":
    main(sys.argv[1:])
