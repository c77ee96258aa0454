#!/usr/bin/env python3
"""Side-by-side speed of edgeshard and llama.cpp on the same files, in one run.

Writes docs/benchmarks.md: machine, commit, memory bandwidth, and for every model x type x
thread count the median tokens/s of prompt processing (pp512) and generation (tg128) of both
engines, their ratio, generation as a fraction of the bandwidth roofline, and peak RSS.

The peer is current llama.cpp (the source of 2026-09-28 in npm's node-llama-cpp@3.22.1), built
outside the repo by bench/peer_llamacpp.sh into ../peer for this CPU (on x86 without AMX, with
AVX512-FP16 where the CPU has it); nothing from it enters this repo. `bench/peer_llamacpp.sh --ref
b4747` builds the older peer. LLAMA_BENCH=/path/to/llama-bench uses a binary you built instead.
    bench/compare_llamacpp.py
Models are synthesised with `edgeshard synth` into --models-dir (default ../bench-models).
"""
import argparse, datetime, json, os, platform, shlex, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("["):])


def ensure_model(es, models_dir, vocab, preset, typ):
    path = os.path.join(models_dir, f"synth-{preset}.{typ}.gguf")
    if not os.path.exists(path):
        print(f"synthesising {path}", file=sys.stderr)
        subprocess.run([es, "synth", "--preset", preset, "--type", typ, "--vocab", vocab, "-o", path], check=True)
    return path


def peer_version(llama_bench):
    # llama-bench has no --version; llama-cli beside it prints "version: N (commit)".
    cli = os.path.join(os.path.dirname(llama_bench), "llama-cli")
    if os.access(cli, os.X_OK):
        out = subprocess.run([cli, "--version"], capture_output=True, text=True)
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith("version:") and "unknown" not in line:
                return line.split(":", 1)[1].strip()
    # A tree exported by bench/peer_llamacpp.sh has no git metadata; its folder names the ref.
    build = os.path.dirname(os.path.dirname(os.path.abspath(llama_bench)))
    tree = os.path.basename(os.path.dirname(build))
    version = tree.replace("llama.cpp-", "") if tree.startswith("llama.cpp-") else "unknown version"
    # How it was built: GGML_NATIVE and the extra C flags (e.g. AMX off), from its CMake cache.
    cache = {}
    try:
        for line in open(os.path.join(build, "CMakeCache.txt")):
            key, _, value = line.strip().partition("=")
            cache[key.split(":")[0]] = value
    except OSError:
        return version
    how = "native" if cache.get("GGML_NATIVE") == "ON" else "not native"
    return f"{version} ({how}{', ' + cache['CMAKE_C_FLAGS'] if cache.get('CMAKE_C_FLAGS') else ''})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgeshard", default=os.path.join(ROOT, "build/release/edgeshard"))
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH", ""))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "..", "bench-models"))
    ap.add_argument("--vocab", default=os.path.join(ROOT, "..", "shared/models/vocab/ggml-vocab-llama-spm.gguf"))
    ap.add_argument("--corpus", default=os.path.join(ROOT, "..", "shared/data/gpl3-head12k.txt"),
                    help="text for the KL-divergence accuracy table")
    ap.add_argument("--presets", default="stories110m,tinyllama-1.1b")
    ap.add_argument("--types", default="f16,q8_0,q4_0,q4_k_m,q5_k_m,q3_k_m,iq4_xs")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("--alternate", action="store_true",
                    help="run each test (pp, tg) of each repetition as its own pair of invocations, the "
                         "engine that goes first swapping every repetition, so that bandwidth swings on a "
                         "shared machine hit both engines alike (slower: every invocation loads the model "
                         "and warms up)")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-o", "--output", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--gpu-layers", default="",
                    help="GPU runs: edgeshard --gpu-layers VALUE (e.g. all) on --device, llama-bench -ngl "
                         "(99 for all); the peer must be a GPU build (bench/peer_llamacpp.sh --vulkan)")
    ap.add_argument("--device", default="vulkan0", help="edgeshard's --device for --gpu-layers")
    ap.add_argument("--bandwidth-gbps", type=float, default=0.0,
                    help="the roofline's read bandwidth in GB/s instead of host memory's (a GPU's, for "
                         "--gpu-layers: say in the output where the figure comes from)")
    a = ap.parse_args()
    if not a.llama_bench:
        print("building the llama.cpp peer with bench/peer_llamacpp.sh", file=sys.stderr)
        bindir = subprocess.run([os.path.join(ROOT, "bench/peer_llamacpp.sh")], check=True,
                                stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        a.llama_bench = os.path.join(bindir, "llama-bench")
    if not os.access(a.llama_bench, os.X_OK):
        sys.exit(f"{a.llama_bench} is not an executable llama-bench")
    if not os.access(a.edgeshard, os.X_OK):
        sys.exit(f"{a.edgeshard} not found: build first (scripts/build release)")
    os.makedirs(a.models_dir, exist_ok=True)
    threads = [int(t) for t in a.threads.split(",")]
    # The commit measured is the one checked out when the run starts.
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()

    bw_rows = run_json([a.edgeshard, "bench", "--memory-bandwidth", "-t", a.threads, "--json"])
    bw = {row["threads"]: row["read_bytes_per_s"] for row in bw_rows}
    bw_best = {row["threads"]: row.get("best", "") for row in bw_rows}
    if a.bandwidth_gbps > 0:
        bw = {t: a.bandwidth_gbps * 1e9 for t in bw}
    es_gpu = ["--gpu-layers", a.gpu_layers, "--device", a.device] if a.gpu_layers else []
    lc_gpu = ["-ngl", "99" if a.gpu_layers == "all" else a.gpu_layers] if a.gpu_layers else []
    rows = []
    for preset in a.presets.split(","):
        for typ in a.types.split(","):
            path = ensure_model(a.edgeshard, a.models_dir, a.vocab, preset, typ)
            for t in threads:
                # Alternate the engines per configuration, or with --alternate per repetition and
                # test: each its own pair of invocations, the engine that goes first swapping every
                # repetition, so that drift on a shared machine, and whatever one test leaves behind
                # for the next in a process, hit both alike.
                es_runs, lc_runs = [], []

                def es_cmd(p, n, reps):
                    return [a.edgeshard, "bench", "-m", path, "-p", str(p), "-n", str(n), "-t", str(t),
                            "-r", str(reps), "--json"] + es_gpu

                def lc_cmd(p, n, reps):
                    return [a.llama_bench, "-m", path, "-p", str(p), "-n", str(n), "-t", str(t),
                            "-r", str(reps), "-o", "json"] + lc_gpu

                if a.alternate:
                    for i in range(a.repetitions):
                        for p, n in ((a.p, 0), (0, a.n)):
                            pair = [(es_runs, es_cmd(p, n, 1)), (lc_runs, lc_cmd(p, n, 1))]
                            for runs, cmd in (pair if i % 2 == 0 else pair[::-1]):
                                runs.append(run_json(cmd))
                else:
                    es_runs.append(run_json(es_cmd(a.p, a.n, a.repetitions)))
                    lc_runs.append(run_json(lc_cmd(a.p, a.n, a.repetitions)))
                for test in ("pp", "tg"):
                    es = [r for run in es_runs for r in run if r["test"].startswith(test)]
                    e = es[0]
                    # Every repetition of either engine, whether from one invocation or several.
                    e_all = [x for r in es for x in r["tokens_per_s"]]
                    l_all = [x for run in lc_runs for r in run if (r["n_prompt"] > 0) == (test == "pp")
                             for x in r["samples_ts"]]
                    e_med, l_med = statistics.median(e_all), statistics.median(l_all)
                    row = {"preset": preset, "type": typ, "threads": t, "test": e["test"], "edgeshard": e_med,
                           "llama_cpp": l_med, "ratio": e_med / l_med,
                           "spread": (min(e_all), max(e_all), min(l_all), max(l_all)),
                           "peak_rss": max(r["peak_rss_bytes"] for r in es),
                           "file_bytes": e["size_bytes"], "kv_bytes": e["kv_bytes"]}
                    if test == "tg":
                        # Bytes read per generated token: every weight once (the embedding only one row).
                        row["roofline_fraction"] = e_med * e["weight_bytes_per_token"] / bw[t]
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)

    # Accuracy beside memory and speed: each encoding against its preset's F16 on the GPL-3 text.
    corpus = a.corpus
    acc = []
    if os.path.exists(corpus) and "f16" in a.types.split(","):
        for preset in a.presets.split(","):
            base = os.path.join(a.models_dir, f"synth-{preset}.f16.kld")
            ppl = [a.edgeshard, "perplexity", "-f", corpus, "-c", "128", "--chunks", "4", "-t", str(threads[-1])]
            subprocess.run(ppl + ["-m", os.path.join(a.models_dir, f"synth-{preset}.f16.gguf"), "--save-kl-base", base],
                           check=True, capture_output=True)
            for typ in a.types.split(","):
                out = subprocess.run(ppl + ["-m", os.path.join(a.models_dir, f"synth-{preset}.{typ}.gguf"),
                                            "--kl-base", base], check=True, capture_output=True, text=True).stdout
                fig = {k.strip(): v.split()[0] for k, v in (l.rsplit("  ", 1) for l in out.splitlines()
                                                            if l.startswith("  ") and "  " in l.strip())}
                tg = next(r for r in rows if r["preset"] == preset and r["type"] == typ and
                          r["threads"] == threads[-1] and r["test"].startswith("tg"))
                acc.append({"preset": preset, "type": typ, "file_bytes": tg["file_bytes"], "tg": tg["edgeshard"],
                            "ppl": fig["this PPL"], "kl": fig["mean KL divergence"], "top1": fig["same top-1"]})
            os.remove(base)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = [
        "# Benchmarks: edgeshard vs llama.cpp (same files, same machine, one run)", "",
        f"- Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- edgeshard commit: {commit}; peer: llama.cpp {peer_version(a.llama_bench)}",
        f"- Date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; {a.repetitions} repetitions"
        f"{' (each test of each repetition its own invocation, the engines alternating and swapping which goes first)' if a.alternate else ''}, medians; "
        "ratio = edgeshard / llama.cpp",
        (f"- GPU: --gpu-layers {a.gpu_layers} on {a.device} (llama-bench {' '.join(lc_gpu)}); roofline "
         + (f"bandwidth {a.bandwidth_gbps:.0f} GB/s as given (--bandwidth-gbps)" if a.bandwidth_gbps > 0
            else "against host memory's bandwidth (no --bandwidth-gbps: not the GPU's)")
         if a.gpu_layers else
         "- Memory read bandwidth (edgeshard bench --memory-bandwidth): " +
         ", ".join(f"{t} thread(s) {bw[t] / 1e9:.1f} GB/s ({bw_best[t]})" for t in threads) +
         " — the best of several read patterns (vector/scalar loads, slices/interleaved blocks, "
         "prefetch, 2 MiB/4 KiB pages), each the best of 5 passes over 1 GiB"),
        "- Roofline fraction: generation tokens/s x bytes read per token / read bandwidth at that thread count",
        f"- Command: `{shlex.join(['bench/compare_llamacpp.py'] + sys.argv[1:])}`", "",
        "- Spread: the lowest and highest repetition of each engine, edgeshard / llama.cpp", "",
        "| model | type | threads | test | edgeshard t/s | llama.cpp t/s | ratio | roofline | spread | peak RSS | file + KV + 64 MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = r["file_bytes"] + r["kv_bytes"] + 64 * 2**20
        roof = f"{100 * r['roofline_fraction']:.0f}%" if "roofline_fraction" in r else ""
        spread = "{:.1f}-{:.1f} / {:.1f}-{:.1f}".format(*r["spread"])
        lines.append(f"| {r['preset']} | {r['type']} | {r['threads']} | {r['test']} | {r['edgeshard']:.1f} | "
                     f"{r['llama_cpp']:.1f} | {r['ratio']:.2f} | {roof} | {spread} | {r['peak_rss'] / 2**20:.0f} MiB | "
                     f"{budget / 2**20:.0f} MiB |")
    if not acc:
        lines += ["", "No accuracy table: it compares each type with F16, so it needs f16 in --types and "
                  f"the corpus ({corpus})."]
    else:
        lines += ["", f"## Memory, speed, accuracy drop (edgeshard, {threads[-1]} threads)", "",
                  f"Each encoding against its preset's F16 file: `edgeshard perplexity -f {os.path.basename(corpus)} -c 128 "
                  "--chunks 4 --kl-base` (the F16 base saved with `--save-kl-base`). The weights are random, so "
                  "perplexity is near the vocabulary size; KL divergence and top-1 agreement are what compare.", "",
                  "| model | type | file | tg t/s | PPL | mean KL vs F16 | same top-1 |", "|---|---|---|---|---|---|---|"]
        for r in acc:
            lines.append(f"| {r['preset']} | {r['type']} | {r['file_bytes'] / 2**20:.0f} MiB | {r['tg']:.1f} | "
                         f"{r['ppl']} | {r['kl']} | {r['top1']} |")
    os.makedirs(os.path.dirname(a.output), exist_ok=True)
    with open(a.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
