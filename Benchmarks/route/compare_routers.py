#!/usr/bin/env python3
"""Strata's prefix-affinity routing against round-robin, least-loaded and
`sglang-router --policy cache_aware`, all fronting the same 3 llama-server replicas, in one run.

One Strata daemon serves three model names over the same replicas (`smollm2-pa`,
`smollm2-rr`, `smollm2-ll`, one per routing policy); sglang-router fronts the same replicas.
Each round replays the same seeded workload (`route_workload.py`) against every target in turn,
the order alternating round by round, with every replica's KV cache erased before each run
(`POST /slots/N?action=erase`), so no target inherits another's warm prefixes. Prints the
median over rounds of each target's TTFT p50/p90 and the ratios the issue asks for.

Usage: compare_routers.py --strata .build/release/strata [--rounds 3] [--requests 60] [--rate 0.6]
Needs: scripts/setup.sh --peers (sglang-router in the venv).
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
LLAMA = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PYTHON = CACHE / "venv" / "bin" / "python"
HERE = Path(__file__).resolve().parent


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {url}")


def erase_slots(replica, slots):
    for slot in range(slots):
        req = urllib.request.Request(f"{replica}/slots/{slot}?action=erase", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2, help="slots per llama-server")
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--rate", type=float, default=0.6)
    ap.add_argument("--tenants", type=int, default=6)
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--system-tokens", type=int, default=800)
    ap.add_argument("--think", type=float, default=2.0)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--index-blocks", type=int, default=160,
                    help="Strata's routing.index_blocks: about what one replica's slots hold (ctx bytes / block bytes)")
    a = ap.parse_args()

    procs = []
    work = Path(tempfile.mkdtemp(prefix="strata-route-"))
    try:
        replicas = []
        for i in range(a.replicas):
            port = free_port()
            log = open(work / f"replica{i}.log", "wb")
            (work / f"slots{i}").mkdir()
            procs.append(subprocess.Popen(
                [str(LLAMA), "-m", str(MODEL), "--host", "127.0.0.1", "--port", str(port), "-c", str(a.ctx),
                 "--parallel", str(a.parallel), "--threads", "1", "--alias", "smollm2",
                 # slot actions (erase, used between runs) need a save path
                 "--slot-save-path", str(work / f"slots{i}")],
                stdout=log, stderr=subprocess.STDOUT))
            replicas.append(f"http://127.0.0.1:{port}")
        for r in replicas:
            wait_http(r + "/health")

        strata_port = free_port()
        urls = json.dumps(replicas)
        (work / "strata.yaml").write_text(f"""
listen: 127.0.0.1:{strata_port}
state_dir: {work}/state
log_level: warning
tiers: {{ host: {{ budget: 16MiB }} }}
routing: {{ health_interval: 1s, index_blocks: {a.index_blocks} }}
models:
  - {{ name: smollm2-pa, upstreams: {urls}, routing: prefix-affinity }}
  - {{ name: smollm2-rr, upstreams: {urls}, routing: round-robin }}
  - {{ name: smollm2-ll, upstreams: {urls}, routing: least-loaded }}
""")
        procs.append(subprocess.Popen([a.strata, "serve", "--config", str(work / "strata.yaml")],
                                      stdout=open(work / "strata.log", "wb"), stderr=subprocess.STDOUT))
        wait_http(f"http://127.0.0.1:{strata_port}/ready")
        sglang_port = free_port()
        procs.append(subprocess.Popen(
            [str(PYTHON), "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(sglang_port),
             "--policy", "cache_aware", "--worker-urls", *replicas],
            stdout=open(work / "sglang.log", "wb"), stderr=subprocess.STDOUT))
        wait_http(f"http://127.0.0.1:{sglang_port}/health", timeout=60)

        strata = f"http://127.0.0.1:{strata_port}"
        targets = [("strata prefix-affinity", strata, "smollm2-pa"), ("round-robin (strata)", strata, "smollm2-rr"),
                   ("least-loaded (strata)", strata, "smollm2-ll"),
                   ("sglang-router cache_aware", f"http://127.0.0.1:{sglang_port}", "smollm2")]
        results = {name: [] for name, _, _ in targets}
        print(f"{a.replicas} llama-server replicas (-c {a.ctx} --parallel {a.parallel} --threads 1), "
              f"{a.rounds} rounds, {a.requests} requests each, rate {a.rate}/s", flush=True)
        for round in range(a.rounds):
            order = targets if round % 2 == 0 else list(reversed(targets))
            for name, url, model in order:
                for r in replicas:
                    erase_slots(r, a.parallel)
                out = subprocess.run(
                    [str(PYTHON), str(HERE / "route_workload.py"), "--url", url, "--model", model,
                     "--seed", str(100 + round), "--tenants", str(a.tenants), "--users", str(a.users),
                     "--turns", str(a.turns), "--system-tokens", str(a.system_tokens), "--think", str(a.think),
                     "--rate", str(a.rate), "--requests", str(a.requests), "--max-tokens", str(a.max_tokens),
                     "--duration", "600", "--json"], capture_output=True, text=True)
                line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
                r = json.loads(line)
                results[name].append(r)
                print(f"  round {round} {name:28} ttft p50 {r.get('ttft_p50', float('nan')):.3f}s "
                      f"p90 {r.get('ttft_p90', float('nan')):.3f}s errors {r.get('errors')} "
                      f"cached {r.get('cached_prompt_fraction')}", flush=True)
        med = lambda name, key: statistics.median(x[key] for x in results[name] if x.get(key) is not None)
        print(f"\n{'target':28} {'TTFT p50':>9} {'TTFT p90':>9} {'cached':>7} {'errors':>6}")
        rows = {}
        for name, _, _ in targets:
            rows[name] = dict(ttft_p50=med(name, "ttft_p50"), ttft_p90=med(name, "ttft_p90"),
                              cached=med(name, "cached_prompt_fraction"),
                              errors=sum(x.get("errors", 0) for x in results[name]))
            print(f"{name:28} {rows[name]['ttft_p50']:9.3f} {rows[name]['ttft_p90']:9.3f} "
                  f"{rows[name]['cached']:7.2f} {rows[name]['errors']:6d}")
        pa = rows["strata prefix-affinity"]
        print(f"\nprefix-affinity p50 / round-robin p50 = {pa['ttft_p50'] / rows['round-robin (strata)']['ttft_p50']:.2f} "
              f"(goal <= 0.5); / sglang-router p50 = {pa['ttft_p50'] / rows['sglang-router cache_aware']['ttft_p50']:.2f} "
              f"(goal <= 0.9)")
        print(json.dumps(rows))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
