#!/usr/bin/env python3
"""Table of `edgeshard bench --cluster --json` results: measured against planned.

Arguments: OBJECTIVE:PLAN:FILE ... [--llamacpp PLAN:llama-bench.json ...]
The llama.cpp RPC runs (llama-bench -o json on the same split) are set beside edgeshard's
sequential runs of the latency objective's plans.
"""
import json
import sys


def main(argv):
    llamacpp = []
    while "--llamacpp" in argv:
        i = argv.index("--llamacpp")
        llamacpp.append(argv[i + 1].split(":", 1))
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
        print("\nllama.cpp RPC backend on the same split (latency objective's plans), one "
              "sequence:")
        print("| plan | test | edgeshard t/s | llama.cpp RPC t/s | ratio |")
        print("|---|---|---|---|---|")
        ours = {(p.lower(), t): med for o, p, m, t, s, med, *_ in rows
                if o == "latency" and m == "sequential"}
        for plan, path in llamacpp:
            try:
                for r in json.load(open(path)):
                    test = f"pp{r['n_prompt']}" if r.get("n_prompt") else f"tg{r.get('n_gen')}"
                    theirs = r.get("avg_ts", 0)
                    mine = ours.get((plan.lower(), test))
                    ratio = f"{mine / theirs:.2f}" if mine and theirs else "-"
                    mine_s = f"{mine:.2f}" if mine else "-"
                    print(f"| {plan} | {test} | {mine_s} | {theirs:.2f} | {ratio} |")
            except (OSError, ValueError) as e:
                print(f"| {plan} | - | - | no results ({e}) | - |")

if __name__ == "__main__":
    main(sys.argv[1:])
