"""Integration fixtures: the real `strata` daemon in front of the real llama-server.

Everything binds to 127.0.0.1; every daemon a test starts is stopped at teardown, and every
runtime it started is checked to be gone.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
MODEL = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA = CACHE / "bin" / "llama-server"
REPO = Path(__file__).resolve().parents[2]
STRATA = Path(os.environ.get("STRATA_BIN", REPO / ".build" / "debug" / "strata"))
API_KEY = "test-key-1"
ADMIN_KEY = "admin-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is as good as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def spawn_llama_server(log_path, *args, alias="smollm2"):
    """A llama-server Strata does not start, on a free loopback port: (url, process)."""
    port = free_port()
    proc = subprocess.Popen([str(LLAMA), "-m", str(MODEL), "--host", "127.0.0.1", "--port", str(port), *args,
                             "--alias", alias], stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc


def wait_healthy(url, timeout=60):
    def healthy():
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for(healthy, timeout, what=f"llama-server {url}")


class Daemon:
    def __init__(self, tmp: Path, config: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp
        self.config_path = tmp / "strata.yaml"
        # Staged weights go to RAM; each daemon gets its own directory there, removed at teardown.
        self.shm = Path(f"/dev/shm/strata-test-{os.getpid()}-{self.port}")
        self.config_path.write_text(config.replace("@PORT@", str(self.port)).replace("@STATE@", str(tmp / "state"))
                                    .replace("@SHM@", str(self.shm)))
        self.log_path = tmp / "strata.log"
        self.env = {**os.environ, "STRATA_API_KEYS": API_KEY, "STRATA_ADMIN_KEY": ADMIN_KEY, **(env or {})}
        self.proc = None
        self.seen_pids: set[int] = set()
        # A command that runs the daemon's (ending in `exec "$@"` or the like), e.g. to give it a
        # mount namespace of its own.
        self.wrapper: list[str] = []

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.wrapper, str(STRATA), "serve", "--config", str(self.config_path)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(self._ready, 30, what=f"strata /ready (log {self.log_path})")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"strata exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            return self.get("/ready")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body=None, headers=None, timeout=60):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def admin(self) -> dict:
        status, body, _ = self.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert status == 200, body
        data = json.loads(body)
        by_name = {m["name"]: m for m in data["models"]}
        for m in data["models"]:
            if m.get("pid"):
                self.seen_pids.add(m.get("pid"))
        return by_name

    def metric(self, name: str, **labels) -> float:
        """Sum of the /metrics samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.get("/metrics")[1].decode().splitlines():
            m = re.match(rf'{name}\{{(.*)\}} ([0-9.e+-]+)$', line)
            if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def model(self, name: str) -> dict:
        return self.admin()[name]

    def client(self, **kw):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", API_KEY), max_retries=0, **kw)

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def remove_staged(self):
        shutil.rmtree(self.shm, ignore_errors=True)

    def assert_runtimes_gone(self, timeout=10):
        for pid in self.seen_pids:
            wait_for(lambda: not pid_alive(pid), timeout, what=f"runtime pid {pid} to exit")


def one_stream_runtime(then):
    """A remote runtime on loopback that takes one request and answers it with an SSE head;
    then `then(send)` goes on, `send(bytes)` writing one chunk. Runs on a thread of its own;
    returns its port."""
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(30)

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            then(lambda chunk: conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n"))
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


class FakeUpstream:
    """A fake OpenAI upstream (standard library) on loopback: /health answers 200; chat answers
    200 after `delay` seconds (to hold requests in flight), or 500 while `broken` (a server that
    is up and fails its requests). Counts the chat requests it got."""

    def __init__(self, delay=0.0, broken=False):
        import http.server
        outer = self
        self.chats = 0
        self.broken = broken

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, b'{"status":"ok"}')

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.chats += 1
                time.sleep(delay)
                if outer.broken:
                    self._send(500, b'{"error":{"code":500,"message":"broken","type":"server_error"}}')
                else:
                    self._send(200, json.dumps({"object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}).encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def config(models: str, extra: str = "", tiers: str = "{ host: { budget: 32MiB, dir: @SHM@ }, nvme: { budget: 256MiB } }") -> str:
    return f"""
listen: 127.0.0.1:@PORT@
state_dir: @STATE@
log_level: info
gateway: {{ max_body: 64KiB }}
tiers: {tiers}
supervisor: {{ load_timeout: 60s, queue_timeout: 90s, stop_timeout: 5s, restart_backoff: 200ms, restart_backoff_max: 2s }}
devices: [ {{ name: cpu, kind: cpu, memory: 600MiB }} ]
runtimes:
  llama: {{ kind: llama-server, binary: "{LLAMA}", args: ["-c", "2048", "--threads", "1", "--parallel", "2"] }}
{extra}
models:
{models}
"""


TWO_MODELS = f"""
  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 400MiB, ttl: 10m }}
  - {{ name: smollm2-b, source: "file://{MODEL}", runtime: llama, memory: 400MiB, ttl: 10m }}
"""


@pytest.fixture(scope="session", autouse=True)
def _prerequisites():
    for path in (STRATA, LLAMA, MODEL):
        if not path.exists():
            pytest.exit(f"missing {path}: run `make test` (it builds and installs everything)", returncode=2)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """Two models (the same GGUF under two names) with a memory budget for one."""
    d = Daemon(tmp_path_factory.mktemp("strata"), config(TWO_MODELS)).start()
    yield d
    d.admin()
    assert d.stop() == 0, d.log_path.read_text()[-3000:]
    d.assert_runtimes_gone()
    d.remove_staged()


@pytest.fixture
def make_daemon(tmp_path):
    started = []

    def make(cfg: str, env=None, start=True):
        directory = tmp_path / f"d{len(started)}"
        directory.mkdir(parents=True, exist_ok=True)
        d = Daemon(directory, cfg, env)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.stop()
        d.assert_runtimes_gone()
        d.remove_staged()
