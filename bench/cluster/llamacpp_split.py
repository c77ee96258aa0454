#!/usr/bin/env python3
"""llama-bench arguments that put llama.cpp's RPC split as close as it can get to a plan.

Usage: llamacpp_split.py PLAN.json PLAN_NAME SOURCE 'DEVICE=HOST:PORT ...'
  PLAN.json  `edgeshard plan --json` output; PLAN_NAME "Optimum" (the planner's plan) or a
             baseline's name ("Even").
Prints one line: `-ngl N -ts A/B --rpc H1:P1,H2:P2`, then on stderr how the split differs.

llama.cpp's rules: the host (the source) keeps the token embedding and the first
n_layer - ngl blocks; the remaining blocks go to the RPC servers in --rpc order, in proportion
to -ts; the output head is offloaded only when every block is (ngl = n_layer + 1), otherwise it
stays on the host. Activations between two RPC servers pass through the host.
"""
import json
import sys


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    path, name, source, addrs = argv
    addr = dict(a.split("=", 1) for a in addrs.split())
    doc = json.load(open(path))
    n_layer = doc["model"]["units"] - 2  # token embedding, blocks, output head
    plans = [doc["plan"]] + doc.get("baselines", [])
    plan = next((p for p in plans if p["name"] == name), None)
    if plan is None:
        sys.exit(f"no plan named {name} in {path}")
    stages = plan["stages"]
    if stages[0]["device"] != source:
        sys.exit("the first stage is not the source")
    head = n_layer + 1  # unit index of the output head; blocks are units 1..n_layer
    host_end = stages[0]["last_unit"]  # units [0, host_end) on the host
    host_blocks = max(0, min(host_end, head) - 1)
    remote = stages[1:]
    if not remote:
        sys.exit("the plan keeps everything on the source: nothing for RPC to do")
    if host_blocks == 0:
        ngl = n_layer + 1
        counts = [s["last_unit"] - s["first_unit"] for s in remote]
    else:
        ngl = n_layer - host_blocks
        # The head stays on the host; a remote stage's share counts its blocks only.
        counts = [min(s["last_unit"], head) - s["first_unit"] for s in remote]
        if remote[-1]["last_unit"] > head:
            print(f"note: llama.cpp keeps the output head on the host ({source}) when blocks stay "
                  "there; the plan has it on " + remote[-1]["device"], file=sys.stderr)
    missing = [s["device"] for s in remote if s["device"] not in addr]
    if missing:
        sys.exit(f"no RPC address for {', '.join(missing)}")
    desc = ", ".join(f"{s['device']} {c}" for s, c in zip(remote, counts))
    print(f"llama.cpp split ({name}): {source} embedding + {host_blocks} blocks, {desc} "
          f"(-ngl {ngl})", file=sys.stderr)
    print(f"-ngl {ngl} -ts {'/'.join(str(c) for c in counts)} "
          f"--rpc {','.join(addr[s['device']] for s in remote)}")


if __name__ == "__main__":
    main(sys.argv[1:])
