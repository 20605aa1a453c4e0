"""The gateway through the official openai client, against real llama-server runtimes."""
import json
import re
import signal
import threading
import time
import urllib.request

import openai
import pytest

from conftest import API_KEY, ADMIN_KEY, MODEL, config, wait_for, pid_alive

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_models_list_shows_every_model_with_status(daemon):
    models = daemon.client().models.list()
    by_id = {m.id: m for m in models.data}
    assert set(by_id) == {"smollm2", "smollm2-b"}
    for m in by_id.values():
        assert m.model_extra["status"] in {"stopped", "loading", "ready", "failed"}


def test_one_model_is_retrieved_by_its_id_and_an_unknown_one_is_a_404(daemon):
    client = daemon.client()
    model = client.models.retrieve("smollm2-b")
    assert model.id == "smollm2-b" and model.object == "model"
    assert model.model_extra["status"] in {"stopped", "loading", "ready", "failed"}
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.body["code"] == "model_not_found"
    assert "'no-such-model' does not exist" in missing.value.body["message"]


def test_chat_completion_returns_the_models_answer(daemon):
    r = daemon.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=16, temperature=0)
    text = r.choices[0].message.content
    assert isinstance(text, str) and text.strip(), r
    assert "paris" in text.lower(), text
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    assert daemon.model("smollm2")["status"] == "ready"
    by_id = {m.id: m.model_extra["status"] for m in daemon.client().models.list().data}
    assert by_id["smollm2"] == "ready"


def test_streaming_chat_relays_chunks(daemon):
    stream = daemon.client().chat.completions.create(
        model="smollm2", messages=MESSAGES, max_tokens=24, temperature=0, stream=True)
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert len(pieces) > 2, pieces
    assert "".join(pieces).strip()
    assert finish in {"stop", "length"}


def test_completions_endpoint(daemon):
    r = daemon.client().completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.choices[0].text.strip()


def test_unknown_fields_pass_through(daemon):
    # llama-server accepts fields it does not know; the gateway must not drop or reject them
    status, body, _ = daemon.request("POST", "/v1/chat/completions", {
        "model": "smollm2", "messages": MESSAGES, "max_tokens": 4, "x_vendor_extension": {"a": [1, 2]},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}],
    }, headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert status == 200, body
    assert json.loads(body)["choices"]


def test_bad_key_is_401(daemon):
    with pytest.raises(openai.AuthenticationError) as e:
        daemon.client(api_key="wrong").chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"


def test_unknown_model_is_404(daemon):
    with pytest.raises(openai.NotFoundError) as e:
        daemon.client().chat.completions.create(model="gpt-nope", messages=MESSAGES, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    assert "gpt-nope" in e.value.body["message"]


def test_an_upstream_that_refuses_connections_fails_at_once_streamed_or_not(make_daemon):
    """A dead provider or remote replica (nothing listens on its port) answers every request with
    a 502 naming the refusal straight away, streamed or not: no request is held until the
    connect timeout (it was, 5 s, for streamed ones)."""
    from conftest import config, free_port
    dead = free_port()   # bound and released: nothing listens there
    d = make_daemon(config("  - { name: gone, runtime: dead }",
                           extra=f'  dead: {{ kind: upstream, url: "http://127.0.0.1:{dead}/v1" }}'))
    for stream in (False, True):
        started = time.monotonic()
        status, body, _ = d.request("POST", "/v1/chat/completions", {
            "model": "gone", "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}, timeout=30)
        took = time.monotonic() - started
        assert status == 502, (stream, body)
        error = json.loads(body)["error"]
        assert error["code"] == "runtime_failed" and "Connection refused" in error["message"], (stream, error)
        assert took < 2.5, f"stream={stream}: the 502 took {took:.2f} s"


@pytest.mark.parametrize("keep_alive", [False, True])
def test_a_stream_whose_runtime_goes_silent_ends_with_an_error_after_the_upstream_timeout(make_daemon, keep_alive):
    """A remote runtime that sends the head and a first chunk, then nothing (hung, or cut off without
    a reset): after gateway.upstream_timeout of silence the client gets an error event and the end
    of the stream, and the request no longer counts as in flight. Before, it waited for ever.
    urllib sends `Connection: close` (the gateway's general path takes such requests);
    http.client keeps the connection alive (relayed on the event loop)."""
    import http.client
    from conftest import config, one_stream_runtime
    served = threading.Event()

    def silent(send):
        send(b'data: {"choices":[{"index":0,"delta":{"content":"Once"}}]}\n\n')
        served.set()
        time.sleep(15)   # silent; bounded so the test cannot hang on it

    port = one_stream_runtime(silent)
    cfg = config("  - { name: remote, runtime: far }",
                 extra=f'  far: {{ kind: upstream, url: "http://127.0.0.1:{port}/v1" }}')
    d = make_daemon(cfg.replace("gateway: { max_body: 64KiB }", "gateway: { max_body: 64KiB, upstream_timeout: 1s }"))
    started = time.monotonic()
    body = json.dumps({"model": "remote", "stream": True, "messages": [{"role": "user", "content": "tell me a story"}]})
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    if keep_alive:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body, headers)
        text = conn.getresponse().read().decode()
        conn.close()
    else:
        req = urllib.request.Request(d.url + "/v1/chat/completions", method="POST", data=body.encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
    events = [line for line in text.splitlines() if line.startswith("data:")]
    took = time.monotonic() - started
    assert served.is_set()
    assert "Once" in events[0], events
    error = json.loads(events[-1][len("data:"):])["error"]
    assert "failed mid-stream" in error["message"] and "upstream_timeout" in error["message"], error
    assert took < 8, f"the silent stream took {took:.1f} s to end"
    assert d.model("remote").get("in_flight", 0) == 0


def test_bad_json_and_missing_fields_are_400(daemon):
    h = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    status, body, _ = daemon.request("POST", "/v1/chat/completions", b"{not json", headers=h)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, body, _ = daemon.request("POST", "/v1/chat/completions", {"messages": MESSAGES}, headers=h)
    assert status == 400 and "'model'" in json.loads(body)["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        daemon.client().chat.completions.create(model="smollm2", messages=[], max_tokens=2)


def test_a_prompt_over_the_context_is_openais_context_length_exceeded(daemon, make_daemon):
    """llama-server says `exceed_context_size_error` with an integer code; clients (the openai
    SDK's users, agent frameworks) test OpenAI's `context_length_exceeded` to trim a
    conversation: the error goes out in OpenAI's shape, streamed or not, on the event-loop relay
    and the general path (event_loop_relay: false), its message and figures kept."""
    long = "word " * 3000   # about 3,000 tokens, over a slot's 1,024 (-c 2048 over two slots)
    general = make_daemon(config(f'  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 400MiB }}',
                                 extra="").replace("gateway: { max_body: 64KiB }",
                                                   "gateway: { max_body: 64KiB, event_loop_relay: false }"))
    for d in (daemon, general):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                d.client().chat.completions.create(model="smollm2", messages=[{"role": "user", "content": long}],
                                                   max_tokens=2, stream=stream)
            assert e.value.code == "context_length_exceeded", e.value.body
            assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == "messages", e.value.body
            assert "context" in e.value.body["message"] and e.value.body["n_prompt_tokens"] > 1024, e.value.body
        with pytest.raises(openai.BadRequestError) as e:
            d.client().completions.create(model="smollm2", prompt=long, max_tokens=2)
        assert e.value.code == "context_length_exceeded" and e.value.body["param"] == "prompt", e.value.body
    assert daemon.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2).choices


def test_an_image_to_a_model_without_vision_is_a_400_not_retried(make_daemon):
    """llama-server answers an image part sent to a model without a projector with a 500: the
    openai SDK retried it twice, and Strata tried every other replica first (a 5xx passes for a
    replica's failure). It goes out as OpenAI's 400 for content a model does not take, at once,
    streamed or not, on the event-loop relay and the general path."""
    from conftest import config, MODEL
    model = f'  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 250MiB, replicas: 2, preload: true }}'
    both = [make_daemon(config(model)),
            make_daemon(config(model).replace("gateway: { max_body: 64KiB }", "gateway: { max_body: 64KiB, event_loop_relay: false }"))]
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
    for d in both:
        wait_for(lambda: all(m["status"] == "ready" for m in d.admin().values()), 60, what="both replicas preloaded")
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                d.client().chat.completions.create(model="smollm2", messages=[image], max_tokens=2, stream=stream)
            assert e.value.status_code == 400 and e.value.body["type"] == "invalid_request_error", e.value.body
            assert e.value.body["param"] == "messages" and "image input is not supported" in e.value.body["message"], e.value.body
        # messages llama-server cannot parse (a 500 there), and a field of the wrong type (its 400
        # with an integer code): OpenAI's shape, naming the field
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                d.client().chat.completions.create(model="smollm2", messages=[
                    {"role": "user", "content": [{"type": "text", "text": 5}]}], max_tokens=2, stream=stream)
            assert e.value.body["param"] == "messages" and e.value.body["code"] == "invalid_type", e.value.body
        status, body, _ = d.request("POST", "/v1/chat/completions", body={"model": "smollm2", "messages": MESSAGES, "max_tokens": "8"},
                                    headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        error = json.loads(body)["error"]
        assert status == 400 and error["param"] == "max_tokens" and error["code"] == "invalid_type", body
        assert "trying another replica" not in d.log_path.read_text()
        assert d.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2).choices


def test_oversized_body_is_413(daemon):
    big = "word " * 20000   # 100 KB > gateway.max_body 64 KiB
    with pytest.raises(openai.APIStatusError) as e:
        daemon.client().chat.completions.create(model="smollm2", messages=[{"role": "user", "content": big}], max_tokens=2)
    assert e.value.status_code == 413
    assert e.value.body["code"] == "request_too_large"


def test_embeddings_are_relayed(make_daemon):
    from conftest import config, MODEL
    d = make_daemon(config(f"""
  - {{ name: embed, source: "file://{MODEL}", runtime: llama, memory: 400MiB, args: ["--embeddings", "--pooling", "mean"] }}
"""))
    r = d.client().embeddings.create(model="embed", input=["hello world", "bonjour"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) > 100
    assert r.data[0].embedding != r.data[1].embedding


def test_swaps_under_load_lose_no_request(daemon):
    """Budget for one model, requests for two interleaved from four clients: every one succeeds."""
    before = daemon.admin()
    errors, answers = [], []
    client = daemon.client(timeout=120)

    def worker(i):
        for j in range(5):
            model = "smollm2" if (i + j) % 2 == 0 else "smollm2-b"
            try:
                stream = (i % 2 == 0)
                r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, stream=stream)
                if stream:
                    text = "".join(c.choices[0].delta.content or "" for c in r if c.choices)
                else:
                    text = r.choices[0].message.content
                answers.append((model, text))
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{model}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(answers) == 20
    after = daemon.admin()
    swaps = sum(after[m]["loads"] - before[m]["loads"] for m in after)
    assert swaps >= 2, f"expected the one-model budget to force swaps: {before} -> {after}"
    # the budget held: never both resident
    assert sum(1 for m in after.values() if m["status"] in {"ready", "loading"}) <= 1


def test_runtime_killed_mid_stream_gives_clean_error_then_restarts(daemon):
    client = daemon.client(timeout=120)
    client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    pid = daemon.model("smollm2").get("pid")
    assert pid and pid_alive(pid)
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
        max_tokens=1500, stream=True, extra_body={"ignore_eos": True})
    got = 0
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            got += 1
            if got == 3:
                import os
                os.kill(pid, signal.SIGKILL)
    assert got >= 3
    assert "mid-stream" in str(e.value) or "runtime" in str(e.value).lower()
    wait_for(lambda: daemon.model("smollm2").get("pid") != pid, 10, what="dead runtime forgotten")
    # the next request restarts it (after the backoff) and is answered
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=4)
    assert r.choices[0].message.content is not None
    m = daemon.model("smollm2")
    assert m["status"] == "ready" and m.get("pid") != pid


def test_a_request_whose_runtime_dies_before_answering_is_sent_to_the_next_one(daemon):
    """SIGKILL of the runtime under a non-streaming request: nothing was sent to the client, so the
    request goes once more, to the runtime started in its place, and is answered in full."""
    import os
    client = daemon.client(timeout=120)
    client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    pid = daemon.model("smollm2").get("pid")
    assert pid and pid_alive(pid)
    retries = daemon.metric("strata_request_retries_total", model="smollm2")
    outcome = {}

    def ask():
        try:
            outcome["answer"] = client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Write a long story about a dragon."}],
                max_tokens=200, extra_body={"ignore_eos": True})
        except Exception as e:  # noqa: BLE001 - asserted below
            outcome["error"] = e

    asking = threading.Thread(target=ask)
    asking.start()
    wait_for(lambda: daemon.model("smollm2")["in_flight"] == 1, 20, what="the request running")
    time.sleep(0.3)   # generating
    os.kill(pid, signal.SIGKILL)
    asking.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["answer"].usage.completion_tokens == 200
    assert daemon.model("smollm2").get("pid") not in (None, pid)
    assert daemon.metric("strata_request_retries_total", model="smollm2") == retries + 1


def test_a_stream_whose_runtime_dies_while_computing_the_prompt_is_sent_to_the_next_one(daemon):
    """SIGKILL of the runtime while it computes a streamed request's prompt: the stream's head
    goes to the client with its first event, so the client has seen nothing, and the request goes
    once more, to the runtime started in its place, and streams in full."""
    import os
    client = daemon.client(timeout=120)
    client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    pid = daemon.model("smollm2").get("pid")
    assert pid and pid_alive(pid)
    retries = daemon.metric("strata_request_retries_total", model="smollm2")
    long_prompt = " ".join(f"Item {i} of the inventory is a {['red', 'blue', 'green'][i % 3]} box." for i in range(55))   # ~700 tokens (a slot holds 1024)
    outcome = {"text": ""}

    def ask():
        try:
            for chunk in client.chat.completions.create(
                    model="smollm2", messages=[{"role": "user", "content": long_prompt}], max_tokens=16,
                    stream=True, extra_body={"ignore_eos": True}):
                if chunk.choices and chunk.choices[0].delta.content:
                    outcome["text"] += chunk.choices[0].delta.content
        except Exception as e:  # noqa: BLE001 - asserted below
            outcome["error"] = e

    asking = threading.Thread(target=ask)
    asking.start()
    wait_for(lambda: daemon.model("smollm2")["in_flight"] == 1, 20, what="the request running")
    time.sleep(0.3)   # computing the prompt (seconds at one thread), no event yet
    os.kill(pid, signal.SIGKILL)
    asking.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["text"], outcome
    assert daemon.model("smollm2").get("pid") not in (None, pid)
    assert daemon.metric("strata_request_retries_total", model="smollm2") == retries + 1


def test_client_disconnect_frees_the_request(daemon):
    import http.client
    body = json.dumps({"model": "smollm2", "stream": True, "max_tokens": 1500, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Count to one thousand."}]})
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    lines = 0
    while lines < 3:
        lines += r.readline().startswith(b"data:")
    assert daemon.model("smollm2")["in_flight"] == 1
    conn.sock.close()   # the client goes away mid-stream
    conn.close()
    # the gateway notices on its next write, cancels the upstream request and releases the slot
    wait_for(lambda: daemon.model("smollm2")["in_flight"] == 0, 15, what="in-flight back to 0 after disconnect")
    pid = daemon.model("smollm2").get("pid")
    import urllib.request
    port = int(daemon.model("smollm2")["upstream"].rsplit(":", 1)[1])
    # and llama-server itself stopped generating for it
    def idle():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/slots", timeout=5) as resp:
            return not any(s.get("is_processing") for s in json.loads(resp.read()))
    wait_for(idle, 15, what="llama-server slots idle after disconnect")
    assert pid


def test_metrics_are_prometheus_text(daemon):
    daemon.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    for i in range(3):   # names no one configured share one label, however many a client makes up
        with pytest.raises(openai.NotFoundError):
            daemon.client().chat.completions.create(model=f"made-up-{i}", messages=MESSAGES, max_tokens=2)
    status, body, headers = daemon.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    for name in ("strata_requests_total", "strata_request_duration_seconds", "strata_time_to_first_token_seconds",
                 "strata_loads_total", "strata_load_duration_seconds", "strata_tokens_total", "strata_request_errors_total"):
        assert name in text, name
    assert 'model="smollm2"' in text
    assert "made-up" not in text
    unknown = [float(value) for labels, value in re.findall(r'^strata_request_errors_total\{(.*)\} (\S+)$', text, re.M)
               if 'model="-"' in labels and 'code="model_not_found"' in labels]
    assert unknown and unknown[0] >= 3, text
    # refused before a model is known: a bad key, a body that is not JSON (they went uncounted)
    before = {code: daemon.metric("strata_request_errors_total", model="-", code=code) for code in ("invalid_api_key", "invalid_json")}
    assert daemon.request("POST", "/v1/chat/completions", body=b"{bad", headers={"Authorization": "Bearer nope"})[0] == 401
    assert daemon.request("POST", "/v1/chat/completions", body=b"{bad",
                          headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})[0] == 400
    for code in before:
        assert daemon.metric("strata_request_errors_total", model="-", code=code) == before[code] + 1, code


def test_admin_requires_key_and_can_unload_and_load(daemon):
    status, _, _ = daemon.get("/admin/models")
    assert status == 401
    status, _, _ = daemon.get("/admin/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 401
    h = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, _, _ = daemon.request("POST", "/admin/models/smollm2/load", headers=h)
    assert status == 202
    wait_for(lambda: daemon.model("smollm2")["status"] == "ready", 60, what="admin load")
    pid = daemon.model("smollm2").get("pid")
    status, body, _ = daemon.get("/admin/models", headers=h)
    runtimes = {r["name"]: r for r in json.loads(body)["runtimes"]}
    assert runtimes["llama"]["kind"] == "llama-server" and "smollm2" in runtimes["llama"]["running"]
    status, _, _ = daemon.request("POST", "/admin/models/smollm2/unload", headers=h)
    assert status == 202
    wait_for(lambda: daemon.model("smollm2")["status"] == "stopped" and daemon.model("smollm2").get("pid") is None, 15,
             what="admin unload")
    wait_for(lambda: not pid_alive(pid), 10, what="runtime process gone")
    status, body, _ = daemon.request("POST", "/admin/models/nope/load", headers=h)
    assert status == 404


def test_non_streaming_client_disconnect_cancels_generation(daemon):
    import http.client
    daemon.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=1)
    left_before = daemon.metric("strata_requests_total", model="smollm2", outcome="client_disconnected")
    errors_before = daemon.metric("strata_request_errors_total", model="smollm2")
    body = json.dumps({"model": "smollm2", "max_tokens": 2000, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Count to one thousand."}]})
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    wait_for(lambda: daemon.model("smollm2")["in_flight"] == 1, 10, what="request in flight")
    conn.sock.close()
    conn.close()
    started = time.monotonic()
    # 2000 tokens take far longer than this on these CPUs: only a cancellation frees it so soon
    wait_for(lambda: daemon.model("smollm2")["in_flight"] == 0, 5, what="in-flight back to 0 after disconnect")
    assert time.monotonic() - started < 5
    # counted as a client that left, not as an error of Strata's or the runtime's
    assert daemon.metric("strata_requests_total", model="smollm2", outcome="client_disconnected") == left_before + 1
    assert daemon.metric("strata_request_errors_total", model="smollm2") == errors_before


def test_expect_100_continue_is_answered_at_once(daemon):
    """A client that asks `Expect: 100-continue` (curl does for bodies over 1 MiB) gets `100
    Continue` as soon as its head is read, not after its own wait; one whose declared body is
    over gateway.max_body gets its 413 at once instead (RFC 9110: it waits for one or the
    other), and the connection ends."""
    import socket
    body = json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(head % (API_KEY.encode(), len(body)))
        s.settimeout(0.5)   # far below curl's 1 s wait
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.settimeout(10)
        s.sendall(body)
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 404") and b"model_not_found" in answer, answer
    refused_before = daemon.metric("strata_requests_total", endpoint="chat", outcome="request_too_large")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        big = 1 << 20   # over the fixture's max_body of 64 KiB
        s.sendall(head % (API_KEY.encode(), big))
        s.settimeout(0.5)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer, answer
        assert b"\r\nconnection: close\r\n" in answer.lower(), answer
    # counted as the general path counts a body over the limit
    assert daemon.metric("strata_requests_total", endpoint="chat", outcome="request_too_large") == refused_before + 1
    # a request without a valid API key gets its 401 at once, not after it has sent its body
    for auth in (b"", b"Authorization: Bearer wrong-key\r\n"):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth +
                      b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
            s.settimeout(0.5)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 401") and b"invalid_api_key" in answer, answer


def test_the_responses_api_is_relayed_plain_and_streamed(daemon):
    """OpenAI's Responses API (`/v1/responses`, which llama-server serves) goes through like the
    other endpoints, with the same model checks and errors."""
    client = daemon.client()
    r = client.responses.create(model="smollm2", instructions="Answer briefly.", input="What is the capital of France?",
                                max_output_tokens=8, temperature=0)
    assert r.output_text.strip(), r
    events = [e.type for e in client.responses.create(model="smollm2", input=[{"role": "user", "content": "Hi"}],
                                                       max_output_tokens=4, stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed", events
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")
    status, body, _ = daemon.request("POST", "/v1/responses", body={"model": "smollm2"},
                                     headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"]["code"] == "missing_field", body
