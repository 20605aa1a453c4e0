"""Weights staged into host RAM before a runtime starts: from a local file, from nginx through a
proxy that resets, stalls and answers 503, and from moto's S3; byte-identical every time, kept in
RAM after an unload, refused whole when the checksum is wrong, cancelled from the command line."""
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ADMIN_KEY, MODEL, STRATA, config, wait_for
from origins import FaultProxy, MotoS3, Nginx

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SHA = hashlib.sha256(MODEL.read_bytes()).hexdigest()
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


def staging(d) -> dict:
    status, body, _ = d.get("/admin/staging", headers=ADMIN)
    assert status == 200, body
    return {s["name"]: s for s in json.loads(body)["staging"]}


def staged_file(d, name="smollm2") -> Path | None:
    home = d.shm / name
    files = [p for p in home.glob("*") if p.name != "identity"] if home.exists() else []
    return files[0] if files else None


def stage_cli(d, model="smollm2", *extra, timeout=120):
    return subprocess.run([str(STRATA), "stage", model, "--url", d.url, *extra], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "STRATA_ADMIN_KEY": ADMIN_KEY})


def origin(tmp_path, data: bytes | None = None) -> Path:
    """A directory for nginx to serve, holding `model.gguf`: the test model (linked), or `data`."""
    root = tmp_path / "origin"
    root.mkdir()
    if data is None:
        (root / "model.gguf").symlink_to(MODEL)
    else:
        (root / "model.gguf").write_bytes(data)
    return root


def new_version(root: Path, data: bytes) -> bytes:
    """Replaces the origin's `model.gguf` with another version of `data` (one weight byte differs,
    the same size, a later modification time) and returns its bytes."""
    changed = bytearray(data)
    changed[-1] ^= 0x01
    (root / "model.gguf").write_bytes(changed)
    os.utime(root / "model.gguf", (time.time() + 30, time.time() + 30))
    return bytes(changed)


def runtime_model_path(d) -> str:
    pid = d.model("smollm2")["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"--model") + 1].decode()


def chat(d):
    status, body, _ = d.request("POST", "/v1/chat/completions", body=CHAT,
                                headers={"Authorization": "Bearer test-key-1", "Content-Type": "application/json"},
                                timeout=120)
    return status, json.loads(body)


def test_local_source_is_staged_into_ram_and_kept_there_after_unload(make_daemon):
    d = make_daemon(config(f'  - {{ name: smollm2, source: "file://{MODEL}", memory: 400MiB, sha256: "{SHA}" }}'))
    status, body = chat(d)
    assert status == 200, body
    copy = staged_file(d)
    assert copy is not None and copy.read_bytes() == MODEL.read_bytes()
    assert runtime_model_path(d) == str(copy), "the runtime must open the copy in RAM"
    first = staging(d)["smollm2"]
    assert first["state"] == "done" and first["origin"] == "remote" and first["bytes_total"] == MODEL.stat().st_size

    # unloaded: the copy stays in RAM, and the next start uses it without staging again
    assert d.request("POST", "/admin/models/smollm2/unload", headers=ADMIN)[0] == 202
    wait_for(lambda: d.model("smollm2")["status"] == "stopped", 30, what="unload")
    assert staged_file(d) == copy
    status, body = chat(d)
    assert status == 200, body
    assert staging(d)["smollm2"] == first, "a second start must not stage again"
    log = d.log_path.read_text()
    assert log.count("staged smollm2 to host") == 1, log[-3000:]

    # after a restart the copy is found again and used as it is
    assert d.stop() == 0
    d.start()
    wait_for(lambda: d.model("smollm2") is not None, 10)
    status, body = chat(d)
    assert status == 200, body
    assert runtime_model_path(d) == str(copy)
    assert "smollm2" not in staging(d), "the restart staged again"

    # a copy of a model the config no longer names is removed at start: RAM nothing would use or count
    assert d.stop() == 0
    renamed = d.config_path.read_text().replace("name: smollm2,", "name: renamed,")
    d.config_path.write_text(renamed)
    d.start()
    wait_for(lambda: staged_file(d) is None, 20, what="the copy of the model no longer configured removed")
    d.config_path.write_text(renamed.replace("name: renamed,", "name: smollm2,"))
    assert d.stop() == 0
    d.start()
    wait_for(lambda: d.model("smollm2") is not None, 10)
    status, body = chat(d)
    assert status == 200, body
    copy = staged_file(d)
    assert copy is not None

    # asked to stage what is already in RAM (the running model's weights): done at once, a 200
    for _ in range(2):
        status, body, _ = d.request("POST", "/admin/models/smollm2/stage", body={"to": "host"}, headers=ADMIN)
        answer = json.loads(body)
        assert status == 200 and answer["state"] == "done" and answer["destination"] == "host", (status, body)
        assert answer["origin"] == "host" and staged_file(d) == copy

    # a reload that removes the model removes its copy too (it used to wait for the next start)
    d.config_path.write_text(renamed)
    status, body, _ = d.request("POST", "/admin/reload", headers=ADMIN)
    assert status == 200 and "smollm2" in json.loads(body)["removed"], body
    wait_for(lambda: staged_file(d) is None, 30, what="the removed model's copy removed after the reload")


def test_a_copy_in_ram_of_an_http_source_that_changed_is_not_used(make_daemon, tmp_path):
    """A copy in RAM counts only for the source it came from: a reload that points the model at
    another URL stages that one; an object replaced at the same URL is found out when the
    daemon starts again (one HEAD), and its new version staged."""
    data = MODEL.read_bytes()
    root = origin(tmp_path, data)
    (root / "other.gguf").symlink_to(MODEL)
    with Nginx(root) as nginx:
        d = make_daemon(config(f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB }}'))
        status, body = chat(d)
        assert status == 200, body
        assert staged_file(d).name == "model.gguf"

        # another URL, by a reload: not the copy of the old one
        d.config_path.write_text(d.config_path.read_text().replace("/model.gguf", "/other.gguf"))
        status, body, _ = d.request("POST", "/admin/reload", headers=ADMIN)
        assert status == 200 and "smollm2" in json.loads(body)["restarted"], body
        wait_for(lambda: d.model("smollm2")["status"] != "ready", 30, what="the restart for the new source")
        status, body = chat(d)
        assert status == 200, body
        assert runtime_model_path(d) == str(staged_file(d)) and staged_file(d).name == "other.gguf"
        assert any(line.startswith("GET /other.gguf ") for line in nginx.access_log())

        # the same URL, another object (one weight byte differs): found out at the next start
        assert d.stop() == 0
        (root / "other.gguf").unlink()
        changed = bytearray(data)
        changed[-1] ^= 0x01
        (root / "other.gguf").write_bytes(changed)
        d.start()
        status, body = chat(d)
        assert status == 200, body
        assert hashlib.sha256(Path(runtime_model_path(d)).read_bytes()).hexdigest() == hashlib.sha256(bytes(changed)).hexdigest()
        assert "the source of smollm2 changed" in d.log_path.read_text()


def test_a_source_that_changed_does_not_take_down_a_model_whose_sha256_the_copy_has(make_daemon, tmp_path):
    """With `sha256` the config pins the bytes: when the object at the URL changes, the copy here
    that has them stays and serves, at the next start and on `strata stage`, and the log says
    so (the copy was removed, the new version failed the check, and the model stopped working);
    without the RAM copy, the NVMe one serves."""
    data = MODEL.read_bytes()
    root = origin(tmp_path, data)
    with Nginx(root) as nginx:
        d = make_daemon(config(f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", sha256: "{SHA}", memory: 400MiB }}'))
        status, body = chat(d)
        assert status == 200, body
        wait_for(lambda: any(o["name"] == "smollm2" for o in json.loads(d.get("/admin/tiers", headers=ADMIN)[1])["objects"]),
                 30, what="the NVMe copy written behind")
        assert d.stop() == 0
        changed = new_version(root, data)

        d.start()
        status, body = chat(d)
        assert status == 200, body
        assert hashlib.sha256(Path(runtime_model_path(d)).read_bytes()).hexdigest() == SHA
        wait_for(lambda: "has the configured SHA-256, so it is kept and served" in d.log_path.read_text(), 10,
                 what="the log saying the source changed and the copy is kept")
        result = stage_cli(d)
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: staging(d).get("smollm2", {}).get("state") != "running", 30, what="the staging settled")
        assert hashlib.sha256(staged_file(d).read_bytes()).hexdigest() == SHA

        # no RAM copy (the host dir emptied while stopped): the NVMe copy has the bytes
        assert d.stop() == 0
        for path in d.shm.glob("smollm2*"):
            subprocess.run(["rm", "-rf", str(path)], check=True)
        d.start()
        status, body = chat(d)
        assert status == 200, body
        assert hashlib.sha256(Path(runtime_model_path(d)).read_bytes()).hexdigest() == SHA


def test_staging_again_a_copy_whose_source_changed_is_answered_at_once_and_shown(make_daemon, tmp_path):
    """`POST .../stage` for a model whose copy is in RAM but whose source now holds another
    version answers at once with the download running (it waited for the whole download, and
    `strata stage` gave up after 10 s saying it could not reach Strata)."""
    data = MODEL.read_bytes()
    root = origin(tmp_path, data)
    with Nginx(root, location="limit_rate 40m;") as nginx:   # one connection: about 3 s a copy
        d = make_daemon(config(f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB }}',
                               tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB },"
                                     " remote: { parallelism: 1, chunk_size: 8MiB } }"))
        assert stage_cli(d).returncode == 0
        changed = new_version(root, data)
        started = time.monotonic()
        status, body, _ = d.request("POST", "/admin/models/smollm2/stage", body={"to": "host"}, headers=ADMIN)
        assert time.monotonic() - started < 2, "answered at once"
        assert status == 202 and json.loads(body)["state"] == "running", (status, body)
        wait_for(lambda: staging(d)["smollm2"]["state"] == "done", 60, what="the new version staged")
        assert hashlib.sha256(staged_file(d).read_bytes()).hexdigest() == hashlib.sha256(bytes(changed)).hexdigest()


def test_a_running_model_restarts_on_weights_staged_anew_once_its_requests_are_done(make_daemon, tmp_path):
    """A new version of the source staged while the model runs: its runtime kept the old weights
    (a deleted file held in RAM outside any budget, answers from the old version) until something
    else restarted it. It finishes the request under way, then starts again on the new copy."""
    data = MODEL.read_bytes()
    root = origin(tmp_path, data)
    with Nginx(root) as nginx:
        d = make_daemon(config(f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB }}'))
        status, body = chat(d)
        assert status == 200, body
        old_pid = d.model("smollm2")["pid"]
        assert runtime_model_path(d) == str(staged_file(d))
        # a long answer under way on the old weights
        import concurrent.futures
        pool = concurrent.futures.ThreadPoolExecutor(1)
        long = pool.submit(lambda: d.request("POST", "/v1/chat/completions", body={
            **CHAT, "max_tokens": 300, "ignore_eos": True}, headers={"Authorization": "Bearer test-key-1",
                                                                      "Content-Type": "application/json"}, timeout=120))
        wait_for(lambda: d.model("smollm2")["in_flight"] == 1, 10, interval=0.05, what="the long answer under way")
        changed = new_version(root, data)
        status, body, _ = d.request("POST", "/admin/models/smollm2/stage", body={"to": "host"}, headers=ADMIN)
        assert status in (200, 202), (status, body)
        wait_for(lambda: staging(d)["smollm2"]["state"] == "done", 60, what="the new version staged")
        assert long.result()[0] == 200, "the request under way finishes on the old runtime"
        pool.shutdown()
        wait_for(lambda: d.model("smollm2").get("pid") != old_pid, 30, what="the runtime stopped after its request")
        status, body = chat(d)
        assert status == 200, body
        assert d.model("smollm2")["pid"] != old_pid
        path = Path(runtime_model_path(d))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(bytes(changed)).hexdigest()
        maps = Path(f"/proc/{d.model('smollm2')['pid']}/maps").read_text()
        assert "(deleted)" not in maps, "no old weights held"
        assert "staged anew" in d.log_path.read_text()


def test_staging_progress_moves_as_bytes_arrive_not_chunk_by_chunk(make_daemon, tmp_path):
    """On a slow link the progress counts the bytes that landed: with 8 MiB chunks it stayed at
    0 % until the first chunk was whole, and moved in 8 MiB steps."""
    root = origin(tmp_path)
    with Nginx(root, location="limit_rate 3m;") as nginx:   # one connection: about 3 s a chunk
        d = make_daemon(config(f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB }}',
                               tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB },"
                                     " remote: { parallelism: 1, chunk_size: 8MiB } }"))
        status, body, _ = d.request("POST", "/admin/models/smollm2/stage", body={"to": "host"}, headers=ADMIN)
        assert status == 202, body
        seen = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(0 < b < 8 << 20 for b in seen):
            seen.add(staging(d)["smollm2"]["bytes_done"])
            time.sleep(0.1)
        assert any(0 < b < 8 << 20 for b in seen), f"progress before the first chunk was whole: {sorted(seen)}"
        assert d.request("DELETE", "/admin/staging/smollm2", headers=ADMIN)[0] < 300
        wait_for(lambda: staging(d)["smollm2"]["state"] == "cancelled", 20, what="the staging cancelled")


@pytest.mark.parametrize("refusal", [403, 405])
def test_an_origin_that_refuses_head_is_looked_up_with_its_first_byte(make_daemon, tmp_path, refusal):
    """A URL presigned for GET answers HEAD with 403 (others with 405): the size and version
    come from a one-byte ranged GET instead."""
    root = origin(tmp_path)
    with Nginx(root, location=f"if ($request_method = HEAD) {{ return {refusal}; }}") as nginx:
        d = make_daemon(config(f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB, sha256: "{SHA}" }}'))
        result = stage_cli(d)
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(staged_file(d).read_bytes()).hexdigest() == SHA
        assert any(line.startswith(f"HEAD /model.gguf {refusal}") for line in nginx.access_log()), nginx.access_log()[:3]
        # a source that refuses GET as well fails with the HEAD's answer
        d2 = make_daemon(config(f'  - {{ name: gone, source: "{nginx.url}/missing.gguf", memory: 400MiB }}'))
        result = stage_cli(d2, "gone")
        assert result.returncode != 0 and (str(refusal) in result.stderr), result.stderr


def test_copies_of_http_sources_count_at_their_size_against_the_weights_budget(make_daemon, tmp_path):
    """An http source has no size in the config: `memory` gives an estimate (here 240 MiB each,
    two of which would not fit 300 MiB) until a HEAD finds the real one (about 100 MiB). Two
    models of the same weights share one copy."""
    root = origin(tmp_path)
    with Nginx(root) as nginx:
        d = make_daemon(config(
            f'  - {{ name: one, source: "{nginx.url}/model.gguf", memory: 300MiB }}\n'
            f'  - {{ name: two, source: "{nginx.url}/model.gguf", memory: 300MiB }}',
            tiers="{ host: { budget: 16MiB, dir: @SHM@, weights_budget: 300MiB }, nvme: { budget: 512MiB } }"))
        gets = []
        for name in ("one", "two"):
            result = stage_cli(d, name)
            assert result.returncode == 0, result.stderr
            gets.append(sum(line.startswith("GET /model.gguf ") for line in nginx.access_log()))
        assert staged_file(d, "one") is not None and staged_file(d, "two") is not None, "both copies fit"
        # the same weights: fetched once, one set of pages in RAM for both
        assert gets[0] > 0 and gets[1] == gets[0], gets
        assert staged_file(d, "one").stat().st_ino == staged_file(d, "two").stat().st_ino
        status, body, _ = d.get("/admin/placements", headers=ADMIN)
        assert b"release-weights" not in body and b"releaseWeights" not in body, body[-2000:]
        # the size holds after a restart (read from the copies found), and a start uses the copy
        assert d.stop() == 0
        d.start()
        status, body, _ = d.request("POST", "/v1/chat/completions", body={**CHAT, "model": "two"},
                                    headers={"Authorization": "Bearer test-key-1", "Content-Type": "application/json"},
                                    timeout=120)
        assert status == 200, body
        assert staged_file(d, "one") is not None and staged_file(d, "two") is not None


def can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs a mount namespace (root) for a small RAM disk")
def test_an_http_source_without_room_on_the_ram_disk_runs_from_a_copy_on_disk(make_daemon, tmp_path):
    """The RAM-backed directory is a 32 MiB RAM disk (others filled it; the weights budget says
    150 MiB): staging the ~100 MiB weights there fails for want of room. The model failed to
    start; now its runtime opens a copy on disk, as it does for weights over the budget."""
    root = origin(tmp_path)
    with Nginx(root) as nginx:
        d = make_daemon(config(
            f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB }}',
            tiers="{ host: { budget: 4MiB, dir: @SHM@, weights_budget: 150MiB }, nvme: { budget: 512MiB } }"), start=False)
        d.shm.mkdir(parents=True)
        d.wrapper = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=32m tmpfs "$0" && exec "$@"', str(d.shm)]
        d.start()
        status, body = chat(d)
        assert status == 200, body
        path = runtime_model_path(d)
        assert path.startswith(str(d.dir / "state")), path
        assert Path(path).stat().st_size == MODEL.stat().st_size
        log = d.log_path.read_text()
        assert "no room to stage smollm2 in RAM" in log
        # an expected fallback, said once as a warning: no error-level line about it
        assert not [line for line in log.splitlines() if " error " in line and "staging smollm2" in line], log[-3000:]


def test_an_origin_without_etags_that_replaces_the_file_mid_transfer_is_refused_not_mixed(make_daemon, tmp_path):
    """Without an ETag the version is the Last-Modified time: every range asks
    If-Unmodified-Since, and an answer from another version fails the staging whole."""
    root = origin(tmp_path)
    other = bytearray(MODEL.read_bytes())
    other[-1] ^= 0xFF   # the same size: only the version tells them apart
    (root / "b.gguf").write_bytes(other)
    # 20 MiB/s per connection: the swap lands mid-transfer
    with Nginx(root, location="etag off; limit_rate 20m;") as nginx:
        d = make_daemon(config(f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB }}',
                               tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB },"
                                     " remote: { parallelism: 2, chunk_size: 4MiB, retries: 1 } }"))
        stager = subprocess.Popen([str(STRATA), "stage", "smollm2", "--url", d.url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "STRATA_ADMIN_KEY": ADMIN_KEY})
        wait_for(lambda: any(line.startswith("GET ") for line in nginx.access_log()) or stager.poll() is not None, 30,
                 what="the transfer begun")
        time.sleep(1)
        os.utime(root / "b.gguf", (time.time() + 30, time.time() + 30))
        os.replace(root / "b.gguf", root / "model.gguf")
        out, err = stager.communicate(timeout=120)
        assert stager.returncode != 0, (out, err)
        assert "changed" in err, err
        assert staged_file(d) is None, "nothing of the mix is kept"
        # staged again, from the file as it is now: whole, and that version only
        result = stage_cli(d, "smollm2")
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(staged_file(d).read_bytes()).hexdigest() == hashlib.sha256(bytes(other)).hexdigest()


def test_http_source_survives_resets_stalls_and_503s_byte_identical(make_daemon, tmp_path):
    root = origin(tmp_path)
    with Nginx(root) as nginx, FaultProxy(nginx.url, seed=3, faults={
            "reset_every": 3, "reset_after_bytes": 1_500_000,
            "status_503_every": 4,
            "stall_every": 5, "stall_after_bytes": 200_000, "stall_seconds": 3}) as proxy:
        d = make_daemon(config(
            f'  - {{ name: smollm2, source: "{proxy.url}/model.gguf", memory: 400MiB, sha256: "{SHA}" }}',
            tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB },"
                  " remote: { parallelism: 4, chunk_size: 4MiB, retries: 8, stall_timeout: 1s } }"))
        result = stage_cli(d, "smollm2", "--json")
        assert result.returncode == 0, result.stderr
        final = json.loads(result.stdout.strip().splitlines()[-1])
        assert final["state"] == "done" and final["origin"] == "remote", final
        assert "MiB/s" in result.stderr, "progress is shown on the terminal"
        assert proxy.injected["reset"] > 0 and proxy.injected["status_503"] > 0 and proxy.injected["stall"] > 0, proxy.injected
        copy = staged_file(d)
        assert copy is not None and hashlib.sha256(copy.read_bytes()).hexdigest() == SHA

        # the model now starts from that copy; the source is not asked again for the bytes
        before = proxy.requests
        status, body = chat(d)
        assert status == 200, body
        assert runtime_model_path(d) == str(copy)
        assert proxy.requests == before


def test_https_source_is_verified_against_the_configured_authority(make_daemon, tmp_path):
    root = origin(tmp_path)
    with Nginx(root, tls=True) as nginx:
        model = f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB, sha256: "{SHA}" }}'
        tiers = "{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB }, remote: { retries: 1 CA } }"
        # without the authority the self-signed certificate is refused: nothing staged, a clear reason
        d = make_daemon(config(model, tiers=tiers.replace(" CA", "")))
        result = stage_cli(d, "smollm2")
        assert result.returncode != 0
        assert "certificate" in result.stderr.lower(), result.stderr
        assert staged_file(d) is None
        # trusting it, the same source stages byte-identical and serves
        d = make_daemon(config(model, tiers=tiers.replace(" CA", f', ca_file: "{nginx.ca_file}"')))
        result = stage_cli(d, "smollm2", "--json")
        assert result.returncode == 0, result.stderr
        copy = staged_file(d)
        assert copy is not None and hashlib.sha256(copy.read_bytes()).hexdigest() == SHA
        status, body = chat(d)
        assert status == 200, body


def test_s3_source_from_moto(make_daemon):
    with MotoS3() as s3:
        s3.create_bucket("weights")
        s3.put_object("weights", "models/smollm2 q4.gguf", MODEL)
        d = make_daemon(config(
            '  - { name: smollm2, source: "s3://weights/models/smollm2 q4.gguf", memory: 400MiB }',
            tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB },"
                  f" remote: {{ s3: {{ endpoint: \"{s3.endpoint}\", region: us-east-1 }} }} }}"),
            env=s3.env)
        status, body = chat(d)
        assert status == 200, body
        copy = staged_file(d)
        assert copy is not None and copy.read_bytes() == MODEL.read_bytes()
        assert staging(d)["smollm2"]["origin"] == "remote"


def test_a_copy_staged_under_another_sha256_is_not_served_after_a_reload_or_a_restart(make_daemon, tmp_path):
    """The config's sha256 changes once the weights are staged (in RAM and on NVMe): the runtime
    started on those copies, unchecked, after the reload and after a restart. They are checked
    against the checksum now configured, and the source's bytes then refuse it, naming both."""
    root = origin(tmp_path)
    wrong = "2" * 64
    with Nginx(root) as nginx:
        model = f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB, sha256: "{SHA}" }}'
        d = make_daemon(config(model))
        status, body = chat(d)
        assert status == 200, body
        wait_for(lambda: staging(d)["smollm2"].get("nvme_copy") == "committed", 30, what="the NVMe copy written behind")
        d.config_path.write_text(d.config_path.read_text().replace(SHA, wrong))
        status, body, _ = d.request("POST", "/admin/reload", headers=ADMIN)
        assert status == 200 and json.loads(body)["restarted"] == ["smollm2"], body
        status, body = chat(d)
        assert status == 502, body
        message = body["error"]["message"]
        assert f"has SHA-256 {SHA}" in message and wrong in message, message
        assert d.model("smollm2").get("pid") is None
        # back to the right checksum: served again; then changed while the daemon is down, the
        # copy in RAM there at the restart
        d.config_path.write_text(d.config_path.read_text().replace(wrong, SHA))
        assert d.request("POST", "/admin/reload", headers=ADMIN)[0] == 200
        assert chat(d)[0] == 200
        assert d.stop() == 0
        assert staged_file(d) is not None
        d.config_path.write_text(d.config_path.read_text().replace(SHA, wrong))
        d.start()
        status, body = chat(d)
        assert status == 502 and f"has SHA-256 {SHA}" in body["error"]["message"], body
        assert d.model("smollm2").get("pid") is None


def test_wrong_checksum_or_missing_object_stages_nothing_and_says_why(make_daemon, tmp_path):
    root = origin(tmp_path)
    with Nginx(root) as nginx:
        d = make_daemon(config(
            f'  - {{ name: smollm2, source: "{nginx.url}/model.gguf", memory: 400MiB, sha256: "{"0" * 64}" }}\n'
            f'  - {{ name: gone, source: "{nginx.url}/nothing-here.gguf", memory: 400MiB }}\n'
            f'  - {{ name: elsewhere, upstreams: ["{nginx.url}"] }}'))
        result = stage_cli(d, "smollm2")
        assert result.returncode == 1
        assert "SHA-256" in result.stderr and SHA in result.stderr, result.stderr
        assert staged_file(d) is None and not any(p.name.startswith(".tmp-") for p in d.shm.glob(".*"))
        status, body, _ = d.get("/admin/tiers", headers=ADMIN)
        assert json.loads(body)["objects"] == [], "a copy that failed its checksum must not stay on NVMe"
        status, body = chat(d)
        assert status == 502 and "SHA-256" in body["error"]["message"], body

        result = stage_cli(d, "gone")
        assert result.returncode == 1 and "404" in result.stderr, result.stderr

        # bad input to the admin API is refused and names what was expected
        status, body, _ = d.request("POST", "/admin/models/smollm2/stage", body={"to": "tape"}, headers=ADMIN)
        assert status == 400 and b"host, nvme or disk" in body, body
        assert d.request("POST", "/admin/models/nope/stage", body={}, headers=ADMIN)[0] == 404
        status, body, _ = d.request("POST", "/admin/models/elsewhere/stage", body={}, headers=ADMIN)
        assert status == 400 and b"not_managed" in body and b"no weights here to stage" in body, body


def test_interrupting_strata_stage_cancels_the_transfer(make_daemon, tmp_path):
    root = origin(tmp_path)
    with Nginx(root) as nginx, FaultProxy(nginx.url, faults={"stall_every": 1, "stall_after_bytes": 100_000,
                                                             "stall_seconds": 30}) as proxy:
        d = make_daemon(config(
            f'  - {{ name: smollm2, source: "{proxy.url}/model.gguf", memory: 400MiB }}',
            tiers="{ host: { budget: 16MiB, dir: @SHM@ }, nvme: { budget: 256MiB }, remote: { stall_timeout: 60s } }"))
        cli = subprocess.Popen([str(STRATA), "stage", "smollm2", "--url", d.url], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "STRATA_ADMIN_KEY": ADMIN_KEY})
        wait_for(lambda: staging(d).get("smollm2", {}).get("state") == "running", 20, what="staging to run")
        time.sleep(0.5)
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=20) == 130, cli.stderr.read()
        wait_for(lambda: staging(d)["smollm2"]["state"] == "cancelled", 10, what="staging to be cancelled")
        assert staged_file(d) is None
        # so does a SIGTERM (a `timeout` around the command, a service manager): the download
        # went on in the daemon with nobody waiting for it
        cli = subprocess.Popen([str(STRATA), "stage", "smollm2", "--url", d.url], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "STRATA_ADMIN_KEY": ADMIN_KEY})
        wait_for(lambda: staging(d)["smollm2"]["state"] == "running", 20, what="staging to run again")
        time.sleep(0.5)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=20) == 143, cli.stderr.read()
        wait_for(lambda: staging(d)["smollm2"]["state"] == "cancelled", 10, what="staging cancelled on SIGTERM")
        assert staged_file(d) is None

        # a start waiting for its staging, which an operator cancels: the request is told so
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(chat(d)))
        waiting.start()
        wait_for(lambda: staging(d)["smollm2"]["state"] == "running", 20, what="the start's staging to run")
        status, body, _ = d.request("DELETE", "/admin/staging/smollm2", headers=ADMIN)
        assert status < 300, body
        waiting.join(30)
        status, body = answers[0]
        assert status == 502 and "cancelled the staging of its weights" in body["error"]["message"], body
        assert d.model("smollm2")["last_error"].startswith("staging cancelled")
        # a staging that then succeeds leaves no stale error behind
        nginx_ok = Nginx(root)
        try:
            d.config_path.write_text(d.config_path.read_text().replace(proxy.url, nginx_ok.url))
            assert d.request("POST", "/admin/reload", headers=ADMIN)[0] == 200
            assert stage_cli(d).returncode == 0
            assert d.model("smollm2").get("last_error") is None, d.model("smollm2")
        finally:
            nginx_ok.close()


def test_preload_stages_and_loads_at_start(make_daemon):
    d = make_daemon(config(f'  - {{ name: smollm2, source: "file://{MODEL}", memory: 400MiB, preload: true }}'))
    wait_for(lambda: d.model("smollm2")["status"] == "ready", 60, what="the preloaded model to be ready without a request")
    copy = staged_file(d)
    assert copy is not None and runtime_model_path(d) == str(copy)


def test_weights_over_the_ram_budget_start_from_the_file_or_a_copy_on_disk(make_daemon, tmp_path):
    root = origin(tmp_path)
    with Nginx(root) as nginx:
        d = make_daemon(config(
            f'  - {{ name: smollm2, source: "file://{MODEL}", memory: 400MiB }}\n'
            f'  - {{ name: remote, source: "{nginx.url}/model.gguf", memory: 150MiB }}',
            tiers="{ host: { budget: 16MiB, dir: @SHM@, weights_budget: 50MiB }, nvme: { budget: 256MiB } }"))
        status, body = chat(d)
        assert status == 200, body
        assert runtime_model_path(d) == str(MODEL), "too big for RAM: the runtime opens the source file itself"
        assert staged_file(d) is None

        status, body, _ = d.request("POST", "/v1/chat/completions", body={**CHAT, "model": "remote"},
                                    headers={"Authorization": "Bearer test-key-1", "Content-Type": "application/json"},
                                    timeout=120)
        assert status == 200, body
        pid = d.model("remote")["pid"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        path = Path(argv[argv.index(b"--model") + 1].decode())
        assert path.is_relative_to(d.dir / "state" / "weights"), path
        assert path.read_bytes() == MODEL.read_bytes()
        assert staged_file(d, "remote") is None


def test_replicas_run_from_one_copy_in_ram_counted_once(make_daemon):
    """Two replicas of a 94 MiB model under a 150 MiB weights budget: they share one copy in RAM
    and it counts once (each replica counted it, so the second did not fit and opened the
    source file itself, off the slower tier)."""
    d = make_daemon(config(
        f'  - {{ name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 250MiB, replicas: 2, preload: true }}',
        tiers="{ host: { budget: 16MiB, dir: @SHM@, weights_budget: 150MiB }, nvme: { budget: 256MiB } }"))
    wait_for(lambda: all(m["status"] == "ready" for m in d.admin().values()), 60, what="both replicas preloaded")
    copy = staged_file(d)
    assert copy is not None
    for name in ("smollm2#0", "smollm2#1"):
        argv = Path(f"/proc/{d.model(name)['pid']}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--model") + 1].decode() == str(copy), f"{name} runs from the copy in RAM"
    status, body, _ = d.get("/admin/placements", headers=ADMIN)
    after = [p["host_weights_after_bytes"] for p in json.loads(body)["placements"] if "host_weights_after_bytes" in p]
    assert after and max(after) == MODEL.stat().st_size, after

    # The model removed by a reload while a replica answers: the copy goes, and the log says the
    # replica still maps it (it said the weights were removed from RAM, which they were not yet).
    import concurrent.futures
    pool = concurrent.futures.ThreadPoolExecutor(1)
    long = pool.submit(lambda: d.request("POST", "/v1/chat/completions", body={
        **CHAT, "model": "smollm2", "max_tokens": 300, "ignore_eos": True},
        headers={"Authorization": "Bearer test-key-1", "Content-Type": "application/json"}, timeout=120))
    wait_for(lambda: sum(m["in_flight"] for m in d.admin().values()) == 1, 10, interval=0.05, what="a long answer under way")
    busy = next(name for name, m in d.admin().items() if m["in_flight"] == 1)
    d.config_path.write_text(d.config_path.read_text().replace(
        f'name: smollm2, source: "file://{MODEL}", runtime: llama, memory: 250MiB, replicas: 2, preload: true',
        'name: elsewhere, upstreams: ["http://127.0.0.1:9"]'))
    status, body, _ = d.request("POST", "/admin/reload", headers=ADMIN)
    assert status == 200 and json.loads(body)["removed"] == ["smollm2"], body
    line = wait_for(lambda: next((l for l in d.log_path.read_text().splitlines() if "removed the staged weights of smollm2" in l), None),
                    10, what="the copy removed")
    assert busy in line.split(";")[-1] and line.endswith("still map them until they stop"), line
    assert long.result()[0] == 200, "the answer under way finishes"
    pool.shutdown()
