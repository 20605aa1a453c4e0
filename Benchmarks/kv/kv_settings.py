#!/usr/bin/env python3
"""One redis-benchmark cell against redis-server and several Strata settings or builds, in one
run, alternating which goes first round by round.

Each Strata is `NAME[@BINARY]=KV_OPTIONS`: its own daemon (host tier `--host-budget`), the `kv`
section's extra options appended as written (`=, threads: 1, send_buffer: 0`; empty: the
defaults), BINARY or `--strata`. For each, the medians over `--rounds` of requests/s, the ratio to
redis-server (of the medians, and the median of each round's ratio), and the CPU per request of
redis-benchmark (the client) and of the server, in µs. With `--pin`, the servers run on CPU 1 and
the client on CPU 0 (`taskset`). With `--minimal`, also `minimal_server.c` (compiled with `cc`): the
least work a server can do per command (every GET the same bytes from one buffer, no lookup), so
a cell of replies the socket takes at once (64 KiB here) where it measures no better than
redis-server and Strata measures the client, not the servers.

    Benchmarks/kv/kv_settings.py --size 65536 --rounds 10 --requests 100000 \\
        "shared=, threads: 2" "one=, threads: 1" "old@/tmp/strata-old="

Needs redis-server, redis-benchmark and redis-cli (`scripts/setup.sh --peers`).
"""
import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "route"))
from kvservers import start_minimal, start_redis, start_strata, wait_ready   # noqa: E402
from procs import cpu_seconds   # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="+", help="NAME[@BINARY]=KV_OPTIONS")
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--op", choices=["get", "set"], default="get")
    ap.add_argument("--size", type=int, default=65536, help="value bytes")
    ap.add_argument("--pipeline", type=int, default=1)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--host-budget", default="512MiB")
    ap.add_argument("--pin", action="store_true", help="servers on CPU 1, redis-benchmark on CPU 0")
    ap.add_argument("--minimal", action="store_true", help="also the least a server can do (minimal_server.c)")
    a = ap.parse_args()
    server_cpu, client_cpu = (("taskset", "-c", "1"), ["taskset", "-c", "0"]) if a.pin else ((), [])

    work = Path(tempfile.mkdtemp(prefix="strata-kv-settings-"))
    procs = []
    try:
        port, pid = start_redis(work, procs, prefix=server_cpu)
        servers, pids = [("redis", port)], {"redis": pid}
        for setting in a.settings:
            if "=" not in setting:
                raise SystemExit(f"setting {setting!r}: expected NAME[@BINARY]=KV_OPTIONS (options may be empty)")
            name, options = setting.split("=", 1)
            name, _, binary = name.partition("@")
            if name in pids:
                raise SystemExit(f"setting {setting!r}: the name {name!r} is taken")
            port, pids[name] = start_strata(work, name, binary or a.strata, procs, a.host_budget, options, prefix=server_cpu)
            servers.append((name, port))
        if a.minimal:
            port, pids["minimal"] = start_minimal(work, a.size, procs, prefix=server_cpu)
            servers.append(("minimal", port))
        for name, port in servers:
            wait_ready(port)
            # the key a GET reads (redis-benchmark without -r uses one key)
            subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-d", str(a.size), "-n", "1000", "-q"],
                           capture_output=True, timeout=120)
        print(f"{a.op.upper()} {a.size} B, -c {a.clients} -P {a.pipeline} -n {a.requests}, {a.rounds} rounds, "
              f"order alternating{', pinned' if a.pin else ''}")
        results = {}   # name -> [(requests/s, client µs, server µs)]
        for round in range(a.rounds):
            turn = round % len(servers)
            line = []
            for name, port in servers[turn:] + servers[:turn]:
                client, server = children_cpu(), cpu_seconds(pids[name])
                out = subprocess.run(client_cpu + [
                    "redis-benchmark", "-p", str(port), "-t", a.op, "-d", str(a.size), "-c", str(a.clients),
                    "-n", str(a.requests), "-P", str(a.pipeline), "--csv", "-q"], capture_output=True, text=True, timeout=600)
                client, server = children_cpu() - client, cpu_seconds(pids[name]) - server
                rows = [row for row in out.stdout.splitlines() if row.startswith(f'"{a.op.upper()}"')]
                if out.returncode != 0 or not rows:
                    raise SystemExit(f"redis-benchmark against {name}: {out.stderr[-500:] or out.stdout[-500:]}")
                rate = float(rows[0].split(",")[1].strip('"'))
                results.setdefault(name, []).append((rate, client * 1e6 / a.requests, server * 1e6 / a.requests))
                line.append(f"{name} {rate / 1000:.1f}k")
            print(f"round {round + 1}: " + ", ".join(line), flush=True)
        redis = [r[0] for r in results["redis"]]
        print(f"{'':12s} {'requests/s':>10s} {'/redis':>7s} {'rounds':>7s} {'client µs':>10s} {'server µs':>10s}")
        for name, rows in results.items():
            rate = statistics.median(r[0] for r in rows)
            per_round = statistics.median(r[0] / base for r, base in zip(rows, redis))
            print(f"{name:12s} {rate:10.0f} {rate / statistics.median(redis):7.3f} {per_round:7.3f} "
                  f"{statistics.median(r[1] for r in rows):10.2f} {statistics.median(r[2] for r in rows):10.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
