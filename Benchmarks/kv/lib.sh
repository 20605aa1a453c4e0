# Shared by the shell benchmarks in this folder (sourced, not run).

# bench_workspace PREFIX: a scratch folder `work` and the list `pids` of servers, both removed
# or stopped when the script exits.
bench_workspace() {
  work=$(mktemp -d "/tmp/$1-XXXXXX")
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_strata NAME BINARY EXTRA_KV: a daemon with only the RESP service (2 GiB host tier over
# an 8 GiB NVMe tier in `work`), `kv:` settings extended by EXTRA_KV (e.g. ", threads: 1");
# sets PORT_NAME and PID_NAME.
start_strata() {
  local port admin
  port=$(free_port); admin=$(free_port)
  cat > "$work/$1.yaml" <<YAML
listen: 127.0.0.1:$admin
state_dir: $work/$1-state
log_level: warning
kv: { resp: 127.0.0.1:$port$3 }
tiers: { host: { budget: 2GiB, dir: $work/$1-shm }, nvme: { budget: 8GiB } }
models: []
YAML
  "$2" serve --config "$work/$1.yaml" > "$work/$1.log" 2>&1 &
  pids+=($!)
  eval "PORT_$1=$port PID_$1=$!"
}

# start_redis: redis-server on loopback without persistence, in `work`; sets PORT_redis, PID_redis.
start_redis() {
  PORT_redis=$(free_port)
  redis-server --port "$PORT_redis" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
  pids+=($!)
  PID_redis=$!
}

# wait_ready NAME: until the server started as NAME acknowledges a SET (a daemon answers before its
# tiers are open, and a benchmark must not time that); exits the script if it never does (20 s).
wait_ready() {
  local port_var=PORT_$1
  for _ in $(seq 100); do
    [ "$(redis-cli -p "${!port_var}" set __ready 1 2>/dev/null)" = OK ] && return 0
    sleep 0.2
  done
  echo "$1 did not answer on ${!port_var}" >&2
  exit 1
}
