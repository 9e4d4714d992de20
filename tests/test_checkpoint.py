"""core.train.checkpoint: a checkpoint holds everything a resume needs (weights, optimizer, random state,
counters), is one safetensors file written atomically (an interrupted write leaves the previous checkpoint, a cut
file is refused), and is never a pickle."""
from __future__ import annotations

import builtins
import json
import struct

import pytest
import torch
from safetensors import SafetensorError

from core.base import files
from core.train import checkpoint as ckpt


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """Steps whose data and dropout masks come from torch's random state, as the trainer's shuffles and dropout do."""
    model.train()
    for _ in range(steps):
        x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_round_trips_weights_optimizer_counters_and_random_state(tmp_path):
    model = tiny_model(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, 3)
    optimizer.param_groups[0]["lr"] = 0.05  # a schedule moved it
    path = tmp_path / "checkpoint.safetensors"
    ckpt.save_checkpoint(path, model, optimizer, {"epoch": 2, "step": 3, "best": 12.5})
    next_draw = torch.rand(4)  # what the run would have drawn next

    other = tiny_model(1)  # other weights, a fresh optimizer, another random state
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    torch.manual_seed(123)
    meta = ckpt.load_checkpoint(path, other, other_opt)

    assert (meta["epoch"], meta["step"], meta["best"], meta["version"]) == (2, 3, 12.5, ckpt.VERSION)
    assert same(weights(other), weights(model))
    assert other_opt.param_groups[0]["lr"] == 0.05
    saved, loaded = optimizer.state_dict()["state"], other_opt.state_dict()["state"]
    assert saved.keys() == loaded.keys() and len(saved) == 4
    for pid in saved:
        assert saved[pid].keys() == loaded[pid].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(torch.as_tensor(saved[pid][k]), torch.as_tensor(loaded[pid][k])) for k in saved[pid])
    assert torch.equal(torch.rand(4), next_draw)  # the random state is the saved one


def test_resuming_from_a_checkpoint_gives_exactly_the_uninterrupted_run(tmp_path):
    model = tiny_model(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_steps(model, optimizer, 6)
    uninterrupted = weights(model)

    model = tiny_model(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_steps(model, optimizer, 3)
    ckpt.save_checkpoint(tmp_path / "c", model, optimizer, {"step": 3})
    del model, optimizer  # the process ends (a kill, a Stop)

    resumed = tiny_model(7)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    torch.manual_seed(999)
    assert ckpt.load_checkpoint(tmp_path / "c", resumed, resumed_opt)["step"] == 3
    train_steps(resumed, resumed_opt, 3)
    assert same(weights(resumed), uninterrupted)


def test_each_torchrun_rank_resumes_with_its_own_random_state_or_rank_0s(tmp_path):
    model = tiny_model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    states = {}
    for r, seed in enumerate((10, 11)):
        torch.manual_seed(seed)
        states[r] = torch.get_rng_state()
    # as the trainer gathers them: every rank's own, and rank 0's again for a one-process resume
    rng = {"rng/torch": states[0].clone(), "rng/rank/0/torch": states[0], "rng/rank/1/torch": states[1]}
    ckpt.save_checkpoint(tmp_path / "c", model, optimizer, {"step": 1}, rng=rng)

    def draw_after_load(rank):
        torch.manual_seed(999)
        ckpt.load_checkpoint(tmp_path / "c", tiny_model(1), None, rank=rank)
        return torch.rand(3)

    torch.manual_seed(10)
    rank0 = torch.rand(3)
    torch.manual_seed(11)
    rank1 = torch.rand(3)
    assert torch.equal(draw_after_load(1), rank1)
    assert torch.equal(draw_after_load(0), rank0)
    assert torch.equal(draw_after_load(3), rank0)  # a resume with more processes than the run had


def test_weights_saved_from_a_compiled_or_wrapped_model_load_into_a_bare_one(tmp_path):
    class Wrapper(torch.nn.Module):  # as torch.compile (_orig_mod.) and DataParallel (module.) name them
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = torch.nn.Module()
            self._orig_mod.module = inner

    model = tiny_model(0)
    ckpt.save_checkpoint(tmp_path / "c", Wrapper(model), torch.optim.SGD(model.parameters(), lr=0.1), {})
    bare = tiny_model(1)
    ckpt.load_checkpoint(tmp_path / "c", bare, None)
    assert same(weights(bare), weights(model))
    assert ckpt.clean_state_dict({"_orig_mod.module.0.weight": 1, "0.bias": 2}) == {"0.weight": 1, "0.bias": 2}


def test_a_write_interrupted_half_way_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """A kill (here Ctrl+C) while the new checkpoint is written, after its bytes went out but before they
    replaced the old file: the old checkpoint is the one read, and no temporary file is left."""
    path = tmp_path / "checkpoint.safetensors"
    model = tiny_model(0)
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt.save_checkpoint(path, model, optimizer, {"step": 1})
    first = weights(model)
    train_steps(model, optimizer, 2)

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, model, optimizer, {"step": 3})
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    fresh = tiny_model(1)
    assert ckpt.load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters()))["step"] == 1
    assert same(weights(fresh), first)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_cut_checkpoint_is_refused_and_changes_nothing(tmp_path, keep):
    """A checkpoint file cut short (a copy that stopped, a disk that filled) is refused whole: not one weight of
    the model it was to load into changes."""
    model = tiny_model(0)
    path = tmp_path / "c"
    ckpt.save_checkpoint(path, model, torch.optim.AdamW(model.parameters()), {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    target = tiny_model(1)
    before = weights(target)
    with pytest.raises(SafetensorError):
        ckpt.load_checkpoint(path, target, torch.optim.AdamW(target.parameters()))
    assert same(weights(target), before)


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def test_a_pickled_checkpoint_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint"  # no .safetensors suffix, by which a reader might still refuse a pickle
    model = tiny_model(0)
    torch.save({"model/0.weight": model[0].weight.detach(), "payload": Payload(marker)}, path)  # a torch.save pickle
    with pytest.raises(SafetensorError):
        ckpt.load_checkpoint(path, model, None)
    assert not marker.exists()


def test_a_checkpoint_is_safetensors_with_json_metadata_and_no_pickle(tmp_path):
    model = tiny_model(0)
    optimizer = torch.optim.AdamW(model.parameters())
    train_steps(model, optimizer, 1)
    ckpt.save_checkpoint(tmp_path / "c", model, optimizer, {"step": 1, "note": "ok"})
    data = (tmp_path / "c").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])  # the whole header is JSON: names, dtypes, shapes, offsets
    meta = json.loads(header.pop("__metadata__")["meta"])
    assert (meta["step"], meta["note"], meta["version"]) == (1, "ok", ckpt.VERSION)
    assert {"model/0.weight", "optim/0/exp_avg", "rng/torch"} <= set(header)
    assert all(set(t) == {"dtype", "shape", "data_offsets"} for t in header.values())
    assert len(data) == 8 + n + max(t["data_offsets"][1] for t in header.values())  # nothing else in the file


def test_a_checkpoint_of_another_version_is_refused(tmp_path, monkeypatch):
    model = tiny_model(0)
    monkeypatch.setattr(ckpt, "VERSION", 0)
    ckpt.save_checkpoint(tmp_path / "c", model, torch.optim.SGD(model.parameters(), lr=0.1), {})
    monkeypatch.undo()
    with pytest.raises(ValueError, match=f"has version 0, this trainer writes {ckpt.VERSION}"):
        ckpt.load_checkpoint(tmp_path / "c", tiny_model(1), None)
