"""Decoder training precision: what "auto" picks, forcing it, and that bf16 training keeps fp32 master weights."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_flickr, tiny_train_config
from core.nn import precision
from core.base.config import ModelConfig, TrainConfig
from core.nn.model import CaptionModel
from core.runs.folder import read_progress
from core.train.trainer import _step, caption_loss, pad_captions, run

CPU = torch.device("cpu")


@pytest.fixture
def native(monkeypatch):
    """native(True/False): pretend the CPU has (or lacks) AVX512-BF16/AMX."""
    return lambda has: monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: has)


@pytest.mark.parametrize("has_bf16, label", [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(native, has_bf16, label):
    native(has_bf16)
    p = precision.train_precision(CPU, "auto")
    assert p.label == label and not p.scaler.is_enabled()
    assert p.reason.startswith("the CPU runs bf16 natively" if has_bf16 else "no native bf16")


def test_fp32_and_bf16_can_be_forced(native):
    native(True)
    fp32 = precision.train_precision(CPU, "fp32")
    assert fp32.label == "fp32"
    with fp32.autocast():
        assert not torch.is_autocast_enabled("cpu")
    native(False)  # forced bf16 runs even where it is emulated (slower, but the user asked)
    bf16 = precision.train_precision(CPU, "bf16")
    with bf16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_unknown_or_unavailable_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision.train_precision(CPU, "fp8")
    with pytest.raises(ValueError, match="not available on this mps device"):
        precision.train_precision(torch.device("mps"), "bf16")
    assert any("precision" in p for p in TrainConfig(precision="half").problems())
    assert not any("precision" in p for p in TrainConfig(precision="bf16").problems())


def test_the_cpu_probe_reads_pytorchs_cpuinfo_flags(monkeypatch):
    probe = precision._cpu_has_native_bf16.__wrapped__  # past the cache
    for bf16, amx, expected in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert probe() is expected


@pytest.mark.parametrize("decoder", ["attention", "show_tell"])
def test_a_bf16_step_keeps_fp32_weights_and_optimizer_state_and_learns(decoder):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=12, decoder=decoder, embed_dim=32, hidden_dim=64, attention_dim=32,
                      feature_proj_dim=32, dropout=0.0, max_len=6)
    model = CaptionModel(cfg, with_encoder=False)
    params = [p for p in model.parameters() if p.requires_grad]
    amp = precision.train_precision(CPU, "bf16")
    s = SimpleNamespace(optimizer=torch.optim.AdamW(params, lr=1e-2), scaler=amp.scaler, params=params,
                        cfg=SimpleNamespace(grad_clip=5.0))
    feats = torch.randn(8, 4, model.spec.feature_dim)  # (B, P, C)
    caps = pad_captions([[1, 4 + i % 5, 4 + (i * 3) % 7, 2] for i in range(8)])  # (B, L)
    losses = []
    for _ in range(30):
        with amp.autocast():
            logits, _ = model(feats, caps)
            loss = caption_loss(model, feats, caps)
        assert logits.dtype == torch.bfloat16  # the products really ran in bf16
        _step(s, loss, 1e-2)
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
    moments = [v for st in s.optimizer.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
    assert len(moments) == 2 * len(params) and all(m.dtype == torch.float32 for m in moments)
    assert losses[-1] < 0.5 * losses[0]


def test_a_bf16_run_says_so_and_saves_an_fp32_checkpoint(tmp_path):
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, epochs=2, precision="bf16", checkpoint_every=3)
    run(cfg, tmp_path / "run")
    logs = [e["message"] for e in read_progress(tmp_path / "run") if e["event"] == "log"]
    assert any(m.startswith("training in bf16 on cpu") for m in logs)
    tensors = load_file(tmp_path / "run" / "checkpoint.safetensors")
    floats = [v for k, v in tensors.items() if k.startswith(("model/", "optim/")) and v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)


@pytest.mark.parametrize("decoder", ["attention", "show_tell"])
def test_compile_keeps_the_decoders_results_and_state_dict_keys(decoder):
    """TrainConfig.compile's path, traced by TorchDynamo; the "eager" backend skips inductor's minutes of C++."""
    cfg = ModelConfig(vocab_size=12, decoder=decoder, embed_dim=16, hidden_dim=16, attention_dim=8,
                      feature_proj_dim=8, dropout=0.0, max_len=6)
    torch.manual_seed(0)
    plain, compiled = CaptionModel(cfg, with_encoder=False), CaptionModel(cfg, with_encoder=False)
    compiled.load_state_dict(plain.state_dict())
    precision.compile_decoder(compiled.decoder, backend="eager")
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    feats = torch.randn(5, 4, plain.spec.feature_dim)  # (B, P, C)
    for caps in ([[1, 4, 5, 2], [1, 6, 2]], [[1, 7, 8, 9, 10, 2], [1, 4, 2], [1, 5, 6, 2]]):  # two batch shapes
        caps = pad_captions((caps * 3)[:5])  # (B, L)
        a, b = caption_loss(plain, feats, caps, alpha_c=1.0), caption_loss(compiled, feats, caps, alpha_c=1.0)
        a.backward()
        b.backward()
        assert torch.allclose(a, b, atol=1e-6)
    for p, q in zip(plain.parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_adamw_is_fused_on_the_cpu_and_steps_like_the_plain_one():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    fused, plain = precision.adamw(a.parameters(), CPU, lr=1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2)
    assert fused.param_groups[0]["fused"]
    x = torch.randn(16, 8)
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
