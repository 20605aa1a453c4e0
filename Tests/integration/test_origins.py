"""The remote-tier test origins themselves: nginx, moto's S3 server and the fault-injecting proxy
do what origins.py promises (so a failing tier test is not an origin's fault)."""
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time

import pytest
import requests

from origins import FaultProxy, MotoS3, Nginx

SIZE = 8 << 20


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    root = tmp_path_factory.mktemp("origin")
    data = os.urandom(SIZE)
    (root / "blob.bin").write_bytes(data)
    return root, data


@pytest.fixture(scope="module")
def nginx(blob):
    with Nginx(blob[0]) as n:
        yield n


def curl(url, out, *args):
    """curl's exit status, the bytes it wrote and its -w figures (status, size)."""
    r = subprocess.run(["curl", "-s", "-o", str(out), "-w", "%{http_code} %{size_download}", *args, url],
                       capture_output=True, text=True, timeout=30)
    body = out.read_bytes() if out.exists() else b""
    out.unlink(missing_ok=True)
    return r.returncode, body, r.stdout


def test_nginx_serves_ranges_with_etag(nginx, blob):
    _, data = blob
    r = requests.get(nginx.url + "/blob.bin", headers={"Range": "bytes=1000-1999999"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 1000-1999999/{SIZE}"
    assert r.content == data[1000:2000000]
    etag = r.headers["ETag"]
    assert etag.startswith('"')
    full = requests.get(nginx.url + "/blob.bin")
    assert full.status_code == 200 and full.headers["ETag"] == etag and full.content == data
    assert requests.get(nginx.url + "/blob.bin", headers={"If-None-Match": etag}).status_code == 304
    # If-Range with a stale validator gets the whole object
    stale = requests.get(nginx.url + "/blob.bin", headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200 and len(stale.content) == SIZE
    assert any(line.startswith('GET /blob.bin 206 1999000 "bytes=1000-1999999"') for line in nginx.access_log())


def test_nginx_put_and_delete(nginx):
    if not nginx.dav:
        pytest.skip("this nginx has no dav module")
    assert requests.put(nginx.url + "/up/dir/obj", data=b"x" * 5000).status_code in (201, 204)
    assert requests.get(nginx.url + "/up/dir/obj").content == b"x" * 5000
    assert requests.delete(nginx.url + "/up/dir/obj").status_code == 204
    assert requests.get(nginx.url + "/up/dir/obj").status_code == 404


def test_nginx_stops_and_is_reaped(blob):
    n = Nginx(blob[0])
    pid = n.proc.pid
    n.close()
    assert n.proc.returncode is not None
    with pytest.raises(requests.ConnectionError):
        requests.get(n.url + "/blob.bin", timeout=2)
    assert not os.path.exists(f"/proc/{pid}")


def test_moto_stores_and_returns_objects(blob, tmp_path):
    root, data = blob
    with MotoS3() as s3:
        s3.create_bucket("models")
        etag = s3.put_object("models", "a/blob.bin", root / "blob.bin")
        assert etag.strip('"') == hashlib.md5(data).hexdigest()
        s3.put_object("models", "small", b"hello")
        assert s3.get_object("models", "a/blob.bin") == data
        assert s3.get_object("models", "small") == b"hello"
        part = s3.s3.get_object(Bucket="models", Key="a/blob.bin", Range="bytes=10-19")
        assert part["Body"].read() == data[10:20] and part["ContentRange"] == f"bytes 10-19/{SIZE}"
        assert s3.env["AWS_ACCESS_KEY_ID"] == "testing"
        # moto refuses anonymous requests but checks no signature: any SigV4 Authorization will do
        assert requests.get(s3.url("models", "small")).status_code == 403
        auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0"
        assert requests.get(s3.url("models", "small"), headers={"Authorization": auth}).content == b"hello"
        # boto3 through the proxy: signed requests pass through it unchanged
        with FaultProxy(s3.endpoint) as proxy:
            via = s3.client(proxy.url)
            via.put_object(Bucket="models", Key="via-proxy", Body=data[:1 << 20])
            assert via.get_object(Bucket="models", Key="via-proxy")["Body"].read() == data[:1 << 20]
            assert proxy.requests == 2
        proc = s3.proc
    assert proc.returncode is not None


def test_proxy_without_faults_is_transparent(nginx, blob, tmp_path):
    _, data = blob
    with FaultProxy(nginx.url) as proxy:
        rc, body, _ = curl(proxy.url + "/blob.bin", tmp_path / "out")
        assert rc == 0 and body == data
        r = requests.get(proxy.url + "/blob.bin", headers={"Range": "bytes=5-104"})
        assert r.status_code == 206 and r.content == data[5:105] and r.headers["Connection"] == "close"
        if nginx.dav:
            assert requests.put(proxy.url + "/via-proxy", data=data[:3 << 20]).status_code in (201, 204)
            assert requests.get(nginx.url + "/via-proxy").content == data[:3 << 20]
        assert proxy.injected == {"reset": 0, "stall": 0, "status_503": 0}
        assert proxy.requests == (3 if nginx.dav else 2)


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = json.dumps({"method": self.command, "path": self.path, "headers": self.headers.items(),
                             "body_md5": hashlib.md5(body).hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_PUT

    def log_message(self, *args):
        pass


def test_proxy_forwards_requests_faithfully():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{server.server_port}") as proxy:
            body = os.urandom(100_000)
            headers = {"Range": "bytes=0-99", "If-Match": '"abc"', "Authorization": "AWS4-HMAC-SHA256 Credential=x",
                       "X-Custom": "Mixed Case", "Connection": "keep-alive"}
            r = requests.put(proxy.url + "/some/path?x=1&y=%20", data=body, headers=headers)
            seen = r.json()
    finally:
        server.shutdown()
        server.server_close()
    assert seen["method"] == "PUT" and seen["path"] == "/some/path?x=1&y=%20"
    assert seen["body_md5"] == hashlib.md5(body).hexdigest()
    got = dict(seen["headers"])
    for name, value in headers.items():
        if name != "Connection":
            assert got[name] == value
    assert got["Connection"] == "close"
    assert got["Host"] == proxy.url.removeprefix("http://")


def test_proxy_resets_planned_requests(nginx, blob, tmp_path):
    _, data = blob
    faults = {"reset_every": 2, "reset_after_bytes": 3_000_000}
    with FaultProxy(nginx.url, seed=7, faults=faults) as proxy:
        plan = [proxy.plan(n) for n in range(1, 5)]
        assert sum("reset" in p for p in plan) == 2
        for n, planned in enumerate(plan, 1):
            rc, body, _ = curl(proxy.url + "/blob.bin", tmp_path / "out")
            if "reset" in planned:
                assert rc != 0 and len(body) <= 3_000_000 and data.startswith(body), (n, rc, len(body))
            else:
                assert rc == 0 and body == data
        assert proxy.injected["reset"] == 2
        # a response shorter than the reset point is cut before its last byte
        proxy.set_faults({"reset_every": 1, "reset_after_bytes": 10 << 20})
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", proxy.url + "/blob.bin"], timeout=30)
        assert r.returncode != 0 and proxy.injected["reset"] == 3
    # the same seed plans the same requests; no seed means every K-th
    with FaultProxy(nginx.url, seed=7, faults=faults) as again, FaultProxy(nginx.url, faults=faults) as plain:
        assert [again.plan(n) for n in range(1, 5)] == plan
        assert [plain.plan(n) for n in range(1, 5)] == [(), ("reset",), (), ("reset",)]


def test_proxy_answers_503_without_reaching_the_origin(nginx, blob, tmp_path):
    with FaultProxy(nginx.url, faults={"status_503_every": 2}) as proxy:
        before = len(nginx.access_log())
        statuses = []
        for _ in range(4):
            r = requests.get(proxy.url + "/blob.bin", headers={"Range": "bytes=0-9"})
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "0"
        assert statuses == [206, 503, 206, 503]
        if nginx.dav:   # refused uploads end cleanly, whether the body came along or was held back
            assert requests.put(proxy.url + "/up1", data=b"y" * 200_000).status_code in (201, 204)
            assert requests.put(proxy.url + "/up2", data=b"y" * 200_000).status_code == 503
            (tmp_path / "upload").write_bytes(b"z" * (2 << 20))
            for expected in ("201", "503"):   # curl -T sends `Expect: 100-continue` for this size
                r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(tmp_path / "upload"),
                                    proxy.url + "/up3"], capture_output=True, text=True, timeout=10)
                assert (r.returncode, r.stdout) == (0, expected)
        refused = 4 if nginx.dav else 2
        assert proxy.injected == {"reset": 0, "stall": 0, "status_503": refused}
        time.sleep(0.1)   # nginx writes its access log line after the response
        assert len(nginx.access_log()) - before == proxy.requests - refused


def test_proxy_stalls_mid_body(nginx, blob, tmp_path):
    _, data = blob
    faults = {"stall_every": 1, "stall_seconds": 3, "stall_after_bytes": 1_000_000}
    with FaultProxy(nginx.url, faults=faults) as proxy:
        start = time.monotonic()
        rc, body, _ = curl(proxy.url + "/blob.bin", tmp_path / "out", "--max-time", "1")
        assert rc == 28 and len(body) <= 1_000_000   # curl: operation timed out
        assert time.monotonic() - start < 2.5
        assert proxy.injected["stall"] == 1
        # a short stall delays the transfer and then lets it finish intact
        proxy.set_faults({**faults, "stall_seconds": 0.5})
        start = time.monotonic()
        rc, body, _ = curl(proxy.url + "/blob.bin", tmp_path / "out")
        assert rc == 0 and body == data and time.monotonic() - start >= 0.5
        assert proxy.injected["stall"] == 2
        # close() cuts a stall short
        proxy.set_faults({**faults, "stall_seconds": 30})
        slow = subprocess.Popen(["curl", "-s", "-o", "/dev/null", proxy.url + "/blob.bin"])
        time.sleep(0.5)
        start = time.monotonic()
    assert time.monotonic() - start < 3
    assert slow.wait(timeout=5) != 0
