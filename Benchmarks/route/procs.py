"""Helpers the route, gateway and KV benchmarks share: loopback ports, waiting for a server, a
daemon's counters, an nginx to compare with, stopping processes."""
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    """Waits until GET `url` answers 200; exits the benchmark with a message if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {url}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(base: str, name: str, result: str = "ok") -> float:
    """Sum of a counter's samples with `result` on a Strata daemon's /metrics."""
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and f'result="{result}"' in line)


def stop(procs) -> None:
    """SIGTERM, newest first; SIGKILL whatever has not exited 10 s later."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start_nginx(work: Path, servers: str) -> subprocess.Popen:
    """nginx in the foreground with one worker and no access log, serving the `server` and
    `upstream` blocks in `servers` (its config, pid and error log in `work`)."""
    (work / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_buffer_size 64k;
    keepalive_requests 100000;
{servers}
}}
""")
    return subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
