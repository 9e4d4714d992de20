"""The compute device: what this computer has, what PyTorch can use of it, and why not.

Importing this module does not import torch. Its first half (nvidia-smi, which PyTorch build to
install) runs before PyTorch exists, from the launchers' install check (tools/env_check.py); the
report is drawn by the Home page, which must render without loading torch (it asks a subprocess).

    python -m core.device           the report, for a terminal or a bug report
    python -m core.device --json    the same as JSON (what the app reads)
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING


PRECISIONS = ("auto", "fp32", "bf16")  # decoder training; train_precision says what "auto" picks

if TYPE_CHECKING:
    import torch

FORCE_CPU_ENV = "CAPTION_FORCE_CPU"  # "1": "auto" = CPU, and the launcher downloads no CUDA build
TORCH_CUDA_ENV = "CAPTION_TORCH_CUDA"  # "1": install the CUDA build from PyTorch's index on Linux too
TORCH_INDEX_ENV = "CAPTION_TORCH_INDEX"  # PyTorch's wheel index, or a mirror of it
TORCH_INDEX = "https://download.pytorch.org/whl"
DRIVER_URL = "https://www.nvidia.com/Download/index.aspx"
CPU_BUILD = "cpu"  # PyTorch's CPU-only build (torch==X+cpu on its index): Linux without an NVIDIA GPU
NVIDIA_PROC = "/proc/driver/nvidia"  # the Linux driver's folder: there whenever its kernel module is loaded
REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"

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


def _numbers(version: str) -> tuple[int, ...]:
    """"2.14.1+cu128" -> (2, 14, 1)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0]))


def _build_cuda(build: str) -> tuple[int, int]:
    """"cu128" -> (12, 8)."""
    return int(build[2:-1]), int(build[-1])


def cuda_build_for(torch_version: str, driver_cuda: str | None) -> str | None:
    """The newest CUDA build of this torch release ("cu128") that the driver runs; None when none does."""
    release = _numbers(torch_version)[:2]
    builds = CUDA_BUILDS.get(release) or (CUDA_BUILDS[max(CUDA_BUILDS)] if release > max(CUDA_BUILDS) else ())
    if not driver_cuda:
        return None
    usable = [b for b in builds if _build_cuda(b) <= _numbers(driver_cuda)[:2]]
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


# ------------------------------------------------------------------ what PyTorch uses (torch imported lazily)


def pick_device(name: str = "auto") -> "torch.device":
    """"auto" -> CUDA, else Apple MPS, else CPU (CPU when CAPTION_FORCE_CPU=1). A named device that is absent
    is an error, not a fallback."""
    import torch

    if name in (None, "", "auto"):
        if forced_cpu():
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for, but no NVIDIA GPU is usable here; choose device 'cpu' or 'auto'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("Apple MPS was asked for, but it is not available here; choose device 'cpu' or 'auto'")
    return dev


@lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products at full rate. Without them oneDNN emulates bf16 on AVX512 and
    it is slower than fp32 (so "AVX512" alone, what torch.backends.cpu.get_cpu_capability() says, is not enough)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    if hasattr(cpu, "_is_avx512_bf16_supported") and hasattr(cpu, "_is_amx_tile_supported"):
        # PyTorch's own cpuinfo probe: the same answer on Linux, Windows and macOS, unlike /proc/cpuinfo
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_native(device: "torch.device") -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_native_bf16()
    return False


def encoder_autocast(device: "torch.device"):
    """bf16 autocast for the CNN where the hardware runs bf16 natively; elsewhere fp32 (emulated bf16 is slower)."""
    import torch

    if bf16_native(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class TrainPrecision:
    """How the decoder trains: `autocast()` around the forward pass and loss, `scaler` around backward and step.

    Autocast runs the matrix products in bf16/fp16 while the parameters, their gradients and AdamW's moments stay
    fp32 (the master weights), so a bf16 run saves and resumes the same fp32 checkpoints as an fp32 one."""

    label: str  # "fp32" | "bf16" | "fp16"
    device_type: str  # "cpu" | "cuda" | "mps"
    reason: str  # why this precision, in the run's log
    scaler: "torch.amp.GradScaler"  # enabled for fp16 only: bf16 has fp32's exponent range, no loss scaling

    def autocast(self):
        import torch

        if self.label == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.label == "bf16" else torch.float16)


def train_precision(device: "torch.device", precision: str = "auto") -> TrainPrecision:
    """The precision of decoder training on `device`: "auto" (bf16 where the hardware runs it natively, fp16 with
    loss scaling on NVIDIA GPUs without bf16, fp32 elsewhere), "fp32", or "bf16" (forced, even where emulated)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    label, reason = "fp32", "fp32 asked for"
    if precision == "bf16":
        if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
            raise ValueError(f"bf16 training is not available on this {device.type} device; "
                             "choose precision auto or fp32")
        label, reason = "bf16", "bf16 asked for"
    elif precision == "auto":
        if bf16_native(device):
            label, reason = "bf16", f"the {device.type.upper()} runs bf16 natively"
        elif device.type == "cuda":
            label, reason = "fp16", "this GPU has no bf16: fp16 with loss scaling"
        else:
            reason = f"no native bf16 on this {device.type.upper()} (emulated bf16 is slower than fp32)"
    scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=label == "fp16")
    return TrainPrecision(label, device.type, reason, scaler)


def adamw(params, device: "torch.device", **kwargs) -> "torch.optim.AdamW":
    """AdamW with PyTorch's fused kernel where it has one (CPU, CUDA): one pass over the weights instead of a dozen,
    the same arithmetic; on one CPU core a step of either decoder's AdamW took 2-4 ms of CPU instead of 18-20."""
    import torch

    return torch.optim.AdamW(params, fused=device.type in ("cpu", "cuda"), **kwargs)


def compile_decoder(decoder: "torch.nn.Module", backend: str = "inductor") -> None:
    """torch.compile a decoder in place for training (TrainConfig.compile); its state_dict keys do not change.

    The attention decoder's loop over words runs a different number of captions at each word and a different
    number of words per batch, so compiling its forward would recompile for nearly every batch: its per-word step
    (`_advance`) is compiled instead, once, with a dynamic batch size. Show-and-Tell is one LSTM call: all of it."""
    import torch

    if hasattr(decoder, "_advance"):
        decoder._advance = torch.compile(decoder._advance, dynamic=True, backend=backend)
    else:
        decoder.compile(dynamic=True, backend=backend)


def describe_device(name: str = "auto") -> dict:
    import torch

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
    if nvidia.cuda and _numbers(nvidia.cuda)[:2] < _numbers(build_cuda)[:2]:
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
        done = subprocess.run([sys.executable, "-m", "core.device", "--json"], cwd=REQUIREMENTS.parent,
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


if __name__ == "__main__":
    sys.exit(main())
