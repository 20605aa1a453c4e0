#!/usr/bin/env python3
"""What Strata's routing adds to a request, against a trivial backend, under wrk at a fixed rate.

nginx on loopback answers `POST /v1/chat/completions` with a fixed small JSON body at once (the
trivial backend). Strata (release build) serves one model whose `upstreams` are three such
nginx ports, with prefix-affinity routing, so every request goes through prompt hashing, the
router and the relay. wrk sends the same chat request (a ~2 KB prompt) at about `--rate`
requests per second, paced by its Lua `delay()` over `--connections` connections, first straight
to nginx, then through Strata, alternating for `--rounds`; the figures are wrk's latency
percentiles, and the added latency is the difference of the medians over rounds.

Two references run in the same rounds: nginx itself as a reverse proxy (keep-alive upstream) in
front of the same backend, i.e. what a minimal proxy adds on this machine; and a second Strata
with `gateway.event_loop_relay: false`, which sends every request through the general path
(Hummingbird handler on Swift concurrency, AsyncHTTPClient).

With `--strata-before BIN`, a third Strata (another build, the first one's config) is routed in
the same rounds: a before/after of a change measured against the same nginx.

Usage: router_overhead.py --strata .build/release/strata [--rate 1000] [--seconds 15] [--rounds 3]
                          [--arrivals fixed|poisson] [--strata-before BIN] [--request plain|tools|parts]
Needs: nginx and wrk (scripts/setup.sh --peers installs them).
"""
import argparse
import atexit
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from procs import cpu_seconds, free_port, start_nginx, stop, wait_http

ANSWER = '{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}'


def wrk(url, rate, connections, seconds, script):
    """Runs wrk; returns (requests/s, {percentile: ms}, requests sent)."""
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", script,
                          url + "/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    percentiles = {}
    for p, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        percentiles[int(p)] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    return rps, percentiles, int(re.search(r"(\d+) requests in", out).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--strata-before", help="another build, routed in the same rounds (before/after)")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arrivals", choices=("fixed", "poisson"), default="fixed",
                    help="fixed: every connection waits the same delay after each answer, so the 20 connections stay "
                         "in step and send in bursts; poisson: each wait is drawn from an exponential distribution "
                         "with the same mean, so arrivals spread out as independent clients' would")
    ap.add_argument("--request", choices=("plain", "tools", "parts"), default="plain",
                    help="plain: a system prompt and a user turn as text; tools: the same with four function tools "
                         "(as agents send); parts: the user turn as OpenAI content parts")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="strata-overhead-"))
    atexit.register(shutil.rmtree, work, True)  # configs and logs: removed when the run ends
    ports = [free_port() for _ in range(3)]
    servers = "\n".join(f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{ANSWER}'; }}
    }}""" for port in ports)
    proxy_port = free_port()
    servers += f"""
    upstream backend {{ server 127.0.0.1:{ports[0]}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}"""

    per_connection_ms = 1000.0 * a.connections / a.rate
    prompt = " ".join(f"word{i % 97}" for i in range(300))
    if a.arrivals == "fixed":
        delay_function = f"function delay() return {per_connection_ms:.3f} end"
    else:
        delay_function = f"""local seeded = false
function delay()
    if not seeded then math.randomseed(os.time() + tonumber(tostring({{}}):match("0x(%x+)") or "0", 16) % 1000003); seeded = true end
    return -math.log(1 - math.random()) * {per_connection_ms:.3f}
end"""
    for model in ("bench", "plain"):
        user = [{"type": "text", "text": "hello"}] if a.request == "parts" else "hello"
        request = {"model": model, "max_tokens": 1, "messages": [
            {"role": "system", "content": prompt}, {"role": "user", "content": user}]}
        if a.request == "tools":
            request["tools"] = [{"type": "function", "function": {
                "name": f"tool_{k}", "description": f"Does thing {k} with the given arguments, carefully.",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string", "description": "The city"}, "unit": {"type": "string", "enum": ["c", "f"]},
                    "days": {"type": "integer", "minimum": 1}}, "required": ["city"]}}} for k in range(4)]
        body = json.dumps(request)
        (work / f"{model}.lua").write_text(f"""
wrk.method = "POST"
wrk.body = {json.dumps(body)}
wrk.headers["Content-Type"] = "application/json"
{delay_function}
""")
    strata_port, general_port, before_port = free_port(), free_port(), free_port()
    daemons = [("strata", a.strata, strata_port, "true"), ("general", a.strata, general_port, "false")]
    if a.strata_before:
        daemons.append(("before", a.strata_before, before_port, "true"))
    for name, _, port, relay in daemons:
        (work / f"{name}.yaml").write_text(f"""
listen: 127.0.0.1:{port}
state_dir: {work}/state-{name}
log_level: warning
gateway: {{ cancel_on_disconnect: false, event_loop_relay: {relay} }}
tiers: {{ host: {{ budget: 16MiB, dir: {work}/shm-{name} }} }}
routing: {{ policy: prefix-affinity, health_interval: 1s }}
runtimes:
  nginx: {{ kind: upstream, url: "http://127.0.0.1:{ports[0]}/v1" }}
models:
  - {{ name: bench, upstreams: {json.dumps([f"http://127.0.0.1:{p}" for p in ports])} }}
  - {{ name: plain, runtime: nginx }}
""")
    procs = [start_nginx(work, servers)]
    try:
        for port in ports:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
        pids = {}   # Strata's port -> its pid, for CPU per request
        for name, binary, port, _ in daemons:
            procs.append(subprocess.Popen([binary, "serve", "--config", str(work / f"{name}.yaml")],
                                          stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT))
            pids[port] = procs[-1].pid
            wait_http(f"http://127.0.0.1:{port}/ready")
        strata = f"http://127.0.0.1:{strata_port}"
        # (URL, model): the gateway alone (one upstream, no routing), and the gateway with routing
        targets = {"nginx direct": (f"http://127.0.0.1:{ports[0]}", "bench"),
                   "nginx as proxy": (f"http://127.0.0.1:{proxy_port}", "bench"),
                   "strata, no routing": (strata, "plain"), "strata, routed": (strata, "bench"),
                   "strata, routed, general path": (f"http://127.0.0.1:{general_port}", "bench")}
        if a.strata_before:
            targets["strata before, routed"] = (f"http://127.0.0.1:{before_port}", "bench")
        for url, model in targets.values():   # warm-up
            wrk(url, a.rate, a.connections, 3, str(work / f"{model}.lua"))
        results = {name: [] for name in targets}
        print(f"wrk -c {a.connections}, paced to ~{a.rate} req/s ({a.arrivals} delays), {a.request} requests, "
              f"{a.seconds}s per run, {a.rounds} rounds", flush=True)
        for round in range(a.rounds):
            order = list(targets) if round % 2 == 0 else list(reversed(targets))
            for name in order:
                url, model = targets[name]
                pid = pids.get(int(url.rsplit(":", 1)[1]))
                before = cpu_seconds(pid) if pid else 0
                rps, p, sent = wrk(url, a.rate, a.connections, a.seconds, str(work / f"{model}.lua"))
                # Strata's CPU per request (all its threads), the steadier figure on a noisy machine
                cpu_us = (cpu_seconds(pid) - before) * 1e6 / sent if pid else None
                results[name].append((rps, p, cpu_us))
                print(f"  round {round} {name:28} {rps:7.0f} req/s  p50 {p[50]:.3f} ms  p90 {p[90]:.3f} ms  "
                      f"p99 {p[99]:.3f} ms" + (f"  CPU {cpu_us:.0f} us/request" if cpu_us else ""), flush=True)
        med = {name: {q: statistics.median(r[1][q] for r in runs) for q in (50, 90, 99)} | {
            "rps": statistics.median(r[0] for r in runs),
            "cpu_us_per_request": statistics.median(r[2] for r in runs) if runs[0][2] else None}
            for name, runs in results.items()}
        direct = med["nginx direct"]
        for name in [n for n in targets if n != "nginx direct"]:
            m = med[name]
            print(f"\nadded by {name} (median over rounds): p50 {m[50] - direct[50]:+.3f} ms, "
                  f"p90 {m[90] - direct[90]:+.3f} ms, p99 {m[99] - direct[99]:+.3f} ms at {m['rps']:.0f} req/s"
                  + (f"; CPU {m['cpu_us_per_request']:.0f} us/request" if m["cpu_us_per_request"] else ""))
        print("goal: routing adds p99 ≤ 1 ms at 1,000 req/s")
        print(json.dumps(med))
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
