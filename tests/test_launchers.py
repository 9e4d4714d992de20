"""The double-click launchers (run_macos.command, run_windows.bat) and their shared install check.

run_macos.command runs for real under bash, in a temporary copy of the project that holds only
what the launcher needs, a stand-in app.py and a stand-in requirements.txt naming a tiny wheel
that the test builds itself. pip runs with PIP_NO_INDEX=1, so nothing is downloaded. Streamlit
is a fake (it only records its arguments) except in the health-endpoint test, where the test
runner's own site-packages (holding the real Streamlit) go on the launcher's PYTHONPATH.

run_windows.bat cannot run its main path here (no Windows Python; see docs/launchers.md), so it
gets a lint: line endings, labels, error paths, and the same calls to tools/env_check.py as the
bash launcher. Where wine happens to be installed, its error paths also run under wine's cmd.exe.
"""
import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASH_LAUNCHER = ROOT / "run_macos.command"
BAT_LAUNCHER = ROOT / "run_windows.bat"
ENV_CHECK = ROOT / "tools" / "env_check.py"
CONFIG = ROOT / ".streamlit" / "config.toml"
SUBCOMMANDS = {"check-python", "needs-install", "install-torch", "mark-installed"}
BASH = shutil.which("bash")

# The safety settings of .streamlit/config.toml that the launchers pass on the command line as well.
SAFE_ARGS = ["--server.address", "127.0.0.1", "--server.enableXsrfProtection", "true", "--server.maxUploadSize", "200",
             "--browser.gatherUsageStats", "false", "--server.showEmailPrompt", "false", "--client.toolbarMode", "minimal",
             "--client.showSidebarNavigation", "false"]

needs_bash = pytest.mark.skipif(BASH is None or os.name == "nt", reason="needs bash on a POSIX system")
pytestmark = pytest.mark.launcher  # -m "not launcher" leaves this file out (pytest.ini)


def load_env_check():
    spec = importlib.util.spec_from_file_location("env_check", ENV_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


env_check = load_env_check()


# --------------------------------------------------------------------------- helpers


def make_wheel(directory: Path, version: str, name: str = "caption_standin") -> Path:
    """A tiny pure-Python wheel (default 'caption-standin'), built by hand (no network, no build backend)."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test_launchers\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture
def project(tmp_path):
    """A temporary app folder (with a space in its path) holding just what the launcher needs."""
    root = tmp_path / "my app"
    for relative in ("run_macos.command", "tools/env_check.py", ".streamlit/config.toml", "core/__init__.py",
                     "core/base/__init__.py", "core/base/paths.py", "core/device/__init__.py",
                     "core/device/build.py", "ui/__init__.py", "ui/serve.py", "ui/warm.py", "ui/hosts.py"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, root / relative)
    (root / "app.py").write_text('import streamlit as st\n\nst.write("hello")\n')
    make_wheel(root / "wheels", "1.0")
    make_wheel(root / "wheels", "2.0")
    (root / "requirements.txt").write_text("./wheels/caption_standin-1.0-py3-none-any.whl\n")
    return root


@pytest.fixture
def fake_streamlit(tmp_path):
    """A folder for PYTHONPATH whose 'streamlit' only writes down how it was called."""
    site = tmp_path / "fake-site"
    (site / "streamlit").mkdir(parents=True)
    (site / "streamlit" / "__init__.py").write_text("")
    (site / "streamlit" / "__main__.py").write_text(
        "import json, os, sys\n"
        "with open(os.environ['FAKE_STREAMLIT_LOG'], 'w') as f:\n"
        "    json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd()}, f)\n"
    )
    return site


def launcher_env(tmp_path, **extra):
    """The environment for a launcher run: isolated HOME and pip, no browser, this Python."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CAPTION_", "PIP_", "PYTHON", "STREAMLIT_", "VIRTUAL_ENV"))
    }
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        CAPTION_PYTHON=sys.executable,
        CAPTION_NO_BROWSER="1",
        PIP_NO_INDEX="1",  # install only the local stand-in wheel: never download
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    env.update(extra)
    return env


def run_launcher(project, env, *args, timeout=180):
    """Run run_macos.command from another folder, with no terminal on stdin."""
    return subprocess.run(
        [BASH, str(project / "run_macos.command"), *args],
        cwd=project.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def installed_version(project, package="caption_standin"):
    result = subprocess.run(
        [str(project / ".venv" / "bin" / "python"), "-c", f"import {package}; print({package}.__version__)"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
    )
    return result.stdout.strip() or result.stderr


def old_python():
    """Some Python older than 3.10 on this machine (pyenv keeps several), or None."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(9, 5, -1)]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(str(p) for p in pyenv_root.glob("versions/3.[6-9].*/bin/python3"))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[0] * 100 + sys.version_info[1])"],
                capture_output=True, text=True, timeout=20,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out.isdigit() and 306 <= int(out) < 310:
            return candidate
    return None


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- tools/env_check.py


def env_check_cli(cwd, *args, python=sys.executable):
    return subprocess.run([python, str(ENV_CHECK), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_env_check_install_cycle(tmp_path):
    (tmp_path / ".venv").mkdir()
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes(b"six==1.16.0\nnumpy\n")

    first = env_check_cli(tmp_path, "needs-install")
    assert first.returncode == 0 and "not been installed" in first.stdout

    marked = env_check_cli(tmp_path, "mark-installed")
    assert marked.returncode == 0, marked.stderr
    assert (tmp_path / ".venv" / "requirements.sha256").read_text().splitlines() == [
        env_check.requirements_hash(str(requirements)), "torch-build: default"]
    assert env_check_cli(tmp_path, "needs-install").returncode == 1

    # Only the line endings change (CRLF, lone CR) or a UTF-8 byte-order mark appears: still up to date.
    requirements.write_bytes(b"six==1.16.0\r\nnumpy\r\n")
    assert env_check_cli(tmp_path, "needs-install").returncode == 1
    requirements.write_bytes(b"\xef\xbb\xbfsix==1.16.0\rnumpy\r")
    assert env_check_cli(tmp_path, "needs-install").returncode == 1

    requirements.write_bytes(b"six==1.17.0\r\nnumpy\r\n")
    changed = env_check_cli(tmp_path, "needs-install")
    assert changed.returncode == 0 and "changed" in changed.stdout


def test_env_check_follows_included_files(tmp_path):
    (tmp_path / ".venv").mkdir()
    (tmp_path / "reqs").mkdir()
    (tmp_path / "requirements.txt").write_text("-r reqs/base.txt\n--constraint=reqs/pins.txt\nsix\n")
    (tmp_path / "reqs" / "base.txt").write_text("-r more.txt\n")  # relative to reqs/, like pip
    (tmp_path / "reqs" / "more.txt").write_text("numpy\n")
    (tmp_path / "reqs" / "pins.txt").write_text("numpy<3\n")
    assert env_check_cli(tmp_path, "mark-installed").returncode == 0
    assert env_check_cli(tmp_path, "needs-install").returncode == 1

    (tmp_path / "reqs" / "more.txt").write_text("numpy\r\n")
    assert env_check_cli(tmp_path, "needs-install").returncode == 1
    (tmp_path / "reqs" / "more.txt").write_text("numpy\npandas\n")
    assert env_check_cli(tmp_path, "needs-install").returncode == 0

    (tmp_path / "reqs" / "more.txt").unlink()
    missing = env_check_cli(tmp_path, "needs-install")
    assert missing.returncode == 2 and "more.txt is missing" in missing.stderr


def test_env_check_remembers_the_torch_build(tmp_path, monkeypatch):
    """The stamp's second line: which PyTorch build is installed, and a CUDA build that failed to install."""
    import platform

    from core.device import build as device

    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(f"#!{sys.executable}\nimport sys\n"
                   "if len(sys.argv) > 1: print('NVIDIA RTX A2000, 6138, 560.94')\n"
                   "else: print('Driver Version: 560.94   CUDA Version: 12.6')\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(platform, "system", lambda: "Windows")
    for name in (device.FORCE_CPU_ENV, device.TORCH_CUDA_ENV):
        monkeypatch.delenv(name, raising=False)
    venv, requirements = tmp_path / ".venv", tmp_path / "requirements.txt"
    venv.mkdir()
    requirements.write_text("torch==2.14.1\ntorchvision==0.29.1\n")
    stamp = venv / "requirements.sha256"

    # A stamp from before this check (hash only) = the standard build: on Windows with a GPU, install once more.
    stamp.write_text(env_check.requirements_hash(str(requirements)) + "\n")
    needed, reason = env_check.needs_install(str(venv), str(requirements))
    assert needed and "default now cu126" in reason and "NVIDIA RTX A2000" in reason

    # (installed torch build, CUDA build that failed) -> stamp line, and whether the next start installs.
    cases = [("cu126", None, "cu126", False),
             ("default", "cu126", "default (cu126 failed)", False),  # the failure is remembered: no new download
             ("cu130", None, "cu130", True),  # not the build for this driver
             ("default", "cu118", "default (cu118 failed)", True)]  # the driver moved on since that failure
    for installed, failed, line, again in cases:
        monkeypatch.setattr(env_check, "installed_torch_build", lambda: installed)
        if failed:
            env_check.write_failed(str(venv), failed)
        env_check.mark_installed(str(venv), str(requirements))
        assert stamp.read_text().splitlines()[1] == f"torch-build: {line}"
        assert not (venv / env_check.FAILED_NAME).exists()
        assert env_check.needs_install(str(venv), str(requirements))[0] is again, line

    # CAPTION_FORCE_CPU=1 wants no CUDA build, and keeps one that is there (it runs on the CPU as well).
    monkeypatch.setenv(device.FORCE_CPU_ENV, "1")
    assert not env_check.needs_install(str(venv), str(requirements))[0]
    build = env_check_cli(tmp_path, "torch-build")
    assert build.returncode == 0 and build.stdout.startswith("standard: ")


def test_env_check_errors_are_exit_2_in_plain_words(tmp_path):
    no_venv = env_check_cli(tmp_path, "needs-install")
    assert no_venv.returncode == 2 and "does not exist" in no_venv.stderr
    (tmp_path / ".venv").mkdir()
    no_requirements = env_check_cli(tmp_path, "mark-installed")
    assert no_requirements.returncode == 2 and "requirements.txt is missing" in no_requirements.stderr
    assert "Traceback" not in no_venv.stderr + no_requirements.stderr
    assert env_check_cli(tmp_path).returncode == 2  # no subcommand


def test_env_check_unexpected_errors_are_exit_2_not_up_to_date(tmp_path):
    """An uncaught exception exits 1, which the launchers read as "up to date": it must be 2 (error) instead."""
    (tmp_path / "tools").mkdir()
    (tmp_path / "core").mkdir()
    shutil.copy2(ENV_CHECK, tmp_path / "tools" / "env_check.py")
    (tmp_path / "core" / "device").mkdir()
    for init in ("core/__init__.py", "core/device/__init__.py"):
        (tmp_path / init).write_text("")
    (tmp_path / "core" / "device" / "build.py").write_text("raise RuntimeError('a broken core/device/build.py')\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / "requirements.txt").write_text("six\n")
    script = str(tmp_path / "tools" / "env_check.py")
    run = lambda *args: subprocess.run([sys.executable, script, *args], cwd=tmp_path, capture_output=True, text=True)
    assert run("mark-installed").returncode == 0
    for command in ("needs-install", "install-torch"):
        result = run(command)
        assert result.returncode == 2, command
        assert "Error: RuntimeError: a broken core/device/build.py" in result.stderr


def test_env_check_python_version():
    ok, message = env_check.check_python((3, 10, 0), "/usr/bin/python3")
    assert ok and "3.10.0" in message
    ok, message = env_check.check_python((3, 9, 18), "/usr/bin/python3")
    assert not ok
    assert message == "Python 3.9.18 (/usr/bin/python3) is too old: this app needs Python 3.10 or newer."
    result = env_check_cli(ROOT, "check-python")
    assert result.returncode == 0 and sys.executable in result.stdout


def test_env_check_runs_on_old_pythons_and_uses_only_the_standard_library():
    """A too-old Python must be able to run check-python, so the file avoids newer syntax."""
    import ast

    source = ENV_CHECK.read_text()
    try:
        tree = ast.parse(source, feature_version=(3, 6))
    except ValueError:  # this Python cannot parse that old a grammar
        tree = ast.parse(source)
    # Module level: the standard library only. core.device.build (standard library and core.base.paths at import) is loaded inside
    # the functions that choose the PyTorch build, which run with the venv's Python only.
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    imported = {alias.name.split(".")[0] for node in top if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in top if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
    nested = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) and node not in top
              for alias in node.names}
    nested |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node not in top}
    assert nested <= {"core.device.build", "importlib"}
    for module, allowed in (("core/device/build.py", {"core.base.paths"}), ("core/base/paths.py", set())):
        tree = ast.parse((ROOT / module).read_text())
        top = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        top |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
        assert {m for m in top if m.split(".")[0] not in sys.stdlib_module_names} <= {"__future__"} | allowed, module

    old = old_python()
    if old is None:
        pytest.skip("no Python older than 3.10 on this machine")
    result = env_check_cli(ROOT, "check-python", python=old)
    assert result.returncode == 1
    assert "is too old: this app needs Python 3.10 or newer" in result.stderr


# --------------------------------------------------------------------------- run_macos.command under bash


@needs_bash
def test_bash_launcher_installs_only_when_requirements_change(project, fake_streamlit, tmp_path):
    calls = tmp_path / "streamlit-call.json"
    env = launcher_env(tmp_path, PYTHONPATH=str(fake_streamlit), FAKE_STREAMLIT_LOG=str(calls))
    requirements = project / "requirements.txt"

    def launch(run_name, *args, expect=0):
        pip_log = tmp_path / f"pip-{run_name}.log"  # pip writes this only when it runs
        result = run_launcher(project, dict(env, PIP_LOG=str(pip_log)), *args)
        assert result.returncode == expect, f"{run_name}:\n{result.stdout}\n{result.stderr}"
        return result, pip_log.exists()

    # First start: creates .venv, installs, starts Streamlit in the app folder with the arguments passed on.
    first, pip_ran = launch("first", "--server.port", "8765", "--theme.base", "dark")
    assert pip_ran and "First start" in first.stdout
    assert (project / ".venv" / "requirements.sha256").is_file()
    assert installed_version(project) == "1.0"
    call = json.loads(calls.read_text())
    assert call["argv"] == ["run", "app.py", *SAFE_ARGS, "--server.headless", "true", "--server.port", "8765",
                            "--theme.base", "dark"]
    assert Path(call["cwd"]).resolve() == project.resolve()

    # Second start: nothing to install.
    second, pip_ran = launch("second")
    assert not pip_ran and "already installed" in second.stdout
    assert "First start" not in second.stdout
    assert json.loads(calls.read_text())["argv"] == ["run", "app.py", *SAFE_ARGS, "--server.headless", "true"]

    # Only the line endings changed (as after a checkout on Windows): still nothing to install.
    requirements.write_bytes(requirements.read_bytes().replace(b"\n", b"\r\n"))
    crlf, pip_ran = launch("crlf")
    assert not pip_ran and "already installed" in crlf.stdout

    # A change that cannot be installed: a plain error, the app does not start, nothing is noted as installed.
    stamp = (project / ".venv" / "requirements.sha256").read_text()
    calls.unlink()
    requirements.write_text("./wheels/no_such_package-1.0-py3-none-any.whl\n")
    broken, pip_ran = launch("broken", expect=1)
    assert pip_ran and "ERROR: Installing the packages failed" in broken.stderr
    assert not calls.exists()
    assert (project / ".venv" / "requirements.sha256").read_text() == stamp

    # A real change: installs again.
    requirements.write_text("./wheels/caption_standin-2.0-py3-none-any.whl\n")
    changed, pip_ran = launch("changed")
    assert pip_ran and "changed since the last install" in changed.stdout
    assert installed_version(project) == "2.0"


def local_index(root: Path, wheels: list[Path]) -> str:
    """A PEP 503 index in a folder (pip reads each project's index.html over file://); returns its URL."""
    for wheel in wheels:
        project = root / wheel.name.split("-")[0].replace("_", "-")
        project.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, project / wheel.name)
        links = "".join(f'<a href="{w.name.replace("+", "%2B")}">{w.name}</a>\n' for w in sorted(project.glob("*.whl")))
        (project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


@needs_bash
@pytest.mark.slow
def test_bash_launcher_installs_the_cuda_build_for_an_nvidia_gpu(project, fake_streamlit, tmp_path):
    """The whole GPU path, for real: a fake nvidia-smi, stand-in torch/torchvision wheels, PyTorch's index as a folder.

    On Windows this path is the default; elsewhere CAPTION_TORCH_CUDA=1 asks for it, so bash can run it here."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text(f"#!{sys.executable}\nimport sys\n"
                   "if any(a.startswith('--query-gpu') for a in sys.argv): print('NVIDIA GeForce RTX 4070, 12282, 572.16')\n"
                   "else: print('| NVIDIA-SMI 572.16   Driver Version: 572.16   CUDA Version: 12.8 |')\n")
    smi.chmod(0o755)
    wheels = project / "wheels"  # the standard builds, as on PyPI
    make_wheel(wheels, "2.14.1", "torch")
    make_wheel(wheels, "0.29.1", "torchvision")
    cuda_wheels = [make_wheel(tmp_path / "cuda-wheels", "2.14.1+cu128", "torch"),
                   make_wheel(tmp_path / "cuda-wheels", "0.29.1+cu128", "torchvision")]
    torch_index = local_index(tmp_path / "torch-index" / "cu128", cuda_wheels)
    (project / "requirements.txt").write_text("--find-links ./wheels\ntorch==2.14.1\ntorchvision==0.29.1\n")
    calls = tmp_path / "streamlit-call.json"
    env = launcher_env(tmp_path, PYTHONPATH=str(fake_streamlit), FAKE_STREAMLIT_LOG=str(calls),
                       PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", CAPTION_TORCH_CUDA="1",
                       CAPTION_TORCH_INDEX=torch_index.rsplit("/", 1)[0],
                       PIP_INDEX_URL=local_index(tmp_path / "empty-index", []))  # PyPI stand-in: nothing on it
    del env["PIP_NO_INDEX"]  # the CUDA build comes from an index (a local folder: still no download)
    stamp = project / ".venv" / "requirements.sha256"

    def launch(run_name, expect_pip, **extra):
        pip_log = tmp_path / f"pip-{run_name}.log"
        result = run_launcher(project, dict(env, PIP_LOG=str(pip_log), **extra))
        assert result.returncode == 0, f"{run_name}:\n{result.stdout}\n{result.stderr}"
        assert pip_log.exists() == expect_pip, f"{run_name}:\n{result.stdout}\n{result.stderr}"
        assert calls.exists()  # the app started
        calls.unlink()
        return result.stdout

    # CAPTION_FORCE_CPU=1 on the first start: no CUDA download.
    out = launch("force-cpu", True, CAPTION_FORCE_CPU="1")
    assert "CAPTION_FORCE_CPU=1" in out and "Installing the CUDA build" not in out
    assert installed_version(project, "torch") == "2.14.1"
    assert stamp.read_text().splitlines()[1] == "torch-build: default"

    # Without it: the CUDA build for this driver, from PyTorch's index; the rest of requirements.txt keeps it.
    out = launch("cuda", True)
    assert "NVIDIA GeForce RTX 4070" in out and "Installing the CUDA build of PyTorch (cu128)" in out
    assert installed_version(project, "torch") == "2.14.1+cu128"
    assert installed_version(project, "torchvision") == "0.29.1+cu128"
    assert stamp.read_text().splitlines()[1] == "torch-build: cu128"
    assert "already installed" in launch("again", False)
    assert "already installed" in launch("force-cpu-later", False, CAPTION_FORCE_CPU="1")  # kept; the app uses the CPU

    # The CUDA build cannot be had (offline, a wrong guess of the builds): the standard build, said in plain words,
    # and remembered, so the next start does not try the download again.
    shutil.rmtree(project / ".venv")
    out = launch("cuda-fails", True, CAPTION_TORCH_INDEX=(tmp_path / "no-such-index").as_uri())
    assert "Could not install the CUDA build of PyTorch" in out and "Going on with the standard PyTorch build" in out
    assert installed_version(project, "torch") == "2.14.1"
    assert stamp.read_text().splitlines()[1] == "torch-build: default (cu128 failed)"
    assert "already installed" in launch("after-failure", False)


def test_linux_without_an_nvidia_driver_wants_the_cpu_build(monkeypatch):
    """PyPI's Linux torch wheel carries 4 GB of CUDA libraries: without an NVIDIA driver, PyTorch's CPU build."""
    from core.device import build as device

    for name in (device.FORCE_CPU_ENV, device.TORCH_CUDA_ENV, device.TORCH_INDEX_ENV):
        monkeypatch.delenv(name, raising=False)
    pins = {"torch": "2.14.1", "torchvision": "0.29.1"}
    monkeypatch.setattr(device, "nvidia_driver_present", lambda: False)
    build, why = device.wanted_torch_build(pins, system="Linux")
    assert build == "cpu" and "No NVIDIA GPU found" in why and "/proc/driver/nvidia" in why
    assert device.cuda_install_args(build, pins) == ["install", "torch==2.14.1+cpu", "torchvision==0.29.1+cpu",
                                                     "--index-url", "https://download.pytorch.org/whl/cpu"]
    monkeypatch.setenv(device.FORCE_CPU_ENV, "1")  # forced CPU: still no CUDA libraries to download
    assert device.wanted_torch_build(pins, system="Linux")[0] == "cpu"
    monkeypatch.delenv(device.FORCE_CPU_ENV)
    assert device.wanted_torch_build({}, system="Linux")[0] is None  # nothing pinned: nothing to choose
    for system in ("Darwin", "Windows"):  # PyPI's wheels there are CPU (and Apple GPU) builds already
        assert device.wanted_torch_build(pins, nvidia=None, system=system)[0] is None
    monkeypatch.setattr(device, "nvidia_driver_present", lambda: True)  # a driver: PyPI's wheel, with CUDA
    assert device.wanted_torch_build(pins, system="Linux")[0] is None
    monkeypatch.setattr(device, "nvidia_driver_present", lambda: False)
    monkeypatch.setenv(device.TORCH_CUDA_ENV, "1")  # CAPTION_TORCH_CUDA=1 keeps asking nvidia-smi for a GPU
    assert device.wanted_torch_build(pins, nvidia=None, system="Linux")[0] is None


@needs_bash
@pytest.mark.skipif(sys.platform != "linux" or os.path.isdir("/proc/driver/nvidia") or shutil.which("nvidia-smi"),
                    reason="the CPU-build path is Linux without an NVIDIA driver")
@pytest.mark.slow
def test_bash_launcher_installs_the_cpu_build_without_an_nvidia_gpu(project, fake_streamlit, tmp_path):
    """The whole path, for real: stand-in torch/torchvision wheels, PyTorch's CPU index as a local folder."""
    wheels = project / "wheels"  # the standard builds, as on PyPI (there: with CUDA)
    make_wheel(wheels, "2.14.1", "torch")
    make_wheel(wheels, "0.29.1", "torchvision")
    cpu_wheels = [make_wheel(tmp_path / "cpu-wheels", "2.14.1+cpu", "torch"),
                  make_wheel(tmp_path / "cpu-wheels", "0.29.1+cpu", "torchvision")]
    torch_index = local_index(tmp_path / "torch-index" / "cpu", cpu_wheels)
    (project / "requirements.txt").write_text("--find-links ./wheels\ntorch==2.14.1\ntorchvision==0.29.1\n")
    calls = tmp_path / "streamlit-call.json"
    env = launcher_env(tmp_path, PYTHONPATH=str(fake_streamlit), FAKE_STREAMLIT_LOG=str(calls),
                       CAPTION_TORCH_INDEX=torch_index.rsplit("/", 1)[0],
                       PIP_INDEX_URL=local_index(tmp_path / "empty-index", []))  # PyPI stand-in: nothing on it
    del env["PIP_NO_INDEX"]  # the CPU build comes from an index (a local folder: still no download)
    stamp = project / ".venv" / "requirements.sha256"

    def launch(run_name, expect_pip, **extra):
        pip_log = tmp_path / f"pip-{run_name}.log"
        result = run_launcher(project, dict(env, PIP_LOG=str(pip_log), **extra))
        assert result.returncode == 0, f"{run_name}:\n{result.stdout}\n{result.stderr}"
        assert pip_log.exists() == expect_pip, f"{run_name}:\n{result.stdout}\n{result.stderr}"
        assert calls.exists()  # the app started
        calls.unlink()
        return result.stdout

    out = launch("cpu", True)
    assert "No NVIDIA GPU found" in out and "Installing the CPU build of PyTorch from " + torch_index in out
    assert installed_version(project, "torch") == "2.14.1+cpu"  # requirements.txt's torch==2.14.1 keeps it
    assert installed_version(project, "torchvision") == "0.29.1+cpu"
    assert stamp.read_text().splitlines()[1] == "torch-build: cpu"
    assert "already installed" in launch("again", False)

    # The CPU index cannot be reached: the standard build, said in plain words, and remembered.
    shutil.rmtree(project / ".venv")
    out = launch("cpu-fails", True, CAPTION_TORCH_INDEX=(tmp_path / "no-such-index").as_uri())
    assert "Could not install the CPU build of PyTorch" in out and "Going on with the standard PyTorch build" in out
    assert installed_version(project, "torch") == "2.14.1"
    assert stamp.read_text().splitlines()[1] == "torch-build: default (cpu failed)"
    assert "already installed" in launch("after-failure", False)
    # An install of the standard build made before this change is kept (swapping torch alone saves nothing).
    stamp.write_text(stamp.read_text().replace("default (cpu failed)", "default"))
    assert "already installed" in launch("older-install", False)


@needs_bash
def test_bash_launcher_without_python_says_so(project, tmp_path):
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    env = launcher_env(tmp_path, PATH=str(empty_bin))
    del env["CAPTION_PYTHON"]
    result = run_launcher(project, env)
    assert result.returncode == 1
    assert "ERROR: Python 3.10 or newer was not found on this computer." in result.stderr
    assert "python.org" in result.stderr
    assert "command not found" not in result.stdout + result.stderr
    assert not (project / ".venv").exists()


@needs_bash
def test_bash_launcher_with_unusable_caption_python(project, tmp_path):
    env = launcher_env(tmp_path, CAPTION_PYTHON=str(tmp_path / "no" / "python3"))
    result = run_launcher(project, env)
    assert result.returncode == 1
    assert "CAPTION_PYTHON is set to" in result.stderr and "cannot be run" in result.stderr
    assert not (project / ".venv").exists()


@needs_bash
def test_bash_launcher_with_too_old_python(project, tmp_path):
    old = old_python()
    if old is None:
        pytest.skip("no Python older than 3.10 on this machine")
    only_old = tmp_path / "old-bin"
    only_old.mkdir()
    (only_old / "python3").symlink_to(old)
    env = launcher_env(tmp_path, PATH=str(only_old))
    del env["CAPTION_PYTHON"]
    result = run_launcher(project, env)
    assert result.returncode == 1
    assert "is too old: this app needs Python 3.10 or newer" in result.stdout + result.stderr
    assert "ERROR: Python 3.10 or newer was not found" in result.stderr
    assert not (project / ".venv").exists()


@needs_bash
def test_bash_launcher_outside_the_app_folder(project, tmp_path):
    (project / "app.py").unlink()
    result = run_launcher(project, launcher_env(tmp_path))
    assert result.returncode == 1
    assert "app.py is missing next to this launcher" in result.stderr


@needs_bash
def test_bash_launcher_serves_the_app_on_127_0_0_1(project, tmp_path):
    """The real Streamlit (from the test runner's site-packages) answers on its health endpoint, on 127.0.0.1 only,
    also where .streamlit/config.toml is not read and the user's own Streamlit settings say otherwise."""
    pytest.importorskip("streamlit")
    paths = sysconfig.get_paths()
    env = launcher_env(tmp_path, PYTHONPATH=os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]])))
    (project / ".streamlit" / "config.toml").unlink()
    user_config = Path(env["HOME"]) / ".streamlit" / "config.toml"
    user_config.parent.mkdir(parents=True)
    user_config.write_text('[server]\naddress = "0.0.0.0"\nenableXsrfProtection = false\n'
                           '[browser]\ngatherUsageStats = true\n')
    port = free_port()
    log_path = tmp_path / "launcher.log"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [BASH, str(project / "run_macos.command"), "--server.port", str(port)],
            cwd=project.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the whole tree can be stopped
        )
        try:
            body = None
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    with opener.open(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as response:
                        body = response.read()
                    break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.5)
            assert body == b"ok", f"no answer on port {port}; launcher output:\n{log_path.read_text()}"
            with opener.open(f"http://127.0.0.1:{port}/", timeout=10) as response:
                assert b"<html" in response.read().lower()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=20)
    output = log_path.read_text()
    # One URL, on 127.0.0.1 only: the launcher's --server.address beat the user's 0.0.0.0.
    assert f"URL: http://127.0.0.1:{port}" in output
    assert "Network URL" not in output and "External URL" not in output


# --------------------------------------------------------------------------- static checks


def test_bash_launcher_file():
    data = BASH_LAUNCHER.read_bytes()
    assert data.startswith(b"#!/usr/bin/env bash\n")
    assert b"\r" not in data
    if os.name != "nt":
        assert os.access(BASH_LAUNCHER, os.X_OK), "run_macos.command must be executable"
    text = data.decode()
    assert 'read -r -p "Press Enter to close' in text and "[ -t 0 ]" in text
    assert '-m ui.serve "${streamlit_args[@]}" "$@"' in text  # ui.serve runs `streamlit run app.py` in-process
    # bash 3.2 (macOS) has no associative arrays, mapfile or ${var,,}.
    for bash4 in ("declare -A", "mapfile", "readarray", ",,}", "^^}"):
        assert bash4 not in text
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(BASH_LAUNCHER)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def bat_lines():
    return BAT_LAUNCHER.read_bytes().decode("ascii").split("\r\n")


def test_bat_launcher_line_endings_and_style():
    data = BAT_LAUNCHER.read_bytes()
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n"), "every line of run_windows.bat must end in CRLF"
    assert data.count(b"\r") == data.count(b"\r\n")
    data.decode("ascii")  # plain ASCII: no code-page surprises in cmd.exe
    lines = [line.strip() for line in bat_lines()]
    assert lines[0].lower() == "@echo off"
    assert any(line.lower().startswith("setlocal") for line in lines)
    # goto-style flow only: %VAR% inside ( ) blocks is expanded too early, a classic batch trap.
    code = [line for line in lines if line and not line.lower().startswith(("rem", "::", "echo"))]
    assert not [line for line in code if line.endswith("(") or line.startswith(")")]


def test_bat_launcher_labels_and_error_paths():
    lines = [line.strip() for line in bat_lines()]
    labels = {line[1:].split()[0].lower(): number for number, line in enumerate(lines) if re.match(r":\w", line)}
    assert len(labels) == len([line for line in lines if re.match(r":\w", line)]), "a label is defined twice"
    targets = {
        match.lower()
        for line in lines
        if not line.lower().startswith("rem")
        for match in re.findall(r"\b(?:goto|call)\s+:?(\w+)", line, flags=re.IGNORECASE)
    }
    targets.discard("eof")
    assert targets, "no goto found"
    assert targets <= set(labels), f"goto/call to missing labels: {targets - set(labels)}"

    fail_labels = [label for label in labels if label.startswith("fail")]
    assert len(fail_labels) >= 5
    for label in fail_labels:
        assert label in targets, f":{label} is never used"
        block = []
        for line in lines[labels[label] + 1:]:
            if re.match(r":\w", line):
                break
            if line and not line.lower().startswith("rem"):
                block.append(line.lower())
        assert any(line.startswith("echo error:") for line in block), f":{label} gives no error message"
        assert block[-2:] == ["pause", "exit /b 1"], f":{label} must end with pause, then exit /b 1"

    # Each step that can fail is checked right away.
    for number, line in enumerate(lines):
        if re.search(r"-m (pip|venv)\b|env_check\.py (needs-install|install-torch|mark-installed)", line):
            following = next(later for later in lines[number + 1:] if later)
            assert following.lower().startswith("if errorlevel"), f"no errorlevel check after: {line}"


WINE = shutil.which("wine")


@pytest.mark.skipif(WINE is None or os.name == "nt", reason="wine is not installed (optional: see docs/launchers.md)")
def test_bat_launcher_error_paths_under_wine(tmp_path):
    """Optional: cmd.exe (wine's) really runs the batch file up to the Python search and its errors.

    There is no Windows Python here, so the rest of the batch file only gets the lint above.
    """
    root = tmp_path / "my app"
    (root / "tools").mkdir(parents=True)
    shutil.copy2(BAT_LAUNCHER, root / "run_windows.bat")
    shutil.copy2(ENV_CHECK, root / "tools" / "env_check.py")
    (root / "app.py").write_text("")
    (root / "requirements.txt").write_text("")
    (tmp_path / "home").mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CAPTION_", "WINE", "DISPLAY"))}
    env.update(
        HOME=str(tmp_path / "home"),
        WINEPREFIX=str(tmp_path / "wineprefix"),  # a fresh, throw-away Windows
        WINEDEBUG="-all",
        WINEDLLOVERRIDES="mscoree,mshtml=",  # no Mono/Gecko install prompts
    )
    batch = "Z:" + str(root / "run_windows.bat").replace("/", "\\")

    def run_bat(**extra):
        result = subprocess.run(
            [WINE, "cmd", "/c", batch, "--server.port", "8765"],
            cwd=tmp_path, env=dict(env, **extra), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, errors="replace", timeout=180,
        )
        return result.returncode, result.stdout.replace("\r", "")

    try:
        code, out = run_bat()
        assert code == 1, out
        assert "ERROR: Python 3.10 or newer was not found on this computer." in out
        assert "Press any key to continue" in out  # the window stays open

        code, out = run_bat(CAPTION_PYTHON='"C:\\no such folder\\python.exe"')
        assert code == 1, out
        assert 'ERROR: CAPTION_PYTHON is set to "C:\\no such folder\\python.exe",' in out

        (root / "app.py").unlink()
        code, out = run_bat()
        assert code == 1, out
        assert "ERROR: app.py, requirements.txt or tools\\env_check.py is missing" in out
        assert not (root / ".venv").exists()
    finally:
        if shutil.which("wineserver"):
            subprocess.run(["wineserver", "-k"], env=env, capture_output=True, timeout=60)


def test_both_launchers_share_the_same_steps():
    bash_text = BASH_LAUNCHER.read_text()
    bat_text = BAT_LAUNCHER.read_bytes().decode("ascii")
    bash_code = "\n".join(line for line in bash_text.splitlines() if not line.lstrip().startswith("#"))
    bat_code = "\n".join(line for line in bat_text.splitlines() if not line.lstrip().lower().startswith("rem"))
    assert set(re.findall(r"tools/env_check\.py ([a-z]+-[a-z-]+)", bash_code)) == SUBCOMMANDS
    assert set(re.findall(r"tools\\env_check\.py ([a-z]+-[a-z-]+)", bat_code)) == SUBCOMMANDS
    assert "tools/env_check.py" in bash_text and "tools\\env_check.py" in bat_text
    for text in (bash_text, bat_text):
        assert "CAPTION_PYTHON" in text and "CAPTION_NO_BROWSER" in text
        assert "--server.headless true" in text
        assert "-m venv" in text
        assert "-m pip install --disable-pip-version-check -r requirements.txt" in text
    assert re.search(r'-m ui\.serve %SAFE% %HEADLESS% %\*\r\n', bat_text)
    assert "CAPTION_FORCE_CPU" in bash_text and "CAPTION_FORCE_CPU" in bat_text


def test_launchers_pass_the_safety_settings_of_the_config_file():
    """Streamlit reads .streamlit/config.toml only from the folder it starts in; the launchers repeat every
    setting of it on the command line (with the same value), so that they hold wherever the app starts from."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads(CONFIG.read_text())
    expected = {f"{section}.{key}": str(value).lower() if isinstance(value, bool) else str(value)
                for section, values in config.items() for key, value in values.items()}
    assert dict(zip(SAFE_ARGS[::2], SAFE_ARGS[1::2])) == {f"--{k}": v for k, v in expected.items()}

    bash_code = BASH_LAUNCHER.read_text()
    block = re.search(r"^streamlit_args=\((.*?)\)$", bash_code, flags=re.MULTILINE | re.DOTALL).group(1)
    assert block.split() == SAFE_ARGS
    bat_line = re.search(r'^set "SAFE=(.*)"\r$', BAT_LAUNCHER.read_bytes().decode("ascii"), flags=re.MULTILINE)
    assert bat_line.group(1).split() == SAFE_ARGS


def git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def test_gitattributes_line_endings_and_executable_bit():
    if shutil.which("git") is None or git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout")
    attributes = git("check-attr", "eol", "--", "run_windows.bat", "run_macos.command", "x.sh").stdout
    assert "run_windows.bat: eol: crlf" in attributes
    assert "run_macos.command: eol: lf" in attributes
    assert "x.sh: eol: lf" in attributes
    staged = git("ls-files", "-s", "--", "run_macos.command").stdout.split()
    if not staged:
        pytest.skip("run_macos.command is not in git yet")
    assert staged[0] == "100755", "commit run_macos.command with: git add --chmod=+x run_macos.command"


def test_streamlit_config():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads(CONFIG.read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["showEmailPrompt"] is False
    assert config["server"]["enableXsrfProtection"] is True
    assert 0 < config["server"]["maxUploadSize"] <= 200
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["toolbarMode"] == "minimal"
    assert "headless" not in config["server"]  # Streamlit's own default decides (see the comment there)

    st_config = pytest.importorskip("streamlit.config")
    known = st_config.get_config_options()
    for section, values in config.items():
        for key in values:
            assert f"{section}.{key}" in known, f"Streamlit has no option {section}.{key}"
