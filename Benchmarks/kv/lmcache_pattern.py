#!/usr/bin/env python3
"""LMCache's redis connector's calls against Strata and redis-server, in one run, alternating.

LMCache (vLLM or SGLang offloading KV cache) keeps each chunk of a prompt's KV cache (256
tokens) under two keys: `<key>kv_bytes` (the tensor bytes) and `<key>metadata` (a few dozen
bytes), through `redis.asyncio` with a pool of up to 150 connections and a semaphore of 150. Its
RedisConnector stores a request's chunks concurrently (SET kv_bytes, then SET metadata, per
chunk), looks a prompt up with EXISTS on each chunk's metadata in order until the first miss,
and reads the chunks back concurrently (GET metadata, then GET kv_bytes). This replays those
calls with the same client library and defaults (RESP3), for `--prompts` prompts of `--chunks`
chunks of each `--chunk-sizes` size, all prompts at once, against each server in turn (the
first server changes round by round), and prints the medians over `--rounds`: GB/s stored and
read, EXISTS lookups/s, the slowest chunk read (its metadata and bytes, from asking to having
them), and the server's CPU per chunk over the whole replay (stored once, looked up eight times,
read once, deleted). Every chunk read back is compared with what was
stored.

The client is Python, as LMCache's is: its CPU often sets the pace, as it would for LMCache.

With `--durability durable`, Strata acknowledges a SET once its value and key are on disk, and
redis-server runs with `--appendonly yes --appendfsync always`, the nearest it has.

Usage: lmcache_pattern.py [--strata .build/release/strata] [--rounds 5] [--prompts 4] [--chunks 16]
                          [--chunk-sizes 4MiB,16MiB] [--host-budget 2GiB] [--durability cache|durable]
Needs redis-server and redis-py (`scripts/setup.sh --peers`).
"""
import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "route"))
from procs import cpu_seconds, stop   # noqa: E402
from kvservers import size, start   # noqa: E402

PHASES = ("put", "lookup", "get")


async def replay(port: int, tag: str, prompts: int, chunks: list[bytes]) -> dict[str, float]:
    """Wall seconds of each phase for `prompts` prompts whose chunks are `chunks`."""
    # redis-py's default socket timeout (5 s) is LMCache's too; with a GiB of chunks asked for at
    # once, single GETs from redis-server came close to it (4.8 s), and one run failed on it
    pool = aioredis.ConnectionPool.from_url(f"redis://127.0.0.1:{port}", max_connections=150, socket_timeout=120)
    conn = aioredis.Redis.from_pool(pool)
    sem = asyncio.Semaphore(150)
    keys = [[f"bench@{tag}@{p}@{i:04x}" for i in range(len(chunks))] for p in range(prompts)]

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await conn.set(key + "kv_bytes", data)
            await conn.set(key + "metadata", len(data).to_bytes(8, "little") + b"\0" * 24)

    async def contains(prompt_keys: list[str]) -> int:
        hits = 0
        for key in prompt_keys:
            async with sem:
                if not await conn.exists(key + "metadata"):
                    return hits
            hits += 1
        return hits

    slowest = 0.0

    async def get(key: str) -> bytes | None:
        nonlocal slowest
        async with sem:
            started = time.monotonic()
            metadata = await conn.get(key + "metadata")
            if metadata is None:
                return None
            data = await conn.get(key + "kv_bytes")
            slowest = max(slowest, time.monotonic() - started)
            return data

    seconds = {}
    started = time.monotonic()
    await asyncio.gather(*(put(k, chunks[i]) for ks in keys for i, k in enumerate(ks)))
    seconds["put"] = time.monotonic() - started
    started = time.monotonic()
    for _ in range(8):   # lookups are quick: eight passes over every prompt
        hits = await asyncio.gather(*(contains(ks) for ks in keys))
        if hits != [len(chunks)] * prompts:
            raise SystemExit(f"port {port}: EXISTS found {hits} chunks, expected {len(chunks)} per prompt")
    seconds["lookup"] = time.monotonic() - started
    started = time.monotonic()
    got = await asyncio.gather(*(get(k) for ks in keys for k in ks))
    seconds["get"] = time.monotonic() - started
    seconds["slowest"] = slowest
    expected = [chunks[i] for ks in keys for i in range(len(ks))]
    if got != expected:
        wrong = sum(1 for g, e in zip(got, expected) if g != e)
        raise SystemExit(f"port {port}: {wrong} of {len(expected)} chunks read back differ from what was stored")
    await conn.delete(*[k + suffix for ks in keys for k in ks for suffix in ("kv_bytes", "metadata")])
    await conn.aclose()
    await pool.disconnect()
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=16, help="chunks per prompt")
    ap.add_argument("--chunk-sizes", default="4MiB,16MiB",
                    help="bytes per chunk (256 tokens of a 0.5B model's KV is about 3 MiB, of an 8B model's 32 MiB)")
    ap.add_argument("--host-budget", default="2GiB")
    ap.add_argument("--durability", choices=["cache", "durable"], default="cache",
                    help="Strata's kv.durability; durable also runs redis-server with appendfsync always")
    a = ap.parse_args()
    sizes = [size(s) for s in a.chunk_sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="strata-lmcache-bench-"))
    procs = []
    try:
        servers, pids = start(work, a.strata, procs, host_budget=a.host_budget, durability=a.durability)
        results = {}   # (size, server, phase) -> [wall seconds]; (size, server, "cpu") -> [server CPU seconds]
        for chunk in sizes:
            chunks = [os.urandom(chunk) for _ in range(a.chunks)]
            for server, port in servers:   # warm-up: the first values fill free lists and buffers
                asyncio.run(replay(port, "warm", 1, chunks[:4]))
            for round in range(a.rounds):
                turn = round % len(servers)
                for server, port in servers[turn:] + servers[:turn]:
                    before = cpu_seconds(pids[server])
                    seconds = asyncio.run(replay(port, f"{round}", a.prompts, chunks))
                    cpu = cpu_seconds(pids[server]) - before
                    for phase in PHASES + ("slowest",):
                        results.setdefault((chunk, server, phase), []).append(seconds[phase])
                    results.setdefault((chunk, server, "cpu"), []).append(cpu)
                print(f"round {round + 1} {chunk} B chunks: " + ", ".join(
                    f"{s} " + "/".join(f"{results[(chunk, s, p)][-1]:.3f}" for p in PHASES) + " s"
                    for s, _ in servers), file=sys.stderr)

        total = a.prompts * a.chunks
        print(f"{a.prompts} prompts x {a.chunks} chunks at once, redis.asyncio (RESP3), durability {a.durability}, "
              f"medians of {a.rounds} rounds")
        print(f"{'chunk':>10} {'measure':>22} {'redis':>10} {'strata':>10} {'strata/redis':>13}")
        rows = []
        for chunk in sizes:
            for phase, label, unit in (("put", "stored GB/s", chunk * total / 1e9),
                                       ("lookup", "EXISTS/s", 8 * total),
                                       ("get", "read GB/s", chunk * total / 1e9)):
                r = statistics.median(unit / t for t in results[(chunk, "redis", phase)])
                s = statistics.median(unit / t for t in results[(chunk, "strata", phase)])
                rows.append({"chunk_bytes": chunk, "measure": label, "redis": r, "strata": s, "ratio": s / r})
                print(f"{chunk:>10} {label:>22} {r:>10.2f} {s:>10.2f} {s / r:>13.2f}")
            r = statistics.median(results[(chunk, "redis", "slowest")])
            s = statistics.median(results[(chunk, "strata", "slowest")])
            rows.append({"chunk_bytes": chunk, "measure": "slowest chunk read s", "redis": r, "strata": s, "ratio": s / r})
            print(f"{chunk:>10} {'slowest chunk read s':>22} {r:>10.2f} {s:>10.2f} {s / r:>13.2f}")
            # CPU per chunk over the whole replay (stored once, looked up eight times, read once)
            r = statistics.median(results[(chunk, "redis", "cpu")]) * 1e3 / total
            s = statistics.median(results[(chunk, "strata", "cpu")]) * 1e3 / total
            rows.append({"chunk_bytes": chunk, "measure": "server ms CPU per chunk", "redis": r, "strata": s, "ratio": s / r})
            print(f"{chunk:>10} {'server ms CPU per chunk':>22} {r:>10.2f} {s:>10.2f} {s / r:>13.2f}")
        print(json.dumps({"prompts": a.prompts, "chunks": a.chunks, "rounds": a.rounds, "rows": rows}))
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
