"""Runtime supervision and daemon lifecycle against the real llama-server."""
import os
import re
import signal
import subprocess
import threading
import time

import openai
import pytest

from conftest import (LLAMA, MODEL, STRATA, REPO, Daemon, config, free_port, pid_alive, wait_for)

MESSAGES = [{"role": "user", "content": "Say hello."}]
ONE_MODEL = f"""
  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 400MiB, ttl: 2s }}
"""


def test_idle_model_unloads_after_ttl(make_daemon):
    d = make_daemon(config(ONE_MODEL))
    d.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    pid = d.model("smollm2").get("pid")
    assert pid_alive(pid)
    wait_for(lambda: d.model("smollm2")["status"] == "stopped", 15, what="ttl unload")
    wait_for(lambda: not pid_alive(pid), 10, what="runtime exit after ttl")
    # and it comes back on demand
    r = d.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    assert r.choices


def test_daemon_killed_with_sigkill_takes_runtimes_with_it(make_daemon):
    d = make_daemon(config(ONE_MODEL.replace("ttl: 2s", "ttl: 10m")))
    d.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    pid = d.model("smollm2").get("pid")
    assert pid_alive(pid)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_for(lambda: not pid_alive(pid), 10, what="runtime to die with the daemon (PR_SET_PDEATHSIG)")


def test_a_second_daemon_on_the_same_directories_is_refused(make_daemon, tmp_path):
    """Two daemons on one store would each write blocks the other does not know of: the second
    stops at once, naming the process that holds the directory, and the first serves on. The
    lock goes with its holder however it ends (SIGKILL here), so a restart is never refused."""
    d = make_daemon(config(ONE_MODEL.replace("ttl: 2s", "ttl: 10m")))
    d.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    runtime = d.model("smollm2").get("pid")
    twin = tmp_path / "twin.yaml"
    twin.write_text(d.config_path.read_text().replace(f"127.0.0.1:{d.port}", f"127.0.0.1:{free_port()}"))
    refused = subprocess.run([str(STRATA), "serve", "--config", str(twin)], capture_output=True, text=True,
                             timeout=60, env=d.env)
    assert refused.returncode == 1, refused.stderr
    assert f"in use by another strata process (pid {d.proc.pid})" in refused.stderr, refused.stderr
    assert d.get("/health")[0] == 200
    assert d.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2).choices
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_for(lambda: not pid_alive(runtime), 10, what="the runtime to die with the daemon")
    d.start()   # same directories, same port: the lock went with the killed daemon
    assert d.get("/health")[0] == 200


def test_sigterm_drains_in_flight_stream_then_stops_runtimes(make_daemon):
    d = make_daemon(config(ONE_MODEL.replace("ttl: 2s", "ttl: 10m")))
    client = d.client(timeout=120)
    client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    pid = d.model("smollm2").get("pid")
    result = {}

    def consume():
        try:
            stream = client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Tell a long story."}],
                max_tokens=200, stream=True, extra_body={"ignore_eos": True})
            chunks = [c for c in stream]
            result["chunks"] = len(chunks)
            result["finish"] = next((c.choices[0].finish_reason for c in reversed(chunks)
                                     if c.choices and c.choices[0].finish_reason), None)
        except Exception as e:  # noqa: BLE001
            result["error"] = repr(e)

    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: d.model("smollm2")["in_flight"] == 1, 10, what="stream in flight")
    time.sleep(0.3)
    d.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert "error" not in result, result
    assert result["finish"] == "length", result
    assert d.proc.wait(30) == 0
    wait_for(lambda: not pid_alive(pid), 10, what="runtime stopped on shutdown")


@pytest.mark.parametrize("second_signal", [False, True])
def test_a_stream_longer_than_the_drain_timeout_is_cut_with_a_reason(make_daemon, second_signal):
    """A stop waits for requests under way for gateway.drain_timeout, or until a second signal;
    then a stream still running gets an error event saying Strata is stopping, the daemon exits
    0, its runtime is gone, and a restart on the same directories serves again."""
    drain = 60 if second_signal else 2
    cfg = config(ONE_MODEL.replace("ttl: 2s", "ttl: 10m")).replace(
        "gateway: { max_body: 64KiB }", f"gateway: {{ max_body: 64KiB, drain_timeout: {drain}s }}")
    d = make_daemon(cfg)
    client = d.client(timeout=120)
    client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    pid = d.model("smollm2").get("pid")
    result = {"chunks": 0}

    def consume():
        try:
            stream = client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Tell a very long story."}],
                max_tokens=1900, stream=True, extra_body={"ignore_eos": True})
            for _ in stream:
                result["chunks"] += 1
        except openai.APIError as e:
            result["error"] = str(e)

    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: result["chunks"] >= 5, 30, what="the stream under way")
    stopped = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    if second_signal:
        time.sleep(0.5)
        d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(30) == 0
    took = time.monotonic() - stopped
    t.join(30)
    assert "Strata is stopping" in result.get("error", ""), result
    assert took < (10 if second_signal else drain + 10), f"stopped after {took:.1f} s"
    log = d.log_path.read_text()
    assert ("a second signal" if second_signal else "gateway.drain_timeout passed") in log
    wait_for(lambda: not pid_alive(pid), 10, what="runtime stopped")
    d.start()
    r = d.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    assert r.choices[0].message.content is not None


def test_a_stream_to_an_upstream_longer_than_the_drain_timeout_is_cut_with_a_reason(make_daemon):
    """The same for a stream to an `upstream` runtime, which the gateway relays on its event loop:
    after gateway.drain_timeout the stream gets an error event saying Strata is stopping, the
    runtime's connection is closed, and the daemon exits 0."""
    import http.client
    import json
    from conftest import API_KEY, one_stream_runtime
    closed = threading.Event()

    def endless(send):
        deadline = time.monotonic() + 30   # bounded: the test cannot hang on it
        try:
            while time.monotonic() < deadline:
                send(b'data: {"choices":[{"index":0,"delta":{"content":"word"}}]}\n\n')
                time.sleep(0.1)
        except OSError:
            closed.set()   # the daemon closed the connection

    port = one_stream_runtime(endless)
    cfg = config("  - { name: remote, runtime: far }", extra=f'  far: {{ kind: upstream, url: "http://127.0.0.1:{port}/v1" }}')
    d = make_daemon(cfg.replace("gateway: { max_body: 64KiB }", "gateway: { max_body: 64KiB, drain_timeout: 2s }"))
    # http.client keeps the connection alive (urllib sends `Connection: close`, which the
    # gateway leaves to its general path).
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({
        "model": "remote", "stream": True, "messages": [{"role": "user", "content": "go on for ever"}]}),
        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    events = []
    while len(events) < 3:
        line = r.readline().decode()
        if line.startswith("data:"):
            events.append(line)
    stopped = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    events += [line for line in r.read().decode().splitlines() if line.startswith("data:")]
    took = time.monotonic() - stopped
    conn.close()
    error = json.loads(events[-1][len("data:"):])["error"]
    assert error["code"] == "shutting_down" and "Strata is stopping" in error["message"], events[-3:]
    assert took < 12, f"the stream was cut after {took:.1f} s"
    assert d.proc.wait(30) == 0
    assert closed.wait(5), "the runtime's connection was closed"


def test_runtime_that_fails_to_start_gives_502_and_failed_status(make_daemon):
    extra = """  broken: { kind: command, command: ["sh", "-c", "echo cannot load weights >&2; exit 3", "${PORT}"] }"""
    d = make_daemon(config(f"""
  - {{ name: bad, source: "file://{MODEL}", runtime: broken, memory: 100MiB }}
""", extra=extra).replace("restart_backoff: 200ms", "restart_backoff: 5s").replace("restart_backoff_max: 2s", "restart_backoff_max: 10s"))
    with pytest.raises(openai.APIStatusError) as e:
        d.client().chat.completions.create(model="bad", messages=MESSAGES, max_tokens=2)
    assert e.value.status_code == 502
    message = e.value.body["message"]
    assert "exited with code 3" in message and "cannot load weights" in message, message
    bad = d.model("bad")
    assert bad["status"] == "failed"
    # the detail is last_error's; the phase says when it may start again
    assert "cannot load weights" in bad["last_error"], bad
    assert re.fullmatch(r"failed, no start for another \d+s", bad["phase"]), bad
    assert {m.id: m.model_extra["status"] for m in d.client().models.list().data}["bad"] == "failed"
    # while it backs off after that failed start, a request is told at once, not after the
    # backoff and another start that fails the same way
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as again:
        d.client().chat.completions.create(model="bad", messages=MESSAGES, max_tokens=2)
    assert again.value.status_code == 502 and time.monotonic() - started < 1, time.monotonic() - started


def test_model_that_never_gets_ready_is_503_with_retry_after(make_daemon):
    extra = """  hang: { kind: command, command: ["sleep", "600", "${PORT}"] }"""
    cfg = config(f"""
  - {{ name: slow, source: "file://{MODEL}", runtime: hang, memory: 100MiB }}
""", extra=extra).replace("queue_timeout: 90s", "queue_timeout: 2s")
    d = make_daemon(cfg)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        d.client().chat.completions.create(model="slow", messages=MESSAGES, max_tokens=2)
    assert e.value.status_code == 503
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.body["code"] == "model_not_ready"
    assert re.search(r"within \d+\.\ds \(supervisor.queue_timeout\)", e.value.body["message"]), e.value.body
    assert 1.5 < time.monotonic() - started < 10
    d.admin()   # remember the pid so teardown checks it is gone


def test_queue_timeout_bounds_the_whole_wait_across_a_spill(make_daemon):
    """A request that spills after spill_after waits for its fallback only what is left of its
    queue_timeout, not a whole one again."""
    extra = """  hang: { kind: command, command: ["sleep", "600", "${PORT}"] }"""
    cfg = config(f"""
  - {{ name: slow, source: "file://{MODEL}", runtime: hang, memory: 100MiB, fallbacks: [slower], spill_after: 2s }}
  - {{ name: slower, source: "file://{MODEL}", runtime: hang, memory: 100MiB }}
""", extra=extra).replace("queue_timeout: 90s", "queue_timeout: 6s")
    d = make_daemon(cfg)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        d.client().chat.completions.create(model="slow", messages=MESSAGES, max_tokens=2)
    waited = time.monotonic() - started
    assert e.value.status_code == 503, e.value.body
    assert e.value.body["code"] == "model_not_ready", e.value.body
    message = e.value.body["message"]
    assert "spill_after" in message and "'slower' did not become ready within what was left" in message, message
    assert re.search(r"what was left of the request's 6\.0 seconds \(supervisor\.queue_timeout\): its runtime has been starting for \d+s",
                     message), message
    # 6 s in all (it was 2 s + 6 s)
    assert 5.5 < waited < 7.5, waited
    d.admin()


def test_client_that_leaves_while_waiting_for_a_load_is_withdrawn(make_daemon):
    import http.client
    import json as _json
    extra = """  hang: { kind: command, command: ["sleep", "600", "${PORT}"] }"""
    d = make_daemon(config(f"""
  - {{ name: slow, source: "file://{MODEL}", runtime: hang, memory: 100MiB }}
""", extra=extra))
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=_json.dumps({"model": "slow", "messages": MESSAGES}),
                 headers={"Authorization": "Bearer test-key-1", "Content-Type": "application/json"})
    wait_for(lambda: d.model("slow")["waiting"] == 1, 10, what="request waiting for the load")
    conn.sock.close()
    conn.close()
    wait_for(lambda: d.model("slow")["waiting"] == 0, 5, what="waiting request withdrawn")


def test_replicas_strata_does_not_start(make_daemon, tmp_path):
    port = free_port()
    llama = subprocess.Popen([str(LLAMA), "--model", str(MODEL), "--host", "127.0.0.1", "--port", str(port),
                              "-c", "1024", "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        d = make_daemon(config(f"""
  - {{ name: shared, upstreams: ["http://127.0.0.1:{port}"] }}
"""))
        wait_for(lambda: d.request("GET", "/v1/models", headers={"Authorization": "Bearer test-key-1"})[0] == 200, 5)
        import urllib.request
        wait_for(lambda: _ok(f"http://127.0.0.1:{port}/health"), 60, what="standalone llama-server")
        r = d.client().chat.completions.create(model="shared", messages=MESSAGES, max_tokens=4)
        assert r.choices[0].message.content is not None
        status = d.model("shared")
        assert status["status"] == "ready" and status["upstream"] == f"http://127.0.0.1:{port}"
    finally:
        llama.kill()
        llama.wait()


def _ok(url):
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_config_check_cli(tmp_path):
    ok = subprocess.run([str(STRATA), "config", "check", str(REPO / "config" / "strata.example.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "model smollm2" in ok.stdout
    default = subprocess.run([str(STRATA), "config", "check", str(REPO / "config" / "strata.yaml")],
                             capture_output=True, text=True)
    assert default.returncode == 0, default.stderr
    remote = tmp_path / "remote.yaml"
    remote.write_text("models: [ { name: r, source: 's3://bucket/m.gguf', memory: 1GiB, pin: true, preload: true } ]\n")
    r = subprocess.run([str(STRATA), "config", "check", str(remote)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "pinned, preloaded, weights s3://bucket/m.gguf (staged into RAM before start)" in r.stdout, r.stdout
    cases = {
        "listen: 127.0.0.1:8080\nmodles: []\n": ["modles", "unknown key"],
        "devices: [ { name: cpu, memory: lots } ]\n": ["devices[0].memory", "'lots'", "size"],
        f"models: [ {{ name: a, source: '{MODEL}', runtime: vllm2 }} ]\n": ["models[0] (a).runtime", "'vllm2'"],
        "listen: [1, 2]\n": ["listen", "expected a string"],
    }
    for text, fragments in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        r = subprocess.run([str(STRATA), "config", "check", str(path)], capture_output=True, text=True)
        assert r.returncode == 2, (text, r.stdout, r.stderr)
        for fragment in fragments:
            assert fragment in r.stderr, (fragment, r.stderr)
    # several problems: all named at once, one line each, in file order
    path.write_text("listen: 127.0.0.1:99999\ntiers: { host: { budget: 12XB } }\nkv: { resp: 127.0.0.1:6380, durability: sometimes }\n")
    r = subprocess.run([str(STRATA), "config", "check", str(path)], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 3, r.stderr
    for line, key in zip(lines, ["listen (line 1)", "tiers.host.budget (line 2)", "kv.durability (line 3)"]):
        assert line.startswith(f"strata: {path}: config: {key}"), r.stderr
    missing = subprocess.run([str(STRATA), "config", "check", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.endswith("config: cannot read the file: no such file\n"), missing.stderr
    relative = subprocess.run([str(STRATA), "config", "check", "nope.yaml"], capture_output=True, text=True, cwd=tmp_path)
    assert f"no such file (relative to the working directory {tmp_path})" in relative.stderr, relative.stderr
    # as serve takes it (--config), and config/strata.yaml when none is given, as for serve
    flag = subprocess.run([str(STRATA), "config", "check", "--config", str(path)], capture_output=True, text=True)
    assert flag.returncode == 2 and "listen" in flag.stderr, flag.stderr
    implicit = subprocess.run([str(STRATA), "config", "check"], capture_output=True, text=True, cwd=REPO)
    assert implicit.returncode == 0 and "config ok" in implicit.stdout, implicit.stderr
    both = subprocess.run([str(STRATA), "config", "check", str(path), "--config", str(path)], capture_output=True, text=True)
    assert both.returncode == 64 and "not both" in both.stderr


def test_serve_refuses_bad_config_without_starting(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("listen: 127.0.0.1:notaport\n")
    r = subprocess.run([str(STRATA), "serve", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "listen" in r.stderr and "notaport" in r.stderr


def test_status_cli(daemon):
    daemon.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    r = subprocess.run([str(STRATA), "status", "--url", daemon.url], capture_output=True, text=True,
                       env={**os.environ, "STRATA_ADMIN_KEY": "admin-secret"}, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "smollm2" in r.stdout and "STATUS" in r.stdout and "device cpu" in r.stdout
    bad = subprocess.run([str(STRATA), "status", "--url", daemon.url], capture_output=True, text=True,
                         env={**os.environ, "STRATA_ADMIN_KEY": "wrong"}, timeout=30)
    assert bad.returncode == 1 and "401" in bad.stderr and "check STRATA_ADMIN_KEY" in bad.stderr
    unset = subprocess.run([str(STRATA), "status", "--url", daemon.url], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "STRATA_ADMIN_KEY"}, timeout=30)
    assert unset.returncode == 1 and "set STRATA_ADMIN_KEY" in unset.stderr, unset.stderr
    # a URL without a scheme is taken as http://
    bare = subprocess.run([str(STRATA), "status", "--url", daemon.url.removeprefix("http://")], capture_output=True,
                          text=True, env={**os.environ, "STRATA_ADMIN_KEY": "admin-secret"}, timeout=30)
    assert bare.returncode == 0 and "smollm2" in bare.stdout, bare.stderr
    # by the config, which needs only its listen address: not every tenant's keys in this
    # shell's environment (it refused to run without them)
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(f"listen: {daemon.url.removeprefix('http://')}\ntenants:\n  - {{ name: t, api_keys_env: NOT_HERE_KEYS }}\nmodels: []\n")
        f.flush()
        by_config = subprocess.run([str(STRATA), "status", "--config", f.name], capture_output=True, text=True,
                                   env={**os.environ, "STRATA_ADMIN_KEY": "admin-secret"}, timeout=30)
        assert by_config.returncode == 0 and "smollm2" in by_config.stdout, by_config.stderr
        f.seek(0)
        f.truncate()
        f.write("listen: nowhere\n")
        f.flush()
        bad_listen = subprocess.run([str(STRATA), "status", "--config", f.name], capture_output=True, text=True, timeout=30)
        assert bad_listen.returncode == 2 and bad_listen.stderr.startswith(f"strata: {f.name}: config: listen"), bad_listen.stderr


def test_version_and_status_with_no_config_file(tmp_path):
    """`--version` answers; `status` where there is no config/strata.yaml asks the default address
    instead of failing to read the file."""
    version = subprocess.run([str(STRATA), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("strata "), (version.stdout, version.stderr)
    status = subprocess.run([str(STRATA), "status"], capture_output=True, text=True, cwd=tmp_path, timeout=30,
                            env={**os.environ, "STRATA_ADMIN_KEY": "x"})
    assert "cannot read" not in status.stderr and "127.0.0.1:8080" in status.stdout + status.stderr, status.stderr


def test_an_address_in_use_stops_the_daemon_naming_its_key(tmp_path):
    """A port another program holds: the daemon exits at start with one line naming the address
    and the key of the config (listen or kv.resp), not a socket error."""
    import socket
    for key in ("listen", "kv.resp"):
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        listen = port if key == "listen" else free_port()
        resp = port if key == "kv.resp" else free_port()
        path = tmp_path / f"{key}.yaml"
        path.write_text(config("  []", extra=f"kv: {{ resp: 127.0.0.1:{resp} }}").replace("@PORT@", str(listen))
                        .replace("@STATE@", str(tmp_path / f"state-{key}")).replace("@SHM@", str(tmp_path / f"shm-{key}")))
        try:
            r = subprocess.run([str(STRATA), "serve", "--config", str(path)], capture_output=True, text=True, timeout=60)
        finally:
            held.close()
        assert r.returncode == 1, r.stderr[-2000:]
        assert f"cannot listen on 127.0.0.1:{port} ({key}): the address is in use" in r.stderr, r.stderr[-2000:]
