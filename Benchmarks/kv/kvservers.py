"""redis-server and Strata's RESP service side by side for the KV benchmarks: started on free
loopback ports in a work directory, ready once a SET is acknowledged."""
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "route"))
from procs import free_port   # noqa: E402

UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def size(text: str) -> int:
    """`4MiB` -> 4194304; a plain number is bytes."""
    for unit, factor in sorted(UNITS.items(), key=lambda u: -len(u[0])):
        if text.endswith(unit):
            return int(text[: -len(unit)]) * factor
    return int(text)


def wait_ready(port: int, timeout: float = 120) -> None:
    """Until a SET is acknowledged: Strata answers PING before its tiers are open (the host arena
    is pre-faulted at start), and the benchmark must not time that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["redis-cli", "-p", str(port), "set", "__bench_probe", "1"], capture_output=True, text=True)
        if out.stdout.strip() == "OK":
            return
        time.sleep(0.2)
    raise SystemExit(f"no SET was acknowledged on port {port}")


def start(work: Path, strata: str, procs: list, strata_before: str | None = None, host_budget: str = "2GiB",
          durability: str = "cache", kv_threads: int = 0,
          kv_threads_before: int | None = None) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Starts redis-server (no persistence; with `durability: durable`, an AOF fsynced before each
    reply) and Strata (and `strata_before`, another build, with its own state), appending each
    process to `procs`; waits until all are ready. `kv_threads` (0: the daemon's shared loops) for
    both builds, unless `kv_threads_before` gives the earlier build's (the same binary under two
    settings, side by side). Returns [(name, port)] for "redis", "strata"
    (and "before"), and each one's pid."""
    redis_port, strata_port = free_port(), free_port()
    procs.append(subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)]
        + (["--appendonly", "yes", "--appendfsync", "always"] if durability == "durable" else ["--appendonly", "no"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    servers = [("redis", redis_port), ("strata", strata_port)]
    pids = {"redis": procs[-1].pid}
    binaries = [("strata", strata, strata_port, kv_threads)]
    if strata_before:
        before_port = free_port()
        servers.append(("before", before_port))
        binaries.append(("before", strata_before, before_port,
                         kv_threads if kv_threads_before is None else kv_threads_before))
    for name, binary, port, threads in binaries:
        config = work / f"{name}.yaml"
        config.write_text(f"""
listen: 127.0.0.1:{free_port()}
state_dir: {work}/state-{name}
log_level: warning
tiers: {{ host: {{ budget: {host_budget}, dir: {work}/shm-{name} }}, nvme: {{ budget: 64GiB }} }}
kv: {{ resp: 127.0.0.1:{port}, durability: {durability}{f", threads: {threads}" if threads else ""} }}
models: []
""")
        log = open(work / f"{name}.log", "wb")
        procs.append(subprocess.Popen([binary, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT))
        pids[name] = procs[-1].pid
    for _, port in servers:
        wait_ready(port)
    return servers, pids
