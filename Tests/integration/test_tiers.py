"""The storage tiers inside the daemon: opened at start under state_dir, shown and changed at
run time through /admin/tiers, published in /metrics, and found again after a restart."""
import json
import os

from conftest import ADMIN_KEY, MODEL, config, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
ONE_MODEL = f"""
  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 400MiB }}
"""


def tiers(d):
    status, body, _ = d.get("/admin/tiers", headers=ADMIN)
    return json.loads(body) if status == 200 else None


def put(d, change):
    status, body, _ = d.request("PUT", "/admin/tiers", body=change, headers=ADMIN)
    return status, json.loads(body)


def test_tiers_open_change_at_run_time_and_refuse_bad_changes(make_daemon):
    d = make_daemon(config(ONE_MODEL, tiers="{ host: { budget: 32MiB, dir: @SHM@ }, nvme: { budget: 256MiB, segment_size: 8MiB } }"))
    before = wait_for(lambda: tiers(d), 20, what="/admin/tiers to answer")
    assert before["host"]["budget_bytes"] == 32 << 20 and before["host"]["capacity_bytes"] == 32 << 20
    assert before["nvme"]["budget_bytes"] == 256 << 20 and before["nvme"]["dir"].endswith("/state/nvme")
    assert before["nvme"]["effective_budget_bytes"] == 256 << 20, "the filesystem holds the whole budget"
    assert before["host"]["admission"] == "always" and before["nvme"]["codec"] == "none"
    assert os.path.exists(before["nvme"]["dir"] + "/catalog.sqlite")

    # admin only
    assert d.get("/admin/tiers")[0] == 401

    # bad changes name the key, the value and what was expected, and change nothing
    for change, key, expected in [
        ({"host": {"budget": "12 zonks"}}, "tiers.host.budget", "512MiB"),
        ({"host": {"admission": "sometimes"}}, "tiers.host.admission", "second-hit"),
        ({"nvme": {"codec": "zstd"}}, "tiers.nvme.codec", "lz4"),
        ({"nvme": {"bugdet": "1GiB"}}, "tiers.nvme.bugdet", "unknown key"),
        ({"host": {"budget": "1GiB"}}, "tiers.host.budget", "mapped at start"),
        ({"nvme": {"weights_reserve": "300MiB"}}, "tiers.nvme.weights_reserve", "at most tiers.nvme.budget (256MiB)"),
    ]:
        status, body = put(d, change)
        assert status == 400, (change, body)
        message = body["error"]["message"]
        assert key in message and expected in message, message
    status, body, _ = d.request("PUT", "/admin/tiers", body=b"not json", headers=ADMIN)
    assert status == 400 and "JSON object" in json.loads(body)["error"]["message"]
    assert tiers(d)["host"] == before["host"] and tiers(d)["nvme"]["codec"] == "none"
    assert before["nvme"]["weights_reserve_bytes"] == 128 << 20, "half the budget by default"
    assert tiers(d)["nvme"]["weights_reserve_bytes"] == 128 << 20

    # a good change takes effect at once
    status, after = put(d, {"host": {"budget": "16MiB", "admission": "second-hit"},
                            "nvme": {"budget": 64 << 20, "codec": "lz4", "admission": "second-hit",
                                     "weights_reserve": "8MiB"}})
    assert status == 200, after
    assert after["host"]["budget_bytes"] == 16 << 20 and after["host"]["admission"] == "second-hit"
    assert after["nvme"]["budget_bytes"] == 64 << 20 and after["nvme"]["codec"] == "lz4"
    assert after["nvme"]["weights_reserve_bytes"] == 8 << 20
    assert tiers(d) == after

    # per-tier metrics reach /metrics
    def metrics():
        text = d.get("/metrics")[1].decode()
        return text if 'strata_tier_budget_bytes{tier="host"} 16777216' in text else None
    text = wait_for(metrics, 15, interval=0.5, what="tier metrics in /metrics")
    assert 'strata_tier_budget_bytes{tier="nvme"} 67108864' in text
    assert 'strata_tier_queue_depth{tier="nvme"}' in text

    # shutdown closes the tiers cleanly, and a restart opens the same log
    assert d.stop() == 0
    log = d.log_path.read_text()
    assert "tiers closed" in log, log[-2000:]
    d.start()
    again = wait_for(lambda: tiers(d), 20, what="/admin/tiers after restart")
    assert again["nvme"]["dir"] == before["nvme"]["dir"]
    assert again["host"]["budget_bytes"] == 32 << 20, "the config's policy again: run-time changes are not persisted"


def test_tiers_that_cannot_open_leave_the_gateway_up(make_daemon, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    d = make_daemon(config(ONE_MODEL, tiers=f"{{ host: {{ budget: 16MiB, dir: @SHM@ }}, nvme: {{ dir: {blocker}/nvme }} }}"))
    def failed():
        response = d.get("/admin/tiers", headers=ADMIN)
        return response if b"tiers_failed" in response[1] else None
    status, body, _ = wait_for(failed, 20, what="tiers to report their failure")
    assert status == 503 and b"tiers_failed" in body and b"not-a-dir" in body, body
    assert d.get("/health")[0] == 200
    assert "tiers could not open" in d.log_path.read_text()
    # models still load: the runtime opens the source file itself
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    status, answer, _ = d.request("POST", "/v1/chat/completions", body=body, timeout=120,
                                  headers={"Authorization": "Bearer test-key-1", "Content-Type": "application/json"})
    assert status == 200, answer
    assert "runtimes open their source files directly" in d.log_path.read_text()


def test_kv_churn_through_the_nvme_tier_leaves_staged_weights_in_place(make_daemon):
    """The KV service writes far more than the NVMe budget through the tier after a model's
    weights were staged there: the KV values' segments are reclaimed, the weights' are not
    (they are within `tiers.nvme.weights_reserve`, default half the budget)."""
    import redis

    from test_staging import stage_cli
    from conftest import free_port

    port = free_port()
    d = make_daemon(config(ONE_MODEL, extra=f"kv: {{ resp: 127.0.0.1:{port} }}",
                           tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB } }"))
    wait_for(lambda: tiers(d), 20, what="/admin/tiers to answer")
    staged = stage_cli(d)
    assert staged.returncode == 0, staged.stderr
    size = MODEL.stat().st_size
    before = wait_for(lambda: (t := tiers(d)) and t["objects"] and t, 30, what="the NVMe copy of the weights")
    assert [o["name"] for o in before["objects"]] == ["smollm2"] and before["objects"][0]["size"] == size
    assert before["nvme"]["weights_bytes"] >= size and before["nvme"]["weights_reserve_bytes"] == 128 << 20

    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
    value = os.urandom(1 << 20)
    for i in range(400):   # 400 MiB through 16 MiB of RAM and a 256 MiB NVMe tier
        assert r.set(f"k{i}", value) is True
    after = tiers(d)
    assert after["nvme"]["reclaimed_segments"] >= 2, after["nvme"]
    assert after["nvme"]["used_bytes"] <= (256 + 64) << 20, after["nvme"]
    assert [o["name"] for o in after["objects"]] == ["smollm2"], "KV churn pushed the staged weights out"
    assert after["nvme"]["weights_bytes"] == before["nvme"]["weights_bytes"]
    assert r.get("k399") == value and r.get("k0") is None
