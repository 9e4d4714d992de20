"""Training checkpoints as one safetensors file: tensors (model, optimizer, RNG) + JSON metadata (counters).

Written atomically, so a kill during the write leaves the previous checkpoint intact. No pickle.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from core.base.files import atomic_write_bytes

VERSION = 1


def clean_state_dict(state: dict) -> dict:
    """Strip wrapper prefixes (torch.compile's `_orig_mod.`, DataParallel's `module.`) so weights load anywhere."""
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "module."):
            k = k.replace(prefix, "")
        out[k] = v
    return out


class CheckpointMismatch(ValueError):
    """A checkpoint made for a model of another shape (its run's config.json edited since)."""


def _first_difference(saved: dict, expected: dict) -> str:
    """The first weight that differs between a checkpoint and a model, in words."""
    for k in sorted(set(saved) | set(expected)):
        if k not in expected:
            return f"it holds {k}, which this model does not have"
        if k not in saved:
            return f"it lacks {k}, which this model needs"
        if tuple(saved[k].shape) != tuple(expected[k].shape):
            return f"{k} is {tuple(saved[k].shape)} there, {tuple(expected[k].shape)} here"
    return ""


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict,
                    rng: dict[str, torch.Tensor] | None = None) -> None:
    """rng: the random states to keep (default: this process's); under torchrun every rank's, gathered by
    the trainer as rng/torch (rank 0's) + rng/rank/<r>/torch and rng/rank/<r>/cuda."""
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in clean_state_dict(model.state_dict()).items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim/{pid}/{name}"] = t.detach().contiguous().cpu()
    if rng is not None:
        tensors.update({k: v.contiguous().cpu() for k, v in rng.items()})
    else:
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{i}"] = s
    meta = {**meta, "version": VERSION, "param_groups": opt["param_groups"]}
    atomic_write_bytes(Path(path), save(tensors, metadata={"meta": json.dumps(meta)}))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    rank: int | None = None) -> dict:
    """Restore model, optimizer and RNG in place; -> the metadata dict.

    rank: a torchrun rank takes its own saved random state, or rank 0's when the checkpoint has none for it
    (a resume with more processes than the run had)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has version {meta.get('version')}, this trainer writes {VERSION}")
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights)
        if optimizer is not None:
            state: dict[int, dict] = {}
            for k, v in tensors.items():
                if k.startswith("optim/"):
                    _, pid, name = k.split("/", 2)
                    state.setdefault(int(pid), {})[name] = v
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as e:  # torch's own words list every tensor: name the first one
        raise CheckpointMismatch(f"the checkpoint {path} does not fit the model that config.json now describes "
                                 f"({_first_difference(weights, model.state_dict()) or str(e).splitlines()[0]}); "
                                 "was config.json edited? Resume with the settings the run started with, or start "
                                 "a new run.") from None
    if rank is not None:
        torch.set_rng_state(tensors.get(f"rng/rank/{rank}/torch", tensors["rng/torch"]))
        if f"rng/rank/{rank}/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors[f"rng/rank/{rank}/cuda"])  # this rank's own (current) GPU
        return meta
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return meta
