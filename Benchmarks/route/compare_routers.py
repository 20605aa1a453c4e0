#!/usr/bin/env python3
"""Strata's prefix-affinity routing against round-robin, least-loaded and
`sglang-router --policy cache_aware`, all fronting the same 3 llama-server replicas, in one run.

Every run starts a fresh fleet (3 llama-server replicas, default prompt cache) and a fresh
router in front of it: Strata with one routing policy (prefix-affinity, round-robin or
least-loaded), or sglang-router. Nothing cached survives from one run to the next, in the
replicas' slots, their RAM prompt cache, or a router's prefix tree. Each round replays the same
seeded workload (`route_workload.py`) against every target in turn, the order alternating round
by round. Prints the median over rounds of each target's TTFT p50/p90 and the ratios the issue
asks for.

Usage: compare_routers.py --strata .build/release/strata [--rounds 3] [--requests 60] [--rate 0.6]
Needs: scripts/setup.sh --peers (sglang-router in the venv).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from procs import free_port, stop, wait_http

CACHE = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
LLAMA = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PYTHON = CACHE / "venv" / "bin" / "python"
HERE = Path(__file__).resolve().parent






def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--first-round", type=int, default=0,
                    help="number of the first round (its seed is 100 + round): to add rounds to an earlier run")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2, help="slots per llama-server")
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--cache-ram", type=int, default=None,
                    help="llama-server --cache-ram MiB (its RAM prompt cache; default: llama-server's 8192). "
                         "0: a replica holds only the prompts in its slots, so not every prompt fits everywhere")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--rate", type=float, default=0.15, help="new conversations per second")
    ap.add_argument("--tenants", type=int, default=6)
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--system-tokens", type=int, default=800)
    ap.add_argument("--think", type=float, default=2.0)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--targets", default="",
                    help="comma-separated subset of the targets to run (default: all four), e.g. "
                         "'strata prefix-affinity,sglang-router cache_aware'")
    ap.add_argument("--index-blocks", type=int, default=65536,
                    help="Strata's routing.index_blocks (llama-server keeps up to 8 GiB of prompts in RAM by default)")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="strata-route-"))
    targets = ["strata prefix-affinity", "round-robin (strata)", "least-loaded (strata)", "sglang-router cache_aware"]
    if a.targets:
        chosen = [t.strip() for t in a.targets.split(",")]
        unknown = [t for t in chosen if t not in targets]
        if unknown:
            raise SystemExit(f"--targets: unknown {unknown}; expected a comma-separated subset of {targets}")
        targets = [t for t in targets if t in chosen]
    policies = {"strata prefix-affinity": "prefix-affinity", "round-robin (strata)": "round-robin",
                "least-loaded (strata)": "least-loaded"}
    results = {name: [] for name in targets}
    cache = "" if a.cache_ram is None else f" --cache-ram {a.cache_ram}"
    print(f"{a.replicas} llama-server replicas (-c {a.ctx} --parallel {a.parallel} --threads 1{cache}), fresh fleet and router "
          f"per run, {a.rounds} rounds, {a.requests} requests each, {a.rate} new conversations/s", flush=True)
    run = 0
    for round in range(a.first_round, a.first_round + a.rounds):
        order = targets if round % 2 == 0 else list(reversed(targets))
        for name in order:
            run += 1
            procs = []
            try:
                replicas = start_fleet(a, work / f"run{run}", procs)
                if name in policies:
                    url, model = start_strata(a, work / f"run{run}", replicas, policies[name], procs), "smollm2"
                else:
                    url, model = start_sglang(work / f"run{run}", replicas, procs), "smollm2"
                out = subprocess.run(
                    [str(PYTHON), str(HERE / "route_workload.py"), "--url", url, "--model", model,
                     "--seed", str(100 + round), "--tenants", str(a.tenants), "--users", str(a.users),
                     "--turns", str(a.turns), "--system-tokens", str(a.system_tokens), "--think", str(a.think),
                     "--rate", str(a.rate), "--requests", str(a.requests), "--max-tokens", str(a.max_tokens),
                     "--duration", "600", "--json"], capture_output=True, text=True)
            finally:
                stop(procs)
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
            r = json.loads(line)
            results[name].append(r)
            print(f"  round {round} {name:28} ttft p50 {r.get('ttft_p50', float('nan')):.3f}s "
                  f"p90 {r.get('ttft_p90', float('nan')):.3f}s errors {r.get('errors')} "
                  f"cached {r.get('cached_prompt_fraction')} late {r.get('late_sends')}", flush=True)
    med = lambda name, key: statistics.median(x[key] for x in results[name] if x.get(key) is not None)
    print(f"\n{'target':28} {'TTFT p50':>9} {'TTFT p90':>9} {'cached':>7} {'errors':>6}")
    rows = {}
    for name in targets:
        rows[name] = dict(ttft_p50=med(name, "ttft_p50"), ttft_p90=med(name, "ttft_p90"),
                          cached=med(name, "cached_prompt_fraction"),
                          errors=sum(x.get("errors", 0) for x in results[name]))
        print(f"{name:28} {rows[name]['ttft_p50']:9.3f} {rows[name]['ttft_p90']:9.3f} "
              f"{rows[name]['cached']:7.2f} {rows[name]['errors']:6d}")
    pa = rows.get("strata prefix-affinity")
    if pa and "round-robin (strata)" in rows:
        print(f"\nprefix-affinity p50 / round-robin p50 = {pa['ttft_p50'] / rows['round-robin (strata)']['ttft_p50']:.2f} "
              f"(goal <= 0.5)")
    if pa and "sglang-router cache_aware" in rows:
        print(f"prefix-affinity p50 / sglang-router p50 = {pa['ttft_p50'] / rows['sglang-router cache_aware']['ttft_p50']:.2f} "
              f"(goal <= 0.9)")
    print(json.dumps(rows))


def start_fleet(a, work, procs):
    """Fresh llama-server replicas: nothing cached from an earlier run, in slots or in RAM."""
    work.mkdir(parents=True)
    replicas = []
    for i in range(a.replicas):
        port = free_port()
        procs.append(subprocess.Popen(
            [str(LLAMA), "-m", str(MODEL), "--host", "127.0.0.1", "--port", str(port), "-c", str(a.ctx),
             "--parallel", str(a.parallel), "--threads", "1", "--alias", "smollm2"]
            + ([] if a.cache_ram is None else ["--cache-ram", str(a.cache_ram)]),
            stdout=open(work / f"replica{i}.log", "wb"), stderr=subprocess.STDOUT))
        replicas.append(f"http://127.0.0.1:{port}")
    for r in replicas:
        wait_http(r + "/health")
    return replicas


def start_strata(a, work, replicas, policy, procs):
    port = free_port()
    (work / "strata.yaml").write_text(f"""
listen: 127.0.0.1:{port}
state_dir: {work}/state
log_level: warning
tiers: {{ host: {{ budget: 16MiB }} }}
routing: {{ policy: {policy}, health_interval: 1s, index_blocks: {a.index_blocks} }}
models:
  - {{ name: smollm2, upstreams: {json.dumps(replicas)} }}
""")
    procs.append(subprocess.Popen([a.strata, "serve", "--config", str(work / "strata.yaml")],
                                  stdout=open(work / "strata.log", "wb"), stderr=subprocess.STDOUT))
    wait_http(f"http://127.0.0.1:{port}/ready")
    return f"http://127.0.0.1:{port}"


def start_sglang(work, replicas, procs):
    port = free_port()
    procs.append(subprocess.Popen(
        [str(PYTHON), "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
         "--policy", "cache_aware", "--worker-urls", *replicas],
        stdout=open(work / "sglang.log", "wb"), stderr=subprocess.STDOUT))
    wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
    return f"http://127.0.0.1:{port}"


if __name__ == "__main__":
    sys.exit(main())
