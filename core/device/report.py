"""The compute-device report: what this computer has, what PyTorch can use of it, and why not, in plain words.

Importing this module does not import torch: the Home page draws the report, which must render without
loading torch (it asks a subprocess, `device_report_subprocess`).

    python -m core.device           the report, for a terminal or a bug report
    python -m core.device --json    the same as JSON (what the app reads)
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from core.base.paths import REPO_ROOT
from core.device.build import (
    DRIVER_URL,
    FORCE_CPU_ENV,
    NvidiaInfo,
    cuda_build_for,
    cuda_install_args,
    describe_nvidia,
    forced_cpu,
    pinned_versions,
    query_nvidia,
    shell_command,
    version_numbers,
)


def describe_device(name: str = "auto") -> dict:
    import torch

    from core.nn.precision import bf16_native, pick_device

    dev = pick_device(name)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        label = f"{props.name}, {props.total_memory / 2**30:.1f} GB"
    elif dev.type == "mps":
        label = "Apple GPU (MPS)"
    else:
        label = f"CPU ({os.cpu_count()} cores)"
    return {"device": dev.type, "name": label, "bf16": bf16_native(dev)}


@dataclass
class DeviceReport:
    device: str  # what "auto" uses: "cuda" | "mps" | "cpu" ("?" when PyTorch is missing)
    name: str  # "NVIDIA GeForce RTX 4070, 12.0 GB" | "Apple GPU (MPS)" | "CPU (8 cores)"
    torch: str  # "2.14.1+cu128 (CUDA 12.8)" | "2.14.1+cpu (CPU-only build)" | "not installed"
    nvidia: str | None = None  # what nvidia-smi lists, when it lists a GPU
    problem: str | None = None  # why a GPU that is there goes unused, in plain words
    fix: str | None = None  # what to do about it
    command: str | None = None  # the command that does it, when one does
    gpus: int = 0  # CUDA GPUs PyTorch can use (torch.cuda.device_count()): the Train page offers all of them

    def label(self) -> str:
        """"CUDA (NVIDIA GeForce RTX 4070, 12.0 GB)", "CPU (8 cores)"."""
        return self.name if self.name.upper().startswith(self.device.upper()) else f"{self.device.upper()} ({self.name})"

    def text(self) -> str:
        lines = [f"Compute device: {self.label()}", f"PyTorch: {self.torch}",
                 f"NVIDIA GPU (nvidia-smi): {self.nvidia or 'none found'}"]
        lines += [f"{head}: {value}" for head, value in
                  (("Problem", self.problem), ("Fix", self.fix), ("Command", self.command)) if value]
        return "\n".join(lines)


def _pins_or_installed(torch_module) -> dict[str, str]:
    pins = pinned_versions()
    if "torch" not in pins or "torchvision" not in pins:
        from importlib import metadata

        with contextlib.suppress(metadata.PackageNotFoundError):
            pins = {"torch": torch_module.__version__.split("+")[0],
                    "torchvision": metadata.version("torchvision").split("+")[0]}
    return pins


def _gpu_problem(torch_module, nvidia: NvidiaInfo) -> tuple[str, str, str | None]:
    """Why PyTorch cannot use the NVIDIA GPU that nvidia-smi lists: (problem, fix, command or None)."""
    build_cuda = torch_module.version.cuda
    pins = _pins_or_installed(torch_module)
    build = cuda_build_for(pins["torch"], nvidia.cuda) if "torch" in pins and "torchvision" in pins else None
    command = shell_command([sys.executable, "-m", "pip", *cuda_install_args(build, pins)]) if build else None
    update = f"Update the NVIDIA driver ({DRIVER_URL}), restart the computer, then start the app again."
    # Windows cannot replace the DLLs of a torch that the running app has loaded: stop it first.
    run = "close the app (its terminal window), run this command in a terminal, then start the app again."
    if build_cuda is None:
        problem = (f"This computer has an NVIDIA GPU, but the installed PyTorch ({torch_module.__version__}) "
                   "is the CPU-only build.")
        if command is None:
            return problem + f" The NVIDIA driver (CUDA {nvidia.cuda or '?'}) is too old for its CUDA builds.", update, None
        return problem, f"To install the CUDA build (about 3 GB): {run}", command
    if nvidia.cuda and version_numbers(nvidia.cuda)[:2] < version_numbers(build_cuda)[:2]:
        problem = (f"The NVIDIA driver ({nvidia.driver}) runs CUDA up to {nvidia.cuda}, but this PyTorch build "
                   f"({torch_module.__version__}) needs CUDA {build_cuda}: the driver is too old.")
        if command is None:
            return problem, update, None
        return problem, f"{update} Or, for the PyTorch build that this driver runs: {run}", command
    try:
        torch_module.cuda.init()
        reason = "no reason given"
    except Exception as e:  # noqa: BLE001 - whatever CUDA says is the reason to show
        reason = str(e).strip() or type(e).__name__
    return (f"This computer has an NVIDIA GPU and PyTorch has CUDA {build_cuda}, but PyTorch cannot use the GPU "
            f"({reason})."), update, None


def device_report(nvidia: NvidiaInfo | None | str = "query") -> DeviceReport:
    """What the app computes on, and when an NVIDIA GPU goes unused, why and the command that fixes it."""
    if nvidia == "query":
        nvidia = query_nvidia()
    seen = describe_nvidia(nvidia) if nvidia else None
    try:
        import torch
    except ImportError:
        return DeviceReport("?", "PyTorch is not installed", "not installed", seen,
                            "PyTorch is not installed in this Python environment.",
                            "Start the app with its launcher (run_macos.command or run_windows.bat): it installs it.")
    cuda = torch.version.cuda
    if cuda:
        build = f"CUDA {cuda}"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_built():
        build = "no CUDA; Apple MPS"
    else:
        build = "CPU-only build"
    info = describe_device()
    report = DeviceReport(info["device"], info["name"], f"{torch.__version__} ({build})", seen,
                          gpus=torch.cuda.device_count() if info["device"] == "cuda" else 0)
    if forced_cpu():
        report.name += f"; {FORCE_CPU_ENV}=1 is set, so no GPU is used"
    elif nvidia and info["device"] != "cuda":
        report.problem, report.fix, report.command = _gpu_problem(torch, nvidia)
    return report


def device_report_subprocess(timeout: float = 180) -> DeviceReport:
    """device_report() from a fresh Python, so that the caller never loads torch (or CUDA) itself."""
    try:
        done = subprocess.run([sys.executable, "-m", "core.device", "--json"], cwd=REPO_ROOT,
                              capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return DeviceReport("?", "unknown", "unknown", problem=f"Could not check the compute device: {e}")
    try:
        return DeviceReport(**json.loads(done.stdout.strip().splitlines()[-1]))  # the last line: past any chatter
    except (ValueError, TypeError, IndexError):
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return DeviceReport("?", "unknown", "unknown", problem=f"Could not check the compute device: {last}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    report = device_report()
    print(json.dumps(asdict(report)) if "--json" in argv else report.text())
    return 0
