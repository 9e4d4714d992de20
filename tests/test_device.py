"""core.device (build, report) and core.nn.precision: the NVIDIA GPU that nvidia-smi lists, the PyTorch build that fits it, and the report of why a GPU
goes unused. No GPU is needed: a fake `nvidia-smi` goes first on PATH, and the torch build is faked (attributes
patched in this process, or a stub `torch` package for a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from core.device import build as device
from core.device.report import device_report, device_report_subprocess
from core.nn.precision import pick_device

ROOT = Path(__file__).resolve().parent.parent
PINS = device.pinned_versions()

# What `nvidia-smi` prints, for a GeForce with 12 GB on a driver that runs CUDA up to `cuda`.
FAKE_NVIDIA_SMI = """#!{python}
import os, sys
if os.environ.get("FAKE_SMI_LOG"):
    open(os.environ["FAKE_SMI_LOG"], "a").write(" ".join(sys.argv[1:]) + "\\n")
if {fail!r}:
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    sys.exit(9)
if any(a.startswith("--query-gpu") for a in sys.argv[1:]):
    print({listing!r}, end="")
else:
    print("+-----------------------------------------------------------------------------------------+")
    print("| NVIDIA-SMI {driver}                 Driver Version: {driver}         CUDA Version: {cuda}     |")
    print("|-----------------------------------------+------------------------+----------------------+")
"""


def fake_nvidia_smi(folder: Path, cuda="12.8", driver="572.16", gpus=(("NVIDIA GeForce RTX 4070", 12282),),
                    fail=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    listing = "".join(f"{name}, {mib}, {driver}\n" for name, mib in gpus)
    script = folder / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI.format(python=sys.executable, fail=fail, listing=listing, driver=driver, cuda=cuda))
    script.chmod(0o755)
    return folder


@pytest.fixture
def gpu_path(tmp_path, monkeypatch):
    """A fake nvidia-smi first on PATH; returns a function that (re)writes it."""
    folder = tmp_path / "bin"

    def install(**kw):
        fake_nvidia_smi(folder, **kw)
        return folder

    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(device.FORCE_CPU_ENV, raising=False)
    monkeypatch.delenv(device.TORCH_CUDA_ENV, raising=False)
    monkeypatch.delenv(device.TORCH_INDEX_ENV, raising=False)
    return install


@pytest.fixture
def no_gpu_path(tmp_path, monkeypatch):
    """PATH without any nvidia-smi (only the folder of this Python)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(device.FORCE_CPU_ENV, raising=False)
    monkeypatch.delenv(device.TORCH_CUDA_ENV, raising=False)


# --------------------------------------------------------------------------- nvidia-smi


def test_query_nvidia_reads_name_memory_driver_and_cuda(gpu_path):
    gpu_path(cuda="12.6", driver="560.94", gpus=(("NVIDIA GeForce RTX 4070, Laptop GPU", 8188), ("Tesla T4", 15360)))
    info = device.query_nvidia()
    assert info == device.NvidiaInfo((device.NvidiaGPU("NVIDIA GeForce RTX 4070, Laptop GPU", 8188),
                                      device.NvidiaGPU("Tesla T4", 15360)), "560.94", "12.6")
    assert device.describe_nvidia(info) == ("NVIDIA GeForce RTX 4070, Laptop GPU (8.0 GB); Tesla T4 (15.0 GB), "
                                            "driver 560.94, runs CUDA up to 12.6")


def test_query_nvidia_without_a_usable_gpu(gpu_path, no_gpu_path):
    assert device.query_nvidia() is None  # no nvidia-smi at all


def test_query_nvidia_when_nvidia_smi_fails_or_lists_nothing(gpu_path):
    gpu_path(fail=True)  # a driver that is installed but not loaded
    assert device.query_nvidia() is None
    gpu_path(gpus=())
    assert device.query_nvidia() is None


# --------------------------------------------------------------------------- the decision


@pytest.mark.parametrize("torch_version, driver_cuda, build", [
    ("2.14.1", "12.8", "cu128"),
    ("2.14.1", "13.2", "cu130"),
    ("2.14.1", "12.7", "cu126"),
    ("2.14.1", "12.4", None),  # older than every CUDA build of this release
    ("2.14.1", None, None),  # a driver too old to say
    ("2.7.1", "12.4", "cu118"),
    ("2.9.0+cpu", "12.9", "cu128"),
    ("1.13.1", "12.8", None),  # a release the table does not know, older than it: no guess
])
def test_cuda_build_for(torch_version, driver_cuda, build):
    assert device.cuda_build_for(torch_version, driver_cuda) == build


def test_pinned_versions_come_from_requirements(tmp_path):
    assert set(PINS) == {"torch", "torchvision"}
    req = tmp_path / "requirements.txt"
    req.write_bytes(b"\xef\xbb\xbf# pins\r\ntorch==2.9.1\r\ntorchvision == 0.24.1\r\ntimm==1.0\r\n")
    assert device.pinned_versions(req) == {"torch": "2.9.1", "torchvision": "0.24.1"}


def test_windows_with_an_nvidia_gpu_gets_the_cuda_build(gpu_path, monkeypatch):
    gpu_path(cuda="12.8")
    build, why = device.wanted_torch_build(PINS, system="Windows")
    assert build == "cu128" and "NVIDIA GeForce RTX 4070" in why
    assert device.cuda_install_args(build, PINS) == [
        "install", f"torch=={PINS['torch']}+cu128", f"torchvision=={PINS['torchvision']}+cu128",
        "--index-url", "https://download.pytorch.org/whl/cu128"]
    monkeypatch.setenv(device.TORCH_INDEX_ENV, "https://mirror.example/pytorch/whl/")
    assert device.index_url("cu126") == "https://mirror.example/pytorch/whl/cu126"


def test_the_cpu_build_when_no_gpu_forced_or_driver_too_old(gpu_path, monkeypatch, tmp_path):
    gpu_path(cuda="12.4")
    build, why = device.wanted_torch_build(PINS, system="Windows")
    assert build is None and "driver is too old" in why and device.DRIVER_URL in why
    gpu_path(cuda="12.8")
    monkeypatch.setenv(device.FORCE_CPU_ENV, "1")
    build, why = device.wanted_torch_build(PINS, system="Windows")
    assert build is None and "CAPTION_FORCE_CPU=1" in why
    monkeypatch.delenv(device.FORCE_CPU_ENV)
    build, why = device.wanted_torch_build(PINS, nvidia=None, system="Windows")
    assert build is None and "No NVIDIA GPU" in why


def test_linux_and_macos_keep_the_standard_build_without_running_nvidia_smi(gpu_path, monkeypatch, tmp_path):
    log = tmp_path / "smi.log"
    monkeypatch.setenv("FAKE_SMI_LOG", str(log))
    gpu_path(cuda="12.8")
    for system in ("Linux", "Darwin"):
        assert device.wanted_torch_build(PINS, system=system)[0] is None
    assert not log.exists()  # starts on Linux and macOS do not wait for nvidia-smi
    monkeypatch.setenv(device.TORCH_CUDA_ENV, "1")  # a Linux driver too old for PyPI's CUDA build
    assert device.wanted_torch_build(PINS, system="Linux")[0] == "cu128"
    assert log.exists()


# --------------------------------------------------------------------------- the report, torch faked in-process


def fake_torch(monkeypatch, version="2.14.1+cpu", cuda=None, available=False, init_error=None):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: SimpleNamespace(name="NVIDIA GeForce RTX 4070", total_memory=12282 * 2**20))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)

    def init():
        if init_error:
            raise RuntimeError(init_error)

    monkeypatch.setattr(torch.cuda, "init", init)
    return torch


def test_report_cpu_only_build_with_an_nvidia_gpu(gpu_path, monkeypatch):
    gpu_path(cuda="12.8")
    fake_torch(monkeypatch, version=f"{PINS['torch']}+cpu", cuda=None)
    report = device_report()
    assert report.device == "cpu" and report.nvidia.startswith("NVIDIA GeForce RTX 4070 (12.0 GB)")
    assert "CPU-only build" in report.problem and report.torch == f"{PINS['torch']}+cpu (CPU-only build)"
    assert report.command == device.shell_command([
        sys.executable, "-m", "pip", "install", f"torch=={PINS['torch']}+cu128",
        f"torchvision=={PINS['torchvision']}+cu128", "--index-url", "https://download.pytorch.org/whl/cu128"])
    assert "close the app" in report.fix and "start the app again" in report.fix
    text = report.text()
    assert "Problem: This computer has an NVIDIA GPU" in text and f"Command: {report.command}" in text


def test_report_driver_too_old_for_the_cuda_build(gpu_path, monkeypatch):
    gpu_path(cuda="12.8", driver="572.16")
    fake_torch(monkeypatch, version="2.14.1+cu130", cuda="13.0")
    report = device_report()
    assert report.device == "cpu"
    assert "runs CUDA up to 12.8" in report.problem and "needs CUDA 13.0: the driver is too old" in report.problem
    assert device.DRIVER_URL in report.fix and "+cu128" in report.command
    gpu_path(cuda="12.2")  # too old for every build of the release: only a driver update helps
    report = device_report()
    assert "driver is too old" in report.problem and report.command is None and device.DRIVER_URL in report.fix


def test_report_cuda_build_that_cannot_start(gpu_path, monkeypatch):
    gpu_path(cuda="13.0")
    fake_torch(monkeypatch, version="2.14.1+cu130", cuda="13.0", init_error="CUDA driver initialization failed")
    report = device_report()
    assert "cannot use the GPU (CUDA driver initialization failed)" in report.problem and device.DRIVER_URL in report.fix


def test_report_a_working_gpu(gpu_path, monkeypatch):
    gpu_path(cuda="13.0")
    fake_torch(monkeypatch, version="2.14.1+cu130", cuda="13.0", available=True)
    report = device_report()
    assert (report.device, report.name, report.problem) == ("cuda", "NVIDIA GeForce RTX 4070, 12.0 GB", None)
    assert report.label() == "CUDA (NVIDIA GeForce RTX 4070, 12.0 GB)"
    monkeypatch.setenv(device.FORCE_CPU_ENV, "1")
    report = device_report()
    assert report.device == "cpu" and "CAPTION_FORCE_CPU=1" in report.name and report.problem is None
    assert pick_device("auto").type == "cpu"


def test_report_without_a_gpu_has_no_problem(no_gpu_path, monkeypatch):
    fake_torch(monkeypatch, version="2.14.1+cpu", cuda=None)
    report = device_report()
    assert (report.device, report.nvidia, report.problem, report.command) == ("cpu", None, None, None)
    assert report.label() == f"CPU ({os.cpu_count()} cores)"


def test_report_without_torch(no_gpu_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    report = device_report()
    assert report.device == "?" and "not installed" in report.problem and "launcher" in report.fix


# --------------------------------------------------------------------------- python -m core.device, a stub torch

STUB_TORCH = textwrap.dedent("""
    __version__ = "{version}"
    class device:
        def __init__(self, name):
            self.type = str(name).split(":")[0]
    class version:
        cuda = None
    class cuda:
        is_available = staticmethod(lambda: False)
        def init():
            raise AssertionError("Torch not compiled with CUDA enabled")
    class backends:
        class mps:
            is_available = staticmethod(lambda: False)
            is_built = staticmethod(lambda: False)
""")


@pytest.fixture
def stub_torch(tmp_path):
    """A PYTHONPATH folder whose `torch` is a CPU-only build of the pinned version (nothing else works)."""
    site = tmp_path / "stub-site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(STUB_TORCH.format(version=f"{PINS['torch']}+cpu"))
    return site


def test_module_import_does_not_load_torch():
    code = "import sys, core.device.report, core.device.build; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_cli_prints_the_report(gpu_path, stub_torch, monkeypatch):
    gpu_path(cuda="12.8")
    env = dict(os.environ, PYTHONPATH=str(stub_torch))
    out = subprocess.run([sys.executable, "-m", "core.device"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Compute device: CPU (" in out.stdout
    assert f"PyTorch: {PINS['torch']}+cpu (CPU-only build)" in out.stdout
    assert "NVIDIA GPU (nvidia-smi): NVIDIA GeForce RTX 4070 (12.0 GB), driver 572.16, runs CUDA up to 12.8" in out.stdout
    assert "Problem: This computer has an NVIDIA GPU, but the installed PyTorch" in out.stdout
    assert f"--index-url https://download.pytorch.org/whl/cu128" in out.stdout

    monkeypatch.setenv("PYTHONPATH", str(stub_torch))
    report = device_report_subprocess()  # what the pages read
    assert report.device == "cpu" and "CPU-only build" in report.problem and "+cu128" in report.command


def test_subprocess_failure_is_a_plain_report(monkeypatch, tmp_path):
    broken = tmp_path / "broken-site"
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text("raise SystemExit('torch is broken here')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken))
    report = device_report_subprocess()
    assert report.device == "?" and report.problem == "Could not check the compute device: torch is broken here"


# --------------------------------------------------------------------------- the pages


@pytest.fixture
def fresh_report_cache():
    from ui import device as ui_device
    from ui import warm

    ui_device._report.clear()
    warm.reset()
    yield
    ui_device._report.clear()  # later page tests must not see the faked GPU
    warm.wait_for_device(180)
    warm.reset()


def test_home_and_train_pages_explain_the_unused_gpu(gpu_path, stub_torch, monkeypatch, tmp_path, fresh_report_cache):
    gpu_path(cuda="12.8")
    monkeypatch.setenv("PYTHONPATH", str(stub_torch))
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("CAPTION_RUNS_DIR", str(tmp_path / "runs"))
    from ui import warm

    first = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()  # starts the background report
    assert not first.exception
    assert warm.wait_for_device(180)
    for page in ("app.py", "pages/2_Train.py"):
        at = AppTest.from_file(str(ROOT / page), default_timeout=120).run()
        assert not at.exception, page
        warnings = " ".join(w.value for w in at.warning)
        assert "The GPU is not used." in warnings and "CPU-only build" in warnings, page
        commands = [c.value for c in at.code]
        assert any(f"torch=={PINS['torch']}+cu128" in c and "download.pytorch.org/whl/cu128" in c for c in commands)
    home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    body = " ".join(m.value for m in home.markdown) + " ".join(c.value for c in home.caption)
    assert "Compute device: **CPU (" in body and "NVIDIA GeForce RTX 4070 (12.0 GB)" in body
