"""Time of `POST /v1/blocks/batch-get` for many small blocks, two Strata builds side by side.

Each build serves the HTTP block API on loopback (its own state in a temporary folder); the same
`--keys` blocks of `--bytes` random bytes are written to each, then batches of all the keys are
asked for, the builds alternating round by round; prints the median time per batch (client
included: the request, the answer and its JSON parse in Python).

Usage: batch_get.py --before OLD_BIN --after .build/release/strata [--keys 1024] [--bytes 256] [--rounds 5]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "route"))
from procs import free_port, stop, wait_http  # noqa: E402


def serve(binary, work):
    port = free_port()
    work.mkdir()
    (work / "strata.yaml").write_text(f"""listen: 127.0.0.1:{port}
state_dir: {work}/state
log_level: warning
tiers: {{ host: {{ budget: 256MiB, dir: {work}/shm }}, nvme: {{ budget: 1GiB }} }}
kv: {{ resp: 127.0.0.1:{free_port()}, durability: cache }}
""")
    proc = subprocess.Popen([binary, "serve", "--config", str(work / "strata.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/ready")
    return proc, f"http://127.0.0.1:{port}/v1/blocks"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--keys", type=int, default=1024)
    ap.add_argument("--bytes", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=10, help="batches per round and build")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-batch-get-"))
    builds = {"before": a.before, "after": a.after}
    procs, urls = [], {}
    try:
        for name, binary in builds.items():
            proc, urls[name] = serve(binary, work / name)
            procs.append(proc)
        keys = [f"layer/{i}:chunk" for i in range(a.keys)]
        session = requests.Session()
        for url in urls.values():
            for key in keys:
                session.put(f"{url}/{key.replace('/', '%2F')}", data=os.urandom(a.bytes)).raise_for_status()
        times = {name: [] for name in builds}
        for round in range(a.rounds):
            for name in builds if round % 2 == 0 else reversed(builds):
                started = time.perf_counter()
                for _ in range(a.batches):
                    answer = session.post(f"{urls[name]}/batch-get", json={"keys": keys})
                    answer.raise_for_status()
                    assert len(answer.json()["blocks"]) == a.keys
                times[name].append((time.perf_counter() - started) / a.batches * 1000)
        for name in builds:
            print(f"{name}: batch-get of {a.keys} blocks of {a.bytes} B: median {statistics.median(times[name]):.1f} ms "
                  f"per batch (rounds: {', '.join(f'{t:.1f}' for t in times[name])})")
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
