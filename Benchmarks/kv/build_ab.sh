#!/bin/bash
# Two Strata builds and redis-server under the same redis-benchmark load, one server at a time,
# alternating round by round in one run, each round starting with the next server:
# redis-benchmark's requests/s and each server's CPU for the round (clock ticks from
# /proc/PID/stat, all threads; 100 per CPU-second here). On a noisy
# two-core machine the CPU per request is the steadier figure; compare builds in the same rounds.
#
# Usage: Benchmarks/kv/build_ab.sh OLD_BINARY NEW_BINARY [set|get|set,get]
#   env: SIZE (value bytes, default 65536), PIPELINE (default 1), REQUESTS (default 200000),
#        ROUNDS (default 5), CLIENTS (default 50), WARMUP (SETs and GETs first, default 20000;
#        fewer for large values),
#        KV_OLD, KV_NEW (extra `kv:` settings for each build, e.g. ", threads: 1")
# Needs redis-server, redis-benchmark, redis-cli (scripts/setup.sh --peers).
set -euo pipefail
OLD=${1:?usage: build_ab.sh OLD_BINARY NEW_BINARY [set|get]}
NEW=${2:?usage: build_ab.sh OLD_BINARY NEW_BINARY [set|get]}
OP=${3:-set}
SIZE=${SIZE:-65536} PIPELINE=${PIPELINE:-1} REQUESTS=${REQUESTS:-200000} ROUNDS=${ROUNDS:-5} CLIENTS=${CLIENTS:-50}
WARMUP=${WARMUP:-20000}
KV_OLD=${KV_OLD:-} KV_NEW=${KV_NEW:-}
source "$(dirname "$0")/lib.sh"
bench_workspace strata-build-ab
start_strata old "$OLD" "$KV_OLD"
start_strata new "$NEW" "$KV_NEW"
start_redis
names="redis old new"
for name in $names; do
  wait_ready "$name"
  port_var=PORT_$name
  # warm-up: the first SETs open the tiers, fill the arena's free lists and grow the read buffers
  redis-benchmark -p "${!port_var}" -t set,get -d "$SIZE" -c "$CLIENTS" -n "$WARMUP" -q > /dev/null 2>&1
done
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "$OP, $SIZE-byte values, pipeline $PIPELINE, $CLIENTS clients, $REQUESTS requests per round"
printf '%-6s %-7s %12s %10s %14s\n' round server requests/s ticks "CPU µs/request"
declare -A total_ticks=()
order=($names)
for round in $(seq "$ROUNDS"); do
  # each round starts with the next server (redis old new, old new redis, new redis old, ...):
  # no build always runs right after the same one
  for name in "${order[@]}"; do
    port_var=PORT_$name; pid_var=PID_$name
    before=$(ticks "${!pid_var}")
    rps=$(redis-benchmark -p "${!port_var}" -t "$OP" -d "$SIZE" -c "$CLIENTS" -n "$REQUESTS" -P "$PIPELINE" -q --csv 2>/dev/null \
      | awk -F'"' 'NF > 3 && $2 != "test" { print $4 }' | paste -sd/)
    spent=$(( $(ticks "${!pid_var}") - before ))
    total_ticks[$name]=$(( ${total_ticks[$name]:-0} + spent ))
    printf '%-6s %-7s %12s %10s %14s\n' "$round" "$name" "$rps" "$spent" \
      "$(awk -v t="$spent" -v n="$REQUESTS" 'BEGIN { printf "%.1f", t * 10000 / n }')"
  done
  order=("${order[@]:1}" "${order[0]}")
done
echo "ticks in sum: redis ${total_ticks[redis]}, old ${total_ticks[old]}, new ${total_ticks[new]}" \
  "(new/old $(awk -v a="${total_ticks[new]}" -v b="${total_ticks[old]}" 'BEGIN { printf "%.3f", a / b }'))"
