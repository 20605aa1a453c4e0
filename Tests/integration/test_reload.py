"""Hot reload of models, budgets and policies, on SIGHUP and POST /admin/reload: an invalid file
is rejected with the reason and the running configuration kept; a removed model drains its
in-flight stream before it stops; new API keys and tenants take effect at once."""
import concurrent.futures
import json
import os
import signal
import threading
import time

from conftest import ADMIN_KEY, API_KEY, MODEL, FakeUpstream, config, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def model_line(name, extra=""):
    return f'  - {{ name: {name}, source: "file://{MODEL}", runtime: llama, memory: 250MiB{extra} }}\n'


def chat(d, model, key=API_KEY, stream=False, max_tokens=4):
    return d.request("POST", "/v1/chat/completions", body={
        "model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": "Count to twenty"}]},
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=120)


def ready_pid(d, model):
    """The model's runtime pid while it is ready, else None: from one read of /admin/models (two
    reads could see 'ready' and then, after a crash in between, no pid)."""
    m = d.model(model)
    return m.get("pid") if m["status"] == "ready" else None


def reload(d):
    status, body, _ = d.request("POST", "/admin/reload", headers=ADMIN)
    return status, json.loads(body)


def rewrite(d, cfg):
    d.config_path.write_text(cfg.replace("@PORT@", str(d.port)).replace("@STATE@", str(d.dir / "state"))
                             .replace("@SHM@", str(d.shm)))


def test_reload_adds_removes_and_rejects_invalid_files(make_daemon):
    d = make_daemon(config(model_line("a")))
    status, body, _ = chat(d, "a")
    assert status == 200, body
    assert chat(d, "b")[0] == 404

    # an invalid file changes nothing and says why
    rewrite(d, config(model_line("a") + model_line("b", ", bogus_key: 1")))
    status, answer = reload(d)
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_config"
    assert "bogus_key" in answer["error"]["message"] and "kept" in answer["error"]["message"]
    assert chat(d, "b")[0] == 404
    assert chat(d, "a")[0] == 200
    # so does a file caught empty (an editor part way through writing it): not "every default"
    d.config_path.write_text("")
    status, answer = reload(d)
    assert status == 400 and "holds no settings" in answer["error"]["message"], answer
    assert chat(d, "a")[0] == 200
    # and a file with no models section at all: removing every model takes `models: []`
    for text in ("{}\n", "listen: 127.0.0.1:1\n"):
        d.config_path.write_text(text)
        status, answer = reload(d)
        assert status == 400 and "has no models section" in answer["error"]["message"], answer
    assert chat(d, "a")[0] == 200

    # add b, change a's ttl (in place, no restart), and a section that needs a restart
    rewrite(d, config(model_line("a", ", ttl: 10m") + model_line("b")).replace("max_body: 64KiB", "max_body: 128KiB")
            .replace("memory: 600MiB", "memory: 650MiB"))
    status, answer = reload(d)
    assert status == 200, answer
    assert answer["added"] == ["b"] and answer["changed"] == ["a"] and answer["restarted"] == []
    assert answer["needs_restart"] == ["gateway"] and answer["devices"] == ["cpu"], answer
    pid_a = d.model("a")["pid"]
    assert pid_a, "a kept running through the reload"
    status, body, _ = chat(d, "b")
    assert status == 200, body
    assert d.model("a")["pid"] == pid_a

    # remove a while a stream on it runs: the stream completes, then a stops and is gone
    result = {}

    def stream():
        result["answer"] = chat(d, "a", stream=True, max_tokens=48)
    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: d.model("a")["in_flight"] == 1, 30, interval=0.02, what="stream in flight")
    rewrite(d, config(model_line("b")))
    status, answer = reload(d)
    assert status == 200 and answer["removed"] == ["a"], answer
    assert answer["needs_restart"] == [], "max_body is back to what runs: nothing needs a restart"
    t.join(120)
    status, body, _ = result["answer"]
    assert status == 200 and b"[DONE]" in body, body[-500:]
    assert b'"error"' not in body
    assert chat(d, "a")[0] == 404
    wait_for(lambda: "a" not in d.admin(), 30, what="a gone from /admin/models")


def test_sighup_applies_new_keys_budgets_and_restarts_changed_models(make_daemon):
    d = make_daemon(config(model_line("a")), env={"NEW_TENANT_KEYS": "fresh-key"})
    status, body, _ = chat(d, "a")
    assert status == 200, body
    assert chat(d, "a", key="fresh-key")[0] == 401
    pid_a = d.model("a")["pid"]

    # a tenant with a new key, a smaller device budget, and a changed runtime argument for a
    cfg = config(model_line("a", ', args: ["--temp", "0"]')).replace("memory: 600MiB", "memory: 500MiB") + \
        "tenants: [ { name: fresh, api_keys_env: NEW_TENANT_KEYS } ]\n"
    rewrite(d, cfg)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: chat(d, "a", key="fresh-key")[0] == 200, 60, interval=0.2, what="new key accepted")
    status, body, _ = d.get("/admin/models", headers=ADMIN)
    devices = {x["name"]: x for x in json.loads(body)["devices"]}
    assert devices["cpu"]["budget_bytes"] == 500 << 20
    # a was restarted with the new argument: another process
    wait_for(lambda: d.model("a")["pid"] not in (None, pid_a), 60, what="a restarted")
    status, body, _ = d.get("/admin/placements", headers=ADMIN)
    entries = json.loads(body)["placements"]
    assert any(e["event"] == "config reloaded" and e["action"] == "stop" and e["model"] == "a" for e in entries), entries
    # the daemon stayed up through it all and still stops cleanly
    assert d.proc.poll() is None


def test_a_preloaded_model_is_kept_loaded_through_crashes_and_reloads(make_daemon):
    """`preload: true` loads at start, and keeps loaded: a runtime that crashes is started again
    after the restart backoff without waiting for a request, and so is one a reload restarts or
    adds."""
    d = make_daemon(config(model_line("a", ", preload: true")))
    pid = wait_for(lambda: ready_pid(d, "a"), 60, what="a preloaded")
    os.kill(pid, signal.SIGKILL)
    pid = wait_for(lambda: (p := ready_pid(d, "a")) not in (None, pid) and p, 60,
                   what="a restarted by itself after the crash")

    # a reload that changes a's process, and adds b, preloaded too: both load with no request
    rewrite(d, config(model_line("a", ', preload: true, args: ["--temp", "0"]') + model_line("b", ", preload: true")))
    status, answer = reload(d)
    assert status == 200 and answer["restarted"] == ["a"] and answer["added"] == ["b"], answer
    wait_for(lambda: ready_pid(d, "a") not in (None, pid), 60, what="a started again after the reload")
    wait_for(lambda: d.model("b")["status"] == "ready", 60, what="b preloaded after the reload")
    assert chat(d, "a")[0] == 200


def test_a_reload_keeps_the_load_of_the_replicas_it_keeps_and_forgets_the_ones_it_removes(make_daemon):
    """Upstreams [a, b] become [b, c] while requests run on both: b's requests still count as its
    load (its concurrency limit and the choice see them), and a leaves /metrics."""
    a, b, c = FakeUpstream(delay=3.0), FakeUpstream(delay=3.0), FakeUpstream(delay=3.0)
    try:
        def cfg(urls):
            return config(f"  - {{ name: m, upstreams: {json.dumps(urls)}, routing: round-robin }}\n",
                          extra="routing: { health_interval: 500ms }")

        def load():
            return {r["url"]: r["in_flight"] for r in d.model("m")["replicas"]}

        d = make_daemon(cfg([a.url, b.url]))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(chat, d, "m") for _ in range(4)]
            wait_for(lambda: load() == {a.url: 2, b.url: 2}, 10, interval=0.05, what="two requests on each")
            rewrite(d, cfg([b.url, c.url]))
            status, answer = reload(d)
            assert status == 200 and answer["restarted"] == ["m"], answer
            assert load() == {b.url: 2, c.url: 0}, "b's requests in flight are still its load"
            assert d.metric("strata_replica_in_flight", replica=b.url) == 2
            gauges = [line for line in d.get("/metrics")[1].decode().splitlines() if line.startswith("strata_replica_")]
            assert gauges and not [line for line in gauges if a.url in line], "the removed replica's gauges are gone"
            assert [f.result()[0] for f in answers] == [200] * 4
        wait_for(lambda: load() == {b.url: 0, c.url: 0}, 10, what="their load released")
        assert d.metric("strata_replica_in_flight", replica=b.url) == 0
    finally:
        for upstream in (a, b, c):
            upstream.close()


def test_a_reload_that_adds_or_removes_replicas_leaves_the_others_running(make_daemon):
    """`replicas: 2` becomes 3 and then 2 again, on a preloaded model: the added replica starts by
    itself and the removed one stops, while the replicas both counts have keep their processes
    (a reload to scale out restarted every replica, dropping what each had cached)."""
    def cfg(count):
        return config(f'  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 250MiB, '
                      f'replicas: {count}, preload: true }}\n').replace("memory: 600MiB", "memory: 900MiB")

    def pids():
        return {name: ready_pid(d, name) for name in d.admin()}

    d = make_daemon(cfg(2))
    before = wait_for(lambda: (p := pids()) and all(p.values()) and p, 60, what="both replicas preloaded")
    assert set(before) == {"smollm2#0", "smollm2#1"}, before

    rewrite(d, cfg(3))
    status, answer = reload(d)
    assert status == 200 and answer["restarted"] == [] and answer["changed"] == ["smollm2"], answer
    assert answer["replicas_added"] == ["smollm2#2"] and answer["replicas_removed"] == [], answer
    grown = wait_for(lambda: (p := pids()).get("smollm2#2") and p, 60, what="the added replica preloaded")
    wait_for(lambda: 'strata_model_memory_measured_bytes{model="smollm2#2"}' in d.get("/metrics")[1].decode(), 30,
             what="the added replica's footprint measured")
    assert {k: grown[k] for k in before} == before, "the replicas kept were not restarted"
    assert chat(d, "smollm2")[0] == 200

    # Long answers in flight on every replica (three at once go one to each), so that the one
    # removed next has a request to finish: it drains, listed as removed until it stops.
    def long_answer(i):
        return d.request("POST", "/v1/chat/completions", body={
            "model": "smollm2", "max_tokens": 400, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Tell a long story number {i}"}]},
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}, timeout=120)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(long_answer, i) for i in range(3)]
        wait_for(lambda: d.admin()["smollm2#2"]["in_flight"] > 0, 20, interval=0.05, what="a request on the replica to remove")
        rewrite(d, cfg(2))
        status, answer = reload(d)
        assert status == 200 and answer["restarted"] == [] and answer["changed"] == ["smollm2"], answer
        assert answer["replicas_removed"] == ["smollm2#2"] and answer["replicas_added"] == [], answer
        leaving = d.admin().get("smollm2#2")
        assert leaving and leaving["status"] == "removed" and leaving["phase"].startswith("draining (removed"), leaving
        assert leaving["pid"] == grown["smollm2#2"] and leaving["in_flight"] > 0, leaving
        # its series stay while it drains (they vanished at the reload), and go when it stops (below)
        assert d.metric("strata_replica_in_flight", replica="smollm2#2") == 1
        # Loading the leaving replica is refused for what it is; unloading it is what happens anyway.
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        status, body, _ = d.request("POST", "/admin/models/smollm2%232/load", headers=admin)
        assert status == 409 and json.loads(body)["error"]["code"] == "model_removed", (status, body)
        status, body, _ = d.request("POST", "/admin/models/smollm2%232/unload", headers=admin)
        assert status == 202, (status, body)
        assert d.admin()["smollm2#2"]["in_flight"] > 0, "unloading it does not cut its requests short"
        status, _, _ = d.request("POST", "/admin/models/smollm2%235/load", headers=admin)
        assert status == 404, "a replica that never was is still unknown"
        assert [a.result()[0] for a in answers] == [200, 200, 200], "requests in flight on the removed replica finish"
    removed_pid = grown["smollm2#2"]
    wait_for(lambda: "smollm2#2" not in d.admin(), 30, what="the removed replica gone")
    wait_for(lambda: not os.path.exists(f"/proc/{removed_pid}"), 30, what="its process stopped")
    def gauges_of_removed():
        return [line for line in d.get("/metrics")[1].decode().splitlines()
                if "smollm2#2" in line and line.startswith(("strata_model_memory_measured_bytes", "strata_replica_"))]
    wait_for(lambda: not gauges_of_removed(), 10, what="the removed replica's gauges gone from /metrics")
    assert pids() == before, "the replicas kept were not restarted"
    assert chat(d, "smollm2")[0] == 200
