"""The caption worker (core.caption.worker) and the server's client for it (core.caption.client): the same captions as a
Captioner in this process, bad input failing alone, cancel, concurrent requests, a killed worker, and a worker that
never outlives its server."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from app_fixtures import jpeg_bytes, make_tiny_bundle
from core.base.config import DecodeOptions
from core.bundle.store import BundleError
from core.caption.client import WorkerClient, WorkerStopped

ROOT = Path(__file__).resolve().parent.parent
COLOURS = [(220, 20, 20), (20, 20, 220), (20, 200, 20), (240, 220, 30), (128, 128, 128)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("models") / "tiny", decoder="attention")


@pytest.fixture(scope="module")
def client(bundle):
    c = WorkerClient(warm=bundle)
    c.start()
    yield c
    c.stop()


def items(n: int) -> list[tuple[str, bytes]]:
    return [(f"{i}.jpg", jpeg_bytes(COLOURS[i % len(COLOURS)], size=(48 + i, 40))) for i in range(n)]


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_the_worker_captions_as_a_captioner_here_does(client, bundle, tmp_path):
    """Uploads (bytes) and files (paths) alike, with every option the pages use; a bad file fails alone."""
    from core.nn.captioner import Captioner

    path = tmp_path / "on-disk.png"
    path.write_bytes(jpeg_bytes((10, 120, 200), fmt="PNG"))
    batch = items(6) + [("broken.jpg", b"not an image"), ("on-disk.png", path)]
    options = DecodeOptions(beam=3, max_len=6, num_captions=2, object_words=True, tag_threshold=0.0)
    remote = client.captioner(bundle).caption(batch, options, batch_size=4)
    here = Captioner(bundle, device="cpu").caption(batch, options, batch_size=4)
    assert [r.image for r in remote] == [name for name, _ in batch]
    for a, b in zip(remote, here):
        assert (a.caption, a.score, a.alternatives, a.words, a.tags, a.error) == \
               (b.caption, b.score, b.alternatives, b.words, b.tags, b.error)
        if b.attention is None:
            assert a.attention is None
        else:  # carried with 4 decimals: the heat maps are drawn, not computed with
            assert a.attention.shape == b.attention.shape and np.allclose(a.attention, b.attention, atol=1e-4)
    assert remote[6].error and "not an image" in remote[6].error and remote[7].caption


def test_a_model_that_cannot_load_is_a_bundle_error(client, tmp_path):
    with pytest.raises(BundleError, match="model.safetensors is missing"):
        client.captioner(tmp_path)
    assert client.alive()


def test_cancel_stops_after_the_current_batch_and_the_worker_serves_on(client, bundle):
    captioner = client.captioner(bundle)
    many = items(40)
    batches = captioner.iter_captions(many, DecodeOptions(beam=2, max_len=5), batch_size=4)
    first = next(batches)
    assert [r.image for r in first] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    batches.close()  # what a Cancel on the page does: returns once the worker has stopped the request
    assert not client._waiting  # nothing left waiting for answers
    again = captioner.caption(many[:3], DecodeOptions(beam=2, max_len=5))  # the next request gets its own answers, in order
    assert [r.image for r in again] == ["0.jpg", "1.jpg", "2.jpg"] and all(r.caption for r in again)


def test_requests_run_side_by_side(client, bundle):
    """Two pages at once: a long request does not hold up a short one, and neither gets the other's answers."""
    captioner = client.captioner(bundle)
    got = {}

    def run(name, batch):
        got[name] = captioner.caption(batch, DecodeOptions(beam=2, max_len=5), batch_size=2)

    long_batch, short_batch = items(30), items(3)[::-1]
    threads = [threading.Thread(target=run, args=("long", long_batch)),
               threading.Thread(target=run, args=("short", short_batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.image for r in got["long"]] == [n for n, _ in long_batch]
    assert [r.image for r in got["short"]] == [n for n, _ in short_batch]


def test_a_killed_worker_fails_the_waiting_request_and_the_next_one_starts_another(bundle):
    c = WorkerClient(warm=None)
    try:
        captioner = c.captioner(bundle)
        first_pid = c.pid
        batches = captioner.iter_captions(items(200), DecodeOptions(beam=3, max_len=8), batch_size=2)
        next(batches)
        os.kill(first_pid, signal.SIGKILL)  # what the system's out-of-memory killer does
        with pytest.raises(WorkerStopped, match="The caption worker stopped"):
            for _ in batches:
                pass
        results = c.captioner(bundle).caption(items(2), DecodeOptions(beam=2, max_len=5))
        assert c.pid != first_pid and [r.image for r in results] == ["0.jpg", "1.jpg"]
    finally:
        c.stop()


def test_the_worker_runs_at_a_lower_priority_and_ends_with_its_server(tmp_path):
    """The server killed outright (no chance to stop anything): the worker sees its stdin close and exits."""
    code = ("from core.caption.client import WorkerClient\nimport time\n"
            "c = WorkerClient(warm=None)\nc.start()\nc.device_report()\nprint(c.pid, flush=True)\ntime.sleep(600)\n")
    server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(server.stdout.readline())
        if os.name != "nt":
            assert psutil.Process(pid).nice() == 10
        server.kill()
        server.wait()
        assert wait_gone(pid), "the worker outlived its server"
    finally:
        server.kill()


def test_the_worker_cli_answers_a_request_on_stdin(bundle):
    """`python -m core.caption.worker` on its own: JSON Lines in, JSON Lines out; nothing else on stdout."""
    import json

    request = {"id": 7, "op": "caption", "bundle": str(bundle), "device": "cpu",
               "items": [["p.jpg", {"bytes": __import__("base64").b64encode(jpeg_bytes()).decode()}]],
               "options": {"beam": 2, "max_len": 4}}  # DecodeOptions.to_dict(), the keys left out at their defaults
    typo = dict(request, id=8, options={"beams": 2})  # an option this worker does not know: refused, not ignored
    out = subprocess.run([sys.executable, "-m", "core.caption.worker"], cwd=ROOT,
                         input=json.dumps(typo) + "\n" + json.dumps(request) + "\n",
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line]  # it starts with a newline (see core.caption.worker)
    answers = [a for a in map(json.loads, lines) if a.get("id") is not None]  # besides the heartbeats
    captioned, refused = [a for a in answers if a["id"] == 7], [a for a in answers if a["id"] == 8]
    assert len(captioned) == 2 and captioned[-1] == {"id": 7, "end": True}
    assert captioned[0]["results"][0]["image"] == "p.jpg" and captioned[0]["results"][0]["caption"]
    assert len(refused) == 1 and refused[0]["kind"] == "ConfigError" and "results" not in refused[0]
    assert "unknown decoding options: beams" in refused[0]["error"]


def _in_a_thread(fn, timeout: float):
    """Run fn() in a thread; -> (finished, result or exception). A request that hangs leaves `finished` False."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 (the test looks at it)
            box["result"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("result")


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="SIGSTOP is POSIX")
@pytest.mark.slow
def test_a_stopped_worker_ends_the_requests_in_plain_words_and_a_fresh_one_serves(bundle):
    """SIGSTOP the worker (what a wedged one looks like from outside): the request under way, a Cancel and another
    tab's request all end after the stall limit with a plain message, instead of waiting forever; the next
    request is served by a fresh worker."""
    c = WorkerClient(warm=None, nice=0, stall_s=8)  # nice 0: on this busy CI machine a niced worker can starve
    stopped = None
    try:
        captioner = c.captioner(bundle)
        stopped = c.pid
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        done, result = _in_a_thread(lambda: captioner.caption(items(4), DecodeOptions(beam=2, max_len=5)), timeout=60)
        assert done, "the request waited on the stopped worker"
        assert isinstance(result, WorkerStopped) and "did not answer for 8 s" in str(result)
        assert time.monotonic() - started < 40
        assert wait_gone(stopped)  # killed, not left stopped
        results = c.captioner(bundle).caption(items(2), DecodeOptions(beam=2, max_len=5))
        assert c.pid != stopped and [r.image for r in results] == ["0.jpg", "1.jpg"]

        # a Cancel (the iterator closed early) and another tab's upload, both while the worker is stopped
        second = c.pid
        batches = c.captioner(bundle).iter_captions(items(60), DecodeOptions(beam=3, max_len=8), batch_size=2)
        next(batches)
        os.kill(second, signal.SIGSTOP)
        big = [(f"{i}.jpg", os.urandom(1 << 20)) for i in range(4)]  # 4 MB: more than a pipe holds
        done, result = _in_a_thread(lambda: c.captioner(bundle).caption(big), timeout=60)
        assert done and isinstance(result, WorkerStopped) and "did not answer" in str(result)
        done, _ = _in_a_thread(batches.close, timeout=60)
        assert done, "Cancel waited on the stopped worker"
        assert wait_gone(second)
        assert [r.image for r in c.captioner(bundle).caption(items(1))] == ["0.jpg"]
    finally:
        for pid in (stopped, c.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass
        c.stop()


SLOW_AND_NOISY_START = """
import sys, time
sys.stdout.write("a library's partial line, no newline")  # printed before the worker's protocol begins
sys.stdout.flush()

class SlowModelLoad:  # the first model load on a slow laptop: longer than the stall limit of the test
    def find_spec(self, name, path=None, target=None):
        if name == "core.nn.captioner":
            sys.meta_path.remove(self)
            time.sleep(12)
        return None

sys.meta_path.insert(0, SlowModelLoad())
"""


def test_a_slow_first_load_and_a_partial_line_before_the_protocol_do_not_wedge_a_request(bundle, tmp_path,
                                                                                         monkeypatch):
    """The worker's heartbeats carry it through a load that takes longer than the stall limit; text printed to its
    stdout before the protocol began is not glued to the first answer (which was then never recognised)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_AND_NOISY_START)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    c = WorkerClient(warm=None, nice=0, stall_s=6)
    try:
        started = time.monotonic()
        done, result = _in_a_thread(lambda: c.captioner(bundle).caption(items(2), DecodeOptions(beam=2, max_len=5)), timeout=120)
        assert done, "the request never got its answer"
        assert not isinstance(result, Exception), result
        assert [r.image for r in result] == ["0.jpg", "1.jpg"] and time.monotonic() - started > 12
    finally:
        c.stop()


def test_malformed_lines_on_the_workers_stdin_do_not_kill_it(bundle):
    import json

    junk = (b"\xff\xfe not UTF-8\n[1, 2]\n5\nnull\n{\"op\": \"cancel\", \"target\": [1]}\n"
            b"{\"id\": [1], \"op\": \"device\"}\n{\"id\": 3, \"op\": \"caption\", \"items\": 7}\n{broken\n")
    good = json.dumps({"id": 9, "op": "load", "bundle": str(bundle), "device": "cpu"}).encode() + b"\n"
    out = subprocess.run([sys.executable, "-m", "core.caption.worker"], cwd=ROOT, input=junk + good, capture_output=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    answers = [json.loads(line) for line in out.stdout.decode().splitlines() if line]
    assert {"id": 9, "end": True} in answers
    assert [a["id"] for a in answers if "error" in a].count(None) >= 5 and any(a.get("id") == 3 for a in answers)


def test_upload_requests_carry_at_most_32_mb_as_sent():
    """Uploads of 5 MB, 16 to a batch: each request's base64 stays within CHUNK_BYTES (before: 16 x 5 MB = 78 MB
    a request, 104 MB once in base64), and every image is sent once, in order."""
    from core.caption import client as worker_client

    uploads = [(f"{i}.jpg", bytes(5 << 20)) for i in range(40)] + [("disk.jpg", Path("/x.jpg"))]
    chunks = list(worker_client._chunks(uploads, 16))
    assert [n for chunk in chunks for n, _ in chunk] == [n for n, _ in uploads]
    sizes = [sum(len(worker_client._wire(src).get("bytes", "")) for _, src in chunk) for chunk in chunks]
    assert max(sizes) <= worker_client.CHUNK_BYTES and len(chunks) == 10  # 4 of 7 MB (in base64) each, + the path
    huge = [("a", bytes(40 << 20)), ("b", bytes(10))]  # one image over the limit goes alone
    assert [len(c) for c in worker_client._chunks(huge, 16)] == [1, 1]
