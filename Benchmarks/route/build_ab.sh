#!/bin/bash
# Two Strata builds routing the same wrk load, one at a time, alternating round by round in one
# run, each round starting with the other build: each daemon's CPU for the round (clock ticks
# from /proc/PID/stat, all threads; 100 per CPU-second here) per request it relayed. On a noisy
# two-core machine the CPU per request is the steadier figure (router_overhead.py reports
# latencies); compare builds in the same rounds, and run long rounds.
#
# The load: router_overhead.py's, a chat request with a ~2 KB prompt, POSTed by wrk (2 threads,
# 20 connections, each paced to one request per 20 ms: about 1,000 requests/s) to a model whose
# three `upstreams` are nginx servers on loopback answering at once, routed by prefix affinity.
#
# Usage: Benchmarks/route/build_ab.sh OLD_BINARY NEW_BINARY
#   env: ROUNDS (default 8), SECONDS_PER_RUN (default 15)
# Needs nginx and wrk (scripts/setup.sh --peers).
set -euo pipefail
OLD=${1:?usage: build_ab.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: build_ab.sh OLD_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-8} SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
source "$(dirname "$0")/../kv/lib.sh"   # bench_workspace, free_port
bench_workspace strata-route-ab

answer='{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}'
upstreams=()
servers=""
for _ in 1 2 3; do
  port=$(free_port)
  upstreams+=("\"http://127.0.0.1:$port\"")
  servers+="server { listen 127.0.0.1:$port; location / { default_type application/json; return 200 '$answer'; } }"$'\n'
done
cat > "$work/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx-error.log;
events {}
http { access_log off;
$servers}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

declare -A PORT PID
for name in old new; do
  PORT[$name]=$(free_port)
  binary=$([ "$name" = old ] && echo "$OLD" || echo "$NEW")
  cat > "$work/$name.yaml" <<YAML
listen: 127.0.0.1:${PORT[$name]}
state_dir: $work/$name-state
log_level: warning
gateway: { cancel_on_disconnect: false }
tiers: { host: { budget: 16MiB, dir: $work/$name-shm } }
routing: { policy: prefix-affinity, health_interval: 1s }
models:
  - { name: bench, upstreams: [$(IFS=,; echo "${upstreams[*]}")] }
YAML
  "$binary" serve --config "$work/$name.yaml" > "$work/$name.log" 2>&1 &
  pids+=($!)
  PID[$name]=$!
done
for name in old new; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:${PORT[$name]}/ready" > /dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:${PORT[$name]}/ready" > /dev/null || { echo "$name did not become ready" >&2; exit 1; }
done

python3 - "$work/request.lua" <<'PY'
import json, sys
prompt = " ".join(f"word{i % 97}" for i in range(300))
body = json.dumps({"model": "bench", "max_tokens": 1,
                   "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": "hello"}]})
open(sys.argv[1], "w").write(f'wrk.method="POST"\nwrk.body={json.dumps(body)}\n'
                             'wrk.headers["Content-Type"]="application/json"\nfunction delay() return 20 end\n')
PY
run() {   # run NAME SECONDS: prints the requests wrk completed
  wrk -t 2 -c 20 -d "${2}s" -s "$work/request.lua" "http://127.0.0.1:${PORT[$1]}/v1/chat/completions" |
    awk '/requests in/ {print $1}'
}
ticks() { awk '{print $14 + $15}' "/proc/${PID[$1]}/stat"; }
for name in old new; do run "$name" 3 > /dev/null; done   # warm-up: connections, pools, index

declare -A TICKS REQUESTS
order=(old new)
printf 'round  build  ticks  requests  us/request\n'
for round in $(seq "$ROUNDS"); do
  for name in "${order[@]}"; do
    before=$(ticks "$name")
    requests=$(run "$name" "$SECONDS_PER_RUN")
    spent=$(( $(ticks "$name") - before ))
    printf '%5d  %5s  %5d  %8d  %10.1f\n' "$round" "$name" "$spent" "$requests" "$(awk -v t="$spent" -v r="$requests" 'BEGIN {print t * 10000 / r}')"
    TICKS[$name]=$(( ${TICKS[$name]:-0} + spent )); REQUESTS[$name]=$(( ${REQUESTS[$name]:-0} + requests ))
  done
  order=("${order[@]:1}" "${order[0]}")
done
for name in old new; do
  printf 'all rounds  %s: %d ticks, %d requests, %.1f us/request\n' "$name" "${TICKS[$name]}" "${REQUESTS[$name]}" \
    "$(awk -v t="${TICKS[$name]}" -v r="${REQUESTS[$name]}" 'BEGIN {print t * 10000 / r}')"
done
printf 'new/old: %.3f\n' "$(awk -v a="${TICKS[new]}" -v b="${REQUESTS[new]}" -v c="${TICKS[old]}" -v d="${REQUESTS[old]}" 'BEGIN {print (a / b) / (c / d)}')"
