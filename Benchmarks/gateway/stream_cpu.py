#!/usr/bin/env python3
"""CPU a proxy spends per streamed chunk, and the time it adds to a stream's first event:
Strata (one or two builds) against nginx, same rounds.

A fake OpenAI upstream (asyncio, this process) answers every streamed chat request with
`--events` SSE events of a token each, `--pace-ms` apart, as a runtime generating tokens would,
so each event reaches the proxy as its own read. `--streams` clients stream at once through each
proxy in turn (order alternating round by round); the figure is the proxy's CPU time
(`/proc/PID/stat`, all threads; nginx's worker) over the run divided by the events relayed.
Then, in the same round, `--firsts` streams one at a time, each closed after its first event,
time that first event (from opening the connection); the same straight to the fake upstream
give what a proxy adds to a stream's first token.

Usage: stream_cpu.py --strata .build/release/strata [--strata-before OLD_BIN] [--streams 20]
                     [--events 200] [--pace-ms 5] [--rounds 3]
Needs: nginx (scripts/setup.sh --peers installs it).
"""
import argparse
import asyncio
import atexit
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "route"))
from procs import cpu_seconds, free_port, start_nginx, stop, wait_http  # noqa: E402

EVENT = "data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "m", "choices": [
    {"index": 0, "delta": {"content": " token"}, "finish_reason": None}]}) + "\n\n"
LAST = "data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "m", "choices": [],
                              "usage": {"prompt_tokens": 20, "completion_tokens": 200, "total_tokens": 220}}) + "\n\n"


def upstream(port, events, pace):
    """The fake runtime, on its own thread and event loop."""
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n")
                for k in range(events):
                    data = (LAST if k == events - 1 else EVENT).encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                    await asyncio.sleep(pace)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=256)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()


BODY = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello"}]})


def stream_once(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, BODY, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status != 200 or b"usage" not in data:
        raise SystemExit(f"port {port}: {response.status} {data[:200]!r}")


def run(port, path, streams):
    threads = [threading.Thread(target=stream_once, args=(port, path)) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def first_events(port, path, count):
    """`count` streams one after another, each closed after its first event: the median
    milliseconds from opening the connection to that event."""
    firsts = []
    for _ in range(count):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", path, BODY, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read1(65536)
        firsts.append(time.perf_counter() - started)
        conn.close()
        if response.status != 200 or not data.startswith(b"data: "):
            raise SystemExit(f"port {port}: {response.status} {data[:200]!r}")
    return statistics.median(firsts) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--strata-before")
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--pace-ms", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--firsts", type=int, default=50, help="streams timed to their first event, per proxy and round")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-stream-cpu-"))
    atexit.register(shutil.rmtree, work, True)  # configs and logs: removed when the run ends
    upstream_port, nginx_port = free_port(), free_port()
    upstream(upstream_port, a.events, a.pace_ms / 1000)
    procs = [start_nginx(work, f"""
    server {{
        listen 127.0.0.1:{nginx_port};
        location / {{ proxy_pass http://127.0.0.1:{upstream_port}; proxy_http_version 1.1; proxy_buffering off; }}
    }}""")]
    targets = {}
    try:
        time.sleep(0.5)
        worker = int(subprocess.run(["pgrep", "-P", str(procs[0].pid)], capture_output=True, text=True).stdout.split()[0])
        targets["direct (no proxy)"] = (upstream_port, None)
        targets["nginx as reverse proxy"] = (nginx_port, worker)
        builds = [("strata", a.strata)] + ([("strata before", a.strata_before)] if a.strata_before else [])
        for name, binary in builds:
            port = free_port()
            config = work / f"{name.replace(' ', '-')}.yaml"
            config.write_text(f"""
listen: 127.0.0.1:{port}
state_dir: {work}/state-{name.replace(' ', '-')}
log_level: warning
tiers: {{ host: {{ budget: 16MiB, dir: {work}/shm-{name.replace(' ', '-')} }} }}
runtimes:
  fake: {{ kind: upstream, url: "http://127.0.0.1:{upstream_port}/v1" }}
models:
  - {{ name: m, runtime: fake }}
""")
            procs.append(subprocess.Popen([binary, "serve", "--config", str(config)],
                                          stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT))
            wait_http(f"http://127.0.0.1:{port}/ready")
            targets[name] = (port, procs[-1].pid)
        for port, _ in targets.values():   # warm-up
            run(port, "/v1/chat/completions", 2)
        results = {name: [] for name in targets}
        firsts = {name: [] for name in targets}
        print(f"{a.streams} streams at once, {a.events} events each, {a.pace_ms} ms apart; {a.rounds} rounds", flush=True)
        for round in range(a.rounds):
            for name in list(targets) if round % 2 == 0 else reversed(list(targets)):
                port, pid = targets[name]
                before = cpu_seconds(pid) if pid else 0
                run(port, "/v1/chat/completions", a.streams)
                after = cpu_seconds(pid) if pid else 0
                first = first_events(port, "/v1/chat/completions", a.firsts)
                firsts[name].append(first)
                if pid is None:
                    print(f"  round {round} {name:24}             first event {first:6.2f} ms", flush=True)
                    continue
                us = (after - before) * 1e6 / (a.streams * a.events)
                results[name].append(us)
                print(f"  round {round} {name:24} {us:6.1f} us CPU per event, first event {first:6.2f} ms", flush=True)
        print()
        direct = statistics.median(firsts["direct (no proxy)"])
        for name, values in results.items():
            if not values:
                print(f"{name:24} first event {direct:6.2f} ms")
                continue
            first = statistics.median(firsts[name])
            print(f"{name:24} median {statistics.median(values):6.1f} us CPU per streamed event, "
                  f"first event {first:6.2f} ms ({first - direct:+.2f} ms)")
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
