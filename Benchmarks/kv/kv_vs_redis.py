#!/usr/bin/env python3
"""Strata's RESP service against redis-server under redis-benchmark, in one run, alternating.

For each value size and pipelining depth, `redis-benchmark -t set,get -d SIZE -c CLIENTS -n N
[-P DEPTH] --csv` runs against redis-server (no persistence: `--save "" --appendonly no`) and
against Strata (`kv: { resp: … }`, values in the block store: host RAM over NVMe), alternating
which goes first, `--runs` times; prints medians of requests/s and the ratio Strata / Redis,
the server's CPU per request (µs, SET and GET of a cell together, from /proc/PID/stat; steadier
than requests/s on a noisy machine) and its ratio, and a JSON line.

Who limits a cell: each cell also prints how busy redis-benchmark (`cli`) and the server
(`srv`) were, as the fraction of one core over the cell's wall time, medians. A cell where the
client is at 90 % of a core or more and neither server at half of one is marked `client-bound`:
redis-benchmark's one thread sets its pace, and a server changes its requests/s only through the
work it causes the client (how its replies arrive, for GET). Session 22: in the pipelined 1 MiB
and 4 MiB SETs both servers were busy 9–13 % of the time, and a SET ratio near 1 there is noise.
(The busy figures cover the cell's SET and GET runs together.)

Usage: kv_vs_redis.py [--strata .build/release/strata] [--runs 3] [--sizes 4KiB,64KiB,1MiB,4MiB]
                      [--clients 50] [--pipeline 1,16] [--requests 2000] [--host-budget 2GiB]
                      [--keyspace N] [--min-requests 200] [--cell-bytes 2GiB] [--kv-threads N]
                      [--durability cache|durable] [--strata-before OLD_BINARY] [--kv-threads-before N]
`--strata-before`: an earlier build as a third server in the same rounds (its own state
directory and ports), alternating with the other two; its column and ratio are printed too.
`--durability durable`: Strata acknowledges a SET once its value and key record are on disk;
redis-server then runs with `--appendonly yes --appendfsync always` (its AOF fsynced before
each reply), the nearest Redis has to the same promise.
Needs redis-server and redis-benchmark (`scripts/setup.sh --peers`).
"""
import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "route"))
from procs import cpu_seconds, stop   # noqa: E402
from kvservers import size, start   # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench(port: int, value: int, clients: int, requests: int, pipeline: int, keyspace: int) -> tuple[dict, float, float]:
    """requests/s of SET and GET (over `keyspace` random keys when above 0, else one key), and
    redis-benchmark's own CPU seconds and the wall seconds it ran."""
    argv = ["redis-benchmark", "-p", str(port), "-t", "set,get", "-d", str(value), "-c", str(clients),
            "-n", str(requests), "-P", str(pipeline), "--csv", "-q"] + (["-r", str(keyspace)] if keyspace else [])
    cpu, started = children_cpu(), time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    wall, cpu = time.monotonic() - started, children_cpu() - cpu
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {out.stderr[-1000:]}")
    result = {}
    for line in out.stdout.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0] in ("SET", "GET"):
            result[cells[0]] = float(cells[1])
    if set(result) != {"SET", "GET"}:
        raise SystemExit(f"unexpected redis-benchmark output: {out.stdout[-500:]}")
    return result, cpu, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="4KiB,64KiB,1MiB,4MiB")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--pipeline", default="1,16")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--host-budget", default="2GiB", help="Strata's host tier (values beyond it spill to NVMe)")
    ap.add_argument("--keyspace", type=int, default=0,
                    help="random keys (redis-benchmark -r); with values × keys above --host-budget, Strata serves from NVMe")
    ap.add_argument("--min-requests", type=int, default=200)
    ap.add_argument("--cell-bytes", default="2GiB",
                    help="bytes of values a cell moves at most (fewer requests for large values); larger: longer, steadier cells")
    ap.add_argument("--kv-threads", type=int, default=0,
                    help="Strata's kv.threads (RESP event-loop threads of its own); 0: the build's default "
                         "(the daemon's shared loops before 46bf8b4, one per four cores since)")
    ap.add_argument("--kv-threads-before", type=int,
                    help="the --strata-before build's kv.threads, when not --kv-threads (0: its default)")
    ap.add_argument("--durability", choices=["cache", "durable"], default="cache",
                    help="Strata's kv.durability; durable also runs redis-server with appendfsync always")
    ap.add_argument("--strata-before", help="an earlier strata binary, measured in the same rounds")
    a = ap.parse_args()
    sizes = [size(s) for s in a.sizes.split(",")]
    depths = [int(p) for p in a.pipeline.split(",")]

    work = Path(tempfile.mkdtemp(prefix="strata-kv-bench-"))
    procs = []
    try:
        servers, pids = start(work, a.strata, procs, a.strata_before, a.host_budget, a.durability, a.kv_threads,
                              a.kv_threads_before)

        results = {}   # (size, depth, server, op) -> [rps]; op "CPU": server µs per request
        for run in range(a.runs):
            for value in sizes:
                for depth in depths:
                    # a different server first in each cell, round-robin
                    turn = (run + sizes.index(value) + depths.index(depth)) % len(servers)
                    order = servers[turn:] + servers[:turn]
                    for server, port in order:
                        # bound the bytes moved per cell (large values need fewer requests)
                        n = max(a.min_requests, min(a.requests, size(a.cell_bytes) // max(value, 1)))
                        cpu = cpu_seconds(pids[server])
                        rates, client_cpu, wall = bench(port, value, a.clients, n, depth, a.keyspace)
                        cpu = cpu_seconds(pids[server]) - cpu
                        for op, rps in rates.items():
                            results.setdefault((value, depth, server, op), []).append(rps)
                        results.setdefault((value, depth, server, "CPU"), []).append(cpu * 1e6 / (2 * n))
                        results.setdefault((value, depth, server, "client"), []).append(client_cpu / wall)
                        results.setdefault((value, depth, server, "server"), []).append(cpu / wall)
                    print(f"run {run + 1} {value} B P{depth}: " + ", ".join(
                        f"{s} {op} {results[(value, depth, s, op)][-1]:.0f}" for s, _ in servers for op in ("SET", "GET")),
                        file=sys.stderr)

        print(f"redis-benchmark -c {a.clients}, medians of {a.runs} alternating runs, requests/s")
        before = a.strata_before is not None
        print(f"{'value':>8} {'pipe':>4} {'op':>4} {'redis':>10} {'strata':>10} {'strata/redis':>13}"
              + (f" {'before':>10} {'before/redis':>13}" if before else ""))
        print("(op CPU: the server's CPU per request in µs, SET and GET of the cell together; cli and srv: how busy\n"
              " redis-benchmark and the server were, in cores over the cell's wall time, against each server)")
        rows = []
        for value in sizes:
            for depth in depths:
                for op in ("SET", "GET", "CPU"):
                    r = statistics.median(results[(value, depth, "redis", op)])
                    s = statistics.median(results[(value, depth, "strata", op)])
                    unit, digits = ("cpu_us", 1) if op == "CPU" else ("rps", 0)
                    row = {"value_bytes": value, "pipeline": depth, "op": op, f"redis_{unit}": r, f"strata_{unit}": s,
                           "ratio": s / r}
                    line = f"{value:>8} {depth:>4} {op:>4} {r:>10.{digits}f} {s:>10.{digits}f} {s / r:>13.2f}"
                    if before:
                        b = statistics.median(results[(value, depth, "before", op)])
                        row.update({f"before_{unit}": b, "before_ratio": b / r})
                        line += f" {b:>10.{digits}f} {b / r:>13.2f}"
                    rows.append(row)
                    print(line)
                busy = {(who, server): statistics.median(results[(value, depth, server, who)])
                        for who in ("client", "server") for server, _ in servers}
                bound = all(busy[("client", server)] >= 0.9 and busy[("server", server)] <= 0.5 for server, _ in servers)
                for who, label in (("client", "cli"), ("server", "srv")):
                    line = f"{value:>8} {depth:>4} {label:>4}" + "".join(
                        f" {busy[(who, server)]:>10.2f}" for server in ("redis", "strata"))
                    if before:
                        line += f" {'':>13} {busy[(who, 'before')]:>10.2f}"
                    if who == "server" and bound:
                        line += "   client-bound: redis-benchmark sets the pace"
                    print(line)
                rows.append({"value_bytes": value, "pipeline": depth, "op": "BUSY", "client_bound": bound,
                             **{f"{server}_{who}_cores": v for (who, server), v in busy.items()}})
        print(json.dumps({"clients": a.clients, "runs": a.runs, "rows": rows}))
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
