#!/usr/bin/env python3
"""Strata's I/O engines and its store against fio on the same file system, block size and
queue depth.

Alternates Strata and `fio --ioengine=io_uring --direct=1` run by run and prints medians.
- engines: `strata bench io` on the very file fio reads;
- store: whole-object sequential reads through the store (`strata bench store --pattern
  seq-read`: chunks verified and copied into a pre-faulted buffer, as a model load does) against
  fio's sequential read of a file of the same size; verified 256 KiB random block gets
  (`--pattern rand-get`) against fio's random reads.

Usage: io_vs_fio.py --strata .build/release/strata --file var/bench.dat [--size 2GiB] [--runs 5]
                    [--section all|engines|store]
"""
import argparse
import json
import statistics
import subprocess
import sys

CASES = [
    # (pattern, fio rw, block size, queue depth)
    ("seq-read", "read", "1MiB", 16),
    ("seq-read", "read", "16MiB", 4),
    ("rand-read", "randread", "256KiB", 32),
]


def fio_size(text):
    return text.replace("KiB", "k").replace("MiB", "m").replace("GiB", "g")


def run_strata(strata, file, size, pattern, bs, qd, engine):
    out = subprocess.run([strata, "bench", "io", "--file", file, "--size", size, "--block-size", bs,
                          "--queue-depth", str(qd), "--pattern", pattern, "--engine", engine, "--json"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    return r["bytes_per_second"], r["iops"]


def run_fio(file, size, rw, bs, qd):
    out = subprocess.run(["fio", "--name=bench", f"--filename={file}", f"--rw={rw}", f"--bs={fio_size(bs)}",
                          f"--iodepth={qd}", "--ioengine=io_uring", "--direct=1", f"--size={fio_size(size)}",
                          "--output-format=json"], capture_output=True, text=True, check=True).stdout
    job = json.loads(out)["jobs"][0]["read"]
    return job["bw_bytes"], job["iops"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--file", default="var/bench.dat")
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--section", choices=["all", "engines", "store"], default="all")
    a = ap.parse_args()
    # create the file once
    subprocess.run([a.strata, "bench", "io", "--file", a.file, "--size", a.size, "--block-size", "1MiB",
                    "--queue-depth", "4", "--pattern", "seq-read"], check=True, capture_output=True)
    print(f"file {a.file}, {a.size}, O_DIRECT, medians of {a.runs} alternating runs")
    rows = []
    if a.section in ("all", "engines"):
        rows += engines(a)
    if a.section in ("all", "store"):
        rows += store(a)
    print(json.dumps(rows))


def engines(a):
    print(f"{'pattern':10} {'bs':>7} {'qd':>3} {'fio MiB/s':>10} {'io_uring':>10} {'psync':>10} {'io_uring/fio':>13} "
          f"{'fio IOPS':>9} {'io_uring':>9}")
    rows = []
    for pattern, rw, bs, qd in CASES:
        fio, uring, psync = [], [], []
        for run in range(a.runs):
            order = ["fio", "io_uring", "psync"] if run % 2 == 0 else ["psync", "io_uring", "fio"]
            for which in order:
                if which == "fio":
                    fio.append(run_fio(a.file, a.size, rw, bs, qd))
                else:
                    (uring if which == "io_uring" else psync).append(
                        run_strata(a.strata, a.file, a.size, pattern, bs, qd, which))
        med = lambda xs, i: statistics.median(x[i] for x in xs)
        row = dict(pattern=pattern, bs=bs, qd=qd, fio_bps=med(fio, 0), uring_bps=med(uring, 0), psync_bps=med(psync, 0),
                   fio_iops=med(fio, 1), uring_iops=med(uring, 1))
        rows.append(row)
        print(f"{pattern:10} {bs:>7} {qd:>3} {row['fio_bps'] / 2**20:10.0f} {row['uring_bps'] / 2**20:10.0f} "
              f"{row['psync_bps'] / 2**20:10.0f} {row['uring_bps'] / row['fio_bps']:13.2f} "
              f"{row['fio_iops']:9.0f} {row['uring_iops']:9.0f}")
    return rows


def run_store(strata, directory, size, pattern, bs, qd):
    out = subprocess.run([strata, "bench", "store", "--dir", directory, "--size", size, "--block-size", bs,
                          "--queue-depth", str(qd), "--pattern", pattern, "--engine", "io_uring", "--json"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    return r["bytes_per_second"], r["iops"]


def store(a):
    rows = []
    print(f"{'store':10} {'chunk':>7} {'qd':>3} {'fio MiB/s':>10} {'store':>10} {'store/fio':>10}")
    for bs, qd in (("1MiB", 16), ("4MiB", 8), ("16MiB", 4)):
        directory = f"{a.file}.objects-{bs}"
        run_store(a.strata, directory, a.size, "seq-read", bs, qd)   # imports the object once, untimed
        fio, ours = [], []
        for run in range(a.runs):
            for which in (("fio", "store") if run % 2 == 0 else ("store", "fio")):
                if which == "fio":
                    fio.append(run_fio(a.file, a.size, "read", bs, qd))
                else:
                    ours.append(run_store(a.strata, directory, a.size, "seq-read", bs, qd))
        f = statistics.median(x[0] for x in fio)
        o = statistics.median(x[0] for x in ours)
        print(f"{'seq-read':10} {bs:>7} {qd:>3} {f / 2**20:10.0f} {o / 2**20:10.0f} {o / f:10.2f}")
        rows.append(dict(pattern="store-seq-read", bs=bs, qd=qd, fio_bps=f, store_bps=o))
    # the block log itself: verified random gets of 256 KiB blocks against fio's random reads
    store = a.file + ".store"
    sg, fg = [], []
    for run in range(a.runs):
        for which in (("fio", "store") if run % 2 == 0 else ("store", "fio")):
            if which == "fio":
                fg.append(run_fio(a.file, a.size, "randread", "256KiB", 32))
            else:
                out = subprocess.run([a.strata, "bench", "store", "--dir", store, "--size", a.size, "--block-size", "256KiB",
                                      "--queue-depth", "32", "--pattern", "rand-get", "--engine", "io_uring", "--json"],
                                     capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                r = json.loads(out)
                sg.append((r["bytes_per_second"], r["iops"]))
    fio_iops = statistics.median(x[1] for x in fg)
    store_iops = statistics.median(x[1] for x in sg)
    print(f"store rand-get 256KiB qd=32 (verified, 260 KiB records): {store_iops:.0f} IOPS vs fio randread "
          f"{fio_iops:.0f} IOPS = {store_iops / fio_iops:.2f}x")
    rows.append(dict(pattern="store-rand-get", bs="256KiB", qd=32, fio_iops=fio_iops, store_iops=store_iops))
    return rows


if __name__ == "__main__":
    sys.exit(main())
