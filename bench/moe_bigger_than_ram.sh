#!/usr/bin/env bash
# Bigger than RAM (issue 16): a mixture-of-experts model whose file is larger than the memory its
# process may use still runs, because the experts stay in the file mapping and are paged in as
# tokens choose them. Writes a synthetic MoE file, puts `edgeshard bench` in a new cgroup whose
# memory limit is below the file size, and prints decode tokens/s and peak memory.
#
#   sudo bench/moe_bigger_than_ram.sh [--preset qwen1.5-moe-a2.7b] [--type q4_0] [--limit-mib N]
#                                     [--model FILE] [--bin PATH] [-p 16] [-n 16] [--keep]
#
# Needs root (it creates a cgroup: v2 at /sys/fs/cgroup, else v1 at /sys/fs/cgroup/memory).
# --limit-mib defaults to 40% of the file. The file goes to /tmp (removed afterwards unless
# --keep or --model). Its pages are dropped from the page cache first (only this file's), so
# that no page read before counts against another cgroup.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/release/edgeshard"
vocab="${EDGESHARD_TEST_MODELS:-$root/../shared/models}/vocab/ggml-vocab-llama-spm.gguf"
preset="qwen1.5-moe-a2.7b"
type="q4_0"
limit_mib=""
model=""
n_prompt=16
n_gen=16
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --limit-mib) limit_mib="$2"; shift 2 ;;
    --model) model="$2"; keep=1; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    -p) n_prompt="$2"; shift 2 ;;
    -n) n_gen="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n "2,13p" "$0"; exit 0 ;;
    *) echo "moe_bigger_than_ram.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "moe_bigger_than_ram.sh: needs root to create a cgroup" >&2; exit 2; }
[ -x "$bin" ] || { echo "moe_bigger_than_ram.sh: no binary at $bin (build it, or --bin)" >&2; exit 2; }

if [ -z "$model" ]; then
  model="/tmp/es-bigger-than-ram-$preset-$type.gguf"
  if [ ! -f "$model" ]; then
    echo "== writing $model"
    "$bin" synth --preset "$preset" --type "$type" --vocab "$vocab" -o "$model"
  fi
fi
file_bytes=$(stat -c %s "$model")
[ -n "$limit_mib" ] || limit_mib=$((file_bytes * 4 / 10 / 1048576))
limit=$((limit_mib * 1048576))

# A cgroup of its own: v2 if the memory controller is there, else the v1 memory hierarchy.
name="es-bigger-than-ram-$$"
if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  cg="/sys/fs/cgroup/$name"
  mkdir "$cg"
  echo "$limit" >"$cg/memory.max"
  echo 0 >"$cg/memory.swap.max" 2>/dev/null || true
  peak_file="$cg/memory.peak"
else
  cg="/sys/fs/cgroup/memory/$name"
  mkdir "$cg"
  echo "$limit" >"$cg/memory.limit_in_bytes"
  peak_file="$cg/memory.max_usage_in_bytes"
fi
cleanup() {
  rmdir "$cg" 2>/dev/null || true
  [ "$keep" = 1 ] || rm -f "$model"
}
trap cleanup EXIT

# Evict this file's cached pages, so the run pages in what it reads, charged to its cgroup.
python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$model"

echo "== file $((file_bytes / 1048576)) MiB, cgroup memory limit $limit_mib MiB ($cg)"
out=$(mktemp)
# The shell joins the cgroup, then becomes the bench: nothing before it is charged there.
set +e
sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$cg" \
  "$bin" bench -m "$model" -p "$n_prompt" -n "$n_gen" -r 1 --json >"$out"
rc=$?
set -e
peak=$(cat "$peak_file" 2>/dev/null || echo 0)
if [ "$rc" != 0 ]; then
  echo "== bench failed (exit $rc)"
  cat "$out"
  rm -f "$out"
  exit 1
fi
python3 - "$out" "$file_bytes" "$limit" "$peak" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
file_bytes, limit, peak = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mib = lambda b: b / 1048576
for r in rows:
    print(f"{r['test']}: {r['median']:.2f} tokens/s")
r = rows[-1]
print(f"file {mib(file_bytes):.0f} MiB, experts {mib(r['expert_bytes']):.0f} MiB "
      f"({mib(r['expert_bytes_per_token']):.0f} MiB read per token), cgroup limit {mib(limit):.0f} MiB")
print(f"peak RSS {mib(r['peak_rss_bytes']):.0f} MiB, cgroup peak {mib(peak):.0f} MiB "
      f"(file / limit = {file_bytes / limit:.2f})")
PY
rm -f "$out"
