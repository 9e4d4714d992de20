"""The CUDA paths run for real, with figures: `bash bench/gpu_check.sh` (under 5 minutes on one GPU).

1. The GPU, and a 4096 x 4096 matmul in fp32, bf16 and fp16 autocast (TFLOP/s, and the error against fp64).
2. Training throughput (captions/s) of the attention LSTM and the Transformer decoder on Lite2-shaped features
   (batch 96, 8 x 8 x 1280), through core.train.trainer's own loss and step, in bf16 and fp16 (loss scaling) autocast.
3. NCCL with one process: core.nn.distributed.setup as under torchrun, an all-reduce, and DDP steps of a Transformer.
4. Captioning speed end to end (JPEG files -> captions, beam 3) with models/default and with a Transformer bundle
   of the same vocabulary (untrained, so its captions run to the length limit: an upper bound of its time).

Installs nothing; prints one line per figure. Exits non-zero when CUDA is missing or a path fails.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def say(name: str, value) -> None:
    print(f"{name:58s} {value}", flush=True)


def timed(fn, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def check_matmul(dev) -> None:
    a, b = torch.randn(4096, 4096, device=dev), torch.randn(4096, 4096, device=dev)
    exact = (a.double() @ b.double())
    flops = 2 * 4096 ** 3
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        def run():
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                return a @ b
        seconds = timed(run, 20)
        err = ((run().double() - exact).abs().max() / exact.abs().max()).item()
        say(f"matmul 4096^2, {label} autocast", f"{flops / seconds / 1e12:.1f} TFLOP/s, max rel. error {err:.1e}")


def _models(vocab_size: int):
    from core.base.config import ModelConfig
    from core.nn.model import CaptionModel

    lstm = ModelConfig(vocab_size=vocab_size, backbone="efficientnet_lite2", decoder="attention", embed_dim=256,
                       hidden_dim=512, attention_dim=256, dropout=0.5)
    tr = ModelConfig(vocab_size=vocab_size, backbone="efficientnet_lite2", decoder="transformer", hidden_dim=384,
                     num_layers=3, num_heads=6, dropout=0.3)
    return {"attention LSTM": lambda: CaptionModel(lstm, with_encoder=False, pretrained=False),
            "transformer 384x3": lambda: CaptionModel(tr, with_encoder=False, pretrained=False)}


def check_training(dev) -> None:
    from core.train.trainer import caption_loss

    V, B, steps = 2543, 96, 30
    feats = torch.randn(B, 64, 1280, device=dev)
    caps = torch.randint(4, V, (B, 14), device=dev)
    caps[:, 0] = 1
    for name, build in _models(V).items():
        for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            model = build().to(dev).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

            def step():
                with torch.autocast("cuda", dtype=dtype):
                    loss = caption_loss(model, feats, caps, 0.1, 1.0 if "LSTM" in name else 0.0)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                return loss
            seconds = timed(step, steps)
            loss = step().item()
            if not loss == loss:  # NaN
                raise RuntimeError(f"{name} {label}: the loss is NaN")
            say(f"training {name}, {label} autocast", f"{B / seconds:,.0f} captions/s ({seconds * 1e3:.1f} ms/step)")


def check_nccl(dev) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from core.nn import distributed as dist
    from core.train.trainer import caption_loss

    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("GPU_CHECK_PORT", "29517")})
    device = dist.setup(dev)
    try:
        x = torch.ones(1024, device=device)
        torch.distributed.all_reduce(x)
        say("NCCL, one process: backend / all-reduce", f"{torch.distributed.get_backend()} / {x[0].item():.0f}")
        model = _models(2543)["transformer 384x3"]().to(device)
        net = DistributedDataParallel(model, device_ids=[device.index])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        feats, caps = torch.randn(96, 64, 1280, device=device), torch.randint(4, 2543, (96, 14), device=device)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = caption_loss(net, feats, caps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        say("DDP (NCCL) transformer 384x3 step, bf16", f"{timed(step, 10) * 1e3:.1f} ms")
    finally:
        dist.teardown()


def check_captioning(dev) -> None:
    import numpy as np
    from PIL import Image

    from core.bundle.store import DEFAULT_MODEL
    from core.nn.weights import load_bundle, save_bundle
    from core.nn.captioner import Captioner
    from core.base.config import DecodeOptions, ModelConfig
    from core.nn.model import CaptionModel

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        photos = []
        for i in range(256):
            p = Path(tmp) / f"p{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(p, quality=90)
            photos.append((p.name, p))
        default = load_bundle(DEFAULT_MODEL, "cpu", pretrained=False)
        cfg = ModelConfig(vocab_size=default.config.vocab_size, backbone=default.config.backbone,
                          decoder="transformer", hidden_dim=384, num_layers=3, num_heads=6)
        tr = save_bundle(Path(tmp) / "transformer", CaptionModel(cfg, with_encoder=False, pretrained=False),
                         default.vocab, half=True)
        for label, folder in (("models/default", DEFAULT_MODEL), ("transformer 384x3 (untrained)", tr)):
            cap = Captioner(folder, device=str(dev))
            cap.caption(photos[:32], DecodeOptions(beam=3), batch_size=32)  # warm-up: cuDNN autotuning, allocator
            torch.cuda.synchronize()
            t = time.perf_counter()
            results = cap.caption(photos, DecodeOptions(beam=3), batch_size=64)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            if any(r.error for r in results):
                raise RuntimeError(f"{label}: {next(r.error for r in results if r.error)}")
            say(f"captioning {label}, beam 3, 256 JPEGs 500x375", f"{len(photos) / seconds:.0f} photos/s")


def main() -> int:
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to check here (this script is for a machine with an NVIDIA GPU)")
        return 2
    dev = torch.device("cuda")
    t0 = time.time()
    p = torch.cuda.get_device_properties(dev)
    say("GPU", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor}, "
               f"bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    failed = []
    for check in (check_matmul, check_training, check_nccl, check_captioning):
        try:
            check(dev)
        except Exception as e:  # report every path, not only the first that fails
            failed.append(check.__name__)
            say(f"{check.__name__} FAILED", f"{type(e).__name__}: {e}")
    say("total time", f"{time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
