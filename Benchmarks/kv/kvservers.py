"""redis-server and Strata's RESP service side by side for the KV benchmarks: started on free
loopback ports in a work directory, ready once a SET is acknowledged."""
import shutil
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


def start_redis(work: Path, procs: list, durability: str = "cache", prefix: tuple = ()) -> tuple[int, int]:
    """Starts redis-server on a free loopback port (no persistence; with `durability: durable`, an
    AOF fsynced before each reply), under `prefix` (e.g. `taskset -c 1`), appending it to `procs`.
    Returns its port and pid."""
    port = free_port()
    procs.append(subprocess.Popen(
        [*prefix, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)]
        + (["--appendonly", "yes", "--appendfsync", "always"] if durability == "durable" else ["--appendonly", "no"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return port, procs[-1].pid


def start_minimal(work: Path, value_bytes: int, procs: list, prefix: tuple = (), seconds: int = 3600) -> tuple[int, int]:
    """Compiles `minimal_server.c` into `work` (`cc`, else `clang`) and starts it on a free loopback port,
    every GET answered with `value_bytes` bytes, for at most `seconds`, under `prefix`, appending
    it to `procs`. Returns its port and pid."""
    binary = work / "minimal_server"
    if not binary.exists():
        source = Path(__file__).resolve().parent / "minimal_server.c"
        compiler = shutil.which("cc") or shutil.which("clang")
        if compiler is None:
            raise SystemExit("no C compiler (cc or clang) for minimal_server.c")
        built = subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"compiling {source} with {compiler}: {built.stderr[-500:]}")
    port = free_port()
    procs.append(subprocess.Popen([*prefix, str(binary), str(port), str(value_bytes), str(seconds)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return port, procs[-1].pid


def start_strata(work: Path, name: str, binary: str, procs: list, host_budget: str = "2GiB", kv_options: str = "",
                 prefix: tuple = ()) -> tuple[int, int]:
    """Starts a Strata daemon named `name` (its config, state and log in `work`) serving RESP on a
    free loopback port, its `kv` section's options after `resp` as written (`kv_options`, e.g.
    `, durability: durable, threads: 1`), under `prefix`, appending it to `procs`. Returns its
    port and pid."""
    port = free_port()
    config = work / f"{name}.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{free_port()}
state_dir: {work}/state-{name}
log_level: warning
tiers: {{ host: {{ budget: {host_budget}, dir: {work}/shm-{name} }}, nvme: {{ budget: 64GiB }} }}
kv: {{ resp: 127.0.0.1:{port}{kv_options} }}
models: []
""")
    log = open(work / f"{name}.log", "wb")
    procs.append(subprocess.Popen([*prefix, binary, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT))
    return port, procs[-1].pid


def start(work: Path, strata: str, procs: list, strata_before: str | None = None, host_budget: str = "2GiB",
          durability: str = "cache", kv_threads: int = 0,
          kv_threads_before: int | None = None) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Starts redis-server (`start_redis`) and Strata (and `strata_before`, another build, with its
    own state), appending each process to `procs`; waits until all are ready. `kv_threads` (0: the
    build's default: the daemon's shared loops before 46bf8b4, one loop per four cores since) for
    both builds, unless `kv_threads_before` gives the earlier build's (the same binary under two
    settings, side by side). Returns [(name, port)] for "redis", "strata" (and "before"), and
    each one's pid."""
    redis_port, redis_pid = start_redis(work, procs, durability)
    servers, pids = [("redis", redis_port)], {"redis": redis_pid}
    binaries = [("strata", strata, kv_threads)]
    if strata_before:
        binaries.append(("before", strata_before, kv_threads if kv_threads_before is None else kv_threads_before))
    for name, binary, threads in binaries:
        port, pid = start_strata(work, name, binary, procs, host_budget,
                                 f", durability: {durability}" + (f", threads: {threads}" if threads else ""))
        servers.append((name, port))
        pids[name] = pid
    for _, port in servers:
        wait_ready(port)
    return servers, pids
