"""`python -m ui.serve`: the model warm-up (the caption worker) is under way before Streamlit's command line runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A stand-in for `python -m streamlit`: it writes down its arguments and what the warm-up had done by then.
FAKE_MAIN = """
import json, os, sys, threading
from ui import warm
names = [t.name for t in threading.enumerate()]
worker = warm._client.pid if warm._client is not None and warm._client.alive() else None
with open(os.environ["FAKE_STREAMLIT_LOG"], "w") as f:
    json.dump({"argv": sys.argv[1:], "started": warm._started.is_set(), "threads": names, "worker": worker}, f)
"""


def serve_with_a_fake_streamlit(tmp_path, args: list[str], **settings: str) -> dict:
    """Run `python -m ui.serve ARGS` with FAKE_MAIN as Streamlit and no model (the warm-up stays cheap); what
    FAKE_MAIN wrote down."""
    site = tmp_path / "fake-site" / "streamlit"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    (site / "__main__.py").write_text(FAKE_MAIN)
    log = tmp_path / "call.json"
    (tmp_path / "models").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTION_", "PYTHON"))}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "fake-site"), str(ROOT)]), FAKE_STREAMLIT_LOG=str(log),
               CAPTION_MODELS_DIR=str(tmp_path / "models"), CAPTION_FORCE_CPU="1", **settings)
    result = subprocess.run([sys.executable, "-m", "ui.serve", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(log.read_text())


def test_serve_starts_the_warm_up_then_streamlit_with_the_arguments(tmp_path):
    call = serve_with_a_fake_streamlit(tmp_path, ["--server.port", "8765", "--server.headless", "true"])
    assert call["argv"] == ["run", "app.py", "--server.port", "8765", "--server.headless", "true"]
    # the caption worker (a process of its own: on any number of cores) is running while Streamlit starts
    assert call["started"] and call["worker"] and "caption-device-report" in call["threads"]
    # ... and it ended with the server (its stdin closed), not left behind
    from test_worker import wait_gone

    assert wait_gone(call["worker"])


def test_without_the_worker_the_warm_up_is_a_thread_of_the_server(tmp_path):
    call = serve_with_a_fake_streamlit(tmp_path, [], CAPTION_EARLY_WARMUP="1", CAPTION_WORKER="0")
    assert call["started"] and "caption-warm-up" in call["threads"] and call["worker"] is None


def test_serve_starts_streamlit_even_when_the_warm_up_cannot(tmp_path, monkeypatch):
    """A warm-up that fails to start never keeps the app from starting."""
    import runpy

    from ui import serve, warm

    calls = []
    monkeypatch.setattr(warm, "start", lambda: (_ for _ in ()).throw(RuntimeError("no threads here")))
    monkeypatch.setattr(runpy, "run_module", lambda name, **kw: calls.append((name, list(sys.argv[1:]))))
    monkeypatch.setattr(sys, "argv", ["serve"])
    serve.main(["--server.port", "1"])
    assert calls == [("streamlit", ["run", "app.py", "--server.port", "1"])]


def test_serve_leaves_the_warm_up_to_the_first_page_on_a_small_cpu_without_the_worker(monkeypatch):
    """With the models in the server's process, an early warm-up slowed Home down on 2 cores
    (bench/bench_first_impression.py): the first page starts it. The worker starts early on any machine."""
    import os
    import runpy

    from ui import serve, warm

    started, calls = [], []
    monkeypatch.setattr(warm, "start", lambda: started.append(True))
    monkeypatch.setattr(runpy, "run_module", lambda name, **kw: calls.append(name))
    monkeypatch.setattr(sys, "argv", ["serve"])
    monkeypatch.delenv(serve.EARLY_WARMUP_ENV, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    serve.main([])
    assert calls == ["streamlit"] and started == [True]  # the worker: early
    started.clear()
    monkeypatch.setenv(warm.WORKER_ENV, "0")
    serve.main([])
    assert calls == ["streamlit"] * 2 and not started
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    serve.main([])
    assert started == [True]
    monkeypatch.setenv(serve.EARLY_WARMUP_ENV, "0")
    serve.main([])
    assert started == [True]  # the override wins


@pytest.mark.parametrize("in_worker", [True, False])
def test_the_warm_up_loads_the_model_then_reports_the_device_where_torch_is(tmp_path, monkeypatch, in_worker):
    """The report comes from the torch that loaded the model, once it has: the worker's, or (CAPTION_WORKER=0) the
    server's own. A subprocess would import torch a second time while the first captions are computed
    (bench/bench_first_impression.py)."""
    from app_fixtures import make_tiny_bundle
    from core.device import report as device
    from core.caption import worker
    from ui import warm

    make_tiny_bundle(tmp_path / "models" / "default")
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("CAPTION_FORCE_CPU", "1")
    monkeypatch.setenv(warm.WORKER_ENV, "1" if in_worker else "0")
    monkeypatch.setattr(device, "device_report_subprocess", lambda *a, **k: pytest.fail("a second torch import"))
    warm.reset()
    try:
        warm.start()
        assert warm.wait_for_device(120)
        report = warm.device_info()
        assert "error" not in report and report["device"] == "cpu", report
        if in_worker:
            assert warm._client.alive() and worker.loaded_count() == 0  # loaded there, not here
        else:
            assert warm._warmed.is_set() and worker.loaded_count() >= 1  # the model was loaded first
    finally:
        warm.reset()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(port: int, host: str, path: str = "/", websocket: bool = False) -> int:
    """The status a real request to the server on 127.0.0.1:port gets with this Host header."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host}
    if websocket:  # Streamlit's page talks to the server over this WebSocket
        headers.update({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": f"http://{host}"})
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """`python -m ui.serve` for real (Streamlit and all), on a free port; no model, no worker."""
    import time

    tmp = tmp_path_factory.mktemp("served")
    (tmp / "models").mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTION_")}
    env.update(CAPTION_MODELS_DIR=str(tmp / "models"), CAPTION_EARLY_WARMUP="0", CAPTION_WORKER="0",
               CAPTION_FORCE_CPU="1")
    server = subprocess.Popen([sys.executable, "-m", "ui.serve", "--server.port", str(port),
                               "--server.headless", "true"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while True:
        try:
            if _ask(port, f"localhost:{port}", "/_stcore/health") == 200:
                break
        except OSError:
            pass
        assert server.poll() is None and time.time() < deadline, server.stderr.read().decode() if server.poll() else "no answer"
        time.sleep(0.5)
    yield port
    server.terminate()
    server.wait(30)


def test_the_server_refuses_a_dns_rebinding_host_and_answers_loopback_names(live_server):
    port = live_server
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", f"127.0.0.1.nip.io:{port}"):
        assert _ask(port, host) == 403, host
        assert _ask(port, host, "/_stcore/health") == 403, host
        assert _ask(port, host, "/_stcore/stream", websocket=True) == 403, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost", "LOCALHOST."):
        assert _ask(port, host) == 200, host
    assert _ask(port, f"localhost:{port}", "/_stcore/stream", websocket=True) == 101


def test_the_allowed_host_names():
    from ui.hosts import allowed_names, host_name, is_loopback

    assert [host_name(h) for h in ("[::1]:8501", "Localhost:80", "127.0.0.1", "::1", "example.com.")] == \
        ["::1", "localhost", "127.0.0.1", "::1", "example.com"]
    assert is_loopback("127.0.0.2") and is_loopback("::1") and not is_loopback("localhost.evil.example")
    assert allowed_names(None, None, "") == set()  # nothing configured: loopback names alone
    assert allowed_names("192.168.1.20", None, "") == {"192.168.1.20"}
    assert allowed_names("127.0.0.1", "photos.lan:8501", "") == {"127.0.0.1", "photos.lan"}
    assert allowed_names(None, None, "*") is None
    import socket

    assert socket.gethostname().lower() in allowed_names("0.0.0.0", None, "")  # every network: this machine's names
