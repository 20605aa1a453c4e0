"""GET /admin/placements: the Placer's recent decisions with their reasons and budgets."""
import json

from conftest import ADMIN_KEY, MODEL, TWO_MODELS, config, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
KEY = {"Authorization": "Bearer test-key-1", "Content-Type": "application/json"}


def chat(d, model):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return d.request("POST", "/v1/chat/completions", body=body, headers=KEY, timeout=120)[0]


def test_a_swap_is_listed_with_its_reasons_and_budgets(make_daemon):
    d = make_daemon(config(TWO_MODELS))
    assert d.get("/admin/placements")[0] == 401
    assert chat(d, "smollm2") == 200
    assert chat(d, "smollm2-b") == 200   # room for one: smollm2 is evicted
    status, body, _ = d.get("/admin/placements", headers=ADMIN)
    assert status == 200, body
    log = json.loads(body)
    decisions = [(p["action"], p["model"]) for p in log["placements"]]
    assert decisions.index(("stage", "smollm2")) < decisions.index(("start", "smollm2")), decisions
    evict = next(p for p in log["placements"] if p["action"] == "stop" and p["model"] == "smollm2")
    assert evict["reason"] == "evicted to make room for smollm2-b", evict
    assert evict["event"].startswith("request") and "smollm2-b" in evict["event"], evict
    cpu = evict["devices"][0]
    assert cpu["device"] == "cpu" and cpu["budget_bytes"] == 600 << 20
    assert cpu["used_before_bytes"] == 400 << 20, cpu   # smollm2 held its memory until the decision
    start_b = next(p for p in log["placements"] if p["action"] in ("stage", "start") and p["model"] == "smollm2-b")
    assert "waiting" in start_b["reason"] or "host RAM" in start_b["reason"], start_b
    assert log["admissions"] >= 2


def test_a_fallback_that_would_need_its_primary_stopped_is_not_spilled_to(make_daemon):
    """`a` spills to `b` after 200 ms, but both cannot fit the device: spilling would stop `a`
    (starting for this very request) to start `b`, and the two would swap on every request.
    The request waits for `a` instead, and later ones find it ready."""
    d = make_daemon(config(f"""
  - {{ name: a, source: "file://{MODEL}", runtime: llama, memory: 400MiB, fallbacks: [b], spill_after: 200ms }}
  - {{ name: b, source: "file://{MODEL}", runtime: llama, memory: 400MiB }}
"""))
    for _ in range(3):
        status, _, headers = d.request("POST", "/v1/chat/completions", headers=KEY, timeout=120, body={
            "model": "a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert status == 200 and "x-strata-served-by" not in {k.lower() for k in headers}, headers
    log = json.loads(d.get("/admin/placements", headers=ADMIN)[1])
    decisions = [(p["action"], p["model"]) for p in log["placements"]]
    assert ("start", "b") not in decisions and ("stop", "a") not in decisions, decisions


def test_an_admin_load_that_cannot_fit_is_refused_not_accepted(make_daemon):
    """Beside a pinned model that leaves no room, an admin load of another says so (409), as a
    request for it would, instead of a 202 after which nothing happens."""
    d = make_daemon(config(f"""
  - {{ name: p, source: "file://{MODEL}", runtime: llama, memory: 300MiB, pin: true, preload: true }}
  - {{ name: big, source: "file://{MODEL}", runtime: llama, memory: 400MiB }}
"""))
    wait_for(lambda: d.admin()["p"]["status"] == "ready", 60, what="p preloaded")
    status, body, _ = d.request("POST", "/admin/models/big/load", headers=ADMIN)
    assert status == 409, body
    error = json.loads(body)["error"]
    assert error["code"] == "insufficient_memory" and "'big'" in error["message"] and "pinned" in error["message"], error
    assert d.admin()["big"]["status"] == "stopped" and d.admin()["p"]["status"] == "ready"
    status, _, _ = d.request("POST", "/admin/models/p/load", headers=ADMIN)
    assert status == 202, "a load of what is loaded is accepted (nothing to do)"


def test_an_admin_load_that_waits_for_room_is_accepted(make_daemon):
    """A load held back by a model of higher priority (not a pinned one) waits, and is accepted
    (it was refused as if pinned models left no room, naming pinned models where none were)."""
    d = make_daemon(config(f"""
  - {{ name: high, source: "file://{MODEL}", runtime: llama, memory: 400MiB, priority: 10, preload: true }}
  - {{ name: low, source: "file://{MODEL}", runtime: llama, memory: 300MiB }}
"""))
    wait_for(lambda: d.admin()["high"]["status"] == "ready", 60, what="high preloaded")
    status, body, _ = d.request("POST", "/admin/models/low/load", headers=ADMIN)
    assert status == 202, body
    assert d.admin()["high"]["status"] == "ready", "the higher priority is not evicted"
    status, _, _ = d.request("POST", "/admin/models/high/unload", headers=ADMIN)
    assert status == 202
    wait_for(lambda: d.admin()["low"]["status"] == "ready", 60, what="the waiting load done once there is room")


def test_a_request_whose_fallback_fails_too_is_told_about_both(make_daemon):
    extra = """  broken: { kind: command, command: ["sh", "-c", "echo cannot load weights >&2; exit 3", "${PORT}"] }"""
    d = make_daemon(config(f"""
  - {{ name: lo, source: "file://{MODEL}", runtime: broken, memory: 100MiB, fallbacks: [s] }}
  - {{ name: s, source: "file://{MODEL}", runtime: broken, memory: 100MiB }}
""", extra=extra))
    status, body, _ = d.request("POST", "/v1/chat/completions", headers=KEY, timeout=60, body={
        "model": "lo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert status == 502, body
    message = json.loads(body)["error"]["message"]
    assert message.startswith("'lo' could not serve this request") and "fallback 's'" in message, message
    assert d.metric("strata_spillover_total", model="lo", to="s", reason="failed") == 1


def test_a_failed_model_spills_to_a_fallback_that_needs_an_idle_model_evicted(make_daemon):
    """`broken` fails to start; its fallback `a` fits the device once idle `b` is evicted. It was
    skipped as if it needed `broken` stopped (which holds nothing), and the request got the 502."""
    extra = """  broken: { kind: command, command: ["sh", "-c", "echo cannot load weights >&2; exit 3", "${PORT}"] }"""
    d = make_daemon(config(f"""
  - {{ name: broken, source: "file://{MODEL}", runtime: broken, memory: 100MiB, fallbacks: [a] }}
  - {{ name: a, source: "file://{MODEL}", runtime: llama, memory: 250MiB }}
  - {{ name: b, source: "file://{MODEL}", runtime: llama, memory: 250MiB }}
  - {{ name: c, source: "file://{MODEL}", runtime: llama, memory: 250MiB }}
""", extra=extra))
    assert chat(d, "b") == 200 and chat(d, "c") == 200   # 500 of 600 MiB held
    status, body, headers = d.request("POST", "/v1/chat/completions", headers=KEY, timeout=120, body={
        "model": "broken", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert status == 200, body
    assert {k.lower(): v for k, v in headers.items()}.get("x-strata-served-by") == "a", headers
    assert d.metric("strata_spillover_total", model="broken", to="a") == 1
    assert d.admin()["a"]["status"] == "ready" and [d.admin()[m]["status"] for m in ("b", "c")].count("ready") == 1


def test_a_failed_model_whose_fallback_cannot_fit_says_why_no_fallback_took_it(make_daemon):
    extra = """  broken: { kind: command, command: ["sh", "-c", "echo cannot load weights >&2; exit 3", "${PORT}"] }"""
    d = make_daemon(config(f"""
  - {{ name: p, source: "file://{MODEL}", runtime: llama, memory: 300MiB, pin: true, preload: true }}
  - {{ name: broken, source: "file://{MODEL}", runtime: broken, memory: 100MiB, fallbacks: [big] }}
  - {{ name: big, source: "file://{MODEL}", runtime: llama, memory: 400MiB }}
""", extra=extra))
    wait_for(lambda: d.admin()["p"]["status"] == "ready", 60, what="p preloaded")
    status, body, _ = d.request("POST", "/v1/chat/completions", headers=KEY, timeout=120, body={
        "model": "broken", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert status == 502, body
    message = json.loads(body)["error"]["message"]
    assert message.startswith("'broken' could not serve this request: 'broken': The runtime for 'broken' failed"), message
    assert message.count("cannot load weights") == 1, message
    assert message.endswith("; 'big' does not fit device 'cpu' beside 'broken' and the pinned models"), message
