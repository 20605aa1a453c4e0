#!/usr/bin/env python3
"""Strata's staging of one object into host memory against the peers that bound it.

A synthetic file of `--size` random bytes (made once in `--dir`) is served by nginx on loopback.
Every round runs, order alternating round by round:
- HTTP row: `curl -s -o DEST/...` of the file (curl's own time_total) against
  `strata bench stage --source URL --dir STATE --host-dir DEST --json` with an empty STATE, so
  Strata fetches from the origin (remote tier) into DEST, the same directory curl writes to. The
  file is read through first for both, so nginx serves it from the page cache: the row measures
  the HTTP path, not the origin's disk. Strata's figure is the time until the staging is done
  (the RAM copy whole and verified: a runtime may start); a second row gives the time until the
  NVMe copy, written behind the RAM copy, is committed too (`nvme_seconds`);
- NVMe row: `strata bench stage ... --from nvme` staging the copy the remote run left in STATE,
  against `fio --rw=read --direct=1 --ioengine=io_uring --bs=1M --iodepth=16` reading the source
  file. The page cache is dropped before each of these two (`echo 3 > drop_caches` as root, else
  posix_fadvise DONTNEED on the files), so neither reads from memory.
What a run writes into DEST is deleted after it. Prints medians, the ratios and a JSON line.

Usage: stage_vs_peers.py [--strata .build/release/strata] [--size 2GiB] [--runs 5]
                         [--dir var/bench-stage] [--dest-dir /dev/shm/strata-bench] [--skip-strata]
Needs: nginx, curl, fio (scripts/setup.sh installs them).
"""
import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "Tests" / "integration"), str(REPO / "Benchmarks" / "io")]
from origins import Nginx          # noqa: E402  the same nginx origin the integration tests use
from io_vs_fio import run_fio      # noqa: E402

MiB = 1 << 20
UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB|TiB)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size like 256MiB or 2GiB, got {text!r}")
    return int(m.group(1)) * UNITS[m.group(2) or ""]


def make_source(directory: Path, size: int) -> Path:
    """The random file, created once per size and reused while its size matches."""
    path = directory / f"source-{size}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            f.write(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    return path


def drop_cache(*paths: Path) -> str:
    """Drops the page cache: all of it as root, else these files' (and directories' files') pages."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        pass
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return "fadvise"


def warm_cache(path: Path) -> None:
    """Reads the file through so that nginx serves it from memory in the HTTP row."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


def clear_new(dest: Path, before: set) -> None:
    """Deletes what appeared in `dest` since `before` was listed."""
    for p in set(dest.iterdir()) - before:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def cpu_seconds() -> float:
    """User + system CPU time of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CPU = {"curl": [], "strata_remote": []}   # CPU seconds per GiB of each HTTP run


def run_curl(url: str, dest: Path, size: int) -> float:
    """MiB/s of one curl download into `dest` (timed by curl: time_total)."""
    before = set(dest.iterdir())
    cpu = cpu_seconds()
    out = subprocess.run(["curl", "-s", "-o", str(dest / "curl.bin"), "-w", "%{size_download} %{time_total}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    CPU["curl"].append((cpu_seconds() - cpu) / (size / (1 << 30)))
    clear_new(dest, before)
    got, seconds = int(out[0]), float(out[1])
    if got != size:
        raise SystemExit(f"curl downloaded {got} bytes of {size}")
    return size / MiB / seconds


NVME_COMMITTED = []   # MiB/s until the NVMe copy written behind the RAM copy was committed (remote runs)


def run_strata(strata: str, url: str, state: Path, dest: Path, size: int, source: str, extra: tuple = ()) -> float:
    """MiB/s that `strata bench stage` reports for staging `url` from `source` ("remote": fetched
    from the origin into an empty state directory; "nvme": from the copy an earlier run left).
    `extra`: more options for `bench stage` (e.g. `--sha256 HEX`)."""
    if source == "remote":
        shutil.rmtree(state, ignore_errors=True)
    before = set(dest.iterdir())
    argv = [strata, "bench", "stage", "--source", url, "--dir", str(state), "--host-dir", str(dest), "--json", *extra]
    if source == "nvme":
        argv += ["--from", "nvme"]
    cpu = cpu_seconds()
    r = subprocess.run(argv, capture_output=True, text=True)
    if source == "remote":
        CPU["strata_remote"].append((cpu_seconds() - cpu) / (size / (1 << 30)))
    clear_new(dest, before)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {r.returncode}:\n{r.stderr[-2000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    if result.get("from") != source or result.get("bytes") != size:
        raise SystemExit(f"strata staged {result.get('bytes')} bytes from {result.get('from')!r}, "
                         f"expected {size} from {source!r}: {result}")
    if source == "remote":
        NVME_COMMITTED.append(result.get("nvme_mib_per_s") or float(result["mib_per_s"]))
    return float(result["mib_per_s"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="var/bench-stage", help="source file and Strata's state directory")
    ap.add_argument("--dest-dir", default="/dev/shm/strata-bench", help="where curl and Strata write (host tier)")
    ap.add_argument("--skip-strata", action="store_true", help="run only the peers (curl, fio)")
    a = ap.parse_args()
    size = parse_size(a.size)
    directory = Path(a.dir).resolve()
    dest = Path(a.dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    state = directory / "state"
    source = make_source(directory, size)
    fio_size = str(size)   # bytes: fio takes a plain number as is

    runs = {"curl": [], "strata_remote": [], "fio": [], "strata_nvme": []}
    cache_drop = None
    with Nginx(directory) as origin:
        url = f"{origin.url}/{source.name}"
        for run in range(a.runs):
            order = ["curl", "strata_remote", "fio", "strata_nvme"]
            if run % 2:
                order = ["strata_remote", "curl", "strata_nvme", "fio"]   # nvme always after remote
            for which in order:
                if which.startswith("strata") and a.skip_strata:
                    continue
                if which == "curl":
                    warm_cache(source)
                    runs[which].append(run_curl(url, dest, size))
                elif which == "strata_remote":
                    warm_cache(source)
                    runs[which].append(run_strata(a.strata, url, state, dest, size, "remote"))
                else:
                    cache_drop = drop_cache(source, state) if state.exists() else drop_cache(source)
                    if which == "fio":
                        runs[which].append(run_fio(str(source), fio_size, "read", "1MiB", 16)[0] / MiB)
                    else:
                        runs[which].append(run_strata(a.strata, url, state, dest, size, "nvme"))
            committed = f" (nvme committed {NVME_COMMITTED[-1]:.0f})" if NVME_COMMITTED and not a.skip_strata else ""
            print(f"round {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in runs.items() if v) + " MiB/s" + committed,
                  file=sys.stderr)

    runs["strata_remote_nvme"] = NVME_COMMITTED
    med = {k: statistics.median(v) if v else None for k, v in runs.items()}
    ratio = lambda ours, peer: med[ours] / med[peer] if med[ours] and med[peer] else None
    # Rounds drift on these VMs (the neighbours, the page cache): the ratio within each round,
    # whose two runs were back to back, is steadier than the ratio of the medians.
    paired = lambda ours, peer: (statistics.median(o / p for o, p in zip(runs[ours], runs[peer]))
                                 if runs[ours] and runs[peer] else None)
    fmt = lambda x, width, digits: f"{'-':>{width}}" if x is None else f"{x:{width}.{digits}f}"
    print(f"{a.size} ({size} bytes) of random bytes, served by nginx on loopback, staged into {dest}; "
          f"medians of {a.runs} alternating runs, MiB/s; page cache: {cache_drop}")
    print(f"{'row':13} {'peer':22} {'peer':>8} {'strata':>8} {'strata/peer':>12} {'per round':>10}")
    for row, peer, ours, what in (("HTTP staging", "curl", "strata_remote", "curl -o (loopback)"),
                                  ("HTTP + NVMe", "curl", "strata_remote_nvme", "curl -o (loopback)"),
                                  ("NVMe staging", "fio", "strata_nvme", "fio read O_DIRECT")):
        print(f"{row:13} {what:22} {fmt(med[peer], 8, 0)} {fmt(med[ours], 8, 0)} {fmt(ratio(ours, peer), 12, 2)}"
              f" {fmt(paired(ours, peer), 10, 2)}")
    cpu = {k: statistics.median(v) if v else None for k, v in CPU.items()}
    print(f"CPU seconds per GiB (HTTP row, the process alone; nginx not counted): curl {fmt(cpu['curl'], 0, 2)}, "
          f"strata {fmt(cpu['strata_remote'], 0, 2)}")
    print(json.dumps({"size": size, "runs": a.runs, "dest_dir": str(dest), "cache_drop": cache_drop,
                      "curl_mib_s": med["curl"], "strata_remote_mib_s": med["strata_remote"],
                      "http_ratio": ratio("strata_remote", "curl"),
                      "strata_remote_nvme_mib_s": med["strata_remote_nvme"],
                      "http_nvme_ratio": ratio("strata_remote_nvme", "curl"),
                      "http_nvme_ratio_per_round": paired("strata_remote_nvme", "curl"),
                      "fio_mib_s": med["fio"], "strata_nvme_mib_s": med["strata_nvme"],
                      "nvme_ratio": ratio("strata_nvme", "fio"),
                      "http_ratio_per_round": paired("strata_remote", "curl"), "nvme_ratio_per_round": paired("strata_nvme", "fio"),
                      "cpu_seconds_per_gib": cpu, "per_run": runs}))


if __name__ == "__main__":
    sys.exit(main())
