#!/usr/bin/env python3
"""Time to first token with a prefix restored from Strata's store against computing it, on the
other of two llama-server replicas Strata runs (`replicas: 2, kv_restore: true`).

Each round takes two fresh system prompts of the same length (nothing cached anywhere):
  1. prompt P is answered once (computed on its home replica) and its slot saved into the store;
  2. while P's home is busy with a long answer, a new question on P goes to the other replica,
     which restores P's KV cache from the store  -> "restored";
  3. under the same load, a first question on prompt Q is computed  -> "computed".
Steps 2 and 3 alternate in order from round to round. Medians, per-round ratios, and the
replica's own figures (llama-server `timings.cache_n` / `prompt_n`) are printed; the last
line is JSON.

Usage: restore_vs_recompute.py --strata .build/release/strata [--rounds 7] [--words 420]
"""
import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "route"))
from procs import free_port, metric, stop, wait_http  # noqa: E402

CACHE = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
LLAMA = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCABULARY = ["river", "stone", "copper", "lantern", "orbit", "meadow", "signal", "harbor", "violet", "engine",
              "quartz", "willow", "ember", "canyon", "falcon", "marble"]


def words(seed: int, n: int) -> str:
    state, out = seed * 2654435761 % 2**32, []
    for _ in range(n):
        state = (state * 1103515245 + 12345) % 2**31
        out.append(VOCABULARY[state % len(VOCABULARY)])
    return " ".join(out)


def post(url, body, timeout=300):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.read()


def ask(base, system, user, max_tokens=1, stream=False):
    started = time.monotonic()
    body = post(base + "/v1/chat/completions", {
        "model": "chat", "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
    return time.monotonic() - started, (None if stream else json.loads(body).get("timings", {}))


def busy(base, system):
    """A long answer on `system`'s home replica, running in the background."""
    t = threading.Thread(target=ask, args=(base, system, "Tell a very long story.", 400, True))
    t.start()
    time.sleep(0.5)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--words", type=int, default=420, help="system prompt length in words (about 1.6 tokens each)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-kvrestore-"))
    atexit.register(shutil.rmtree, work, True)  # configs and logs: removed when the run ends
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    (work / "strata.yaml").write_text(f"""
listen: 127.0.0.1:{port}
state_dir: {work}/state
log_level: warning
tiers: {{ host: {{ budget: 32MiB, dir: /dev/shm/strata-kvrestore-{port} }}, nvme: {{ budget: 2GiB, segment_size: 64MiB }} }}
devices: [ {{ name: cpu, kind: cpu, memory: 2GiB }} ]
runtimes:
  llama: {{ kind: llama-server, binary: "{LLAMA}", args: ["-c", "4096", "--threads", "1", "--parallel", "2"] }}
models:
  - {{ name: chat, source: "file://{MODEL}", runtime: llama, memory: 300MiB, replicas: 2, kv_restore: true }}
""")
    procs = [subprocess.Popen([a.strata, "serve", "--config", str(work / "strata.yaml")],
                              stdout=open(work / "strata.log", "wb"), stderr=subprocess.STDOUT)]
    try:
        wait_http(base + "/ready")
        post(base + "/admin/models/chat/load", {})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = json.loads(urllib.request.urlopen(base + "/admin/models", timeout=5).read())
            if all(m["status"] == "ready" for m in status["models"]):
                break
            time.sleep(0.2)
        rows = []
        for round_ in range(a.rounds):
            prompt = "You are a careful archivist. Remember these words: " + words(1000 + round_, a.words)
            other = "You are a careful archivist. Remember these words: " + words(2000 + round_, a.words)
            saves = metric(base, "strata_kv_saves_total")
            first, _ = ask(base, prompt, "What is the first word?")
            deadline = time.monotonic() + 30
            while metric(base, "strata_kv_saves_total") <= saves and time.monotonic() < deadline:
                time.sleep(0.05)
            results = {}
            for case in (["restored", "computed"] if round_ % 2 == 0 else ["computed", "restored"]):
                t = busy(base, prompt)
                if case == "restored":
                    results[case] = ask(base, prompt, f"What is word number {round_ + 2}?")
                else:
                    results[case] = ask(base, other, "What is the last word?")
                t.join()
            restored, computed = results["restored"], results["computed"]
            row = {"first_s": first, "restored_s": restored[0], "computed_s": computed[0],
                   "restored_cache_n": restored[1].get("cache_n"), "restored_prompt_n": restored[1].get("prompt_n"),
                   "computed_prompt_n": computed[1].get("prompt_n")}
            rows.append(row)
            print(f"round {round_ + 1}: first {first:.2f} s | restored {restored[0]:.3f} s (cache_n {row['restored_cache_n']}, "
                  f"prompt_n {row['restored_prompt_n']}) | computed {computed[0]:.2f} s (prompt_n {row['computed_prompt_n']}) "
                  f"| ratio {restored[0] / computed[0]:.3f}", flush=True)
        med = {k: statistics.median(r[k] for r in rows) for k in ("first_s", "restored_s", "computed_s")}
        ratios = [r["restored_s"] / r["computed_s"] for r in rows]
        print(f"\nmedians over {a.rounds} rounds: restored {med['restored_s']:.3f} s, computed {med['computed_s']:.2f} s, "
              f"ratio {statistics.median(ratios):.3f} (per round {min(ratios):.3f}–{max(ratios):.3f}); "
              f"restores ok {metric(base, 'strata_kv_restores_total'):.0f}, failed "
              f"{metric(base, 'strata_kv_restores_total', 'failed'):.0f}")
        print(json.dumps({"rounds": a.rounds, "words": a.words, "restored_ttft_s": med["restored_s"],
                          "computed_ttft_s": med["computed_s"], "ratio": statistics.median(ratios), "per_round": rows}))
    finally:
        stop(procs)
        subprocess.run(["rm", "-rf", f"/dev/shm/strata-kvrestore-{port}"])


if __name__ == "__main__":
    main()
