"""Substrate policy on real parts: a model Strata runs (tagged on-prem, sovereign:eu) that spills
over to a 'provider' (another llama-server behind an upstream runtime, tagged provider, with a
price). Tenants and request headers require or forbid tags; routing never crosses a forbidden
boundary (a clear 403), and every spillover is counted with its reason."""

import json

import pytest

from conftest import ADMIN_KEY, API_KEY, MODEL, config, spawn_llama_server, wait_for, wait_healthy

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
EU_KEY = "eu-tenant-key"


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    """A llama-server Strata does not start, standing in for a provider API."""
    url, proc = spawn_llama_server(tmp_path_factory.mktemp("provider") / "provider.log", "-c", "2048", "--threads", "1",
                                   alias="remote-smol")
    wait_healthy(url)
    yield url
    proc.kill()
    proc.wait()


def policy_config(provider_url: str, spill_after: str = "150ms") -> str:
    models = f"""
  - {{ name: local, source: "file://{MODEL}", runtime: llama, memory: 400MiB, fallbacks: [cloud], spill_after: {spill_after} }}
  - {{ name: cloud, runtime: provider, upstream_model: remote-smol }}
"""
    extra = f"""  provider: {{ kind: upstream, url: "{provider_url}/v1", tags: [provider], cost: {{ input: 1000, output: 2000 }} }}
tenants:
  - {{ name: eu, api_keys_env: EU_KEYS, require: ["sovereign:eu"] }}"""
    return config(models, extra=extra).replace(
        "kind: llama-server,", 'kind: llama-server, tags: [on-prem, "sovereign:eu"], latency_class: interactive,')


def chat(d, key=API_KEY, headers=None, model="local"):
    return d.request("POST", "/v1/chat/completions", body={
        "model": model, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "Say hi"}]},
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})}, timeout=120)


def served_by(headers):
    return {k.lower(): v for k, v in headers.items()}.get("x-strata-served-by")


def test_spill_after_a_slow_load_then_back_home_when_ready(make_daemon, provider):
    d = make_daemon(policy_config(provider), env={"EU_KEYS": EU_KEY})
    # local is stopped: its load takes longer than spill_after, so the first request spills
    status, body, headers = chat(d)
    assert status == 200, body
    assert served_by(headers) == "cloud"
    assert d.metric("strata_spillover_total", model="local", to="cloud", reason="timeout") == 1
    # the price of the provider is counted against the tenant that spent it
    assert d.metric("strata_spend_total", model="cloud", tenant="default") > 0
    # the load went on without the request; once local is ready, requests stay home
    wait_for(lambda: d.model("local")["status"] == "ready", 60, what="local ready")
    status, body, headers = chat(d)
    assert status == 200, body
    assert served_by(headers) is None
    assert d.metric("strata_spillover_total", model="local") == 1


def test_policies_from_headers_and_tenants_never_cross_a_forbidden_boundary(make_daemon, provider):
    d = make_daemon(policy_config(provider), env={"EU_KEYS": EU_KEY})
    # a tenant that requires sovereign:eu waits for the local model past spill_after: the
    # provider is no option for it, so nothing spills
    status, body, headers = chat(d, key=EU_KEY)
    assert status == 200, body
    assert served_by(headers) is None
    assert d.metric("strata_spillover_total", model="local") == 0

    # a request that forbids on-prem goes to the provider, counted as a policy spillover
    status, body, headers = chat(d, headers={"x-strata-forbid": "on-prem"})
    assert status == 200, body
    assert served_by(headers) == "cloud"
    assert d.metric("strata_spillover_total", model="local", to="cloud", reason="policy") == 1

    # the EU tenant forbidding on-prem leaves nothing: a 403 that names the tags, nothing sent
    # anywhere, and no Retry-After (waiting changes nothing)
    calls_before = d.metric("strata_requests_total", model="cloud")
    status, body, headers = chat(d, key=EU_KEY, headers={"x-strata-forbid": "on-prem"})
    assert status == 403 and "Retry-After" not in headers, (body, headers)
    text = body.decode()
    assert "policy_forbidden" in text and "sovereign:eu" in text and "on-prem" in text, text
    assert d.metric("strata_requests_total", model="cloud") == calls_before
    assert d.metric("strata_policy_refusals_total", model="local", tenant="eu") == 1

    # asking the provider model directly under the EU policy is refused the same way
    status, body, _ = chat(d, key=EU_KEY, model="cloud")
    assert status == 403 and b"lacks required tag sovereign:eu" in body, body

    # /v1/models lists what the caller may be served by: a model whose own substrate or a
    # fallback's the policy allows; the EU tenant does not see the provider, nor anything once
    # it forbids on-prem too
    def listed(key, headers=None):
        status, body, _ = d.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}", **(headers or {})})
        assert status == 200, body
        return sorted(m["id"] for m in json.loads(body)["data"])
    assert listed(API_KEY) == ["cloud", "local"]
    assert listed(EU_KEY) == ["local"]
    assert listed(API_KEY, {"x-strata-forbid": "on-prem"}) == ["cloud", "local"]  # local spills to cloud
    assert listed(API_KEY, {"x-strata-forbid": "provider"}) == ["local"]
    assert listed(EU_KEY, {"x-strata-forbid": "on-prem"}) == []
    status, _, _ = d.request("GET", "/v1/models/cloud", headers={"Authorization": f"Bearer {EU_KEY}"})
    assert status == 404

    # a bad tag is a 400 naming the header
    status, body, _ = chat(d, headers={"x-strata-require": "On Prem!"})
    assert status == 400 and b"x-strata-require" in body, body

    # a reload that changes the provider's tags and the tenant's policy names what it changed
    # (it answered all empty, though tenants' access and spend changed at once)
    text = d.config_path.read_text()
    d.config_path.write_text(text.replace("tags: [provider]", "tags: [provider, metered]")
                             .replace('require: ["sovereign:eu"]', 'require: ["sovereign:eu"], forbid: [metered]'))
    status, body, _ = d.request("POST", "/admin/reload", headers=ADMIN)
    answer = json.loads(body)
    assert status == 200 and answer["changed"] == ["cloud"] and answer["tenants"] == ["eu"], answer
    assert answer["restarted"] == [] and answer["added"] == [] and answer["removed"] == [], answer
