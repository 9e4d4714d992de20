"""Choosing the compute device, and whether bf16 runs natively on it."""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA, else Apple MPS, else CPU. A named device that is absent is an error, not a fallback."""
    if name in (None, "", "auto"):
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
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_native_bf16()
    return False


def encoder_autocast(device: torch.device):
    """bf16 autocast for the CNN where the hardware runs bf16 natively; elsewhere fp32 (emulated bf16 is slower)."""
    if bf16_native(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(name: str = "auto") -> dict:
    dev = pick_device(name)
    if dev.type == "cuda":
        label = torch.cuda.get_device_name(dev)
    elif dev.type == "mps":
        label = "Apple GPU (MPS)"
    else:
        label = f"CPU ({os.cpu_count()} cores)"
    return {"device": dev.type, "name": label, "bf16": bf16_native(dev)}
