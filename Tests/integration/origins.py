"""Origins for the remote-tier tests and benchmarks, and a proxy that injects faults in front of them.

- `Nginx(root_dir)`: nginx serving `root_dir` over HTTP (GET/HEAD with Range and ETag; PUT and
  DELETE too when nginx has the dav module).
- `MotoS3()`: moto's S3 server, with boto3 helpers to create buckets and put objects.
- `FaultProxy(upstream_url, seed, faults)`: an HTTP/1.1 reverse proxy that resets, stalls or
  answers 503 to chosen requests, deterministically.

All three are context managers, bind 127.0.0.1 only, start on a free port, are ready when the
constructor (or `start()`) returns, and stop (processes reaped, threads joined) on exit or `close()`.
Standard library only, except `MotoS3`'s boto3 helpers (imported when first used).
"""
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _wait_answers(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Waits until `url` gives any HTTP answer; raises if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            # only whether it answers: a self-signed test origin is not verified here
            with urllib.request.urlopen(url, timeout=1, context=ssl._create_unverified_context()):
                return
        except urllib.error.HTTPError:
            return   # answered, with an error status: up all the same
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {url} (log {log})")


def _end(proc: subprocess.Popen | None) -> None:
    """SIGTERM, SIGKILL after 10 s, and reap."""
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Process:
    """A server process on a free loopback port, in its own temporary directory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spawn(self, argv_for_port, url_for_port, attempts: int = 3) -> None:
        # a free port can be taken between picking it and binding it: try again on another
        for attempt in range(attempts):
            self.port = free_port()
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(argv_for_port(self.port), stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self._env())
            try:
                _wait_answers(url_for_port(self.port), self.proc, self.log_path)
                return
            except RuntimeError:
                _end(self.proc)
                self._log.close()
                if attempt == attempts - 1 or "in use" not in self.log_path.read_text(errors="replace"):
                    self.close()
                    raise

    def _env(self) -> dict:
        return dict(os.environ)

    def close(self) -> None:
        _end(getattr(self, "proc", None))
        if getattr(self, "_log", None):
            self._log.close()
        if getattr(self, "_tmp", None) and not self.keep_dir:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


# --- nginx -----------------------------------------------------------------------------------------

def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        raise RuntimeError("nginx not found: run scripts/setup.sh (it installs nginx-light)")
    return found


def nginx_has_dav(binary: str | None = None) -> bool:
    out = subprocess.run([binary or nginx_binary(), "-V"], capture_output=True, text=True).stderr
    return "--with-http_dav_module" in out


class Nginx(_Process):
    """nginx serving `root_dir` at `.url` (http://127.0.0.1:PORT), one process (`master_process off`,
    so it runs as the caller and reads what the caller can).

    GET and HEAD with Range (206), ETag and If-None-Match/If-Range as nginx does them; with the dav
    module (`.dav` true) also PUT (parents created) and DELETE. `access_log()` returns one
    `METHOD URI STATUS BODY_BYTES "RANGE"` line per request. Keeps its files (config, logs) in a
    temporary directory removed at close unless `keep_dir`.
    """

    def __init__(self, root_dir, *, keep_dir: bool = False, tls: bool = False, location: str = ""):
        """`location`: more directives for the one location (`etag off; limit_rate 20m;`)."""
        self.location = location
        self.root = Path(root_dir).resolve()
        self.keep_dir = keep_dir
        self.binary = nginx_binary()
        self.dav = nginx_has_dav(self.binary)
        self._tmp = Path(tempfile.mkdtemp(prefix="strata-nginx-"))
        self.log_path = self._tmp / "error.log"
        self.tls = tls
        scheme = "https" if tls else "http"
        if tls:
            # A certificate for 127.0.0.1 signed by itself: `.ca_file` is what clients must trust.
            self.ca_file = self._tmp / "cert.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-keyout", str(self._tmp / "key.pem"), "-out", str(self.ca_file),
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                           check=True, capture_output=True)
        self._spawn(self._argv, lambda port: f"{scheme}://{LOOPBACK}:{port}/")
        self.url = f"{scheme}://{LOOPBACK}:{self.port}"

    def _argv(self, port: int) -> list[str]:
        t = self._tmp
        dav = "dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw group:r all:r;" if self.dav else ""
        temps = "\n".join(f"    {kind}_temp_path {t}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (t / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {t}/nginx.pid;
error_log {self.log_path} warn;
events {{ worker_connections 1024; }}
http {{
    log_format strata '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {t}/access.log strata;
{temps}
    default_type application/octet-stream;
    sendfile on;
    client_max_body_size 0;
    server {{
        listen {LOOPBACK}:{port}{" ssl" if self.tls else ""};
        {f'ssl_certificate {t}/cert.pem; ssl_certificate_key {t}/key.pem;' if self.tls else ""}
        root "{self.root}";
        location / {{ {dav} {self.location} }}
    }}
}}
""")
        return [self.binary, "-p", str(t), "-e", str(self.log_path), "-c", str(t / "nginx.conf")]

    def access_log(self) -> list[str]:
        path = self._tmp / "access.log"
        return path.read_text().splitlines() if path.exists() else []


# --- moto's S3 server ------------------------------------------------------------------------------

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def moto_server_binary() -> str:
    for candidate in (Path(sys.executable).parent / "moto_server", CACHE / "venv" / "bin" / "moto_server"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError("moto_server not found: run scripts/setup.sh (it installs moto[server] in the venv)")


class MotoS3(_Process):
    """moto's S3 server at `.endpoint` (http://127.0.0.1:PORT), state in memory, gone at close.

    `.env` holds the dummy credentials and region (`CREDENTIALS`) to give a client such as Strata;
    `client()` is a boto3 S3 client using them, path-style, at `.endpoint` or another endpoint
    (a `FaultProxy` in front of this server, say).
    """

    def __init__(self, *, keep_dir: bool = False):
        self.keep_dir = keep_dir
        self.env = dict(CREDENTIALS)
        self._tmp = Path(tempfile.mkdtemp(prefix="strata-moto-"))
        self.log_path = self._tmp / "moto.log"
        binary = moto_server_binary()
        self._spawn(lambda port: [binary, "-H", LOOPBACK, "-p", str(port)], lambda port: f"http://{LOOPBACK}:{port}/")
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._client = None

    def _env(self) -> dict:
        return {**os.environ, **CREDENTIALS}

    def client(self, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=endpoint_url or self.endpoint,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            aws_session_token=CREDENTIALS["AWS_SESSION_TOKEN"],
                            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    @property
    def s3(self):
        if self._client is None:
            self._client = self.client()
        return self._client

    def create_bucket(self, name: str) -> None:
        self.s3.create_bucket(Bucket=name)

    def put_object(self, bucket: str, key: str, path_or_bytes) -> str:
        """Stores bytes, or a file's contents (a str or Path is a path), in one PUT; returns the ETag
        (quoted, as S3 sends it)."""
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            return self.s3.put_object(Bucket=bucket, Key=key, Body=bytes(path_or_bytes))["ETag"]
        with open(path_or_bytes, "rb") as f:
            return self.s3.put_object(Bucket=bucket, Key=key, Body=f)["ETag"]

    def get_object(self, bucket: str, key: str) -> bytes:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def url(self, bucket: str, key: str) -> str:
        """The object's path-style URL."""
        return f"{self.endpoint}/{bucket}/{urllib.parse.quote(key)}"


# --- the fault-injecting proxy -----------------------------------------------------------------------

FAULT_KINDS = ("status_503", "reset", "stall")
FAULT_DEFAULTS = {"reset_every": 0, "reset_after_bytes": 65536,
                  "stall_every": 0, "stall_after_bytes": 65536, "stall_seconds": 5.0,
                  "status_503_every": 0}
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection"}
ANSWER_503 = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Type: text/plain\r\n"
              b"Content-Length: 13\r\nConnection: close\r\n\r\ninjected 503\n")


class _Reset(Exception):
    pass


def _split_head(buf: bytes):
    """(head including the blank line, rest) once `buf` holds a whole head, else None."""
    end = buf.find(b"\r\n\r\n")
    return None if end < 0 else (buf[:end + 4], buf[end + 4:])


def _close_connection(head: bytes) -> bytes:
    """The head with its hop-by-hop connection headers replaced by `Connection: close`; all other
    lines kept as they were, in order."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]] + [l for l in lines[1:] if l.split(b":", 1)[0].strip().lower() not in HOP_BY_HOP]
    return b"\r\n".join(kept + [b"Connection: close"]) + b"\r\n\r\n"


class FaultProxy:
    """HTTP/1.1 reverse proxy at `.url` (http://127.0.0.1:PORT) in front of `upstream_url`
    (http://host:port), injecting faults into a deterministic subset of the requests.

    Requests are numbered 1, 2, 3, ... in the order their heads arrive. `faults` (all optional;
    defaults in FAULT_DEFAULTS; 0 = never):
      status_503_every=K   one request in K is answered `503` with `Retry-After: 0` by the proxy
                           itself; the origin never sees it (the request body is read and dropped).
      reset_every=K        one request in K has its client connection reset (TCP RST) after
      reset_after_bytes=B  B bytes of the response body have been relayed.
      stall_every=K        one request in K stops for S seconds after B body bytes (then goes on).
      stall_after_bytes=B
      stall_seconds=S
    With `seed=None` the requests hit are K, 2K, 3K, ...; with an integer seed each kind gets its
    own phase drawn from the seed (still exactly one request in K, e.g. 1, 3, 5, ...).
    `plan(n)` tells which kinds request n gets. A 503 excludes the others; a request can be both
    stalled and reset (each at its own offset). When a response ends before a fault's offset, the
    fault happens just before its last byte, so every planned fault is visible to the client.

    `injected` counts the faults actually applied, per kind ("reset", "stall", "status_503"),
    `requests` counts requests seen, and `history` has (n, request line, planned kinds) per request.
    `set_faults(faults)` changes the plan on the fly (numbering goes on).

    Request heads and bodies go to the origin byte for byte (Host, Range, If-Match, Authorization
    and the rest untouched), except that Connection/Keep-Alive become `Connection: close`: one
    request per connection on both sides. Responses likewise, with `Connection: close` in the final
    head (1xx heads relayed as they are). A thread per connection; `close()` ends them all.
    """

    def __init__(self, upstream_url: str, seed: int | None = None, faults: dict | None = None, *,
                 idle_timeout: float = 60):
        u = urllib.parse.urlsplit(upstream_url)
        if u.scheme != "http" or u.path not in ("", "/") or not u.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self.upstream = (u.hostname, u.port)
        self.seed = seed
        self.idle_timeout = idle_timeout
        self.injected = {kind: 0 for kind in FAULT_KINDS}
        self.requests = 0
        self.history: list[tuple[int, str, tuple[str, ...]]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self.set_faults(faults or {})
        self._listener = socket.socket()
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, name=f"faultproxy-{self.port}", daemon=True)
        self._acceptor.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- plan ----------------------------------------------------------------------------------------
    def set_faults(self, faults: dict) -> None:
        unknown = set(faults) - set(FAULT_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown fault settings {sorted(unknown)}; known: {sorted(FAULT_DEFAULTS)}")
        plan = {**FAULT_DEFAULTS, **faults}
        phases = {}
        for kind in FAULT_KINDS:
            every = int(plan[f"{kind}_every"])
            if every < 0:
                raise ValueError(f"{kind}_every must be >= 0")
            # random.Random seeded with a str is the same on every run and platform
            phases[kind] = 0 if self.seed is None or every == 0 else random.Random(f"{self.seed}/{kind}").randrange(every)
        with self._lock:
            self.faults, self._phases = plan, phases

    def plan(self, n: int) -> tuple[str, ...]:
        """The fault kinds planned for request n (1-based) under the current settings."""
        kinds = []
        for kind in FAULT_KINDS:
            every = self.faults[f"{kind}_every"]
            if every and n % every == self._phases[kind]:
                kinds.append(kind)
        return ("status_503",) if "status_503" in kinds else tuple(kinds)

    # -- serving -------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            conn.settimeout(self.idle_timeout)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._conns.add(conn)
                self._threads.add(t)
            t.start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            buf = b""
            while (parts := _split_head(buf)) is None:
                data = client.recv(65536)
                if not data or len(buf) > 1 << 20:
                    return
                buf += data
            head, rest = parts
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            with self._lock:
                self.requests += 1
                n = self.requests
                kinds = self.plan(n)
                faults = dict(self.faults)
                self.history.append((n, request_line, kinds))
            if "status_503" in kinds:
                self._answer_503(client, head, rest)
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=self.idle_timeout)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with self._lock:
                self._conns.add(upstream)
            upstream.sendall(_close_connection(head) + rest)
            points = sorted((faults[f"{k}_after_bytes"], k) for k in kinds)
            self._relay(client, upstream, request_line.split(" ", 1)[0] == "HEAD", points, faults)
        except (OSError, _Reset):
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with self._lock:
                        self._conns.discard(s)
                    s.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _answer_503(self, client: socket.socket, head: bytes, rest: bytes) -> None:
        # read what the client sends (up to its Content-Length, within reason) so that closing
        # does not turn the answer into a reset
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        left = min(int(m.group(1)), 64 << 20) - len(rest) if m else 0
        if re.search(rb"\r\nexpect:\s*100-continue", head, re.I):
            left = 0   # a client that waits for 100 Continue sends no body after a final answer
        client.settimeout(2)
        # counted before it is sent: a client that has its answer may check the count at once
        with self._lock:
            self.injected["status_503"] += 1
        client.sendall(ANSWER_503)
        try:
            while left > 0 and not self._closing.is_set():
                data = client.recv(min(left, 1 << 20))
                if not data:
                    break
                left -= len(data)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _relay(self, client, upstream, head_request: bool, points, faults) -> None:
        """Pumps the rest of the request to the origin and the response back, applying faults."""
        out = _FaultyStream(self, client, faults)
        response = b""
        final_head = False
        expected = None   # the whole response's length, when Content-Length says
        sources = [client, upstream]
        while not self._closing.is_set():
            readable, _, _ = select.select(sources, [], [], 0.2)
            if client in readable:
                data = client.recv(1 << 20)
                if data:
                    upstream.sendall(data)
                else:
                    sources.remove(client)   # the client half-closed; keep relaying the response
            if upstream not in readable:
                continue
            data = upstream.recv(1 << 20)
            if not data:
                break
            if final_head:
                out.feed(data)
            else:
                response += data
                while (parts := _split_head(response)) is not None:
                    head, response = parts
                    status = int(head.split(b" ", 2)[1])
                    if 100 <= status < 200:
                        client.sendall(head)
                        continue
                    head = _close_connection(head)
                    out.points = [(len(head) + offset, kind) for offset, kind in points]
                    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
                    if head_request or status in (204, 304):
                        expected = len(head)
                    elif m:
                        expected = len(head) + int(m.group(1))
                    final_head = True
                    out.feed(head + response)
                    response = b""
                    break
            if expected is not None and out.fed >= expected:
                break
        if final_head:
            out.finish()
        elif response:
            client.sendall(response)

    def _inject(self, kind: str, client: socket.socket, faults: dict) -> None:
        with self._lock:
            self.injected[kind] += 1
        if kind == "stall":
            self._closing.wait(faults["stall_seconds"])
            if self._closing.is_set():
                raise _Reset()
        else:   # reset: close with a zero linger time, which sends RST instead of FIN
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            raise _Reset()

    def close(self) -> None:
        """Stops accepting, cuts every open connection and joins the threads (stalls end at once)."""
        self._closing.set()
        self._listener.close()
        self._acceptor.join(timeout=5)
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(timeout=5)


class _FaultyStream:
    """Sends the response to the client, stopping at the fault points (byte offsets into the
    response). One chunk is held back so that a fault due past the end still happens before the
    last byte."""

    def __init__(self, proxy: FaultProxy, sock: socket.socket, faults: dict):
        self.proxy, self.sock, self.faults = proxy, sock, faults
        self.points: list[tuple[int, str]] = []
        self.sent = 0
        self.fed = 0
        self.pending = b""

    def feed(self, data: bytes) -> None:
        self.fed += len(data)
        if self.pending:
            self._send(self.pending)
        self.pending = data

    def finish(self) -> None:
        data, self.pending = self.pending, b""
        last = self.sent + len(data) - 1
        self.points = [(min(offset, last), kind) for offset, kind in self.points]
        self._send(data)

    def _send(self, data: bytes) -> None:
        while self.points and self.points[0][0] < self.sent + len(data):
            offset, kind = self.points.pop(0)
            cut = max(0, offset - self.sent)
            self.sock.sendall(data[:cut])
            self.sent += cut
            data = data[cut:]
            self.proxy._inject(kind, self.sock, self.faults)
        self.sock.sendall(data)
        self.sent += len(data)
