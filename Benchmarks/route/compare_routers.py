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

A fifth target, `strata managed + kv restore`, is Strata starting the three replicas itself
with the same llama-server arguments (`replicas: 3, kv_restore: true`): prefix affinity, with
every request pinned to a slot Strata knows, and a prefix computed on one replica saved into
Strata's store and restored on another instead of being computed again.

Usage: compare_routers.py --strata .build/release/strata [--rounds 3] [--requests 60] [--rate 0.6]
Needs: scripts/setup.sh --peers (sglang-router in the venv).
"""
import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from procs import free_port, metric, stop, wait_http

CACHE = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
LLAMA = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PYTHON = CACHE / "venv" / "bin" / "python"
HERE = Path(__file__).resolve().parent
SHM_DIRS = []  # host-tier directories of managed runs, removed after each run






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
    ap.add_argument("--records", default=None,
                    help="directory for one JSON line per request per run (route_workload.py --records)")
    a = ap.parse_args()
    if a.records:
        Path(a.records).mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="strata-route-"))
    atexit.register(shutil.rmtree, work, True)  # configs and logs: removed when the run ends
    targets = ["strata prefix-affinity", "round-robin (strata)", "least-loaded (strata)", "sglang-router cache_aware",
               "strata managed + kv restore"]
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
                if name == "strata managed + kv restore":
                    url, model = start_strata_managed(a, work / f"run{run}", procs), "smollm2"
                elif name in policies:
                    replicas = start_fleet(a, work / f"run{run}", procs)
                    url, model = start_strata(a, work / f"run{run}", replicas, policies[name], procs), "smollm2"
                else:
                    replicas = start_fleet(a, work / f"run{run}", procs)
                    url, model = start_sglang(work / f"run{run}", replicas, procs), "smollm2"
                out = subprocess.run(
                    [str(PYTHON), str(HERE / "route_workload.py"), "--url", url, "--model", model,
                     "--seed", str(100 + round), "--tenants", str(a.tenants), "--users", str(a.users),
                     "--turns", str(a.turns), "--system-tokens", str(a.system_tokens), "--think", str(a.think),
                     "--rate", str(a.rate), "--requests", str(a.requests), "--max-tokens", str(a.max_tokens),
                     "--duration", "600", "--json"]
                    + (["--records", str(Path(a.records) / f"round{round}-{name.replace(' ', '_')}.jsonl")] if a.records else []),
                    capture_output=True, text=True)
                if name == "strata managed + kv restore":
                    kv_counts = {k: metric(url, f"strata_kv_{k}_total") for k in ("saves", "restores")}
            finally:
                stop(procs)
                while SHM_DIRS:
                    subprocess.run(["rm", "-rf", SHM_DIRS.pop()])
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
            r = json.loads(line)
            if name == "strata managed + kv restore":
                r.update(kv_counts)
            results[name].append(r)
            print(f"  round {round} {name:28} ttft p50 {r.get('ttft_p50', float('nan')):.3f}s "
                  f"p90 {r.get('ttft_p90', float('nan')):.3f}s errors {r.get('errors')} "
                  f"cached {r.get('cached_prompt_fraction')} late {r.get('late_sends')}"
                  + (f" kv saves {r['saves']:.0f} restores {r['restores']:.0f}" if "saves" in r else ""), flush=True)
    med = lambda name, key: statistics.median(x[key] for x in results[name] if x.get(key) is not None)
    print(f"\n{'target':28} {'TTFT p50':>9} {'TTFT p90':>9} {'cached':>7} {'errors':>6}")
    rows = {}
    for name in targets:
        rows[name] = dict(ttft_p50=med(name, "ttft_p50"), ttft_p90=med(name, "ttft_p90"),
                          cached=med(name, "cached_prompt_fraction"),
                          errors=sum(x.get("errors", 0) for x in results[name]))
        print(f"{name:28} {rows[name]['ttft_p50']:9.3f} {rows[name]['ttft_p90']:9.3f} "
              f"{rows[name]['cached']:7.2f} {rows[name]['errors']:6d}")
    for ours in ("strata managed + kv restore", "strata prefix-affinity"):
        for peer, goal in (("sglang-router cache_aware", 0.9), ("round-robin (strata)", 0.5)):
            if ours in rows and peer in rows:
                print(f"{ours} p50 / {peer} p50 = {rows[ours]['ttft_p50'] / rows[peer]['ttft_p50']:.2f} (goal <= {goal})")
    print(json.dumps(rows))


def start_fleet(a, work, procs):
    """Fresh llama-server replicas: nothing cached from an earlier run, in slots or in RAM."""
    work.mkdir(parents=True)
    replicas = []
    for i in range(a.replicas):
        port = free_port()
        procs.append(subprocess.Popen(
            [str(LLAMA), "-m", str(MODEL), "--host", "127.0.0.1", "--port", str(port), "--alias", "smollm2"]
            + llama_args(a),
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
tiers: {{ host: {{ budget: 16MiB, dir: {work}/shm }} }}
routing: {{ policy: {policy}, health_interval: 1s, index_blocks: {a.index_blocks} }}
models:
  - {{ name: smollm2, upstreams: {json.dumps(replicas)} }}
""")
    procs.append(subprocess.Popen([a.strata, "serve", "--config", str(work / "strata.yaml")],
                                  stdout=open(work / "strata.log", "wb"), stderr=subprocess.STDOUT))
    wait_http(f"http://127.0.0.1:{port}/ready")
    return f"http://127.0.0.1:{port}"


def llama_args(a):
    """The arguments every replica runs with, whether the harness or Strata starts it."""
    return (["-c", str(a.ctx), "--parallel", str(a.parallel), "--threads", "1"]
            + ([] if a.cache_ram is None else ["--cache-ram", str(a.cache_ram)]))


def start_strata_managed(a, work, procs):
    """Strata starting the replicas itself (same llama-server arguments as the fleet), prefix
    affinity, and `kv_restore`: a prefix computed on one replica is saved into Strata's store
    and restored on another instead of being computed again."""
    work.mkdir(parents=True)
    port = free_port()
    shm = f"/dev/shm/strata-route-{port}"
    (work / "strata.yaml").write_text(f"""
listen: 127.0.0.1:{port}
state_dir: {work}/state
log_level: warning
tiers: {{ host: {{ budget: 256MiB, dir: {shm} }}, nvme: {{ budget: 4GiB, segment_size: 64MiB }} }}
devices: [ {{ name: cpu, kind: cpu, memory: 4GiB }} ]
routing: {{ policy: prefix-affinity, health_interval: 1s, index_blocks: {a.index_blocks} }}
runtimes:
  llama: {{ kind: llama-server, binary: "{LLAMA}", args: {json.dumps(llama_args(a))} }}
models:
  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 300MiB, replicas: {a.replicas},
       kv_restore: true, preload: true, pin: true }}
""")
    procs.append(subprocess.Popen([a.strata, "serve", "--config", str(work / "strata.yaml")],
                                  stdout=open(work / "strata.log", "wb"), stderr=subprocess.STDOUT))
    SHM_DIRS.append(shm)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/ready")
    deadline = time.monotonic() + 120
    while True:
        models = json.loads(urllib.request.urlopen(base + "/admin/models", timeout=5).read())["models"]
        if models and all(m["status"] == "ready" for m in models):
            return base
        if time.monotonic() > deadline:
            raise SystemExit(f"Strata's replicas not ready after 120 s: {models}")
        time.sleep(0.2)


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
