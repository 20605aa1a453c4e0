"""KV save and restore across llama-server replicas (kv_restore): a conversation prefix computed
on one replica is saved into the store, and when its holder is busy the next request sharing it
goes to the other replica, which restores it instead of computing it. Its time to first token
there is measured against computing a prompt of the same length."""
import json
import threading
import time

from conftest import ADMIN_KEY, API_KEY, MODEL, config, wait_for
from test_routing import decisions, words

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def restore_config():
    return config(f'  - {{ name: chat, source: "file://{MODEL}", runtime: llama, memory: 250MiB, replicas: 2, '
                  f'kv_restore: true }}\n',
                  tiers="{ host: { budget: 32MiB, dir: @SHM@ }, nvme: { budget: 1GiB, segment_size: 64MiB } }")


def ask(d, system, user, max_tokens=1, stream=False):
    started = time.monotonic()
    status, body, _ = d.request("POST", "/v1/chat/completions", body={
        "model": "chat", "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]},
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}, timeout=180)
    return status, body, time.monotonic() - started


def while_streaming_on(d, system, body):
    """Runs `body` while a long answer to `system` streams (keeping its holder busy)."""
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", ask(d, system, "Tell a very long story.", 400, True)))
    t.start()
    wait_for(lambda: any(m["replicas"][0]["in_flight"] for m in d.admin().values()), 30, interval=0.02, what="stream running")
    try:
        return body()
    finally:
        t.join(180)
        assert done["r"][0] == 200, done["r"]


def second_conversation_while_the_first_computes(d, system):
    """Asks `system` twice, the second time while the first request is running; both must
    answer. The second answer's body."""
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", ask(d, system, "What is the first word?")))
    t.start()
    wait_for(lambda: any(m["replicas"][0]["in_flight"] for m in d.admin().values()), 30, interval=0.01,
             what="the first conversation running")
    status, body, _ = ask(d, system, "What is the last word?")
    t.join(180)
    assert first["r"][0] == 200, first["r"]
    assert status == 200, body
    return body


def test_a_prefix_computed_on_one_replica_is_restored_on_the_other(make_daemon):
    d = make_daemon(restore_config())
    # Both replicas running, so the times below are of prompts, not of process starts.
    assert d.request("POST", "/admin/models/chat/load", headers=ADMIN)[0] in (200, 202)
    wait_for(lambda: all(d.model(f"chat#{i}")["status"] == "ready" for i in (0, 1)), 60, what="both replicas ready")
    system = "You are a careful archivist. Remember these words: " + words(11, 420)
    status, body, cold_seconds = ask(d, system, "What is the first word?")
    assert status == 200, body
    (home, reason), = [k for k, v in decisions(d).items() if v]
    wait_for(lambda: d.metric("strata_kv_saves_total", result="ok") >= 1, 30, what="the slot saved into the store")
    # The replica's prefill rate is learned from the answer's timings (it bounds the wait for
    # a slot computing the same prefix); the other replica has computed nothing yet.
    assert d.metric("strata_prefill_seconds_per_block", replica=home) > 0
    learned = [line for line in d.get("/metrics")[1].decode().splitlines()
               if line.startswith("strata_prefill_seconds_per_block{")]
    assert len(learned) == 1 and f'replica="{home}"' in learned[0], learned

    # The holder is busy with a long answer: the next request sharing the prefix goes to the
    # other replica, which loads the stored prefix instead of computing it.
    def restored_request():
        return ask(d, system, "What is the last word?")
    status, body, restored_seconds = while_streaming_on(d, system, restored_request)
    assert status == 200, body
    after = decisions(d)
    other = [replica for (replica, why), n in after.items() if why == "restoredPrefix" and n]
    assert other and other[0] != home, after
    assert d.metric("strata_kv_restores_total", result="ok") == 1
    timings = json.loads(body)["timings"]
    assert timings["cache_n"] > 0.8 * (timings["cache_n"] + timings["prompt_n"]), timings

    # Computing a prompt of the same length, under the same load, for comparison.
    fresh = "You are a careful archivist. Remember these words: " + words(12, 420)
    status, body, recompute_seconds = while_streaming_on(d, system, lambda: ask(d, fresh, "What is the last word?"))
    assert status == 200, body
    assert json.loads(body)["timings"]["cache_n"] < 20
    print(f"first answer (computed) {cold_seconds:.2f} s; on the other replica: restored {restored_seconds:.2f} s, "
          f"computed {recompute_seconds:.2f} s")
    assert restored_seconds < 0.5 * recompute_seconds, (restored_seconds, recompute_seconds)


def test_saved_prefixes_outlive_the_daemon(make_daemon):
    """A prefix saved by one daemon is restored by the next one on the same state directory
    (the store keeps the prompt chain with the saved file); one saved under other runtime
    arguments is removed at start, never restored."""
    d = make_daemon(restore_config())
    system = "You are a careful librarian. Remember these words: " + words(21, 420)
    status, body, _ = ask(d, system, "What is the first word?")
    assert status == 200, body
    wait_for(lambda: d.metric("strata_kv_saves_total", result="ok") >= 1, 30, what="the slot saved into the store")
    assert d.stop() == 0

    d.start()
    wait_for(lambda: "saved prefixes recovered" in d.log_path.read_text(), 30, what="saved prefixes indexed at start")
    assert d.metric("strata_kv_saved_prefixes") >= 1
    status, body, _ = ask(d, system, "What is the last word?")
    assert status == 200, body
    assert any(why == "restoredPrefix" and n for (_, why), n in decisions(d).items()), decisions(d)
    assert d.metric("strata_kv_restores_total", result="ok") == 1
    timings = json.loads(body)["timings"]
    assert timings["cache_n"] > 0.8 * (timings["cache_n"] + timings["prompt_n"]), timings
    assert d.stop() == 0

    # Other runtime arguments: the fingerprint differs (files may not fit), so they are removed.
    d.config_path.write_text(d.config_path.read_text().replace("kv_restore: true", "kv_restore: true, args: ['--threads', '1']"))
    d.start()
    wait_for(lambda: d.log_path.read_text().count("saved prefixes recovered") >= 2, 30, what="stale prefixes removed")
    assert d.metric("strata_kv_saved_prefixes") == 0
    status, body, _ = ask(d, system, "What is the last word?")
    assert status == 200, body
    assert d.metric("strata_kv_restores_total", result="ok") == 0
    wait_for(lambda: d.metric("strata_kv_saves_total", result="ok") >= 1, 30, what="a prefix saved under the new arguments")
    assert d.stop() == 0

    # kv_restore turned off: nothing would restore what is saved, so it is removed at start.
    d.config_path.write_text(d.config_path.read_text().replace("kv_restore: true, ", ""))
    d.start()
    wait_for(lambda: "removed saved KV prefixes of models without kv_restore" in d.log_path.read_text(), 30,
             what="saved prefixes of a model without kv_restore removed")
    status, body, _ = d.get("/admin/tiers", headers=ADMIN)
    assert not [o for o in json.loads(body)["objects"] if o["name"].startswith("kv/")], body[:2000]


def test_a_conversation_arriving_while_its_prefix_is_computed_waits_for_that_slot(make_daemon):
    """A tenant's second conversation arrives while the first is still computing the shared
    system prompt: it waits for that slot (as long as computing the prompt takes on that
    replica, learned from earlier answers) and finds the prompt cached there, rather than
    computing it again on the idle replica."""
    d = make_daemon(restore_config())
    assert d.request("POST", "/admin/models/chat/load", headers=ADMIN)[0] in (200, 202)
    wait_for(lambda: all(d.model(f"chat#{i}")["status"] == "ready" for i in (0, 1)), 60, what="both replicas ready")

    def learned():
        return [line for line in d.get("/metrics")[1].decode().splitlines()
                if line.startswith("strata_prefill_seconds_per_block{")]
    # Unrelated long prompts until both replicas have answered one (their prefill rates known).
    for seed in range(31, 39):
        if len(learned()) == 2:
            break
        assert ask(d, "Remember these words: " + words(seed, 400), "What is the first word?")[0] == 200
    assert len(learned()) == 2, learned()

    system = "You are a careful cartographer. Remember these words: " + words(41, 450)
    body = second_conversation_while_the_first_computes(d, system)
    # It found the system prompt cached: only the slot that computed it could have held it then
    # (nothing was stored yet when it was routed, so nothing was restored).
    timings = json.loads(body)["timings"]
    assert timings["cache_n"] > 0.8 * (timings["cache_n"] + timings["prompt_n"]), timings
    assert d.metric("strata_kv_restores_total", result="ok") == 0
    assert d.metric("strata_slot_waits_total", outcome="claimed") >= 1
    assert d.metric("strata_slot_waits_total", outcome="unpinned") == 0


def test_a_wait_that_runs_out_computes_the_prefix_on_the_idle_replica(make_daemon):
    """On a fleet just started (no prefill rate learned yet, so a wait for a slot computing the
    same prefix lasts 2 s), a tenant's second conversation arrives while the first computes the
    system prompt, which takes longer than that: when its wait runs out it goes to the idle
    replica and computes the prompt there, not in the busy replica's other slot beside the
    request it waited for (which slowed both)."""
    d = make_daemon(restore_config())
    assert d.request("POST", "/admin/models/chat/load", headers=ADMIN)[0] in (200, 202)
    wait_for(lambda: all(d.model(f"chat#{i}")["status"] == "ready" for i in (0, 1)), 60, what="both replicas ready")
    # (about 700 tokens: some 5 s of prefill on one thread here, so the 2 s wait runs out with room)
    system = "You are a careful surveyor. Remember these words: " + words(51, 650)
    body = second_conversation_while_the_first_computes(d, system)
    assert d.metric("strata_slot_waits_moved_total", model="chat") == 1
    # Each replica computed the prompt once: both have learned their prefill rate from it.
    learned = [line for line in d.get("/metrics")[1].decode().splitlines()
               if line.startswith("strata_prefill_seconds_per_block{")]
    assert len(learned) == 2, learned
    timings = json.loads(body)["timings"]
    assert timings["cache_n"] < 0.2 * (timings["cache_n"] + timings["prompt_n"]), timings


def test_two_requests_while_the_holder_is_busy_both_load_the_prefix(make_daemon):
    """The holder of a stored prefix is busy with a long answer and two requests sharing it come
    at once: one goes to the other replica and restores it; the other, routed to the holder for
    its cached prefix, finds that slot still busy after its wait and gets the free one, into which
    the stored prefix is restored (it computed the whole prompt there)."""
    import concurrent.futures
    d = make_daemon(restore_config())
    assert d.request("POST", "/admin/models/chat/load", headers=ADMIN)[0] in (200, 202)
    wait_for(lambda: all(d.model(f"chat#{i}")["status"] == "ready" for i in (0, 1)), 60, what="both replicas ready")
    system = "You are a careful zoologist. Remember these words: " + words(81, 420)
    assert ask(d, system, "What is the first word?")[0] == 200
    wait_for(lambda: d.metric("strata_kv_saves_total", result="ok") >= 1, 30, what="the slot saved into the store")

    def both():
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda q: ask(d, system, q), ["What is the first word?", "What is the last word?"]))
    answers = while_streaming_on(d, system, both)
    for status, body, seconds in answers:
        assert status == 200, body
        timings = json.loads(body)["timings"]
        assert timings["cache_n"] > 0.8 * (timings["cache_n"] + timings["prompt_n"]), (timings, seconds)
    assert d.metric("strata_kv_restores_total", result="ok") == 2
