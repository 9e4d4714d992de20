"""Which PyTorch build fits this computer: the NVIDIA GPU nvidia-smi lists, the CUDA its driver runs, and the
pip arguments that install the matching build (the CPU build on Linux without an NVIDIA GPU).

Standard library only (and core.base.paths): it runs before PyTorch exists, from the launchers' install check
(tools/env_check.py).
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.base.paths import FORCE_CPU_ENV, REPO_ROOT, TORCH_CUDA_ENV, TORCH_INDEX_ENV

if TYPE_CHECKING:
    pass

TORCH_INDEX = "https://download.pytorch.org/whl"
DRIVER_URL = "https://www.nvidia.com/Download/index.aspx"
CPU_BUILD = "cpu"  # PyTorch's CPU-only build (torch==X+cpu on its index): Linux without an NVIDIA GPU
NVIDIA_PROC = "/proc/driver/nvidia"  # the Linux driver's folder: there whenever its kernel module is loaded
REQUIREMENTS = REPO_ROOT / "requirements.txt"

# The CUDA builds PyTorch publishes on its own index, per release, oldest CUDA first (pytorch.org, "Previous
# versions"). A release newer than the table is assumed to have the newest row's builds: check it when the torch
# pin moves. A wrong guess costs no more than a failed download, after which the launcher falls back to the CPU.
CUDA_BUILDS = {
    (2, 6): ("cu118", "cu124", "cu126"),
    (2, 7): ("cu118", "cu126", "cu128"),
    (2, 8): ("cu126", "cu128", "cu129"),
    (2, 9): ("cu126", "cu128", "cu130"),
}


# ------------------------------------------------------------------ what the computer has (no torch)


@dataclass(frozen=True)
class NvidiaGPU:
    name: str
    memory_mib: int


@dataclass(frozen=True)
class NvidiaInfo:
    gpus: tuple[NvidiaGPU, ...]
    driver: str  # "560.94"
    cuda: str | None  # the newest CUDA the driver runs ("12.6"), from nvidia-smi's header


def _nvidia_smi_path() -> str | None:
    found = shutil.which("nvidia-smi")
    if found is None and os.name == "nt":  # drivers before 2019 put it outside PATH
        old = Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "NVIDIA Corporation" / "NVSMI" / "nvidia-smi.exe"
        found = str(old) if old.is_file() else None
    return found


def query_nvidia(timeout: float = 20) -> NvidiaInfo | None:
    """The NVIDIA GPUs that nvidia-smi lists; None without nvidia-smi, without a GPU, or when it fails."""
    exe = _nvidia_smi_path()
    if exe is None:
        return None
    run = dict(capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
    try:
        listing = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader,nounits"], **run)
        # The plain table's header is the only place that names the driver's CUDA version on every driver.
        header = subprocess.run([exe], **run)
    except (OSError, subprocess.SubprocessError):
        return None
    if listing.returncode != 0:
        return None
    gpus, driver = [], ""
    for line in listing.stdout.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) == 3 and parts[0]:
            gpus.append(NvidiaGPU(parts[0], int(parts[1]) if parts[1].isdigit() else 0))
            driver = parts[2]
    if not gpus:
        return None
    found = re.search(r"CUDA Version\s*:\s*([\d.]+)", header.stdout)
    return NvidiaInfo(tuple(gpus), driver, found.group(1) if found else None)


def version_numbers(version: str) -> tuple[int, ...]:
    """"2.14.1+cu128" -> (2, 14, 1)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0]))


def _build_cuda(build: str) -> tuple[int, int]:
    """"cu128" -> (12, 8)."""
    return int(build[2:-1]), int(build[-1])


def cuda_build_for(torch_version: str, driver_cuda: str | None) -> str | None:
    """The newest CUDA build of this torch release ("cu128") that the driver runs; None when none does."""
    release = version_numbers(torch_version)[:2]
    builds = CUDA_BUILDS.get(release) or (CUDA_BUILDS[max(CUDA_BUILDS)] if release > max(CUDA_BUILDS) else ())
    if not driver_cuda:
        return None
    usable = [b for b in builds if _build_cuda(b) <= version_numbers(driver_cuda)[:2]]
    return usable[-1] if usable else None


def pinned_versions(requirements: Path | str = REQUIREMENTS) -> dict[str, str]:
    """{"torch": "2.14.1", "torchvision": "0.29.1"} from the requirements file's `name==version` lines."""
    pins = {}
    with contextlib.suppress(OSError):
        for line in Path(requirements).read_text(encoding="utf-8-sig").splitlines():
            found = re.match(r"\s*(torch|torchvision)\s*==\s*([\w.]+)", line)
            if found:
                pins[found.group(1)] = found.group(2)
    return pins


def index_url(build: str) -> str:
    return (os.environ.get(TORCH_INDEX_ENV) or TORCH_INDEX).rstrip("/") + "/" + build


def cuda_install_args(build: str, pins: dict[str, str]) -> list[str]:
    """pip arguments that install the pinned torch and torchvision as CUDA build `build` from PyTorch's index."""
    # The local label (+cu128) makes pip replace an installed CPU build of the same version; requirements.txt's
    # `torch==2.14.1` is then satisfied by it, so the later `pip install -r` keeps it.
    return ["install", f"torch=={pins['torch']}+{build}", f"torchvision=={pins['torchvision']}+{build}",
            "--index-url", index_url(build)]


def shell_command(args: list[str]) -> str:
    """One line to paste into this system's terminal."""
    return subprocess.list2cmdline(args) if os.name == "nt" else shlex.join(args)


def forced_cpu() -> bool:
    return os.environ.get(FORCE_CPU_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def nvidia_driver_present() -> bool:
    """An NVIDIA driver on this (Linux) computer, without running anything: nvidia-smi or the driver's folder."""
    return _nvidia_smi_path() is not None or os.path.isdir(NVIDIA_PROC)


def describe_nvidia(nvidia: NvidiaInfo) -> str:
    gpus = "; ".join(f"{g.name} ({g.memory_mib / 1024:.1f} GB)" for g in nvidia.gpus)
    return f"{gpus}, driver {nvidia.driver or '?'}, runs CUDA up to {nvidia.cuda or '?'}"


def wanted_torch_build(pins: dict[str, str], nvidia: NvidiaInfo | None | str = "query",
                       system: str | None = None) -> tuple[str | None, str]:
    """The build of PyTorch the launcher installs from PyTorch's index: a CUDA build ("cu128"), the CPU build
    ("cpu": Linux without an NVIDIA driver, where PyPI's wheel would bring 4 GB of unused CUDA libraries), or
    None for the standard build from requirements.txt (None also keeps a CUDA build installed earlier: it runs
    on the CPU as well); and why, in plain words.

    nvidia-smi runs only where the answer matters (Windows, or CAPTION_TORCH_CUDA=1), so that other
    systems start without waiting for it."""
    system = system or platform.system()
    if system == "Linux" and os.environ.get(TORCH_CUDA_ENV, "").strip() != "1" and not nvidia_driver_present():
        if "torch" not in pins or "torchvision" not in pins:
            return None, "requirements.txt pins no torch and torchvision versions: the standard build."
        # PyPI's Linux wheel carries the CUDA libraries (4.1 GB of the 6.4 GB .venv: nvidia-* 3.2 GB, triton 0.9 GB)
        return CPU_BUILD, (f"No NVIDIA GPU found (no nvidia-smi, no {NVIDIA_PROC}): the CPU build of PyTorch, "
                           "without the CUDA libraries of the standard Linux build (about 4 GB less).")
    if forced_cpu():
        return None, f"{FORCE_CPU_ENV}=1 is set: the app uses the CPU, and no CUDA build is downloaded."
    if system != "Windows" and os.environ.get(TORCH_CUDA_ENV, "").strip() != "1":
        return None, "The standard build (on Linux it includes CUDA; on a Mac it uses the Apple GPU)."
    if nvidia == "query":
        nvidia = query_nvidia()
    if nvidia is None:
        return None, "No NVIDIA GPU found (nvidia-smi lists none): the standard (CPU) build."
    if "torch" not in pins or "torchvision" not in pins:
        return None, "requirements.txt pins no torch and torchvision versions: the standard build."
    build = cuda_build_for(pins["torch"], nvidia.cuda)
    if build is None:
        return None, (f"NVIDIA GPU found ({describe_nvidia(nvidia)}), but its driver is too old for every CUDA "
                      f"build of PyTorch {pins['torch']}: the standard (CPU) build. Update the driver "
                      f"({DRIVER_URL}), then start the launcher again.")
    return build, f"NVIDIA GPU found ({describe_nvidia(nvidia)}): the CUDA build of PyTorch ({build})."
