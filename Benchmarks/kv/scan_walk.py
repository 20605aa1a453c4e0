#!/usr/bin/env python3
"""A whole SCAN walk over many keys, Strata against redis-server in one run, alternating.

Each server gets `--keys` small keys (MSET batches); then, `--rounds` times, one client walks
the keyspace with `SCAN cursor COUNT --count` until the cursor is 0 (as `redis-cli --scan` and
redis-py's `scan_iter` do) while a second client GETs one key in a loop, timing each GET. Prints
per server the medians over rounds of the walk's seconds, its SCAN calls, and the slowest GET
seen during it (ms): a SCAN that holds the keyspace holds up the other commands meanwhile.
Checks that every walk returned every key. Then, with `--delete-fraction F`, each server in turn
has that fraction of its keys deleted (pipelined DELs, 1000 a batch) while the second client
GETs as before: the seconds and the slowest GET (upkeep of the SCAN order must not stall it).
`--rounds 0`: the deletions only.

    Benchmarks/kv/scan_walk.py --strata .build/release/strata --keys 200000 --count 100
    Benchmarks/kv/scan_walk.py --keys 1000000 --rounds 0 --delete-fraction 0.7

Needs redis-server (`scripts/setup.sh --peers`) and redis-py (the venv).
"""
import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "route"))
from kvservers import start_redis, start_strata, wait_ready   # noqa: E402
from procs import stop   # noqa: E402


def timing_gets(port: int):
    """Starts GETting one key in a loop on its own connection; returns a function that stops it
    and returns the slowest GET's milliseconds."""
    getter, slowest, done = redis.Redis(port=port), [0.0], threading.Event()

    def gets():
        while not done.is_set():
            start = time.perf_counter()
            getter.get("k:0")
            slowest[0] = max(slowest[0], time.perf_counter() - start)

    thread = threading.Thread(target=gets)
    thread.start()

    def finish() -> float:
        done.set()
        thread.join()
        return slowest[0] * 1000
    return finish


def walk(port: int, count: int, keys: int) -> tuple[float, int, float]:
    """(seconds, SCAN calls, slowest concurrent GET in ms) of one whole walk."""
    scanner, finish = redis.Redis(port=port), timing_gets(port)
    seen, calls, cursor = set(), 0, 0
    start = time.perf_counter()
    try:
        while True:
            cursor, page = scanner.scan(cursor=cursor, count=count)
            calls += 1
            seen.update(page)
            if cursor == 0:
                break
    finally:
        seconds = time.perf_counter() - start
        slowest = finish()
    if len(seen) < keys:
        raise SystemExit(f"a SCAN walk on port {port} returned {len(seen)} of {keys} keys")
    return seconds, calls, slowest


def delete(port: int, keys: int, fraction: float) -> tuple[float, float]:
    """(seconds, slowest concurrent GET in ms) of deleting keys 1.. up to `fraction` of them."""
    client, finish = redis.Redis(port=port), timing_gets(port)
    start = time.perf_counter()
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(1, int(keys * fraction)):
            pipe.delete(f"k:{i}")
            if i % 1000 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        seconds = time.perf_counter() - start
        slowest = finish()
    return seconds, slowest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--strata-before", help="an earlier build, measured in the same rounds")
    ap.add_argument("--keys", type=int, default=200000)
    ap.add_argument("--count", type=int, default=100, help="SCAN's COUNT")
    ap.add_argument("--rounds", type=int, default=3, help="walks per server (0: none)")
    ap.add_argument("--delete-fraction", type=float, default=0.0, help="then delete this fraction of the keys")
    a = ap.parse_args()
    if a.keys < 1 or a.count < 1 or a.rounds < 0:
        raise SystemExit("--keys and --count must be at least 1, --rounds at least 0")
    if not 0 <= a.delete_fraction <= 1:
        raise SystemExit(f"--delete-fraction {a.delete_fraction}: expected 0 to 1")

    work = Path(tempfile.mkdtemp(prefix="strata-scan-walk-"))
    procs = []
    try:
        port, _ = start_redis(work, procs)
        servers = [("redis", port)]
        for name, binary in (("strata", a.strata), ("before", a.strata_before)):
            if binary:
                port, _ = start_strata(work, name, binary, procs, "2GiB")
                servers.append((name, port))
        for name, port in servers:
            wait_ready(port)
            client = redis.Redis(port=port)
            client.delete("__bench_probe")
            for first in range(0, a.keys, 1000):
                client.mset({f"k:{i}": b"v" for i in range(first, min(a.keys, first + 1000))})
            if client.dbsize() != a.keys:
                raise SystemExit(f"{name}: DBSIZE {client.dbsize()} after writing {a.keys} keys")
        results = {}
        if a.rounds:
            print(f"SCAN walk of {a.keys} keys, COUNT {a.count}, {a.rounds} rounds, order alternating", flush=True)
        for round in range(a.rounds):
            turn = round % len(servers)
            line = []
            for name, port in servers[turn:] + servers[:turn]:
                seconds, calls, slowest = walk(port, a.count, a.keys)
                results.setdefault(name, []).append((seconds, calls, slowest))
                line.append(f"{name} {seconds:.2f} s")
            print(f"round {round + 1}: " + ", ".join(line), flush=True)
        if results:
            print(f"{'':8s} {'walk s':>9s} {'calls':>7s} {'slowest GET ms':>15s}")
        for name, rows in results.items():
            print(f"{name:8s} {statistics.median(r[0] for r in rows):9.2f} {statistics.median(r[1] for r in rows):7.0f} "
                  f"{statistics.median(r[2] for r in rows):15.1f}")
        if a.delete_fraction > 0:
            print(f"deleting {a.delete_fraction:.0%} of {a.keys} keys (pipelined DEL, 1000 a batch), one server at a time")
            for name, port in servers:
                seconds, slowest = delete(port, a.keys, a.delete_fraction)
                print(f"{name:8s} {seconds:9.2f} s, slowest GET meanwhile {slowest:.1f} ms, DBSIZE after "
                      f"{redis.Redis(port=port).dbsize()}", flush=True)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
