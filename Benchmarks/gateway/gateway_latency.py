#!/usr/bin/env python3
"""Gateway overhead and cold start, measured against llama-server itself in the same run.

1. Added latency per request: the same chat request (max_tokens=1, cached prompt) sent
   alternately straight to the llama-server that Strata started and through Strata to it.
   Non-streaming: full response time on a client connection kept alive where the server allows
   it. Streaming: time to the first token, each request on a new connection (llama-server closes
   the connection after a stream). Reports median and p99 of each and of the paired difference.
2. Cold start: time from the first request for a stopped model to its first streamed token,
   through Strata, against starting llama-server by hand (spawn, poll /health, send the same
   request) from the same file. Alternating, medians.

Usage: gateway_latency.py --strata .build/release/strata [--requests 300] [--cold-runs 5] [--json]
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
MODEL = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA = CACHE / "bin" / "llama-server"
ARGS = ["-c", "2048", "--threads", "1"]
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1, "temperature": 0}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"port {port}{path} not ready in {timeout}s")


def post(conn, body, stream=False):
    """Sends one chat request; returns (seconds to full response, seconds to first data line)."""
    payload = json.dumps({**body, "stream": stream}).encode()
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=payload, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    first = None
    if stream:
        while True:
            line = r.readline()
            if not line:
                break
            if first is None and line.startswith(b"data:") and b'"content"' in line:
                first = time.perf_counter() - start
            if line.strip() == b"data: [DONE]":
                break
        r.read()
    else:
        r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - start, first


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def host_dir(port):
    """Staged weights in RAM, a directory per daemon (one daemon per directory), removed by `stop`."""
    return f"/dev/shm/strata-gateway-bench-{port}"


def stop(proc, port):
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    shutil.rmtree(host_dir(port), ignore_errors=True)


def start_strata(strata, workdir, port, ttl="10m", cancel_on_disconnect=True):
    cfg = workdir / "bench.yaml"
    cfg.write_text(f"""
listen: 127.0.0.1:{port}
gateway: {{ cancel_on_disconnect: {str(cancel_on_disconnect).lower()} }}
state_dir: {workdir}/state
log_level: warning
tiers: {{ host: {{ budget: 256MiB, dir: {host_dir(port)} }} }}
runtimes:
  llama: {{ kind: llama-server, binary: "{LLAMA}", args: {json.dumps(ARGS)} }}
models:
  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 400MiB, ttl: {ttl} }}
""")
    proc = subprocess.Popen([str(strata), "serve", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "strata.log", "ab"))
    wait_http(port, "/ready")
    return proc


def admin(port, method="GET", path="/admin/models"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return json.loads(data) if data else None


def gateway_overhead(strata, workdir, requests, cancel_on_disconnect=True):
    port = free_port()
    proc = start_strata(strata, workdir, port, cancel_on_disconnect=cancel_on_disconnect)
    try:
        via = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        post(via, BODY)  # loads the model
        upstream = admin(port)["models"][0]["upstream"]
        direct_port = int(upstream.rsplit(":", 1)[1])
        direct = http.client.HTTPConnection("127.0.0.1", direct_port, timeout=60)
        for _ in range(20):  # warm both paths and the prompt cache
            post(direct, BODY)
            post(via, BODY)
        result = {"requests": requests}
        for stream in (False, True):
            d, v = [], []
            for i in range(requests):
                order = ((direct_port, direct, d), (port, via, v))
                for target, conn, sink in (order if i % 2 == 0 else order[::-1]):
                    if stream:
                        # llama-server closes the connection after every stream, so both paths
                        # open a fresh connection per streaming request
                        conn = http.client.HTTPConnection("127.0.0.1", target, timeout=60)
                    total, first = post(conn, BODY, stream=stream)
                    sink.append(first if stream else total)
            diffs = [b - a for a, b in zip(d, v)]
            result["stream_ttft" if stream else "non_stream"] = {
                "direct_ms": {"p50": statistics.median(d) * 1e3, "p99": pct(d, 99) * 1e3},
                "strata_ms": {"p50": statistics.median(v) * 1e3, "p99": pct(v, 99) * 1e3},
                "added_ms": {"p50": statistics.median(diffs) * 1e3, "p99": pct(diffs, 99) * 1e3},
            }
        return result
    finally:
        stop(proc, port)


def cold_start(strata, workdir, runs):
    """First request for a stopped model → first token, through Strata and by hand."""
    port = free_port()
    proc = start_strata(strata, workdir, port)
    strata_times, manual_times = [], []
    try:
        for run in range(runs):
            for which in (("strata", "manual") if run % 2 == 0 else ("manual", "strata")):
                if which == "strata":
                    admin(port, "POST", "/admin/models/smollm2/unload")
                    deadline = time.monotonic() + 30
                    while admin(port)["models"][0]["status"] != "stopped" or admin(port)["models"][0].get("pid"):
                        if time.monotonic() > deadline:
                            raise RuntimeError("unload did not finish")
                        time.sleep(0.05)
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    _, first = post(conn, {**BODY, "max_tokens": 4}, stream=True)
                    conn.close()
                    strata_times.append(first)
                else:
                    mport = free_port()
                    start = time.perf_counter()
                    llama = subprocess.Popen([str(LLAMA), "--model", str(MODEL), "--host", "127.0.0.1", "--port",
                                              str(mport), *ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    try:
                        wait_http(mport, "/health")
                        conn = http.client.HTTPConnection("127.0.0.1", mport, timeout=120)
                        sent = time.perf_counter()
                        _, first = post(conn, {**BODY, "max_tokens": 4}, stream=True)
                        conn.close()
                        manual_times.append((sent - start) + first)
                    finally:
                        llama.send_signal(signal.SIGTERM)
                        llama.wait(30)
        return {"runs": runs, "strata_s": statistics.median(strata_times), "manual_s": statistics.median(manual_times),
                "strata_all": strata_times, "manual_all": manual_times}
    finally:
        stop(proc, port)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep-alive", action="store_true",
                    help="run Strata with gateway.cancel_on_disconnect: false (non-streaming responses kept alive)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overhead = gateway_overhead(Path(a.strata).resolve(), Path(tmp), a.requests, not a.keep_alive)
        cold = cold_start(Path(a.strata).resolve(), Path(tmp), a.cold_runs)
    for key, title in (("non_stream", "full response, non-streaming"), ("stream_ttft", "first token, streaming")):
        o = overhead[key]
        print(f"gateway overhead, {overhead['requests']} alternating pairs (chat, max_tokens=1), {title}:")
        print(f"  {'':18} {'p50 ms':>9} {'p99 ms':>9}")
        for k, label in (("direct_ms", "llama-server"), ("strata_ms", "through strata"), ("added_ms", "added (paired)")):
            print(f"  {label:18} {o[k]['p50']:9.3f} {o[k]['p99']:9.3f}")
    print(f"cold start, first request for a stopped model to first token, median of {cold['runs']}:")
    print(f"  through strata (load on demand) {cold['strata_s']:.3f} s")
    print(f"  llama-server by hand            {cold['manual_s']:.3f} s")
    if a.json:
        print(json.dumps({"overhead": overhead, "cold_start": cold}))


if __name__ == "__main__":
    sys.exit(main())
