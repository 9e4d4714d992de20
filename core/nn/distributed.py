"""Several training processes as one: torch.distributed set up from torchrun's environment, and the few
collectives the trainer needs. Without torchrun (no WORLD_SIZE, or 1) every helper is a no-op for one process.

`torchrun --nproc-per-node N -m core.train ...` starts N copies of the trainer with RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; `setup` joins them into a process group: NCCL when they train
on CUDA (one GPU per LOCAL_RANK), Gloo on the CPU. Collectives go through tensors only (no pickled objects).
"""
from __future__ import annotations

import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist

_state = {"device": torch.device("cpu"), "owned": False}  # the collectives' device; whether we made the group


def requested_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's rank from the environment (0 without torchrun): usable before `setup`."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device, timeout: timedelta = timedelta(minutes=30)) -> torch.device:
    """Join the process group when torchrun started several processes; -> the device this rank works on.

    On CUDA the group has NCCL for CUDA tensors and Gloo for CPU ones (the JSON messages below)."""
    if requested_world() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise RuntimeError(f"torchrun trains on CUDA (NCCL) or the CPU (Gloo), not on {device.type}; "
                           "add --device cpu, or run without torchrun")
    _state["device"] = device
    if not dist.is_initialized():
        # a dead peer breaks Gloo's sockets at once; the timeout only bounds a peer that hangs
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        _state["owned"] = True
    return device


def teardown() -> None:
    if _state["owned"] and dist.is_initialized():
        dist.destroy_process_group()
    _state["owned"] = False


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of every rank's `values` (one collective), on every rank."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_state["device"])  # (n,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def agree_stop(reason: str | None, reasons: tuple[str, ...], values=()) -> tuple[str | None, list[float]]:
    """Any rank's stop request, on every rank, and `values` summed over the ranks: one collective.

    reason: this rank's (None: carry on), one of `reasons`. All ranks then stop at the same step, and rank 0
    can say why even when only another rank got the STOP file or the SIGTERM.
    """
    summed = all_sum([float(reason == r) for r in reasons] + [float(v) for v in values])
    agreed = next((r for r, n in zip(reasons, summed) if n > 0), None)
    return agreed, summed[len(reasons):]


def average_gradients(params) -> None:
    """Mean of each gradient over the ranks, for a backward pass that did not go through DDP's forward."""
    if not active():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world())


def all_gather_rows(t: torch.Tensor, device: torch.device | None = None) -> list[torch.Tensor]:
    """Every rank's tensor (first dimension may differ between ranks, the rest may not) -> list by rank, CPU.

    device: where the exchange happens (default: the group's device; a CPU tensor goes through Gloo)."""
    if not active():
        return [t.cpu()]
    dev = device or _state["device"]
    n = torch.tensor([t.size(0)], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world())]
    dist.all_gather(sizes, n)
    most = max(int(s) for s in sizes)
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=dev)  # all_gather wants equal shapes
    padded[: t.size(0)] = t
    out = [torch.empty_like(padded) for _ in range(world())]
    dist.all_gather(out, padded)
    return [o[: int(s)].cpu() for o, s in zip(out, sizes)]


def shard(items: list, rank_: int | None = None, world_: int | None = None, fill: bool = False) -> list:
    """This rank's share of `items`: every world-th one from its rank (all shares differ by at most one).

    fill: a rank whose share would be empty (fewer items than ranks) takes one item again, so that every
    rank has something to run forward and backward on (DDP needs every rank in every step).
    """
    r = rank() if rank_ is None else rank_
    w = world() if world_ is None else world_
    out = items[r::w]
    if fill and not len(out) and len(items):
        out = items[r % len(items):][:1]
    return out


# JSON messages (file lists, CSV rows) travel as UTF-8 bytes in CPU uint8 tensors, through Gloo:
# torch's *_object collectives would pickle them.
def _pack(obj) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)  # (n,)


def _unpack(data: torch.Tensor):
    return json.loads(data.numpy().tobytes().decode("utf-8"))


def broadcast_json(obj):
    """Rank 0's `obj` on every rank (the others' argument is ignored)."""
    if not active():
        return obj
    data = _pack(obj) if rank() == 0 else torch.empty(0, dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64)
    dist.broadcast(size, src=0)
    if rank() != 0:
        data = torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(data, src=0)
    return _unpack(data)


def gather_json(obj) -> list | None:
    """Every rank's `obj`, by rank, on rank 0 (None on the others)."""
    got = all_gather_rows(_pack(obj), device=torch.device("cpu"))
    return [_unpack(t) for t in got] if rank() == 0 else None
