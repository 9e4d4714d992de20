"""Where and in what precision the model runs: the device "auto" picks, whether it runs bf16 natively, the
encoder's autocast, the decoder's training precision, the optimizer and torch.compile.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from core.base.config import PRECISIONS
from core.device.build import forced_cpu

if TYPE_CHECKING:
    import torch


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
