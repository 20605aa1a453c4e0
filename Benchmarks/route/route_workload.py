#!/usr/bin/env python3
"""Multi-tenant chat workload against any OpenAI-compatible endpoint: TTFT, throughput, errors.

Built to compare routers (Strata's prefix affinity, round-robin, least-loaded,
`sglang-router --policy cache_aware`) fronting the same replicas, so everything that can be
seeded is: the tenants' system prompts, which tenant and user each new conversation belongs to,
the user messages, the Poisson arrival times of conversations and the think times between turns.
Only the assistant replies come from the server (temperature 0), and each turn re-sends the whole
conversation so far, so later turns share a growing prefix with earlier ones.

Timing: TTFT is the time from just before the request is written (connection set-up included,
one fresh connection per request so no target is helped or hurt by keep-alive) to the first SSE
chunk whose choices[0].delta.content is non-empty. Latency runs to the end of the stream.

Usage: route_workload.py --url http://127.0.0.1:8080 --model smollm2 [--seed 1] [--json]
See Benchmarks/route/README.md for every flag and the output.
"""
import argparse
import heapq
import http.client
import itertools
import json
import math
import random
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

LATE_SEND_SECONDS = 0.050
WORDS_PER_TOKEN = 0.75
MAX_ERROR_SAMPLES = 5
MAX_SSE_LINE = 1 << 20

# Plain English words; pseudo-text is drawn from these with a seeded RNG. 0.75 words per token is
# the usual rule of thumb for English; these words are mostly one token each, so texts come out
# about 10-15% under the asked count (measured with SmolLM2's tokenizer; see README.md).
VOCABULARY = """
account action address agent answer apply area argument article balance bank basis batch bill
block board body border branch budget build cache call capacity card care carrier case catalog
cell center change channel charge check claim class client cloud code column comment company
contract control copy cost count course credit customer cycle data date deadline debt default
delivery demand deposit design detail device discount document domain draft driver duty effect
energy engine entry error estimate event exchange expense export factor fee field figure file
filter finance flight format freight fund gate goal grade group guide handle header history
hold income index input insurance interest inventory invoice issue item journal key label
language layer lease ledger level license limit line loan local lock margin market matter
measure member memory message method metric mode model module month network node notice number
offer office order origin output owner package page panel parcel partner payment period permit
phase plan policy pool port position premium price priority process product profile project
proof quota range rate reason record region report request reserve resource result return
review risk route rule sample schedule scope score section segment service session share
shipment signal site size source stage standard state status step stock storage store stream
supply support system table target task tax team term ticket tier time token total track trade
transfer trend unit update usage user value vendor version volume warehouse window work zone
the a of to and in for with on by from at as is are be will should must may can not each every
""".split()


def pseudo_text(rng, tokens):
    """About `tokens` tokens of sentence-shaped text: round(tokens * WORDS_PER_TOKEN) words."""
    words = max(1, round(tokens * WORDS_PER_TOKEN))
    out = []
    while words > 0:
        n = min(words, rng.randint(6, 14))
        sentence = [rng.choice(VOCABULARY) for _ in range(n)]
        sentence[0] = sentence[0].capitalize()
        out.append(" ".join(sentence) + ".")
        words -= n
    return " ".join(out)


def percentile(values, p):
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def short(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Workload: everything derives from string-seeded Random instances, which Python hashes with
# SHA-512, so the same seed gives the same workload on every run and machine.

class Conversation:
    def __init__(self, index, tenant, user, session, system, args):
        rng = random.Random(f"{args.seed}/conversation/{index}")
        self.index, self.tenant, self.user, self.session = index, tenant, user, session
        self.turns = args.turns
        self.user_messages = [
            f"[{tenant}.{user}.{session}.{k}] Question {k + 1}: {pseudo_text(rng, args.user_tokens)}"
            for k in range(args.turns)]
        # Think time after turn k is drawn now, not when turn k ends, so it never depends on timing.
        self.think = [rng.expovariate(1 / args.think) if args.think > 0 else 0.0
                      for _ in range(args.turns)]
        self.messages = [{"role": "system", "content": system}]
        self.turn = 0

    def next_messages(self):
        return self.messages + [{"role": "user", "content": self.user_messages[self.turn]}]

    def record_reply(self, text):
        self.messages.append({"role": "user", "content": self.user_messages[self.turn]})
        self.messages.append({"role": "assistant", "content": text})
        self.turn += 1


class Workload:
    def __init__(self, args):
        self.args = args
        self.systems = []
        for t in range(args.tenants):
            rng = random.Random(f"{args.seed}/tenant/{t}")
            # The tenant's identity comes first so tenants' prompts differ from their first token.
            head = f"Tenant {t:03d}-{rng.getrandbits(32):08x}. You are the assistant of this tenant."
            self.systems.append(head + " " + pseudo_text(rng, args.system_tokens))
        self._assign = random.Random(f"{args.seed}/assign")
        self._slots = []
        self._next = 0

    def new_conversation(self):
        """The next conversation: cycles through every (tenant, user) in seeded shuffled rounds."""
        if not self._slots:
            self._slots = list(range(self.args.tenants * self.args.users))
            self._assign.shuffle(self._slots)
        slot = self._slots.pop()
        index, self._next = self._next, self._next + 1
        tenant, user = divmod(slot, self.args.users)
        session = index // (self.args.tenants * self.args.users)
        return Conversation(index, tenant, user, session, self.systems[tenant], self.args)


# ---------------------------------------------------------------------------------------------
# One streamed chat request.

class Target:
    def __init__(self, url, model, api_key, max_tokens, timeout, usage):
        base = url.rstrip("/")
        parts = urlsplit(base if "://" in base else "http://" + base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {url!r}: expected http(s)://host[:port][/prefix]")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        prefix = parts.path.rstrip("/")
        self.path = prefix + ("/chat/completions" if prefix.endswith("/v1") else "/v1/chat/completions")
        self.model, self.max_tokens, self.timeout, self.usage = model, max_tokens, timeout, usage
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def chat(self, messages):
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": 0, "stream": True}
        if self.usage:
            body["stream_options"] = {"include_usage": True}
        return StreamReader(self).run(json.dumps(body).encode())


class StreamReader:
    """Reads one SSE response; never raises for what the server or network does."""

    def __init__(self, target):
        self.target = target
        self.start = self.end = None
        self.ttft = None          # to the first content-bearing chunk
        self.first_chunk = None   # to the first chunk with choices (fallback for empty replies)
        self.text = []
        self.content_chunks = 0
        self.usage = None
        self.timings = None
        self.finished = self.done = False
        self.error = None

    def run(self, payload):
        t = self.target
        cls = http.client.HTTPSConnection if t.https else http.client.HTTPConnection
        conn = cls(t.host, t.port, timeout=t.timeout)
        self.start = time.monotonic()
        deadline = self.start + t.timeout
        try:
            conn.request("POST", t.path, body=payload, headers=t.headers)
            sock = conn.sock  # kept: getresponse() may drop conn.sock on Connection: close
            resp = conn.getresponse()
            if resp.status != 200:
                detail = short(resp.read(2000).decode("utf-8", "replace")) or resp.reason
                self.error = f"HTTP {resp.status}: {detail}"
                return self._finish()
            ctype = resp.getheader("Content-Type", "")
            if "text/event-stream" not in ctype:
                self.error = f"not an event stream ({ctype or 'no content type'}): " \
                             f"{short(resp.read(2000).decode('utf-8', 'replace'))}"
                return self._finish()
            self._read_events(resp, sock, deadline)
        except (socket.timeout, TimeoutError):
            self.error = f"timeout after {t.timeout:g}s"
        except (OSError, http.client.HTTPException) as e:
            self.error = f"connection error: {type(e).__name__}: {short(e, 120)}"
        finally:
            conn.close()
        return self._finish()

    def _read_events(self, resp, sock, deadline):
        event, data = None, []
        while self.error is None and not self.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            if sock is not None:
                sock.settimeout(remaining)
            raw = resp.readline(MAX_SSE_LINE)
            if not raw:
                break
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if line == "":
                self._dispatch(event, data)
                event, data = None, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
            elif field == "error":  # llama.cpp's non-standard error line
                self.error = f"stream error: {short(value)}"
        if self.error is None and not self.done:
            self._dispatch(event, data)  # a last event with no blank line after it
            if not self.done and not self.finished:
                self.error = "stream ended before a finish_reason or [DONE]"

    def _dispatch(self, event, data):
        if not data and event is None:
            return
        now = time.monotonic()
        text = "\n".join(data)
        if text.strip() == "[DONE]":
            self.done = True
            return
        if event == "error":
            self.error = f"stream error: {short(text)}"
            return
        try:
            obj = json.loads(text)
        except ValueError:
            self.error = f"bad SSE data: {short(text, 120)}"
            return
        if not isinstance(obj, dict):
            self.error = f"bad SSE data: {short(text, 120)}"
            return
        if obj.get("error") is not None:
            self.error = f"stream error: {short(json.dumps(obj['error']))}"
            return
        if obj.get("usage"):
            self.usage = obj["usage"]
        if obj.get("timings"):
            self.timings = obj["timings"]
        choices = obj.get("choices") or []
        if not choices:
            return
        if self.first_chunk is None:
            self.first_chunk = now - self.start
        choice = choices[0]
        content = (choice.get("delta") or {}).get("content")
        if content:
            if self.ttft is None:
                self.ttft = now - self.start
            self.content_chunks += 1
            self.text.append(content)
        if choice.get("finish_reason"):
            self.finished = True

    def _finish(self):
        self.end = time.monotonic()
        return self

    @property
    def completion_tokens(self):
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return self.content_chunks

    def prompt_tokens(self):
        """(prompt tokens, of which served from the server's cache), or Nones if not reported."""
        u, t = self.usage or {}, self.timings or {}
        prompt = u.get("prompt_tokens")
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None and "cache_n" in t:
            cached = t["cache_n"]
            if prompt is None and "prompt_n" in t:
                prompt = t["cache_n"] + t["prompt_n"]
        return prompt, cached


# ---------------------------------------------------------------------------------------------
# The run: a scheduler loop releases requests at their scheduled times into a bounded pool.

class Runner:
    def __init__(self, args, target, workload):
        self.args, self.target, self.workload = args, target, workload
        self.cond = threading.Condition()
        self.heap = []  # (scheduled time, tiebreak, conversation): follow-up turns
        self.seq = itertools.count()
        self.slots = threading.BoundedSemaphore(args.max_inflight)
        self.records = []
        self.stopping = False

    def run(self):
        args = self.args
        arrivals = random.Random(f"{args.seed}/arrivals")
        self.t0 = time.monotonic()
        end = self.t0 + args.duration if args.duration > 0 else math.inf
        next_arrival = self.t0  # the first conversation starts at once, then Poisson gaps
        issued = 0
        with ThreadPoolExecutor(max_workers=args.max_inflight, thread_name_prefix="req") as pool:
            try:
                while issued < args.requests:
                    with self.cond:
                        now = time.monotonic()
                        if now >= end:
                            break
                        follow = self.heap[0][0] if self.heap else math.inf
                        due = min(follow, next_arrival)
                        if due > now:
                            self.cond.wait(min(due, end) - now)
                            continue
                        if follow <= next_arrival:
                            scheduled, _, conv = heapq.heappop(self.heap)
                        else:
                            scheduled, conv = next_arrival, self.workload.new_conversation()
                            next_arrival += arrivals.expovariate(args.rate)
                    # Waiting here for a free slot makes the send late, and late sends are reported.
                    while not self.slots.acquire(timeout=0.1):
                        if time.monotonic() >= end:
                            break
                    else:
                        pool.submit(self._request, conv, scheduled)
                        issued += 1
                        continue
                    break
            except KeyboardInterrupt:
                print("interrupted: waiting for requests in flight", file=sys.stderr)
            with self.cond:
                self.stopping = True
        self.stop_issuing = time.monotonic()
        return self.records

    def _request(self, conv, scheduled):
        try:
            messages = conv.next_messages()
            r = self.target.chat(messages)
            prompt, cached = r.prompt_tokens()
            rec = {
                "conversation": conv.index, "tenant": conv.tenant, "user": conv.user,
                "session": conv.session, "turn": conv.turn + 1,
                "scheduled": scheduled - self.t0, "sent": r.start - self.t0,
                "lateness": r.start - scheduled, "ttft": r.ttft, "latency": r.end - r.start,
                "completion_tokens": r.completion_tokens, "prompt_tokens": prompt,
                "cached_tokens": cached, "empty": r.error is None and r.ttft is None,
                "done": r.end - self.t0, "error": r.error,
            }
            if r.error is None:
                if r.ttft is None:
                    rec["ttft"] = r.first_chunk if r.first_chunk is not None else rec["latency"]
                conv.record_reply("".join(r.text))
                if conv.turn < conv.turns:
                    with self.cond:
                        if not self.stopping:
                            heapq.heappush(self.heap, (time.monotonic() + conv.think[conv.turn - 1],
                                                       next(self.seq), conv))
                            self.cond.notify()
        except Exception as e:  # a bug here must show up as an error, not kill the run
            now = time.monotonic()
            rec = {"conversation": conv.index, "tenant": conv.tenant, "user": conv.user,
                   "session": conv.session, "turn": conv.turn + 1, "scheduled": scheduled - self.t0,
                   "sent": now - self.t0, "lateness": 0.0, "ttft": None, "latency": None,
                   "completion_tokens": 0, "prompt_tokens": None, "cached_tokens": None,
                   "empty": False, "done": now - self.t0, "error": f"internal: {type(e).__name__}: {e}"}
        finally:
            self.slots.release()
        self.records.append(rec)


def warm_up(target, n):
    """n sequential requests sharing no prefix with any tenant; not counted. Returns errors."""
    errors = []
    for i in range(n):
        r = target.chat([{"role": "user", "content": f"Warm-up {i}. Reply with one word."}])
        if r.error:
            errors.append(r.error)
    return errors


# ---------------------------------------------------------------------------------------------
# Figures.

def summarize(args, records, duration):
    ok = [r for r in records if r["error"] is None]
    errs = [r for r in records if r["error"] is not None]
    ttft = [r["ttft"] for r in ok]
    first_seen, tenant_first = set(), []
    for r in sorted(records, key=lambda r: r["sent"]):
        if r["tenant"] not in first_seen:
            first_seen.add(r["tenant"])
            if r["error"] is None:
                tenant_first.append(r["ttft"])
    tokens = sum(r["completion_tokens"] for r in ok)
    reported = [r for r in ok if r["prompt_tokens"] is not None and r["cached_tokens"] is not None]
    prompt_total = sum(r["prompt_tokens"] for r in reported)
    samples = []
    for r in errs:
        if r["error"] not in samples:
            samples.append(r["error"])
        if len(samples) == MAX_ERROR_SAMPLES:
            break

    def r4(x):
        return None if x is None else round(x, 4)

    return {
        "url": args.url, "model": args.model, "seed": args.seed,
        "requests": len(records), "ok": len(ok), "errors": len(errs),
        "ttft_p50": r4(percentile(ttft, 50)), "ttft_p90": r4(percentile(ttft, 90)),
        "ttft_p99": r4(percentile(ttft, 99)),
        "ttft_p50_first_turn": r4(percentile([r["ttft"] for r in ok if r["turn"] == 1], 50)),
        "ttft_p50_later_turns": r4(percentile([r["ttft"] for r in ok if r["turn"] > 1], 50)),
        "ttft_p50_tenant_first": r4(percentile(tenant_first, 50)),
        "latency_p50": r4(percentile([r["latency"] for r in ok], 50)),
        "latency_p99": r4(percentile([r["latency"] for r in ok], 99)),
        "throughput_rps": r4(len(ok) / duration if duration > 0 else 0.0),
        "tokens_per_second": r4(tokens / duration if duration > 0 else 0.0),
        "completion_tokens": tokens,
        "empty_completions": sum(1 for r in ok if r["empty"]),
        "prompt_tokens": prompt_total if reported else None,
        "cached_prompt_fraction": r4(sum(r["cached_tokens"] for r in reported) / prompt_total)
        if reported and prompt_total else None,
        "late_sends": sum(1 for r in records if r["lateness"] > LATE_SEND_SECONDS),
        "max_lateness": r4(max((r["lateness"] for r in records), default=0.0)),
        "duration_seconds": r4(duration),
        "error_samples": samples,
    }


def print_table(s, warmup_errors):
    def ms(x):
        return "-" if x is None else f"{x * 1000:.1f}"

    print(f"target {s['url']}  model {s['model']}  seed {s['seed']}")
    print(f"requests {s['requests']}  ok {s['ok']}  errors {s['errors']}  "
          f"empty replies {s['empty_completions']}  duration {s['duration_seconds']:.2f} s")
    print(f"throughput {s['throughput_rps']:.3f} req/s  {s['tokens_per_second']:.1f} completion tok/s  "
          f"late sends {s['late_sends']} (> {LATE_SEND_SECONDS * 1000:.0f} ms; max {ms(s['max_lateness'])} ms)")
    if s["cached_prompt_fraction"] is not None:
        print(f"prompt tokens {s['prompt_tokens']}  served from server cache "
              f"{s['cached_prompt_fraction'] * 100:.1f}% (as the server reports it)")
    print()
    print(f"{'ms':<24}{'p50':>10}{'p90':>10}{'p99':>10}")
    print(f"{'TTFT':<24}{ms(s['ttft_p50']):>10}{ms(s['ttft_p90']):>10}{ms(s['ttft_p99']):>10}")
    print(f"{'TTFT first turns':<24}{ms(s['ttft_p50_first_turn']):>10}")
    print(f"{'TTFT later turns':<24}{ms(s['ttft_p50_later_turns']):>10}")
    print(f"{'TTFT tenant first req':<24}{ms(s['ttft_p50_tenant_first']):>10}")
    print(f"{'latency':<24}{ms(s['latency_p50']):>10}{'':>10}{ms(s['latency_p99']):>10}")
    if warmup_errors:
        print(f"\nwarm-up errors: {len(warmup_errors)} (first: {warmup_errors[0]})")
    if s["error_samples"]:
        print("\nerror samples:")
        for e in s["error_samples"]:
            print(f"  {e}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", required=True, help="base URL; requests go to {url}/v1/chat/completions")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tenants", type=int, default=4)
    p.add_argument("--users", type=int, default=4, help="users per tenant")
    p.add_argument("--turns", type=int, default=3, help="turns per conversation")
    p.add_argument("--system-tokens", type=int, default=1000, help="approx. tokens per tenant system prompt")
    p.add_argument("--user-tokens", type=int, default=32, help="approx. tokens per user message")
    p.add_argument("--rate", type=float, default=1.0, help="new conversations per second (Poisson)")
    p.add_argument("--think", type=float, default=2.0, help="mean think time between turns, seconds (exponential)")
    p.add_argument("--requests", type=int, default=100, help="stop after this many measured requests")
    p.add_argument("--duration", type=float, default=300.0, help="stop sending after this many seconds (0: no limit)")
    p.add_argument("--max-inflight", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds, whole stream")
    p.add_argument("--warmup", type=int, default=0, help="uncounted requests sent first, one at a time")
    p.add_argument("--no-usage", dest="usage", action="store_false",
                   help="do not send stream_options.include_usage (count content chunks as tokens)")
    p.add_argument("--records", default=None, help="write one JSON line per measured request to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    for name in ("tenants", "users", "turns", "requests", "max_inflight", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("system_tokens", "user_tokens", "warmup"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    if args.rate <= 0 or args.timeout <= 0:
        p.error("--rate and --timeout must be positive")
    if args.think < 0 or args.duration < 0:
        p.error("--think and --duration must not be negative")
    return p, args


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        target = Target(args.url, args.model, args.api_key, args.max_tokens, args.timeout, args.usage)
    except ValueError as e:
        parser.error(str(e))
    warmup_errors = warm_up(target, args.warmup)
    runner = Runner(args, target, Workload(args))
    records = runner.run()
    last = max((r["done"] for r in records), default=runner.stop_issuing - runner.t0)
    summary = summarize(args, records, last)
    if args.records:
        with open(args.records, "w") as f:
            for r in sorted(records, key=lambda r: r["sent"]):
                f.write(json.dumps(r) + "\n")
    if args.json:
        if warmup_errors:
            summary["warmup_errors"] = len(warmup_errors)
        print(json.dumps(summary))
    else:
        print_table(summary, warmup_errors)
    return 1 if summary["ok"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
