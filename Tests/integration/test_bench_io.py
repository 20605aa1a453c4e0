"""`strata bench io`: the I/O engines measured on a real file, and its input checks."""
import json
import subprocess

from conftest import STRATA


def bench(*args):
    return subprocess.run([str(STRATA), "bench", "io", *args], capture_output=True, text=True, timeout=120)


def test_bench_io_reports_json_for_each_engine_and_pattern(tmp_path):
    path = str(tmp_path / "bench.dat")
    for engine in ("io_uring", "psync"):
        for pattern in ("seq-read", "rand-read", "seq-write"):
            r = bench("--file", path, "--size", "8MiB", "--block-size", "256KiB", "--queue-depth", "4",
                      "--pattern", pattern, "--engine", engine, "--json")
            assert r.returncode == 0, r.stderr
            result = json.loads(r.stdout.strip().splitlines()[-1])
            assert result["engine"] == engine and result["pattern"] == pattern
            assert result["bytes"] == 8 << 20
            for key in ("bytes_per_second", "iops", "p50_us", "p99_us"):
                assert result[key] > 0, (key, result)
            assert result["p99_us"] >= result["p50_us"]


def test_bench_io_seq_write_creates_its_file(tmp_path):
    """As fio does, and as --help says; the write run failed on a file not there yet."""
    path = tmp_path / "fresh.dat"
    for engine in ("io_uring", "psync"):
        path.unlink(missing_ok=True)
        r = bench("--file", str(path), "--size", "4MiB", "--block-size", "256KiB", "--pattern", "seq-write", "--engine", engine, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])["bytes"] == 4 << 20
        assert path.stat().st_size == 4 << 20


def test_bench_io_rejects_bad_input_clearly(tmp_path):
    path = str(tmp_path / "bench.dat")
    cases = [
        (["--pattern", "zigzag"], "--pattern 'zigzag'"),
        (["--engine", "aio"], "--engine 'aio'"),
        (["--block-size", "1000"], "multiple of 4KiB"),
        (["--size", "12 parsecs"], "--size '12 parsecs'"),
        (["--queue-depth", "0"], "--queue-depth"),
    ]
    for extra, fragment in cases:
        r = bench("--file", path, *extra)
        assert r.returncode != 0, extra
        assert fragment in r.stderr, (fragment, r.stderr)
        # the usage shown is the command's, not the root's
        assert "Usage: strata bench io --file <file>" in r.stderr and "See 'strata bench io --help'" in r.stderr, r.stderr


def test_bench_store_puts_then_reads_back_verified(tmp_path):
    store = str(tmp_path / "store")
    for pattern in ("put", "rand-get"):
        r = subprocess.run([str(STRATA), "bench", "store", "--dir", store, "--size", "8MiB", "--block-size", "256KiB",
                            "--queue-depth", "4", "--pattern", pattern, "--json"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["pattern"] == pattern and result["bytes"] == 8 << 20
        for key in ("bytes_per_second", "iops", "p50_us", "p99_us"):
            assert result[key] > 0, (key, result)
    # the same directory read with smaller blocks than it was filled with: blocks of that size are filled
    smaller = subprocess.run([str(STRATA), "bench", "store", "--dir", store, "--size", "8MiB", "--block-size", "64KiB",
                              "--queue-depth", "4", "--pattern", "rand-get", "--json"], capture_output=True, text=True, timeout=120)
    assert smaller.returncode == 0, smaller.stderr
    host = subprocess.run([str(STRATA), "bench", "store", "--dir", store, "--size", "8MiB", "--block-size", "256KiB",
                           "--pattern", "host-get", "--json"], capture_output=True, text=True, timeout=120)
    assert host.returncode == 0, host.stderr
    result = json.loads(host.stdout.strip().splitlines()[-1])
    assert result["engine"] == "host" and result["baseline_p50_us"] > 0 and result["p50_us"] > 0
    # a whole object streamed through the store: imported once, then read back verified
    objects = str(tmp_path / "objects")
    for _ in range(2):
        seq = subprocess.run([str(STRATA), "bench", "store", "--dir", objects, "--size", "8MiB", "--block-size", "1MiB",
                              "--queue-depth", "4", "--pattern", "seq-read", "--json"],
                             capture_output=True, text=True, timeout=120)
        assert seq.returncode == 0, seq.stderr
        result = json.loads(seq.stdout.strip().splitlines()[-1])
        assert result["pattern"] == "seq-read" and result["bytes"] == 8 << 20 and result["bytes_per_second"] > 0
    bad = subprocess.run([str(STRATA), "bench", "store", "--dir", store, "--pattern", "sideways"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "--pattern 'sideways'" in bad.stderr and "seq-read" in bad.stderr
    chunk = subprocess.run([str(STRATA), "bench", "store", "--dir", objects, "--size", "8MiB", "--block-size", "5000",
                            "--pattern", "seq-read"], capture_output=True, text=True, timeout=30)
    assert chunk.returncode != 0 and "chunk size 5000" in chunk.stderr, chunk.stderr


def test_bench_stage_rejects_bad_input_before_any_transfer(tmp_path):
    def stage(*extra):
        return subprocess.run([str(STRATA), "bench", "stage", "--source", str(tmp_path / "absent.gguf"),
                               "--dir", str(tmp_path / "store"), *extra], capture_output=True, text=True, timeout=60)
    for extra, fragment in [(["--sha256", "xyz"], "--sha256 'xyz'"), (["--from", "host"], "--from 'host'"),
                            (["--to", "moon"], "--to 'moon'"), (["--chunk-size", "1000"], "--chunk-size")]:
        r = stage(*extra)
        assert r.returncode != 0 and fragment in r.stderr, (extra, r.stderr)
