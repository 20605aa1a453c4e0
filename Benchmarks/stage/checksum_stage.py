#!/usr/bin/env python3
"""Staging over HTTP with a SHA-256 to meet: Strata against curl with sha256sum.

The same synthetic file and nginx origin as stage_vs_peers.py (`--size` random bytes on loopback,
read through first so nginx serves it from the page cache). Every round runs, order rotating:
- `curl -s -o DEST/…` alone: the transfer with no check, for reference;
- `curl -s URL | tee DEST/… | sha256sum`: the download checked while it is written, what a
  careful script does (three processes, the hash on its own core), then the digest compared;
- `strata bench stage --source URL --sha256 HEX` into an empty state directory, timed to the
  staging's end (the RAM copy whole and its digest checked: a runtime may start);
- with `--strata-before BIN`, the same with another build, for a before/after in one run.
MiB/s of each, medians, ratios to the curl pipeline. What a run writes into DEST is deleted.

Usage: checksum_stage.py [--strata .build/release/strata] [--strata-before BIN] [--size 2GiB]
                         [--runs 7] [--dir var/bench-stage] [--dest-dir /dev/shm/strata-bench]
"""
import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from stage_vs_peers import MiB, Nginx, clear_new, make_source, parse_size, run_curl, run_strata, warm_cache   # noqa: E402


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def run_curl_sha256sum(url: str, dest: Path, size: int, expected: str) -> float:
    before = set(dest.iterdir())
    started = time.monotonic()
    out = subprocess.run(["bash", "-o", "pipefail", "-c", f"curl -sf '{url}' | tee '{dest}/curl.bin' | sha256sum"],
                         capture_output=True, text=True, check=True).stdout
    seconds = time.monotonic() - started
    got = (dest / "curl.bin").stat().st_size
    clear_new(dest, before)
    if out.split()[0] != expected or got != size:
        raise SystemExit(f"curl | sha256sum: {got} bytes, digest {out.split()[0]}, expected {expected}")
    return size / MiB / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--strata-before", help="another build, run the same way (before/after in one run)")
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dir", default="var/bench-stage", help="source file and Strata's state directories")
    ap.add_argument("--dest-dir", default="/dev/shm/strata-bench", help="where curl and Strata write (host tier)")
    a = ap.parse_args()
    size = parse_size(a.size)
    directory = Path(a.dir).resolve()
    dest = Path(a.dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    source = make_source(directory, size)
    expected = sha256_of(source)

    contenders = {
        "curl": lambda url: run_curl(url, dest, size),
        "curl|sha256sum": lambda url: run_curl_sha256sum(url, dest, size, expected),
        "strata": lambda url: run_strata(a.strata, url, directory / "state", dest, size, "remote", ("--sha256", expected)),
    }
    if a.strata_before:
        contenders["strata before"] = lambda url: run_strata(a.strata_before, url, directory / "state-before", dest, size,
                                                             "remote", ("--sha256", expected))
    names = list(contenders)
    runs = {name: [] for name in names}
    with Nginx(directory) as origin:
        url = f"{origin.url}/{source.name}"
        for run in range(a.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for name in order:
                warm_cache(source)
                runs[name].append(contenders[name](url))
            print(f"round {run + 1}: " + ", ".join(f"{n} {runs[n][-1]:.0f}" for n in names) + " MiB/s", file=sys.stderr)

    med = {n: statistics.median(v) for n, v in runs.items()}
    peer = "curl|sha256sum"
    per_round = {n: statistics.median(o / p for o, p in zip(runs[n], runs[peer])) for n in names}
    print(f"{a.size} of random bytes from nginx on loopback into {dest}, SHA-256 checked; medians of {a.runs} "
          f"rotating runs, MiB/s")
    print(f"{'':16} {'MiB/s':>8} {'/ curl|sha256sum':>17} {'per round':>10}")
    for n in names:
        print(f"{n:16} {med[n]:8.0f} {med[n] / med[peer]:17.2f} {per_round[n]:10.2f}")
    print(json.dumps({"size": size, "runs": a.runs, "medians_mib_s": med, "per_run": runs}))


if __name__ == "__main__":
    sys.exit(main())
