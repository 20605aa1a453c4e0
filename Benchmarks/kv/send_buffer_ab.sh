#!/bin/bash
# GET throughput and who pays for it: redis-server, Strata with its default RESP send buffer
# (kv.send_buffer: 128 KiB on loopback) and Strata with the kernel's autotuning
# (kv.send_buffer: 0), alternating round by round in one run. Prints redis-benchmark's
# requests/s, the client's user and system CPU seconds (/usr/bin/time) and the server's CPU
# (clock ticks from /proc/PID/stat) for each.
#
# Usage: Benchmarks/kv/send_buffer_ab.sh [STRATA_BINARY]
#   env: SIZE (value bytes, default 65536), PIPELINE (default 16), REQUESTS (default 80000),
#        ROUNDS (default 4), CLIENTS (default 50)
# Needs redis-server, redis-benchmark, redis-cli (scripts/setup.sh --peers).
set -euo pipefail
STRATA=${1:-.build/release/strata}
SIZE=${SIZE:-65536} PIPELINE=${PIPELINE:-16} REQUESTS=${REQUESTS:-80000} ROUNDS=${ROUNDS:-4} CLIENTS=${CLIENTS:-50}
source "$(dirname "$0")/lib.sh"
bench_workspace strata-sndbuf
start_strata default "$STRATA" ""
start_strata autotune "$STRATA" ", send_buffer: 0"
start_redis
for name in redis default autotune; do
  wait_ready "$name"
  port_var=PORT_$name
  # the key GET reads (redis-benchmark without -r uses one key)
  redis-benchmark -p "${!port_var}" -t set -d "$SIZE" -n 100 -q > /dev/null
done
echo "GET, $SIZE-byte values, -c $CLIENTS -P $PIPELINE -n $REQUESTS, $ROUNDS rounds, order alternating"
order=(redis default autotune)
for round in $(seq "$ROUNDS"); do
  for name in "${order[@]}"; do
    port_var=PORT_$name pid_var=PID_$name
    before=$(awk '{print $14+$15}' "/proc/${!pid_var}/stat")
    out=$( { /usr/bin/time -f "%U %S" redis-benchmark -p "${!port_var}" -t get -d "$SIZE" -c "$CLIENTS" \
             -n "$REQUESTS" -P "$PIPELINE" -q --csv > "$work/out.csv"; } 2>&1 )
    after=$(awk '{print $14+$15}' "/proc/${!pid_var}/stat")
    rps=$(tail -1 "$work/out.csv" | cut -d, -f2 | tr -d '"')
    read -r user sys <<< "$(tail -1 <<< "$out")"
    printf "round %d %-9s %10.0f req/s  client user %5.2f s sys %5.2f s  server %4d ticks\n" \
      "$round" "$name" "$rps" "$user" "$sys" "$((after - before))"
  done
  order=("${order[2]}" "${order[0]}" "${order[1]}")
done
