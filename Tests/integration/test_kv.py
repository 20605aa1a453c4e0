"""The Redis-protocol service on the storage tiers, through real clients: redis-py and redis-cli.

Values live in the block store (host RAM spilling to NVMe), keyed per tenant; durability
`cache` (a restart starts empty). Bad input gets Redis's errors and closes only that connection.
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from conftest import config, free_port, wait_for

def kv_daemon(make_daemon, extra_kv="", env=None, tiers="{ host: { budget: 64MiB, dir: @SHM@ }, nvme: { budget: 1GiB } }"):
    port = free_port()
    d = make_daemon(config("  []", extra=f"kv: {{ resp: 127.0.0.1:{port}{extra_kv} }}", tiers=tiers), env=env)
    wait_for(lambda: "RESP (Redis protocol) on" in d.log_path.read_text(), 20, what="the RESP server")
    return d, port


def kill_and_restart(d, port: int, starts: int):
    """SIGKILL the daemon (no shutdown of any kind), start it again and wait until its log says
    the RESP server is up for the `starts`-th time; returns a redis-py client for it."""
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    d.start()
    wait_for(lambda: d.log_path.read_text().count("RESP (Redis protocol) on") >= starts, 20, what="RESP after restart")
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)


def test_redis_py_covers_the_commands_and_values_spill_to_nvme(make_daemon):
    d, port = kv_daemon(make_daemon)
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)   # RESP2 (redis-py 8 asks for RESP3 by default)
    assert r.ping() is True
    assert r.set("a", b"1") is True and r.get("a") == b"1"
    assert r.set("a", b"2", nx=True) is None and r.get("a") == b"1"
    assert r.set("b", b"x", xx=True) is None and r.get("b") is None
    assert r.set("b", b"y", ex=100) is True and 0 < r.ttl("b") <= 100
    assert r.set("c", b"z", px=50_000) is True and 0 < r.pttl("c") <= 50_000
    assert r.ttl("a") == -1 and r.ttl("nope") == -2
    assert r.persist("a") is False, "PERSIST of a key with no expiry answers 0"
    assert r.expire("a", 1000) is True and r.ttl("a") > 0
    assert r.expire("a", 2000, xx=True, gt=True) is True and r.ttl("a") > 1000   # XX goes with GT (and LT)
    assert r.expire("a", 3000, xx=True, lt=True) is False and r.ttl("a") <= 2000
    with pytest.raises(redis.ResponseError, match="GT and LT options at the same time"):
        r.execute_command("EXPIRE", "a", 10, "GT", "LT")
    assert r.persist("a") is True and r.ttl("a") == -1 and r.persist("a") is False
    assert r.execute_command("SET", "a", b"1", "NX", "NX") is None, "a repeated option is allowed, as in Redis"
    assert r.execute_command("SET", "a", b"1", "EX", 5, "EX", 7) is True and 5 < r.ttl("a") <= 7   # the last wins
    with pytest.raises(redis.ResponseError, match="GET option is not supported"):
        r.set("a", b"2", get=True)
    assert r.get("a") == b"1", "refused: nothing written"
    assert r.persist("a") is True
    assert r.exists("a", "b", "nope", "a") == 3
    assert r.strlen("a") == 1 and r.strlen("nope") == 0
    assert r.mset({"k1": b"v1", "k2": b"v2"}) is True
    assert r.mget("k1", "nope", "k2") == [b"v1", None, b"v2"]
    assert r.echo("hi") == b"hi"
    assert r.dbsize() == 5
    assert sorted(r.scan_iter(match="k*", count=2)) == [b"k1", b"k2"]
    assert r.delete("k1", "k2", "nope") == 2
    assert "db0" in r.info("keyspace") and r.info("strata")["durability"] == "cache"
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 1)
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("GET")

    # values of 64 MiB, and more than the 64 MiB host budget in all: the store spills to NVMe
    big = os.urandom(64 << 20)
    assert r.set("big", big) is True
    others = {f"v{i}": os.urandom(4 << 20) for i in range(24)}
    pipe = r.pipeline(transaction=False)
    for key, value in others.items():
        pipe.set(key, value)
    assert all(pipe.execute())
    assert r.get("big") == big
    pipe = r.pipeline(transaction=False)
    for key in others:
        pipe.get(key)
    assert pipe.execute() == list(others.values())
    names = list(others)   # more than an MGET answered on the event loop copies: it waits, same answer
    assert r.mget(names[0], "nope", names[1]) == [others[names[0]], None, others[names[1]]]
    assert r.mget("big", "nope") == [big, None]   # a value of 16 parts, written as its parts
    assert r.strlen("big") == 64 << 20
    nvme = r.info("strata")
    assert int(nvme["nvme_blocks"]) > 0, nvme
    r.flushdb()
    assert r.dbsize() == 0 and r.get("big") is None


def set_frame(key: bytes, size: int) -> bytes:
    """The header of `SET key <size bytes>`, up to the value."""
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, size)


def test_large_values_go_straight_into_the_host_tier_and_a_cut_connection_gives_the_room_back(make_daemon):
    """A SET value of 32 KiB or more that is still arriving when its header is read is received
    straight into a slot of the host arena (INFO stats: staged_values), with no buffer in between.
    Such values read back byte for byte, NX/XX/EX hold on them, and a connection that dies in the
    middle of one leaves the key unset and gives the slot back. (On two event-loop threads,
    `kv.threads: 2`; the default on this machine's cores is one.)"""
    d, port = kv_daemon(make_daemon, extra_kv=", threads: 2")
    assert ", 2 event-loop threads," in d.log_path.read_text()
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
    assert r.set("warm", b"1")   # the first command opens the tiers; until then nothing is staged
    # 4 MiB and below: one block; above, several (the store's parts are 4 MiB), each received in place
    values = {size: os.urandom(size) for size in (32 << 10, 1 << 20, 4 << 20, (9 << 20) + 7, 16 << 20)}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for size, value in values.items():
            # the header and a first piece, a pause, then the rest: the value is still arriving
            s.sendall(set_frame(b"k%d" % size, size) + value[:1000])
            time.sleep(0.05)
            s.sendall(value[1000:] + b"\r\n")
            assert s.recv(5) == b"+OK\r\n"
    assert int(r.info("stats")["staged_values"]) >= 5
    for size, value in values.items():
        assert r.get(f"k{size}") == value
    # several-part values back to back in one write, and a command after them
    direct = int(r.info("stats")["staged_bytes_read_directly"])
    parts = [os.urandom((9 << 20) + i) for i in range(3)]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(set_frame(b"p0", len(parts[0])) + parts[0][:1000])
        time.sleep(0.05)
        s.sendall(parts[0][1000:] + b"\r\n" + b"".join(set_frame(b"p%d" % i, len(v)) + v + b"\r\n" for i, v in enumerate(parts[1:], 1))
                  + b"*2\r\n$3\r\nGET\r\n$2\r\np1\r\n")
        f = s.makefile("rb")
        assert [f.readline() for _ in parts] == [b"+OK\r\n"] * 3
        assert read_reply(f) == parts[1]
    assert r.get("p0") == parts[0] and r.get("p2") == parts[2]
    assert int(r.info("stats")["staged_bytes_read_directly"]) - direct > sum(map(len, parts)) * 9 // 10
    mib = values[1 << 20]
    assert r.set(f"k{1 << 20}", values[4 << 20], nx=True) is None and r.get(f"k{1 << 20}") == mib
    assert r.set(f"k{1 << 20}", values[4 << 20], xx=True, ex=100) is True
    assert r.get(f"k{1 << 20}") == values[4 << 20] and 0 < r.ttl(f"k{1 << 20}") <= 100
    assert r.set("absent", mib, xx=True) is None and r.exists("absent") == 0

    def staged_set(key: bytes, value: bytes, *options: bytes) -> bytes:
        """SET sent as its header and a first piece, then the rest: staged for certain."""
        words = [b"SET", key, value, *options]
        frame = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        cut = frame.index(value) + 1000
        staged = int(r.info("stats")["staged_values"])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(frame[:cut])
            time.sleep(0.05)
            s.sendall(frame[cut:])
            reply = s.recv(64)
        assert int(r.info("stats")["staged_values"]) == staged + 1, "the value went the staged way"
        return reply

    # an expired key counts as absent for NX and XX, and KEEPTTL keeps a live key's expiry
    assert r.set("expired", b"1", px=1) is True
    time.sleep(0.05)
    assert staged_set(b"expired", mib, b"XX") == b"$-1\r\n"
    assert staged_set(b"expired", mib, b"NX") == b"+OK\r\n" and r.get("expired") == mib and r.ttl("expired") == -1
    assert r.set("kept", b"1", ex=1000) is True
    assert staged_set(b"kept", mib, b"KEEPTTL") == b"+OK\r\n" and r.get("kept") == mib and 900 < r.ttl("kept") <= 1000

    r.flushdb()   # the host tier empty, so that what a refused or cut value holds shows in its usage
    wait_for(lambda: int(r.info("memory")["strata_host_used_bytes"]) == 0, 10, what="the flushed values to go")
    # a value of several parts refused by NX gives all its parts back
    assert r.set("small", b"1") is True
    assert staged_set(b"small", values[(9 << 20) + 7], b"NX") == b"$-1\r\n" and r.get("small") == b"1"
    wait_for(lambda: int(r.info("memory")["strata_host_used_bytes"]) < (1 << 20), 10, what="the refused value's parts to go")
    for size, sent in ((4 << 20, 2 << 20), (12 << 20, 6 << 20)):   # one part; three, cut in the second
        before = int(r.info("memory")["strata_host_used_bytes"])
        staged = int(r.info("stats")["staged_values"])
        cut = socket.create_connection(("127.0.0.1", port), timeout=30)
        cut.sendall(set_frame(b"cut", size) + os.urandom(sent))
        wait_for(lambda: int(r.info("stats")["staged_values"]) > staged, 10, what="the cut value to be staged")
        assert int(r.info("memory")["strata_host_used_bytes"]) >= before + size, "slots are held for all of it"
        cut.close()
        wait_for(lambda: int(r.info("memory")["strata_host_used_bytes"]) <= before, 10, what="the slots to come back")
        assert r.exists("cut") == 0


def command(*words: bytes) -> bytes:
    """A request as a client sends it (an array of bulk strings)."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def read_reply(f) -> bytes | None:
    """One bulk-string reply (or nil) from a buffered socket file."""
    head = f.readline()
    assert head.startswith(b"$"), head
    size = int(head[1:-2])
    if size < 0:
        return None
    body = f.read(size + 2)
    assert body[-2:] == b"\r\n"
    return body[:-2]


def test_get_values_are_written_from_the_host_tier_in_order_even_to_a_reader_that_stalls(make_daemon):
    """A GET's value in RAM is written to the socket from where it lies (INFO stats:
    replies_sent_directly); whatever the socket does not take at once is queued behind it. A
    client that pipelines many GETs of large values and reads nothing for a while gets every
    reply complete and in order, each value as it was when its GET ran (a SET later in the same
    pipeline does not leak into an earlier GET), with small replies in between in place."""
    d, port = kv_daemon(make_daemon)
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
    # (values under 16 KiB go out with the batch's other replies, copied; larger ones from where they lie)
    values = {f"v{i}".encode(): os.urandom(size)
              for i, size in enumerate([64 << 10, 300 << 10, 1 << 20, 5, 0, (16 << 10) - 1, 16 << 10, 4096] * 4)}
    for key, value in values.items():
        assert r.set(key, value)
    before = int(r.info("stats")["replies_sent_directly"])
    assert r.get("v0") == values[b"v0"]
    assert int(r.info("stats")["replies_sent_directly"]) == before + 1

    pipeline, expected = [], []
    for round in range(3):
        for key, value in values.items():
            pipeline.append(command(b"GET", key))
            expected.append(value)
        pipeline.append(command(b"GET", b"absent"))
        expected.append(None)
        # replaced after the GETs above ran: they answered the old value, the next round the new
        fresh = os.urandom(64 << 10)
        pipeline.append(command(b"SET", b"v0", fresh))
        expected.append(b"+OK")
        values[b"v0"] = fresh
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        s.sendall(b"".join(pipeline))
        time.sleep(1.0)   # nothing read: the server's socket fills and its writes come back short
        f = s.makefile("rb")
        for want in expected:
            if want == b"+OK":
                assert f.readline() == b"+OK\r\n"
            else:
                assert read_reply(f) == want
    assert int(r.info("stats")["replies_sent_directly"]) > before + 1
    assert r.get("v0") == values[b"v0"]


def test_a_pipeline_written_whole_before_its_replies_are_read_is_answered(make_daemon):
    """redis-py writes a whole pipeline before it reads a reply (as Jedis and hiredis do). Once
    the requests outgrow the socket buffers, a server that stops answering while its replies
    wait, and then stops reading while its commands wait, deadlocks with that client (20,000
    GETs of 1 KiB keys hung for ever); Redis keeps answering into a reply buffer, and so do we,
    up to `maxQueuedReplyBytes`."""
    d, port = kv_daemon(make_daemon)
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    key = "k" * 1024
    assert r.set(key, b"v" * 4096) is True
    pipe = r.pipeline(transaction=False)
    for _ in range(20_000):
        pipe.get(key)
    answers = pipe.execute()
    assert len(answers) == 20_000 and all(a == b"v" * 4096 for a in answers)
    assert r.ping() is True


def test_a_pipeline_whose_replies_outgrow_the_reply_buffer_is_cut_not_left_hanging(make_daemon):
    """Past `kv.reply_buffer` of replies to a client that still takes none while it writes, the
    connection is closed after 10 s and the client sees an error (it waited for ever); other
    connections are served meanwhile."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    d, port = kv_daemon(make_daemon, extra_kv=", reply_buffer: 4MiB")
    # (redis-py retries a pipeline on a connection error by default: each try would wait 10 s)
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2, retry=Retry(NoBackoff(), 0))
    key = "k" * 10240
    assert r.set(key, b"v" * 10240) is True
    pipe = r.pipeline(transaction=False)
    for _ in range(5000):   # 50 MB of requests, 50 MB of replies
        pipe.get(key)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        pipe.execute()
    assert time.monotonic() - started < 40
    assert redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2).get(key) == b"v" * 10240
    wait_for(lambda: "takes none of its replies while it sends more" in d.log_path.read_text(), 10, what="the log saying why")


def test_a_cache_value_larger_than_the_tiers_is_refused_and_evicts_nothing(make_daemon):
    """`durability: cache`: a SET larger than the NVMe tier keeps is refused with Redis's -OOM,
    and the other keys stay (it was acknowledged, gone at once or at its next read, and had
    evicted every other key making room for itself; what leaves RAM goes down to the log, so the
    host budget does not add to what one value may take)."""
    d, port = kv_daemon(make_daemon, tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 64MiB } }")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    for i in range(5):
        assert r.set(f"keep{i}", b"v" * 1000) is True
    for size in (100 << 20, (64 << 20) - 4096, (48 << 20) + 1):   # past both budgets; past the log's 48 MiB
        with pytest.raises(redis.exceptions.OutOfMemoryError, match=f"cannot store {size} bytes: the NVMe tier keeps"):
            r.set("huge", os.urandom(size))
    assert r.get("huge") is None
    assert r.dbsize() == 5 and r.get("keep0") == b"v" * 1000 and r.info("stats")["evicted_keys"] == 0
    # a value they can keep is stored as before, up to what the log keeps, and stays
    big = os.urandom(8 << 20)
    assert r.set("big", big) is True and r.get("big") == big
    largest = os.urandom(48 << 20)
    assert r.set("largest", largest) is True
    assert r.get("largest") == largest and r.get("largest") == largest


def test_auth_redis_cli_and_a_malformed_frame_closes_only_its_connection(make_daemon):
    d, port = kv_daemon(make_daemon, extra_kv=", password_env: KV_PASSWORD", env={"KV_PASSWORD": "s3cret"})
    denied = redis.Redis(host="127.0.0.1", port=port, protocol=2)
    with pytest.raises(redis.AuthenticationError):
        denied.get("x")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, password="wrong", protocol=2).ping()
    r = redis.Redis(host="127.0.0.1", port=port, password="s3cret", protocol=2)
    assert r.set("from-py", b"1")
    # RESP3 (redis-py's default) authenticates within its HELLO: `HELLO 3 AUTH default s3cret`
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, password="wrong").ping()
    r3 = redis.Redis(host="127.0.0.1", port=port, password="s3cret")
    assert r3.get("from-py") == b"1" and r3.get("nothing") is None
    assert r3.connection_pool.get_connection().protocol == 3

    cli = ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", "s3cret"]
    out = subprocess.run(cli + ["get", "from-py"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.strip() == "1", out
    out = subprocess.run(cli + ["set", "from-cli", "hello"], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "OK", out
    assert r.get("from-cli") == b"hello"

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"*1\r\n$-5\r\n")
        reply = s.recv(1024)
        assert reply.startswith(b"-ERR Protocol error"), reply
        assert s.recv(1024) == b"", "the server closes a connection after a protocol error"
    assert r.get("from-cli") == b"hello", "other connections keep working"

    # Before AUTH a client may send no more than Redis lets it (10 arguments, 16 KiB a string):
    # one that does not know the password cannot make the server buffer a large value.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(set_frame(b"huge", 200 << 20))
        reply = s.recv(1024)
        assert reply == b"-ERR Protocol error: unauthenticated bulk length\r\n", reply
        assert s.recv(1024) == b"", "closed after the refusal"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"*11\r\n")
        assert s.recv(1024) == b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    # ...and a pipelined AUTH then a large SET works as in Redis: the SET is read once AUTH has run.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        value = os.urandom(1 << 20)
        s.sendall(b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n" + set_frame(b"after-auth", len(value)) + value + b"\r\n")
        got = b""
        while got.count(b"\r\n") < 2:
            got += s.recv(1024)
        assert got == b"+OK\r\n+OK\r\n", got
    assert r.get("after-auth") == value
    # transaction commands before AUTH are answered NOAUTH, as every command Redis knows
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"MULTI\r\nEXEC\r\n")
        got = b""
        while got.count(b"\r\n") < 2:
            got += s.recv(1024)
        assert got == b"-NOAUTH Authentication required.\r\n" * 2, got


def test_redis_py_defaults_to_resp3_and_lmcaches_access_pattern_works_as_is(make_daemon):
    """redis-py 8 opens each connection with HELLO 3 unless told `protocol=2`; LMCache's redis
    connector builds its pool from the URL alone (`redis.asyncio.ConnectionPool.from_url`), so it
    meets Strata in RESP3. Here that connector's calls, through the same client library: chunks
    put as `<key>kv_bytes` then `<key>metadata`, looked up with EXISTS on the metadata until the
    first miss, read back metadata first; 150 connections at most, concurrent."""
    import asyncio
    import redis.asyncio as aioredis

    d, port = kv_daemon(make_daemon)
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)   # no protocol given: RESP3
    assert r.ping() is True
    assert r.get("missing") is None and r.set("a", b"1") is True
    assert r.mget("a", "missing") == [b"1", None]
    assert r.set("a", b"2", nx=True) is None and r.get("a") == b"1"
    assert r.exists("a", "missing") == 1 and r.ttl("a") == -1 and r.ttl("missing") == -2
    assert r.set("short", b"x", px=100) is True and r.exists("short", "a", "short") == 3
    time.sleep(0.3)
    assert r.exists("short", "a", "short") == 1 and r.dbsize() == 1   # expired: gone, for EXISTS too
    assert r.connection_pool.get_connection().protocol == 3
    assert r.info("server")["redis_version"] and r.dbsize() == 1
    assert sorted(r.scan_iter(match="*")) == [b"a"]

    chunks = {f"model@{i:04x}": os.urandom((256 << 10) + i) for i in range(48)}

    async def lmcache_like():
        pool = aioredis.ConnectionPool.from_url(f"redis://127.0.0.1:{port}", max_connections=150)
        conn = aioredis.Redis.from_pool(pool)
        sem = asyncio.Semaphore(150)

        async def put(key, data):
            async with sem:
                await conn.set(key + "kv_bytes", data)
                await conn.set(key + "metadata", len(data).to_bytes(8, "little"))

        async def get(key):
            async with sem:
                metadata = await conn.get(key + "metadata")
                if metadata is None:
                    return None
                data = await conn.get(key + "kv_bytes")
            assert data is None or len(data) == int.from_bytes(metadata, "little")
            return data

        async def contains(keys):
            hits = 0
            for key in keys:
                async with sem:
                    if not await conn.exists(key + "metadata"):
                        return hits
                hits += 1
            return hits

        await asyncio.gather(*(put(k, v) for k, v in chunks.items()))
        keys = list(chunks)
        assert await contains(keys + ["model@ffff"] + keys) == len(keys)
        got = await asyncio.gather(*(get(k) for k in keys + ["model@ffff"]))
        assert got[-1] is None
        assert got[:-1] == [chunks[k] for k in keys]
        assert (await conn.connection_pool.get_connection()).protocol == 3
        await conn.aclose()
        await pool.disconnect()

    asyncio.run(asyncio.wait_for(lmcache_like(), 120))
    assert r.dbsize() == 1 + 2 * len(chunks)

    # redis-py's default pipeline is a MULTI/EXEC transaction, which Strata does not run: it
    # fails whole, nothing of it applied; a pipeline without a transaction works
    pipe = r.pipeline()
    pipe.set("tx1", b"1")
    pipe.set("tx2", b"2")
    with pytest.raises(redis.ResponseError, match="MULTI is not supported|EXECABORT"):
        pipe.execute()
    assert r.exists("tx1", "tx2") == 0
    pipe = r.pipeline(transaction=False)
    pipe.set("tx1", b"1")
    pipe.get("tx1")
    assert pipe.execute() == [True, b"1"] and r.delete("tx1") == 1

    # redis-cli in RESP3 mode reads the same nulls (--no-raw: as it prints them on a terminal)
    out = subprocess.run(["redis-cli", "-3", "--no-raw", "-p", str(port), "get", "missing"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.strip() == "(nil)", out
    out = subprocess.run(["redis-cli", "-3", "--no-raw", "-p", str(port), "mget", "a", "missing"], capture_output=True, text=True, timeout=20)
    assert out.stdout.split("\n")[:2] == ['1) "1"', "2) (nil)"], out


def test_config_refuses_unsafe_or_unknown_settings(make_daemon):
    from conftest import STRATA
    for kv, why in (("{ resp: 0.0.0.0:6390 }", "password_env"), ("{ durability: always }", "expected cache or durable"),
                    ("{ password_env: NOT_SET_ANYWHERE }", "NOT_SET_ANYWHERE is not set"), ("{ port: 1 }", "unknown key"),
                    ("{ threads: 0 }", "kv.threads"), ("{ send_buffer: 1KiB }", "out of range"),
                    ("{ send_buffer: lots }", "not a size"), ("{ reply_buffer: 1KiB }", "expected 1MiB to 64GiB"),
                    ("{ notsent_lowat: 100B }", "100 bytes is out of range (expected 0 to leave it unset, or 1KiB to 64MiB)"),
                    ("{ reply_buffer_total: 2TiB }", "2199023255552 bytes is out of range (expected 1MiB to 1TiB)")):
        d = make_daemon(config("  []", extra=f"kv: {kv}"), start=False)
        out = subprocess.run([str(STRATA), "config", "check", str(d.config_path)], capture_output=True, text=True)
        assert out.returncode == 2 and "kv." in out.stderr and why in out.stderr, (kv, out.stderr)


def test_send_buffer_applies_to_each_connection(make_daemon):
    import re
    # The kernel doubles SO_SNDBUF for its bookkeeping; `ss -m` shows the result as tb.
    for extra, expected in (("", 2 * 128 * 1024), (", send_buffer: 64KiB", 2 * 64 * 1024)):
        d, port = kv_daemon(make_daemon, extra_kv=extra)
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
        assert r.set("k", b"v" * 50_000) is True and len(r.get("k")) == 50_000   # under either buffer: not raised
        out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
        sizes = [int(m) for m in re.findall(r"\btb(\d+)", out)]
        assert sizes == [expected], (extra, out)
        r.close()
        d.stop()


def test_a_large_reply_waits_in_the_daemon_not_unsent_in_the_socket(make_daemon):
    """`kv.notsent_lowat` (default 64 KiB): a client that asks for a 4 MiB value and does not
    read leaves at most about that much of the reply unsent in the server's socket (`ss -i`
    notsent; the kernel may overshoot by one packet of up to 64 KiB); the rest waits in the
    daemon and reaches the client whole once it reads. Set to 0, the socket takes megabytes."""
    import re

    def notsent(port: int) -> int:
        out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
        return sum(int(m) for m in re.findall(r"\bnotsent:(\d+)", out))

    value = os.urandom(4 << 20)
    for extra, limit in (("", 64 << 10), (", notsent_lowat: 16KiB", 16 << 10), (", notsent_lowat: 0", None)):
        d, port = kv_daemon(make_daemon, extra_kv=extra)
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
        assert r.set("big", value) is True
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(command(b"GET", b"big"))
        # Not reading: the client's receive window fills; what the socket holds beyond it is unsent.
        samples = []
        deadline = time.time() + 5
        while time.time() < deadline:
            samples.append(notsent(port))
            if limit is None and samples[-1] > 1 << 20:
                break
            time.sleep(0.05)
        if limit is None:
            assert max(samples) > 1 << 20, (extra, samples[-5:])
        else:
            assert 0 < max(samples) <= limit + (64 << 10), (extra, max(samples))
        assert read_reply(s.makefile("rb")) == value, extra
        s.close()
        r.close()
        d.stop()


def test_send_buffer_grows_to_hold_a_large_reply_whole(make_daemon):
    """A GET whose value is larger than the connection's send buffer raises the buffer to the
    value's size (the kernel doubles it and caps it at net.core.wmem_max), once, so that the reply
    goes to the socket in one write instead of a few with waits for the client between them.
    Smaller replies leave it alone, and so does a connection whose buffer the kernel autotunes."""
    import re
    wmem_max = int(open("/proc/sys/net/core/wmem_max").read())

    def send_buffer(port: int) -> int:
        out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
        sizes = [int(m) for m in re.findall(r"\btb(\d+)", out)]
        assert len(sizes) == 1, out
        return sizes[0]

    d, port = kv_daemon(make_daemon)
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
    big, bigger = os.urandom(1 << 20), os.urandom(3 << 20)
    r.set("small", b"s" * 100_000)
    r.set("big", big)
    r.set("bigger", bigger)
    assert r.get("small") == b"s" * 100_000
    assert send_buffer(port) == 2 * 128 * 1024 and r.info("stats")["send_buffer_raises"] == 0
    assert r.get("big") == big
    assert send_buffer(port) == 2 * min(1 << 20, wmem_max) and r.info("stats")["send_buffer_raises"] == 1
    assert r.get("big") == big and r.get("small") == b"s" * 100_000
    assert r.info("stats")["send_buffer_raises"] == 1, "no raise for a value the buffer already holds"
    assert r.get("bigger") == bigger
    assert send_buffer(port) == 2 * min(3 << 20, wmem_max) and r.info("stats")["send_buffer_raises"] == 2
    r.close()
    d.stop()

    d, port = kv_daemon(make_daemon, extra_kv=", send_buffer: 0")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
    r.set("big", big)
    assert r.get("big") == big and r.info("stats")["send_buffer_raises"] == 0
    r.close()
    d.stop()


def test_http_block_api_shares_the_store_with_resp(make_daemon):
    import base64
    import json
    import requests
    d, port = kv_daemon(make_daemon)
    key = {"Authorization": "Bearer test-key-1"}
    url = f"{d.url}/v1/blocks"
    block = os.urandom(3 << 20)
    assert requests.put(f"{url}/layer%2F0:chunk-7", data=block).status_code == 401, "API keys apply"
    put = requests.put(f"{url}/layer%2F0:chunk-7", data=block, headers=key)
    assert put.status_code == 201 and put.json() == {"stored": True, "bytes": len(block)}, put.text
    got = requests.get(f"{url}/layer%2F0:chunk-7", headers=key)
    assert got.status_code == 200 and got.content == block
    head = requests.head(f"{url}/layer%2F0:chunk-7", headers=key)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(block) and head.content == b""
    # the same store as RESP: a value set over one face is read over the other
    r = redis.Redis(host="127.0.0.1", port=port, protocol=2)
    assert r.get("layer/0:chunk-7") == block
    # a block of several of the store's 4 MiB parts, written as its parts, with its length
    several = os.urandom((9 << 20) + 7)
    assert requests.put(f"{url}/several", data=several, headers=key).status_code == 201
    got = requests.get(f"{url}/several", headers=key)
    assert got.status_code == 200 and got.content == several and int(got.headers["Content-Length"]) == len(several)
    assert r.get("several") == several
    # HEAD gives the length from the key directory, reading no block of the value
    reads = lambda: {k: v for k, v in r.info("strata").items() if k.endswith("_hits")}
    before = reads()
    head = requests.head(f"{url}/several", headers=key)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(several)
    assert reads() == before, "HEAD read the value"
    assert requests.head(f"{url}/missing", headers=key).status_code == 404
    r.set("from-resp", b"abc")
    assert requests.get(f"{url}/from-resp", headers=key).content == b"abc"
    # escapes decode to bytes, as RESP keys are: %FF is the byte 0xFF, %25FF the text "%FF"
    r.set(b"bin\xfe\xffkey", b"binary")
    assert requests.get(f"{url}/bin%FE%FFkey", headers=key).content == b"binary"
    assert requests.put(f"{url}/%25FF", data=b"percent", headers=key).status_code == 201 and r.get("%FF") == b"percent"
    assert requests.get(f"{url}/%FF", headers=key).status_code == 404, "not an alias of the text %FF"
    import http.client   # (requests would re-quote the malformed escape)
    conn = http.client.HTTPConnection("127.0.0.1", int(d.url.rsplit(":", 1)[1]), timeout=30)
    conn.request("GET", "/v1/blocks/bad%G1", headers=key)
    assert conn.getresponse().status == 400
    conn.close()
    # tenants do not see each other's blocks
    assert requests.get(f"{url}/from-resp?namespace=tenant-b", headers=key).status_code == 404
    batch = requests.post(f"{url}/batch-get", json={"keys": ["from-resp", "missing", "layer/0:chunk-7"]}, headers=key)
    assert batch.status_code == 200, batch.text
    blocks = batch.json()["blocks"]
    assert [b["key"] for b in blocks] == ["from-resp", "missing", "layer/0:chunk-7"]
    assert base64.b64decode(blocks[0]["value_base64"]) == b"abc" and blocks[1]["value_base64"] is None
    assert base64.b64decode(blocks[2]["value_base64"]) == block
    # a batch reads a tenant's blocks by `?namespace=` as the other routes do (or a "namespace" in the body)
    assert requests.put(f"{url}/nk?namespace=t1", data=b"t1 value", headers=key).status_code == 201
    for how in ({"params": {"namespace": "t1"}, "json": {"keys": ["nk"]}}, {"json": {"keys": ["nk"], "namespace": "t1"}}):
        got = requests.post(f"{url}/batch-get", headers=key, **how)
        assert got.status_code == 200 and base64.b64decode(got.json()["blocks"][0]["value_base64"]) == b"t1 value", got.text
    assert requests.post(f"{url}/batch-get", json={"keys": ["nk"]}, headers=key).json()["blocks"][0]["value_base64"] is None
    for bad in ({"keys": ["nk"], "namespace": 5}, {"keys": [""]}, {"keys": ["x" * 4097]}):
        assert requests.post(f"{url}/batch-get", json=bad, headers=key).status_code == 400, bad
    # a block named batch-get is a block like any other on GET, PUT, HEAD and DELETE
    r.set("batch-get", b"bg")
    assert requests.get(f"{url}/batch-get", headers=key).content == b"bg"
    assert requests.put(f"{url}/batch-get", data=b"bg2", headers=key).status_code == 201 and r.get("batch-get") == b"bg2"
    assert int(requests.head(f"{url}/batch-get", headers=key).headers["Content-Length"]) == 3
    assert requests.delete(f"{url}/batch-get", headers=key).status_code == 200 and r.get("batch-get") is None
    # errors: missing block, bad batch, too large
    missing = requests.get(f"{url}/missing", headers=key)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_such_block"
    assert requests.post(f"{url}/batch-get", data=b"nope", headers=key).status_code == 400
    assert requests.put(f"{url}/huge", data=b"\0" * (65 << 20), headers=key).status_code == 413
    # a body announced too large is refused at once, not after 64 MiB of it has come in
    with socket.create_connection(("127.0.0.1", int(d.url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(b"PUT /v1/blocks/huge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key-1\r\n"
                  b"Content-Length: 999999999999\r\n\r\n" + b"\0" * 1024)
        assert s.recv(4096).startswith(b"HTTP/1.1 413"), "answered before the body"
    # a PUT with neither a length nor chunks: refused, not stored empty; chunked and empty ones go
    with socket.create_connection(("127.0.0.1", int(d.url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(b"PUT /v1/blocks/nolength HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key-1\r\n\r\n")
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 411") and b"length_required" in answer, answer
    assert r.exists("nolength") == 0
    chunked = requests.put(f"{url}/chunked", data=iter([b"ab", b"cd"]), headers=key)
    assert chunked.status_code == 201 and r.get("chunked") == b"abcd", chunked.text
    assert requests.put(f"{url}/empty", data=b"", headers=key).status_code == 201 and r.get("empty") == b""
    # an empty or overlong namespace is refused, not a namespace of its own
    for namespace in ("", "n" * 257):
        bad = requests.put(f"{url}/e", params={"namespace": namespace}, data=b"x", headers=key)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "namespace", bad.text
    assert r.exists("e") == 0
    # other methods on a block are told which it takes
    for method in ("POST", "PATCH"):
        wrong = requests.request(method, f"{url}/from-resp", data=b"x", headers=key)
        assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, HEAD, PUT, DELETE", (method, wrong.status_code, wrong.text)
    options = requests.options(f"{url}/from-resp", headers=key)
    assert options.status_code == 204 and options.headers["Allow"] == "GET, HEAD, PUT, DELETE, OPTIONS", (options.status_code, options.text)
    options = requests.options(f"{url}/batch-get", headers=key)
    assert options.status_code == 204 and "POST" in options.headers["Allow"] and "GET" in options.headers["Allow"], options.headers
    assert requests.delete(f"{url}/from-resp", headers=key).status_code == 200
    assert requests.delete(f"{url}/from-resp", headers=key).status_code == 404
    assert r.get("from-resp") is None


def test_a_tenants_blocks_are_its_own_and_a_batch_answer_is_bounded(make_daemon):
    """A key of a configured tenant works in that tenant's namespace (or below it) and no other;
    no other key reaches it. A batch-get is refused before it reads anything when its blocks
    would make an answer over 64 MiB (it is built whole in memory)."""
    import requests
    port = free_port()
    d = make_daemon(config("  []", extra=f"kv: {{ resp: 127.0.0.1:{port} }}\ntenants:\n  - {{ name: clinic, api_keys_env: CLINIC_KEYS }}",
                           tiers="{ host: { budget: 256MiB, dir: @SHM@ }, nvme: { budget: 1GiB } }"),
                    env={"CLINIC_KEYS": "clinic-key"})
    wait_for(lambda: "RESP (Redis protocol) on" in d.log_path.read_text(), 20, what="the RESP server")
    url = f"{d.url}/v1/blocks"
    default, clinic = {"Authorization": "Bearer test-key-1"}, {"Authorization": "Bearer clinic-key"}
    assert requests.put(f"{url}/secret", data=b"clinic data", headers=clinic).status_code == 201
    assert requests.put(f"{url}/secret?namespace=clinic/sub", data=b"below", headers=clinic).status_code == 201
    assert requests.put(f"{url}/mine", data=b"default data", headers=default).status_code == 201
    assert requests.get(f"{url}/secret", headers=clinic).content == b"clinic data"
    assert requests.get(f"{url}/secret?namespace=clinic/sub", headers=clinic).content == b"below"
    assert requests.get(f"{url}/secret", headers=default).status_code == 404, "the default key's namespace is its own"
    for method in ("GET", "HEAD", "DELETE", "PUT"):
        other = requests.request(method, f"{url}/secret?namespace=clinic", headers=default, data=b"x")
        assert other.status_code == 403, (method, other.status_code)
        mine = requests.request(method, f"{url}/mine?namespace=default", headers=clinic, data=b"x")
        assert mine.status_code == 403, (method, mine.status_code)
    assert requests.get(f"{url}/secret?namespace=clinic/sub", headers=default).status_code == 403
    denied = requests.post(f"{url}/batch-get", json={"keys": ["secret"], "namespace": "clinic"}, headers=default)
    assert denied.status_code == 403 and "belongs to tenant 'clinic'" in denied.json()["error"]["message"], denied.text
    assert requests.get(f"{url}/secret", headers=clinic).content == b"clinic data", "nothing another key did reached it"
    assert requests.get(f"{url}/mine", headers=default).content == b"default data"

    # a batch of one 40 MiB block is answered; twice that is refused, having read nothing
    big = os.urandom(40 << 20)
    assert requests.put(f"{url}/big", data=big, headers=default).status_code == 201
    one = requests.post(f"{url}/batch-get", json={"keys": ["big"]}, headers=default)
    assert one.status_code == 200 and len(one.json()["blocks"][0]["value_base64"]) > (40 << 20)
    # answers under way share a 256 MiB bound; each gives its share back once written
    for _ in range(8):
        assert requests.post(f"{url}/batch-get", json={"keys": ["big"]}, headers=default).status_code == 200
    two = requests.post(f"{url}/batch-get", json={"keys": ["big", "big"]}, headers=default)
    assert two.status_code == 413 and two.json()["error"]["code"] == "batch_too_large", two.text
    for bad, says in (({"keys": ["a", 1]}, "list of strings"), ({"keys": ["k"] * 1025}, "at most 1024")):
        refused = requests.post(f"{url}/batch-get", json=bad, headers=default)
        assert refused.status_code == 400 and says in refused.json()["error"]["message"], refused.text


def test_durable_values_survive_sigkill_byte_identical(make_daemon):
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    values = {f"k{i}": os.urandom(size) for i, size in enumerate([1, 4096, 65536, 1 << 20, (9 << 20) + 7])}
    for key, value in values.items():
        assert r.set(key, value) is True
    assert r.set("ttl", b"x", ex=3600) is True
    assert r.set("gone", b"y") is True and r.delete("gone") == 1
    r.set("k0", b"replaced")
    values["k0"] = b"replaced"
    assert r.info("strata")["durability"] == "durable"
    # acknowledged = durable: SIGKILL, no shutdown of any kind
    r = kill_and_restart(d, port, starts=2)
    for key, value in values.items():
        assert r.get(key) == value, key
    assert r.get("gone") is None
    assert 0 < r.ttl("ttl") <= 3600
    assert r.dbsize() == len(values) + 1
    assert sorted(r.scan_iter(count=2)) == sorted([k.encode() for k in values] + [b"ttl"])


def test_pipelined_durable_sets_commit_together_and_survive_sigkill(make_daemon):
    """redis-py pipelines plain SETs to a durable store, which puts a run of them at once and
    commits them in one transaction: every SET answers OK, a key set twice keeps the later
    value, a GET in the middle sees the SETs before it, and after SIGKILL every value (and an
    MSET's) reads back byte-identical."""
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    pipe = r.pipeline(transaction=False)
    values, seen_by_get = {}, None
    for i in range(40):
        key, value = f"p{i % 30}", os.urandom(4096 + 61 * i)
        pipe.set(key, value)
        values[key] = value
        if i == 20:
            pipe.get("p0")
            seen_by_get = values["p0"]
    results = pipe.execute()
    assert results[21] == seen_by_get
    assert results[:21] + results[22:] == [True] * 40
    assert r.get("p5") == values["p5"]
    many = {f"m{i}": os.urandom(70_000 + i) for i in range(12)}
    assert r.mset(many) is True
    values.update(many)
    # more parts than are put at once (32, 64 MiB): 20 values of two 4 MiB parts each
    large = {f"l{i}": os.urandom((4 << 20) + 1 + i) for i in range(20)}
    assert r.mset(large) is True
    values.update(large)
    # a pipelined run of SETs whose values are received in buffers of the store's 4 MiB parts
    # (staged), put as those parts and committed together
    staged_before = r.info("stats")["staged_values"]
    pipe = r.pipeline(transaction=False)
    received = {f"s{i}": os.urandom(size) for i, size in enumerate([(9 << 20) + 3, 100_000, 4 << 20, 8 << 20])}
    for key, value in received.items():
        pipe.set(key, value)
    assert pipe.execute() == [True] * len(received)
    # (The three of 4 MiB or more cannot come in one read; the 100 kB one may, on a loaded
    # machine, and is then parsed whole, not staged.)
    assert r.info("stats")["staged_values"] - staged_before in (3, 4)
    assert r.get("s0") == received["s0"]
    values.update(received)
    r = kill_and_restart(d, port, starts=2)
    assert [key for key, value in values.items() if r.get(key) != value] == []
    assert r.dbsize() == len(values)


def test_concurrent_durable_writes_cut_by_sigkill_lose_nothing_acknowledged(make_daemon):
    """Clients writing at once share commits (group commit): SIGKILL while they write, and
    every value acknowledged before the kill reads back byte-identical after the restart; a
    write under way at the kill is absent or whole, never torn or another key's bytes."""
    import threading
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable")
    acknowledged, in_flight = {}, {}
    stop = threading.Event()

    def writer(w):
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2)
        n = 0
        while not stop.is_set() and n < 2000:
            key, value = f"w{w}-{n}", os.urandom(4096 + 997 * (n % 70))
            in_flight[w] = (key, value)
            try:
                if r.set(key, value) is True:
                    acknowledged[key] = value
            except (redis.ConnectionError, redis.TimeoutError):
                return
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acknowledged) >= 300, 60, interval=0.02, what="300 acknowledged writes")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(20)
    d.start()
    wait_for(lambda: d.log_path.read_text().count("RESP (Redis protocol) on") >= 2, 20, what="RESP after restart")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    missing = [key for key, value in acknowledged.items() if r.get(key) != value]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged values lost or changed: {missing[:5]}"
    for key, value in in_flight.values():
        assert r.get(key) in (None, value), key
    assert r.dbsize() in range(len(acknowledged), len(acknowledged) + len(in_flight) + 1)


def test_durable_sets_of_one_key_at_once_keep_the_last_committed_after_sigkill(make_daemon):
    """Eight clients SET the same key at the same moment, key after key (durable SETs of a key
    run together and share commits; some come as a pipelined run of three): each key then holds
    one of the values written to it, the same for GET, MGET and SCAN, and after a SIGKILL and
    restart every key reads back that value: the directory and the catalog agree on which
    write came last."""
    import threading
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable")
    rounds, writers = 60, 8
    keys = [f"race{i}" for i in range(rounds)]
    written = {key: set() for key in keys}
    barrier = threading.Barrier(writers)
    errors = []

    def writer(w):
        c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
        try:
            for i, key in enumerate(keys):
                value = f"{key}/writer{w}/".encode() * (1 + (i * 37 + w * 11) % 400)
                runs = [value + str(m).encode() for m in range(3)] if (i + w) % 4 == 0 else [value]
                written[key].update(runs)
                barrier.wait(20)
                if len(runs) > 1:
                    pipe = c.pipeline(transaction=False)
                    for run in runs:
                        pipe.set(key, run)
                    assert pipe.execute() == [True] * len(runs)
                else:
                    assert c.set(key, value) is True
        except Exception as error:   # noqa: BLE001 (reported below)
            errors.append(repr(error))
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    before = {key: r.get(key) for key in keys}
    for key, value in before.items():
        assert value in written[key], (key, value[:60] if value else value)
    assert r.mget(keys) == [before[key] for key in keys]
    assert sorted(r.scan_iter(match="race*", count=1000)) == sorted(k.encode() for k in keys)
    r = kill_and_restart(d, port, starts=2)
    after = {key: r.get(key) for key in keys}
    changed = [key for key in keys if after[key] != before[key]]
    assert not changed, (f"{len(changed)} of {rounds} keys changed by the restart",
                         [(key, (before[key] or b"")[:30], (after[key] or b"")[:30]) for key in changed[:3]])
    assert r.dbsize() == len(keys)


def test_sets_racing_flushdb_leave_the_directory_and_the_catalog_agreeing(make_daemon):
    """A durable SET that a FLUSHDB overlaps is ordered before it or after it, never half: every
    key readable when writing stops is there after a SIGKILL and restart, and no other."""
    import threading
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable")
    for round_ in range(3):
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
        stop, acknowledged = threading.Event(), {}

        def setter():
            c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
            n = 0
            while not stop.is_set():
                key = f"r{round_}-{n}"
                value = key.encode() * 20
                c.set(key, value)
                acknowledged[key] = value
                n += 1

        def flusher():
            c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
            for _ in range(12):
                time.sleep(0.08)
                c.flushdb()

        setters = [threading.Thread(target=setter) for _ in range(4)]
        flushing = threading.Thread(target=flusher)
        for t in setters + [flushing]:
            t.start()
        flushing.join(30)
        time.sleep(0.2)
        stop.set()
        for t in setters:
            t.join(30)
        readable = {key for key, value in acknowledged.items() if r.get(key) == value}
        assert r.dbsize() == len(readable)
        r = kill_and_restart(d, port, starts=round_ + 2)
        after = {key for key, value in acknowledged.items() if r.get(key) == value}
        assert after == readable, (sorted(readable - after)[:5], sorted(after - readable)[:5])
        assert r.dbsize() == len(readable)
        r.flushdb()


def test_overwritten_values_make_room_before_live_ones(make_daemon):
    """The NVMe log reclaims whole segments past its budget: the one holding the fewest live
    values goes, so a key written once survives a churn of overwrites (here 60 MiB through a
    32 MiB budget, about 1 MiB live), across a SIGKILL too."""
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable",
                        tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 32MiB, segment_size: 8MiB } }")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    keeper = os.urandom(1024)
    assert r.set("keeper", keeper) is True
    churn = os.urandom(1 << 20)
    for _ in range(60):
        assert r.set("churn", churn) is True
    assert r.info("stats")["evicted_keys"] == 0
    r = kill_and_restart(d, port, starts=2)
    # the first command after the restart already sees the recovered directory
    assert r.info("memory")["used_memory"] == 1024 + (1 << 20)
    assert r.get("keeper") == keeper
    assert r.get("churn") == churn
    assert r.dbsize() == 2
    # a value larger than the log keeps is refused, not acknowledged and then gone
    with pytest.raises(redis.ResponseError, match="cannot store"):
        r.set("big", os.urandom(40 << 20))
    assert r.exists("big") == 0 and r.get("keeper") == keeper


def test_nvme_room_of_deleted_values_and_of_a_cache_run_before_a_restart_is_given_back(make_daemon):
    """Values spilled to NVMe and then deleted kept their segments, counted in INFO as used,
    until the budget was next exceeded; and in `cache` mode, which starts empty, a restart found
    the last run's blocks (123 MiB in QA's run) and kept counting them, though no key named them."""
    d, port = kv_daemon(make_daemon, tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB, segment_size: 6MiB } }")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)

    # (A loaded machine's demotion writer may drop some, so the spill is only asked to fill
    # several segments; what must go is everything but the active one.)
    def nvme_used():
        return int(r.info("memory")["strata_nvme_used_bytes"])

    value = os.urandom(1 << 20)
    for i in range(60):
        assert r.set(f"v{i}", value) is True
    wait_for(lambda: nvme_used() > 18 << 20, 20, what="values spilled to NVMe")
    assert r.delete(*[f"v{i}" for i in range(60)]) == 60
    wait_for(lambda: nvme_used() <= 6 << 20, 20, what="the deleted values' segments given back (the active one stays)")

    for i in range(40):
        assert r.set(f"w{i}", value) is True
    wait_for(lambda: nvme_used() > 18 << 20, 20, what="values spilled again")
    assert d.stop() == 0
    d.start()
    wait_for(lambda: d.log_path.read_text().count("RESP (Redis protocol) on") >= 2, 20, what="RESP after restart")
    # dropped as the service opens, before any command asks (the first INFO counted them)
    wait_for(lambda: "block(s) of values an earlier run left on NVMe" in d.log_path.read_text(), 20,
             what="the last run's blocks dropped with no command")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    assert nvme_used() <= 6 << 20
    assert r.dbsize() == 0, "cache mode starts empty"
    assert r.set("after", value) is True and r.get("after") == value


def test_durable_msets_past_the_budget_evict_old_values_and_never_wedge(make_daemon):
    """MSETs of multi-part values through a budget a few of them fill: each is acknowledged, the
    oldest values make room (counted as evicted), a small key written once in between stays
    while it is among the live ones, and the tier keeps taking writes (a segment reclaimed
    while parts were written to it once lowered the budget to nothing)."""
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable",
                        tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 32MiB, segment_size: 8MiB } }")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    for batch in range(6):
        values = {f"m{batch}-{i}": os.urandom((4 << 20) + 1) for i in range(3)}
        assert r.mset(values) is True, batch
        assert all(r.get(key) == value for key, value in values.items()), batch
    assert r.info("stats")["evicted_keys"] > 0
    assert r.set("after", os.urandom(12 << 20)) is True
    # said in the log, not only counted (once a minute at most)
    lines = [l for l in d.log_path.read_text().splitlines() if "durable value(s) evicted" in l]
    assert len(lines) == 1 and "tiers.nvme.budget" in lines[0], lines


def test_a_flushdb_between_two_sets_of_a_key_leaves_the_last_committed_after_sigkill(make_daemon):
    """A large durable SET of a key under way, then FLUSHDB, then a small SET of the same key,
    which commits first: whichever of the two the directory keeps, the catalog keeps too, so
    the key reads the same after a SIGKILL and restart (it was lost when the large SET, ordered
    before the flush, took its record away from under the small one)."""
    import threading
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable")
    keys = [f"f{i}" for i in range(4)]
    large = {key: os.urandom(20 << 20) for key in keys}
    small = {key: f"small {key}".encode() for key in keys}
    errors = []

    def large_set(key):
        try:
            c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
            assert c.set(key, large[key]) is True
        except Exception as error:   # noqa: BLE001 (reported below)
            errors.append(repr(error))

    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    for round_, delay in enumerate((0.01, 0.02, 0.04, 0.06, 0.08, 0.1)):
        threads = [threading.Thread(target=large_set, args=(key,)) for key in keys]
        for t in threads:
            t.start()
        time.sleep(delay)
        assert r.flushdb() is True
        for key in keys:
            assert r.set(key, small[key]) is True
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        before = {key: r.get(key) for key in keys}
        for key, value in before.items():
            assert value in (small[key], large[key]), (key, (value or b"")[:20])
        r = kill_and_restart(d, port, starts=round_ + 2)
        after = {key: r.get(key) for key in keys}
        lost = [key for key in keys if after[key] != before[key]]
        assert not lost, (delay, [(key, len(before[key] or b""), len(after[key] or b"")) for key in lost])
        assert r.dbsize() == len(keys)


def test_writes_that_read_the_key_racing_flushdb_never_bring_a_key_back(make_daemon):
    """EXPIRE, SET XX and SET KEEPTTL of keys that exist, from several clients, while FLUSHDB
    runs: each lands wholly before the flush (and goes with it) or after it (and finds no key),
    so nothing is left, before a SIGKILL and restart or after (an EXPIRE wrote the key's whole
    record back after the flush removed it; a SET XX that read the key before the flush wrote
    it after)."""
    import threading
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    for round_ in range(3):
        keys = [f"x{round_}-{i}" for i in range(120)]
        for key in keys:
            assert r.set(key, b"v" * 1000) is True
        errors, start = [], threading.Barrier(5)

        def writer(w):
            try:
                c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
                start.wait(20)
                for i, key in enumerate(keys[w::4]):
                    kind = (i + w) % 3
                    if kind == 0:
                        c.expire(key, 1000)
                    elif kind == 1:
                        c.set(key, os.urandom(256 << 10), xx=True)
                    else:
                        c.set(key, os.urandom(256 << 10), keepttl=True, xx=True)
            except Exception as error:   # noqa: BLE001 (reported below)
                errors.append(repr(error))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        start.wait(20)
        time.sleep(0.01 * (round_ + 1))
        assert r.flushdb() is True
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        assert not errors, errors[:3]
        left = sorted(r.scan_iter(count=1000))
        assert left == [], left[:5]
        r = kill_and_restart(d, port, starts=round_ + 2)
        back = sorted(r.scan_iter(count=1000))
        assert back == [] and r.dbsize() == 0, (round_, len(back), back[:5])


def test_durable_set_nx_lets_exactly_one_of_two_racing_writers_win(make_daemon):
    import threading
    d, port = kv_daemon(make_daemon, extra_kv=", durability: durable")
    wins = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def writer(w):
        c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
        for i in range(150):
            barrier.wait(10)
            if c.set(f"nx{i}", f"writer{w}".encode() * 100, nx=True):
                wins[w].append(i)

    threads = [threading.Thread(target=writer, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    both = set(wins[0]) & set(wins[1])
    assert not both, f"both writers won {len(both)} keys: {sorted(both)[:5]}"
    assert sorted(wins[0] + wins[1]) == list(range(150))
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
    for i in range(150):
        assert r.get(f"nx{i}") == (b"writer0" if i in wins[0] else b"writer1") * 100


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a capped tmpfs needs root")
def test_keys_whose_values_the_tiers_evicted_leave_the_directory(make_daemon):
    """`cache` durability over tiers far smaller than what is written (16 MiB of RAM over a
    32 MiB log): the oldest values are evicted, and their keys go with them, not only when a
    GET finds them missing: DBSIZE, SCAN, EXISTS and INFO count only the values the store
    holds, and the directory does not grow with every key ever written."""
    d, port = kv_daemon(make_daemon, tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 32MiB, segment_size: 8MiB } }")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
    values = {f"v{i}": os.urandom(1 << 20) for i in range(120)}
    for key, value in values.items():
        assert r.set(key, value) is True

    def held():   # STRLEN looks for every part in the tiers without reading (or promoting) any
        return {key for key in values if r.strlen(key) == len(values[key])}

    wait_for(lambda: r.dbsize() == len(held()), 20, what="the directory to drop the evicted keys")
    kept = held()
    assert "v119" in kept and "v0" not in kept and len(kept) <= 48, sorted(kept)
    assert set(k.decode() for k in r.scan_iter(count=1000)) == kept
    assert r.exists(*values) == len(kept)
    info = r.info()
    assert info["evicted_keys"] == len(values) - len(kept), info
    assert info["used_memory"] == len(kept) << 20
    for key in sorted(kept)[-4:]:
        assert r.get(key) == values[key]
    assert r.get("v0") is None


def test_a_disk_smaller_than_the_nvme_budget_keeps_the_newest_values_and_never_wedges(make_daemon, tmp_path):
    """tiers.nvme.budget 1 GiB on a 48 MiB filesystem, durable writes of 150 MiB through redis-py:
    every SET is acknowledged (the tier keeps what the filesystem holds, oldest values going
    first, and says so in the log) rather than the filesystem filling and every later write
    failing; what is kept reads back byte-identical, also after a SIGKILL and restart."""
    import requests
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(small)], check=True)
    try:
        d, port = kv_daemon(make_daemon, extra_kv=", durability: durable",
                            tiers=f"{{ host: {{ budget: 16MiB, dir: @SHM@ }}, nvme: {{ budget: 1GiB, dir: {small}/nvme, segment_size: 8MiB }} }}")
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
        values = {f"k{i}": os.urandom(1 << 20) for i in range(150)}
        for key, value in values.items():
            assert r.set(key, value) is True, key
        wait_for(lambda: "cannot hold tiers.nvme.budget" in d.log_path.read_text(), 20, what="the warning")
        import json
        from conftest import ADMIN_KEY
        nvme = json.loads(d.get("/admin/tiers", headers={"Authorization": f"Bearer {ADMIN_KEY}"})[1])["nvme"]
        assert nvme["budget_bytes"] == 1 << 30 and nvme["effective_budget_bytes"] < 48 << 20, nvme

        def kept():
            got = {key: r.get(key) for key in values}
            assert all(v == values[k] for k, v in got.items() if v is not None), "a kept value differs"
            return [k for k, v in got.items() if v is not None]

        def directory_holds_only_what_the_tiers_hold():   # STRLEN finds every part without reading any
            return r.dbsize() == sum(1 for key in [*values, "after"] if r.strlen(key) > 0)

        # evicted values leave the directory (and the catalog), and are absent to STRLEN and HEAD
        wait_for(directory_holds_only_what_the_tiers_hold, 20, what="the evicted keys to leave the directory")
        assert r.strlen("k149") == 1 << 20 and r.strlen("k0") == 0
        headers = {"Authorization": "Bearer test-key-1"}
        assert requests.head(f"{d.url}/v1/blocks/k1", headers=headers).status_code == 404
        assert int(requests.head(f"{d.url}/v1/blocks/k149", headers=headers).headers["Content-Length"]) == 1 << 20
        before = kept()
        assert "k149" in before and "k0" not in before and len(before) >= 10, before
        # it does not wedge: after deletes and more writes, writes still go
        assert r.delete(*before[:5]) == 5
        assert r.set("after", b"x" * (1 << 20)) is True
        r = kill_and_restart(d, port, starts=2)
        assert r.get("after") == b"x" * (1 << 20)
        wait_for(directory_holds_only_what_the_tiers_hold, 20, what="the directory after the restart")
        kept()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_memory_freed_by_a_large_pipeline_goes_back_to_the_system_once_idle(make_daemon):
    """A pipeline read only once written whole has its replies buffered (here ~200 MB of them);
    once they are taken, glibc kept the freed memory in its arenas for good (the daemon's RSS
    stayed hundreds of MB to gigabytes above what it holds; redis-server returns to its size).
    After 10–20 s with no command, the daemon gives it back."""
    d, port = kv_daemon(make_daemon)
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, protocol=2)
    key = "k" * 1024   # long requests: the client is still writing while the replies pile up
    assert r.set(key, b"v" * 4096) is True
    before = rss_bytes(d.proc.pid)
    pipe = r.pipeline(transaction=False)
    for _ in range(50_000):
        pipe.get(key)
    assert pipe.execute() == [b"v" * 4096] * 50_000
    peak = rss_bytes(d.proc.pid)
    print(f"RSS before {before >> 20} MiB, after the pipeline {peak >> 20} MiB")
    assert peak > before + (100 << 20), "the replies took memory (else this test shows nothing)"
    wait_for(lambda: rss_bytes(d.proc.pid) < before + (64 << 20), 30, what="the daemon's resident memory to fall back")
    print(f"RSS once idle {rss_bytes(d.proc.pid) >> 20} MiB")
    assert r.get(key) == b"v" * 4096


def test_replies_waiting_on_all_connections_stay_under_reply_buffer_total(make_daemon):
    """Each connection buffers at most `reply_buffer` for a client still writing its pipeline;
    all of them together at most `reply_buffer_total` (two such clients held 2 × 64 MiB here; a
    few hundred would exhaust the host), beyond what a connection holds while its channel is
    writable (up to the 1 MiB high-water mark, and a reply: the limit holds back only replies
    queued past it). A connection held back by the others goes on once their replies are taken,
    and every reply arrives whole. (A connection that started once the other was held added its
    writable 1 MiB to the total in a fresh-clone run: 144 replies of 64 KiB against 8 MiB.)"""
    import threading
    d, port = kv_daemon(make_daemon, extra_kv=", reply_buffer: 64MiB, reply_buffer_total: 8MiB")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
    key = b"k" * 1024
    value = os.urandom(64 << 10)
    assert r.set(key, value) is True
    count = 2000   # 2 MB of requests, 128 MiB of replies a connection
    request = command(b"GET", key) * count
    reply = b"$%d\r\n" % len(value) + value + b"\r\n"
    clients = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(2)]
    writers = [threading.Thread(target=c.sendall, args=(request,)) for c in clients]
    # The second connection starts once the first is held by the total (the order in which the
    # second adds what a writable connection holds).
    writers[0].start()
    wait_for(lambda: int(r.info("memory")["mem_clients_normal"]) >= (8 << 20) - len(reply), 20, what="the first held")
    writers[1].start()
    seen = []
    for _ in range(20):   # nothing read for 2 s: the replies wait in the daemon
        seen.append(int(r.info("memory")["mem_clients_normal"]))
        time.sleep(0.1)
    assert max(seen) > 4 << 20, f"replies waited ({seen})"
    writable = 1 << 20   # the RESP channels' high-water mark
    assert max(seen) <= (8 << 20) + 2 * (writable + len(reply)), \
        f"at most reply_buffer_total (and what a writable connection holds) waits: {seen}"
    received = [0, 0]

    def drain(i):
        f = clients[i].makefile("rb")
        for _ in range(count):
            assert f.read(len(reply)) == reply
            received[i] += 1

    readers = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    for t in readers + writers:
        t.join(60)
    assert received == [count, count]
    assert int(r.info("memory")["mem_clients_normal"]) == 0
    for c in clients:
        c.close()
    assert "closing a RESP connection" not in d.log_path.read_text()


def test_a_client_taking_no_replies_is_cut_after_10_s_while_others_are_served(make_daemon):
    """Held by `reply_buffer_total` while another client keeps taking its replies: each place
    those free lets the stalled connection answer one more command into its waiting replies.
    It is still a client taking none, cut after 10 s (it took 20 s and more: the check at 10 s
    found its command queue one short of full and looked again 10 s later)."""
    d, port = kv_daemon(make_daemon, extra_kv=", reply_buffer_total: 4MiB")
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2)
    key = b"k" * 1024
    value = os.urandom(64 << 10)
    assert r.set(key, value) is True
    stalled = socket.create_connection(("127.0.0.1", port), timeout=60)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    import threading
    threading.Thread(target=lambda: stalled.sendall(command(b"GET", key) * 4000), daemon=True).start()
    started = time.monotonic()
    while "takes none of its replies" not in d.log_path.read_text():
        assert r.get(key) == value   # another client served all along
        assert time.monotonic() - started < 16, "the stalled client cut within 10 s and a little"
        time.sleep(0.2)
    stalled.close()
    assert r.get(key) == value


def test_an_http_post_to_the_resp_port_runs_nothing(make_daemon):
    """A web page can make the browser POST to any local port without asking (a "simple"
    request); each line of its body would run as an inline command (a SET here). As Redis does,
    a request line or Host header read as a command closes the connection before anything after
    it runs."""
    d, port = kv_daemon(make_daemon)
    body = b"SET pwned 1\r\nQUIT\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (port, len(body)) + body)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"-ERR Protocol error: this is a Redis-protocol port, not HTTP"), answer
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2)
    assert r.get("pwned") is None
    assert "sent an HTTP request" in d.log_path.read_text()
    # inline commands of Redis's own tools still work
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"SET inline 1\r\n")
        assert s.recv(100) == b"+OK\r\n"
