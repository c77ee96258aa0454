#!/usr/bin/env bash
# Emulated heterogeneous edge cluster for `edgeshard bench --cluster` (needs root).
#
# Three network namespaces stand for three devices, joined pairwise by veth links that tc netem
# shapes (rate and delay), each device's processes limited to a share of one CPU core:
#
#     src  (the source: a weak device, keeps the embedding)   CPU_SRC %   of a core
#     edge (a nearby device)                                   CPU_EDGE %
#     cloud (a strong but distant device)                      CPU_CLOUD %
#
#     src <-> edge : LINK_SRC_EDGE   (default 1000 Mbit, 1 ms RTT)
#     src <-> cloud: LINK_SRC_CLOUD  (default   10 Mbit, 20 ms RTT)
#     edge <-> cloud: LINK_EDGE_CLOUD (default 1000 Mbit, 1 ms RTT)
#
# It profiles the model once, writes cluster.yaml with the same links and time_scale = 100/CPU%,
# prints the planner's plans, then measures sequential (latency) and pipelined (throughput)
# generation for the planner's plan and for the Even split, with the planner's prediction beside
# every measurement. With LLAMA_RPC_SERVER and LLAMA_BENCH pointing at a llama.cpp build with the
# RPC backend, llama.cpp's RPC split runs on the same namespaces for comparison.
#
# Usage: sudo bench/cluster/run_cluster_bench.sh            (settings below, overridable by env)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${BIN:-$ROOT/build/release/edgeshard}
WORK=${WORK:-/tmp/es-cluster}
MODEL=${MODEL:-$WORK/tinyllama-1.1b.q4_0.gguf}
VOCAB=${VOCAB:-$ROOT/../shared/models/vocab/ggml-vocab-llama-spm.gguf}
N_PROMPT=${N_PROMPT:-32}
N_GEN=${N_GEN:-32}
REPS=${REPS:-2}
SEQS=${SEQS:-4}          # sequences in flight in the pipeline test
CTX=${CTX:-256}          # context the plans are made for
WIRE=${WIRE:-f32}          # the product default; f16 halves the bytes per hop (lossy)
BENCH=${BENCH:-1}          # edgeshard bench --cluster (sequential and pipeline modes)
SERVE=${SERVE:-1}          # serve --cluster under 1..8 concurrent streams (and llama-server RPC)
SERVE_STREAMS=${SERVE_STREAMS:-1,4,8}
SERVE_OBJECTIVE=${SERVE_OBJECTIVE:-load}  # the planner's plan: follows the load (serve's default)
CPU_SRC=${CPU_SRC:-30}
CPU_EDGE=${CPU_EDGE:-60}
CPU_CLOUD=${CPU_CLOUD:-100}
MEM_SRC=${MEM_SRC:-"1 GiB"}
MEM_EDGE=${MEM_EDGE:-"2 GiB"}
MEM_CLOUD=${MEM_CLOUD:-"8 GiB"}
LINK_SRC_EDGE=${LINK_SRC_EDGE:-"1000 1"}      # Mbit/s, RTT ms
LINK_SRC_CLOUD=${LINK_SRC_CLOUD:-"10 20"}
LINK_EDGE_CLOUD=${LINK_EDGE_CLOUD:-"1000 1"}
PORT=7070
DEVICES=(src edge cloud)

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, tc, cgroups)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no edgeshard binary at $BIN (set BIN=...)" >&2; exit 1; }
mkdir -p "$WORK"
cd "$WORK"

pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # Whatever still runs in the namespaces (workers started through wrappers) goes too.
  for d in "${DEVICES[@]}"; do
    for p in $(ip netns pids "es-$d" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  done
  sleep 0.5
  for d in "${DEVICES[@]}"; do
    ip netns del "es-$d" 2>/dev/null || true
    rmdir "/sys/fs/cgroup/cpu/es-$d" 2>/dev/null || rmdir "/sys/fs/cgroup/es-$d" 2>/dev/null || true
  done
}
trap cleanup EXIT

# ---- model, token, profile --------------------------------------------------------------------
if [ ! -f "$MODEL" ]; then
  echo "== writing $MODEL (synthetic TinyLlama 1.1B, q4_0)"
  vocab_arg=()
  [ -f "$VOCAB" ] && vocab_arg=(--vocab "$VOCAB")
  "$BIN" synth --preset tinyllama-1.1b --type q4_0 "${vocab_arg[@]}" -o "$MODEL"
fi
[ -f token ] || { openssl rand -hex 32 > token; chmod 600 token; }
if [ ! -f profile.json ]; then
  echo "== profiling $MODEL (one thread, full core)"
  "$BIN" profile -m "$MODEL" -t 1 --ctx 64,"$CTX" --reps 3 --name reference -o profile.json
fi

# ---- namespaces and links ---------------------------------------------------------------------
declare -A ADDR=([src]=10.77.1.1 [edge]=10.77.1.2 [cloud]=10.77.2.3)
for d in "${DEVICES[@]}"; do
  ip netns del "es-$d" 2>/dev/null || true
  ip netns add "es-$d"
  ip -n "es-$d" link set lo up
done

# Kernels without the netem qdisc (some containers) get tbf for the rate and a userspace relay
# (delay_proxy.py) for the delay.
NETEM=1
ip netns exec es-src tc qdisc add dev lo root netem delay 0ms 2>/dev/null &&
  ip netns exec es-src tc qdisc del dev lo root || NETEM=0
[ "$NETEM" = 1 ] || echo "note: no netem qdisc in this kernel; rate by tbf, delay by delay_proxy.py"

declare -A RTT
SHAPED=()  # NS:DEV:RATE_MBIT:HALF_RTT_MS of every shaped link end, for reshape
# shape NS DEV RATE_MBIT HALF_RTT_MS: one link end's qdisc (netem: rate and delay; else tbf: the
# rate, the relays add the delay).
shape() {
  if [ "$NETEM" = 1 ]; then
    ip netns exec "es-$1" tc qdisc replace dev "$2" root netem rate "${3}mbit" delay "${4}ms" \
      limit 100000
  else
    ip netns exec "es-$1" tc qdisc replace dev "$2" root tbf rate "${3}mbit" \
      burst "$(awk "BEGIN{b=$3/100; print (b<0.032?0.032:b)}")mbit" latency 1000ms
  fi
}
# link A B RATE_MBIT RTT_MS ADDR_A ADDR_B: veth pair; each direction shaped to the rate and
# delayed by half the RTT.
link() {
  local a=$1 b=$2 rate=$3 rtt=$4 ia=$5 ib=$6
  local va="v-$a-$b" vb="v-$b-$a" half
  RTT[$a-$b]=$rtt
  RTT[$b-$a]=$rtt
  ip link add "$va" netns "es-$a" type veth peer name "$vb" netns "es-$b"
  ip -n "es-$a" addr add "$ia/24" dev "$va"
  ip -n "es-$b" addr add "$ib/24" dev "$vb"
  ip -n "es-$a" link set "$va" up
  ip -n "es-$b" link set "$vb" up
  half=$(awk "BEGIN{print $rtt/2}")
  SHAPED+=("$a:$va:$rate:$half" "$b:$vb:$rate:$half")
  shape "$a" "$va" "$rate" "$half"
  shape "$b" "$vb" "$rate" "$half"
}
# reshape fast|shaped: lift the rate limit of every link (and netem's delay) or put it back.
# llama.cpp's RPC host streams each server its weights at load, which the 10 Mbit link would stretch
# to many minutes (edgeshard's workers read their own copy of the file); loading runs on fast links
# and only the measured serving runs on the shaped ones. Relay delays (no netem) stay.
reshape() {
  local e ns dev rate half
  for e in "${SHAPED[@]}"; do
    IFS=: read -r ns dev rate half <<< "$e"
    if [ "$1" = fast ]; then shape "$ns" "$dev" 10000 0; else shape "$ns" "$dev" "$rate" "$half"; fi
  done
}
read -r r t <<< "$LINK_SRC_EDGE";   link src edge "$r" "$t" 10.77.1.1 10.77.1.2
read -r r t <<< "$LINK_SRC_CLOUD";  link src cloud "$r" "$t" 10.77.2.1 10.77.2.3
read -r r t <<< "$LINK_EDGE_CLOUD"; link edge cloud "$r" "$t" 10.77.3.2 10.77.3.3
# Every device is named by one address; the others reach it over their direct link.
ip -n es-edge route add 10.77.2.3/32 dev v-edge-cloud
ip -n es-cloud route add 10.77.1.2/32 dev v-cloud-edge
ip -n es-cloud route add 10.77.1.1/32 dev v-cloud-src

declare -A NAME_ADDR=([edge]="${ADDR[edge]}:$PORT" [cloud]="${ADDR[cloud]}:$PORT")
if [ "$NETEM" = 0 ]; then
  # The same loopback address names a worker in every namespace: there it is a relay over that
  # namespace's direct link, delaying each direction by half the link's RTT.
  declare -A PPORT=([edge]=7081 [cloud]=7082)
  declare -A DIRECT=([src-edge]=10.77.1.2 [src-cloud]=10.77.2.3 [edge-cloud]=10.77.3.3
                     [cloud-edge]=10.77.3.2)
  for pair in src-edge src-cloud edge-cloud cloud-edge; do
    from=${pair%-*}; to=${pair#*-}
    ip netns exec "es-$from" python3 "$HERE/delay_proxy.py" "${PPORT[$to]}" "${DIRECT[$pair]}" \
      "$PORT" "$(awk "BEGIN{print ${RTT[$pair]}/2}")" &
    pids+=($!)
  done
  # Python takes a moment to start under load; nothing may plan over a relay not yet listening
  # (a device found unreachable is planned without).
  for pair in src-edge src-cloud edge-cloud cloud-edge; do
    from=${pair%-*}; to=${pair#*-}
    for i in $(seq 1 100); do
      ip netns exec "es-$from" bash -c "exec 3<>/dev/tcp/127.0.0.1/${PPORT[$to]}" 2>/dev/null &&
        break
      sleep 0.1
    done
  done
  NAME_ADDR=([edge]="127.0.0.1:${PPORT[edge]}" [cloud]="127.0.0.1:${PPORT[cloud]}")
fi

# ---- CPU shares --------------------------------------------------------------------------------
# One cgroup per device with a CPU quota (10 ms period); cgroup v2 cpu.max or v1 CFS quota.
declare -A CPU=([src]=$CPU_SRC [edge]=$CPU_EDGE [cloud]=$CPU_CLOUD)
declare -A PROCS
for d in "${DEVICES[@]}"; do
  quota=$(( ${CPU[$d]} * 100 ))
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p "/sys/fs/cgroup/es-$d"
    echo "$quota 10000" > "/sys/fs/cgroup/es-$d/cpu.max"
    PROCS[$d]=/sys/fs/cgroup/es-$d/cgroup.procs
  elif [ -d /sys/fs/cgroup/cpu ]; then
    mkdir -p "/sys/fs/cgroup/cpu/es-$d"
    echo 10000 > "/sys/fs/cgroup/cpu/es-$d/cpu.cfs_period_us"
    echo "$quota" > "/sys/fs/cgroup/cpu/es-$d/cpu.cfs_quota_us"
    PROCS[$d]=/sys/fs/cgroup/cpu/es-$d/cgroup.procs
  else
    echo "warning: no cgroup cpu controller; CPU shares are not limited" >&2
    PROCS[$d]=/dev/null
  fi
done

# in_dev DEVICE CMD...: run inside the device's CPU share and namespace. The cgroup is joined
# first (`ip netns exec` remounts /sys), and every thread the command starts inherits it.
in_dev() {
  local d=$1; shift
  bash -c 'echo $$ > "$0"; exec ip netns exec "$@"' "${PROCS[$d]}" "es-$d" "$@"
}

# ---- workers -----------------------------------------------------------------------------------
for d in edge cloud; do
  in_dev "$d" "$BIN" worker --listen "0.0.0.0:$PORT" -m "$MODEL" -t 1 -q \
    --token-file token --name "$d" > "worker-$d.out" 2> "worker-$d.log" &
  pids+=($!)
done
for i in $(seq 1 600); do
  grep -q listening worker-edge.out 2>/dev/null && grep -q listening worker-cloud.out 2>/dev/null && break
  sleep 0.2
done

ts() { awk "BEGIN{printf \"%.3f\", 100/$1}"; }
rate_of() { echo "$1" | cut -d' ' -f1; }
rtt_of() { echo "$1" | cut -d' ' -f2; }
cat > cluster.yaml <<EOF
# written by bench/cluster/run_cluster_bench.sh: the emulated cluster
source: src
devices:
  - {name: src, profile: profile.json, time_scale: $(ts "$CPU_SRC"), memory: $MEM_SRC}
  - {name: edge, profile: profile.json, time_scale: $(ts "$CPU_EDGE"), memory: $MEM_EDGE, address: "${NAME_ADDR[edge]}"}
  - {name: cloud, profile: profile.json, time_scale: $(ts "$CPU_CLOUD"), memory: $MEM_CLOUD, address: "${NAME_ADDR[cloud]}"}
links:
  - {between: [src, edge], bandwidth_mbps: $(rate_of "$LINK_SRC_EDGE"), rtt_ms: $(rtt_of "$LINK_SRC_EDGE")}
  - {between: [src, cloud], bandwidth_mbps: $(rate_of "$LINK_SRC_CLOUD"), rtt_ms: $(rtt_of "$LINK_SRC_CLOUD")}
  - {between: [edge, cloud], bandwidth_mbps: $(rate_of "$LINK_EDGE_CLOUD"), rtt_ms: $(rtt_of "$LINK_EDGE_CLOUD")}
EOF

for obj in latency throughput; do
  echo "== planner, $obj objective"
  # Latency: one sequence; throughput: SEQS sequences, each its own micro-batch (as bench runs).
  batch=1
  [ "$obj" = throughput ] && batch=$SEQS
  "$BIN" plan --cluster cluster.yaml -m "$MODEL" --ctx "$CTX" --objective "$obj" --batch "$batch" \
    | tee "plan-$obj.txt" | sed -n '1,12p'
done

results=()
[ "$BENCH" = 1 ] || echo "== bench --cluster skipped (BENCH=0)"
for obj in latency throughput; do
  [ "$BENCH" = 1 ] || break
  for plan in optimum Even; do
    out="bench-$obj-$plan.json"
    extra=()
    [ "$plan" != optimum ] && extra=(--baseline "$plan")
    echo "== bench: $obj objective, plan: $plan"
    t0=$SECONDS
    in_dev src "$BIN" bench -m "$MODEL" --cluster cluster.yaml --token-file token \
      --objective "$obj" "${extra[@]}" --wire "$WIRE" -p "$N_PROMPT" -n "$N_GEN" -r "$REPS" \
      -t 1 --sequences "$SEQS" --json > "$out" 2> "bench-$obj-$plan.log" || {
      echo "   failed: $(tail -1 "bench-$obj-$plan.log")"; continue; }
    echo "   $((SECONDS - t0)) s wall, loading the shards included"
    results+=("$obj:$plan:$out")
  done
done

# rpc_up PORT: llama.cpp's rpc-server on edge and cloud (in their CPU shares) at PORT. Sets
# RPC_ARGS ("edge=HOST:PORT cloud=HOST:PORT", for llamacpp_split.py) to where the source's
# llama.cpp host reaches them: over its direct links, through delay relays when there is no netem.
# Each rpc-server computes with one thread, as edgeshard's workers do (-t 1), in its CPU quota.
rpc_up() {
  local port=$1 d to relay
  declare -A at=([edge]="${ADDR[edge]}:$port" [cloud]="${ADDR[cloud]}:$port")
  for d in edge cloud; do
    in_dev "$d" "$LLAMA_RPC_SERVER" -H 0.0.0.0 -p "$port" -t 1 > "rpc-$d-$port.log" 2>&1 &
    pids+=($!)
  done
  if [ "$NETEM" = 0 ]; then
    relay=$((7091 + 2 * (port - 50052)))
    for to in edge cloud; do
      ip netns exec es-src python3 "$HERE/delay_proxy.py" "$relay" "${DIRECT[src-$to]}" \
        "$port" "$(awk "BEGIN{print ${RTT[src-$to]}/2}")" &
      pids+=($!)
      at[$to]="127.0.0.1:$relay"
      relay=$((relay + 1))
    done
  fi
  sleep 1
  RPC_ARGS="edge=${at[edge]} cloud=${at[cloud]}"
}

# ---- the served cluster ------------------------------------------------------------------------
# serve_up NAME PORT CMD...: start a server in the source's namespace and CPU share, wait for it.
serve_up() {
  local name=$1 port=$2; shift 2
  in_dev src "$@" > "serve-$name.out" 2> "serve-$name.log" &
  pids+=($!)
  for i in $(seq 1 1200); do
    ip netns exec es-src curl -sf "http://127.0.0.1:$port/health" > /dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "   $name did not start: $(tail -2 "serve-$name.log")"
  return 1
}
# serve_down PORT: stop the server listening on PORT. `ip netns exec` runs it as a child, so the
# wrapper's pid is not enough: a server left running would keep the workers for its own plan.
serve_down() {
  local port=$1 i
  kill "${pids[-1]}" 2>/dev/null || true
  pkill -TERM -f -- "--port $port\b" || true
  for i in $(seq 1 100); do
    pgrep -f -- "--port $port\b" > /dev/null || break
    sleep 0.2
  done
  pkill -KILL -f -- "--port $port\b" || true
  wait "${pids[-1]}" 2>/dev/null || true
}
serve_results=()
if [ "$SERVE" = 1 ]; then
  n_par=$(echo "$SERVE_STREAMS" | tr ',' '\n' | sort -n | tail -1)
  for plan in optimum Even; do
    extra=()
    [ "$plan" != optimum ] && extra=(--baseline "$plan")
    echo "== serve --cluster, plan: $plan, streams $SERVE_STREAMS"
    serve_up "$plan" 8090 "$BIN" serve -m "$MODEL" --cluster cluster.yaml --token-file token \
      --objective "$SERVE_OBJECTIVE" "${extra[@]}" --wire "$WIRE" --parallel "$n_par" -c "$CTX" -t 1 \
      --host 127.0.0.1 --port 8090 || continue
    ip netns exec es-src node "$HERE/serve_load.mjs" --url http://127.0.0.1:8090 \
      --streams "$SERVE_STREAMS" --tokens "$N_GEN" --reps "$REPS" --label "edgeshard $plan" \
      > "serve-$plan.json" || echo "   load failed"
    ip netns exec es-src curl -s http://127.0.0.1:8090/cluster.json > "serve-$plan-cluster.json" || true
    serve_down 8090
    serve_results+=("serve-$plan.json")
  done
  if [ -n "${LLAMA_RPC_SERVER:-}" ] && [ -n "${LLAMA_SERVER:-}" ]; then
    echo "== llama-server over llama.cpp's RPC backend (the planner's throughput split)"
    rpc_up 50053
    "$BIN" plan --cluster cluster.yaml -m "$MODEL" --ctx "$CTX" --objective throughput \
      --batch "$n_par" --json > plan-throughput.json
    if split=$(python3 "$HERE/llamacpp_split.py" plan-throughput.json Optimum src "$RPC_ARGS"); then
      # shellcheck disable=SC2086  # $split is a list of arguments
      reshape fast
      up=0
      serve_up llamacpp 8091 "$LLAMA_SERVER" -m "$MODEL" $split -np "$n_par" \
        -c $((CTX * n_par)) -t 1 --host 127.0.0.1 --port 8091 && up=1
      reshape shaped
      if [ "$up" = 1 ]; then
        ip netns exec es-src node "$HERE/serve_load.mjs" --url http://127.0.0.1:8091 \
          --streams "$SERVE_STREAMS" --tokens "$N_GEN" --reps "$REPS" \
          --label "llama.cpp RPC" > serve-llamacpp.json || echo "   load failed"
        serve_down 8091
        serve_results+=("serve-llamacpp.json")
      fi
    else
      echo "   no llama.cpp split for the throughput plan"
    fi
  fi
  echo
  echo "== served cluster: aggregate tokens/s (median of $REPS), $N_GEN tokens per stream"
  python3 - "${serve_results[@]}" <<'PY'
import json, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
by = {r["label"]: {x["streams"]: x["tokens_per_s"] for x in r["results"]} for r in runs}
ref = by.get("edgeshard optimum", {})
even = by.get("edgeshard Even", {})
peer = by.get("llama.cpp RPC", {})
print("| server | streams | tokens/s | vs 1 stream | optimum / this |")
print("|---|---|---|---|---|")
for label, res in by.items():
    one = res.get(1)
    for n, t in sorted(res.items()):
        rel = f"{t / one:.2f}x" if one else "-"
        cmp = f"{ref[n] / t:.2f}x" if n in ref and label != "edgeshard optimum" else "-"
        print(f"| {label} | {n} | {t:.2f} | {rel} | {cmp} |")
PY
fi

rpc_results=()
if [ -n "${LLAMA_RPC_SERVER:-}" ] && [ -n "${LLAMA_BENCH:-}" ] && [ "$BENCH" = 1 ]; then
  echo "== llama.cpp RPC backend (same namespaces, CPU shares and splits)"
  rpc_up 50052
  # The same splits as edgeshard's runs: the latency objective's plan and the Even baseline.
  "$BIN" plan --cluster cluster.yaml -m "$MODEL" --ctx "$CTX" --objective latency --json \
    > plan-latency.json
  for plan in Optimum Even; do
    split=$(python3 "$HERE/llamacpp_split.py" plan-latency.json "$plan" src "$RPC_ARGS") ||
      { echo "   no split for $plan"; continue; }
    out="llamacpp-rpc-$plan.json"
    t0=$SECONDS
    # shellcheck disable=SC2086  # $split is a list of arguments
    in_dev src "$LLAMA_BENCH" -m "$MODEL" $split -p "$N_PROMPT" -n "$N_GEN" -r "$REPS" -t 1 \
      -o json > "$out" 2> "llamacpp-rpc-$plan.log" || {
      echo "   llama.cpp RPC run failed: $(tail -1 "llamacpp-rpc-$plan.log")"; continue; }
    # llama.cpp's host sends each server its weights over the link before the first test.
    echo "   $((SECONDS - t0)) s wall, loading included"
    rpc_results+=("$plan:$out")
  done
fi

echo
echo "== results (measured vs the planner's prediction; ms per decode step)"
llama_args=()
for r in "${rpc_results[@]:-}"; do [ -n "$r" ] && llama_args+=(--llamacpp "$r"); done
python3 "$HERE/summarize.py" "${results[@]}" "${llama_args[@]}"
